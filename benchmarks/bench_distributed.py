"""Dask and Ray backends of functionfuse against the same graph written directly.

Run from the repository root::

    python benchmarks/bench_distributed.py               # both engines, ~3-4 min on 2 cores
    python benchmarks/bench_distributed.py --quick       # smaller graphs, fewer repetitions (< 1 min)
    python benchmarks/bench_distributed.py --only dask   # or --only ray
    python benchmarks/bench_distributed.py --by-reference  # workers import the node functions
    python benchmarks/bench_distributed.py --profile ray # cProfile of the driver in "ours" and exit

SPEC.md section 6: "Dask and Ray backends: within 1.1x of the same graph written
directly with dask.delayed / ray.remote (no storage)".  Every figure is measured
in one process run on one cluster, ours and the baseline interleaved (their
order alternates every repetition, after a warm-up of each), and printed as one
line: our median time, the baseline's, the ratio and PASS/FAIL.
See benchmarks/README.md.

The node functions are defined at module level and everything else runs under
``if __name__ == "__main__"``: Dask's worker processes are spawned and import
this file as ``__mp_main__``.  Ray and Dask both send ``__main__`` functions by
value (cloudpickle); ``--by-reference`` imports them from this file as the
module ``bench_distributed`` instead, as for functions of an installed package.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from functionfuse import storage_factory, workflow  # noqa: E402
from _report import RESULTS, fmt_t, info, med, report  # noqa: E402  (benchmarks/_report.py)

# -- node functions (plain; decorated copies below) ------------------------------------

DATA_N = 300_000  # float64 values of the root array (2.4 MB)
SEED = 12345


def make_data(seed, n):
    return np.random.default_rng(seed).standard_normal(n)


def transform(data, i):
    """~5-15 ms: sort + FFT of the root array; returns a 20x smaller array (120 KB)."""
    x = np.sort(data * (1.0 + i / 1000.0) + i)
    return np.abs(np.fft.rfft(x))[::10].copy()


def features(t):
    """~3-8 ms: a few statistics of one transformed array; returns 72 floats."""
    s = np.sort(t)
    q = np.percentile(t, [5, 25, 50, 75, 95])
    h = np.histogram(t, bins=64)[0].astype(np.float64)
    return np.concatenate([q, [s[-1], np.cumsum(s)[-1] / s.size, t.std()], h])


def combine(*parts):
    return np.sum(np.stack(parts), axis=0)


def total(*parts):
    return float(np.sum(np.stack(parts)))


def seed():
    return 0


def inc(x, i):
    return x + i


def add_all(*xs):
    return sum(xs)


w_make_data = workflow(make_data)
w_transform = workflow(transform)
w_features = workflow(features)
w_combine = workflow(combine)
w_total = workflow(total)
w_seed = workflow(seed)
w_inc = workflow(inc)
w_add_all = workflow(add_all)

NAMES = ("make_data", "transform", "features", "combine", "total", "seed", "inc", "add_all")


def node_tables(by_reference: bool) -> tuple[dict[str, Callable], dict[str, Callable]]:
    """``(ours, plain)``: the decorated and the plain node functions by name.

    By default they are this script's (``__main__``: sent to workers by value).
    With ``by_reference`` they are the same functions imported as the module
    ``bench_distributed``, so workers import them, as for functions of an
    installed package.
    """
    if by_reference:
        import importlib

        mod = importlib.import_module("bench_distributed")  # HERE is on sys.path (and PYTHONPATH for Ray)
    else:
        mod = sys.modules[__name__]
    return ({k: getattr(mod, "w_" + k) for k in NAMES}, {k: getattr(mod, k) for k in NAMES})


OURS: dict[str, Callable] = {}
PLAIN: dict[str, Callable] = {}

# -- the two graph shapes, written once for every API ---------------------------------
# ``mk[name](*args)`` makes a node: a functionfuse node, a dask.delayed object,
# a Dask future (client.submit) or a Ray ObjectRef.


def build_work(mk: dict[str, Callable], branches: int, group: int) -> Any:
    """(a) fan-out / fan-in of numpy work.

    One root array -> ``branches`` x (transform -> features) -> ``combine``
    groups of ``group`` -> one ``total``.
    """
    data = mk["make_data"](SEED, DATA_N)
    feats = [mk["features"](mk["transform"](data, i)) for i in range(branches)]
    parts = [mk["combine"](*feats[j : j + group]) for j in range(0, branches, group)]
    return mk["total"](*parts)


def work_nodes(branches: int, group: int) -> int:
    return 1 + 2 * branches + math.ceil(branches / group) + 1


def build_trivial(mk: dict[str, Callable], width: int, group: int) -> Any:
    """(b) trivial nodes: one root -> ``width`` x inc -> add_all groups of ``group`` -> add_all."""
    s = mk["seed"]()
    incs = [mk["inc"](s, i) for i in range(width)]
    parts = [mk["add_all"](*incs[j : j + group]) for j in range(0, width, group)]
    return mk["add_all"](*parts)


def trivial_nodes(width: int, group: int) -> int:
    return 1 + width + math.ceil(width / group) + 1


# -- timing helpers ----------------------------------------------------------------------

DRIVER_NOTE = ""  # what else runs in the driver process, for the CPU lines
WORK_MS: dict[str, float] = {}  # measured time of one transform / features call, in ms


class Times:
    """Per label: wall seconds, driver CPU seconds, CPU seconds of every process of the cluster."""

    def __init__(self, labels: list[str]) -> None:
        self.wall: dict[str, list[float]] = {k: [] for k in labels}
        self.driver: dict[str, list[float]] = {k: [] for k in labels}
        self.cluster: dict[str, list[float]] = {k: [] for k in labels}


def _cpu_snapshot() -> dict[int, float]:
    """user+system CPU seconds of this process and all its descendants (the whole local cluster)."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            c = p.cpu_times()
        except psutil.Error:
            continue
        out[p.pid] = c.user + c.system
    return out


def measure(
    fns: dict[str, Callable[[], Any]], reps: int, settle: Callable[[], None] | None = None
) -> tuple[Times, dict[str, Any]]:
    """Time each function ``reps`` times; returns the times and each warm-up result.

    One untimed warm-up call of each first.  The order of the functions is
    reversed every other repetition; ``settle`` (untimed) waits until the
    cluster is idle, and a full GC runs, before every timed call.
    """
    warm = {label: fn() for label, fn in fns.items()}
    labels = list(fns)
    t = Times(labels)
    for r in range(reps):
        for label in labels if r % 2 == 0 else labels[::-1]:
            if settle is not None:
                settle()
            gc.collect()
            s0 = _cpu_snapshot()
            c0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            fns[label]()
            t.wall[label].append(time.perf_counter() - t0)
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            s1 = _cpu_snapshot()
            t.driver[label].append(c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime)
            t.cluster[label].append(sum(v - s0.get(pid, 0.0) for pid, v in s1.items()))
    return t, warm




def details(t: Times, first: str, others: list[str], n: int) -> None:
    """Info lines under a figure: spread, paired ratio, CPU per node, the other baselines."""
    ow, bw = t.wall["ours"], t.wall[first]
    # Ours and the baseline ran next to each other in every repetition: the
    # median of those pairs' ratios is less sensitive to slow drifts of load.
    paired = med([o / b for o, b in zip(ow, bw)])
    info(f"spread: ours {fmt_t(min(ow)).strip()}..{fmt_t(max(ow)).strip()}, {first} {fmt_t(min(bw)).strip()}.."
         f"{fmt_t(max(bw)).strip()} ({len(ow)} reps); median of paired ratios {paired:.3f}x, "
         f"ratio of minima {min(ow) / min(bw):.3f}x")
    info(f"CPU per node, ours vs {first}: driver process ({DRIVER_NOTE}) "
         f"{med(t.driver['ours']) / n * 1e6:.0f} vs {med(t.driver[first]) / n * 1e6:.0f} µs; every process of the "
         f"cluster {med(t.cluster['ours']) / n * 1e6:.0f} vs {med(t.cluster[first]) / n * 1e6:.0f} µs")
    for label in others:
        x = med(t.wall[label])
        info(f"other baseline {label}: {fmt_t(x).strip()}, ours/{label} {med(ow) / x:.3f}x; CPU per node: driver "
             f"{med(t.driver[label]) / n * 1e6:.0f} µs, cluster {med(t.cluster[label]) / n * 1e6:.0f} µs")


def same(a: Any, b: Any) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9)


def calibrate() -> str:
    """Time of one node of each kind of graph (a), in this (driver) process."""
    data = make_data(SEED, DATA_N)
    transform(data, 0)
    t0 = time.perf_counter()
    for i in range(5):
        t = transform(data, i)
    t1 = time.perf_counter()
    for _ in range(5):
        features(t)
    t2 = time.perf_counter()
    WORK_MS["transform"] = (t1 - t0) / 5 * 1e3
    WORK_MS["features"] = (t2 - t1) / 5 * 1e3
    return f"transform {WORK_MS['transform']:.1f} ms, features {WORK_MS['features']:.1f} ms"


def load_avg() -> str:
    one, five, _ = os.getloadavg()
    warn = "  WARNING: the machine is busy, timings are noisy" if one > (os.cpu_count() or 1) * 0.75 else ""
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min){warn}"


# -- one engine ---------------------------------------------------------------------------


class DaskEngine:
    name = "dask"

    def __init__(self) -> None:
        import dask
        import distributed

        from functionfuse.backends.builtin.daskback import DaskWorkflow

        self.DaskWorkflow = DaskWorkflow
        self.cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        self.client = client = distributed.Client(self.cluster)
        assert distributed.default_client() is client  # leaf.compute() runs on it
        self._mk = {
            # dask.delayed's default pure=False: new keys every run, nothing reused between runs
            "dask.delayed": {k: dask.delayed(f) for k, f in PLAIN.items()},
            "client.submit": {k: (lambda *a, _f=f: client.submit(_f, *a, pure=False)) for k, f in PLAIN.items()},
        }
        self.last_report: Any = None

    def describe(self) -> str:
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        return f"distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True): {len(workers)} workers"

    def workflow(self, leaf: Any, wf_name: str) -> Any:
        return self.DaskWorkflow(leaf, workflow_name=wf_name, client=self.client)

    def ours(self, leaf: Any, wf_name: str, storage: Any = None) -> Any:
        wf = self.workflow(leaf, wf_name)
        if storage is not None:
            wf.set_storage(storage)
        out = wf.run()
        self.last_report = wf.last_report
        return out

    def baselines(self) -> dict[str, dict[str, Callable]]:
        """``{label: mk}``; the first is the target's baseline."""
        return self._mk

    def compute(self, label: str, leaf: Any) -> Any:
        if label == "dask.delayed":
            return leaf.compute()
        return leaf.result()

    def balance(self, fn: Callable[[], Any]) -> str:
        """Run ``fn`` once; how its tasks were spread over the workers, and their idle time."""
        from distributed import get_task_stream

        self.settle()
        with get_task_stream(self.client) as stream:
            t0 = time.time()
            fn()
            wall = time.time() - t0
        count: dict[str, int] = {}
        busy: dict[str, float] = {}
        for rec in stream.data:
            for ss in rec["startstops"]:
                if ss["action"] == "compute":
                    count[rec["worker"]] = count.get(rec["worker"], 0) + 1
                    busy[rec["worker"]] = busy.get(rec["worker"], 0.0) + ss["stop"] - ss["start"]
        workers = list(self.client.scheduler_info(n_workers=-1)["workers"])
        idle = sum(max(0.0, wall - busy.get(w, 0.0)) for w in workers) / (len(workers) * wall)
        return f"tasks per worker {sorted(count.get(w, 0) for w in workers)}, workers idle {idle:.0%} of the run"

    def settle(self) -> None:
        """Wait (up to 2 s) until the scheduler has forgotten the previous run's tasks."""
        deadline = time.perf_counter() + 2.0
        while time.perf_counter() < deadline:
            if self.client.run_on_scheduler(_scheduler_task_count) == 0:
                return
            time.sleep(0.01)

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def _scheduler_task_count(dask_scheduler: Any = None) -> int:
    return len(dask_scheduler.tasks)


class RayEngine:
    name = "ray"

    def __init__(self) -> None:
        import logging

        import ray

        from functionfuse.backends.builtin.rayback import RayWorkflow

        self.ray = ray
        self.RayWorkflow = RayWorkflow
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        remotes = {k: ray.remote(f) for k, f in PLAIN.items()}
        self._mk = {"ray.remote": {k: r.remote for k, r in remotes.items()}}
        self.last_report: Any = None

    def describe(self) -> str:
        return f"ray.init(num_cpus=2): {self.ray.cluster_resources().get('CPU', 0):g} CPUs"

    def workflow(self, leaf: Any, wf_name: str) -> Any:
        return self.RayWorkflow(leaf, workflow_name=wf_name)

    def ours(self, leaf: Any, wf_name: str, storage: Any = None) -> Any:
        wf = self.workflow(leaf, wf_name)
        if storage is not None:
            wf.set_storage(storage)
        out = wf.run(return_results=True)
        self.last_report = wf.last_report
        return out

    def baselines(self) -> dict[str, dict[str, Callable]]:
        return self._mk

    def compute(self, label: str, leaf: Any) -> Any:
        return self.ray.get(leaf)

    def settle(self) -> None:
        pass  # every ObjectRef of the previous run is gone: its objects are freed

    def close(self) -> None:
        self.ray.shutdown()


# -- figures ---------------------------------------------------------------------------------


def fig_work(eng: Any, reps: int, branches: int, group: int) -> float:
    """(a) the target: ours / baseline on the numpy fan-out/fan-in graph."""
    n = work_nodes(branches, group)
    bases = eng.baselines()
    first = next(iter(bases))
    fns: dict[str, Callable[[], Any]] = {
        "ours": lambda: eng.ours(build_work(OURS, branches, group), f"bench-{eng.name}-a")
    }
    for label, mk in bases.items():
        fns[label] = lambda label=label, mk=mk: eng.compute(label, build_work(mk, branches, group))
    t, warm = measure(fns, reps, eng.settle)
    for label, value in warm.items():
        assert same(value, warm[first]), f"{eng.name} (a): {label} gives another result"
    o, b = med(t.wall["ours"]), med(t.wall[first])
    ratio = o / b
    report(f"{eng.name:4s} a  numpy fan-out/fan-in", o, b, ratio, "x", "<= 1.1", ratio <= 1.1,
           f"vs {first}; N={n} nodes: 1 root ({DATA_N * 8 / 1e6:.1f} MB array) -> {branches} x (transform "
           f"{WORK_MS['transform']:.0f} ms -> features {WORK_MS['features']:.0f} ms) -> combine by {group} -> total; "
           "graph building included")
    details(t, first, list(bases)[1:], n)
    if eng.name == "dask":
        info("one more run of each, with Dask's task stream: " + "; ".join(
            f"{label} {eng.balance(fns[label])}" for label in ("ours", first)))
    return o


def driver_memory(eng: Any, ours: Callable[[], Any], base: Callable[[], Any], label: str, n: int) -> str:
    """Peak Python memory the driver allocates during one run (tracemalloc), per node."""
    import tracemalloc

    peaks = {}
    for name, fn in (("ours", ours), (label, base)):
        eng.settle()
        gc.collect()
        tracemalloc.start()
        try:
            fn()
            peaks[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return (f"driver memory (tracemalloc peak of one run, per node): ours {peaks['ours'] / n / 1024:.1f} KiB, "
            f"{label} {peaks[label] / n / 1024:.1f} KiB")


def fig_trivial(eng: Any, reps: int, width: int, group: int) -> None:
    """(b) trivial nodes: ours within 1.1x of the same graph written for the engine (issue 12)."""
    n = trivial_nodes(width, group)
    bases = eng.baselines()
    first = next(iter(bases))
    fns: dict[str, Callable[[], Any]] = {
        "ours": lambda: eng.ours(build_trivial(OURS, width, group), f"bench-{eng.name}-b")
    }
    for label, mk in bases.items():
        fns[label] = lambda label=label, mk=mk: eng.compute(label, build_trivial(mk, width, group))
    t, warm = measure(fns, reps, eng.settle)
    for label, value in warm.items():
        assert value == sum(range(width)), f"{eng.name} (b): {label} gives another result"
    o, b = med(t.wall["ours"]), med(t.wall[first])
    extra_ms = (o - b) / n * 1e3
    ratio = o / b
    report(f"{eng.name:4s} b  trivial nodes       ", o, b, ratio, "x", "<= 1.1", ratio <= 1.1,
           f"vs {first}; N={n} nodes: 1 root -> {width} x inc -> add_all by {group} -> add_all; "
           f"overhead per node (ours - {first}) / N = {extra_ms:.3f} ms; {first} itself {b / n * 1e3:.2f} ms/node")
    details(t, first, list(bases)[1:], n)
    info(driver_memory(eng, fns["ours"], fns[first], first, n))
    # Where ours spends its time: building the graph + the workflow object, then run().
    tb, tr = [], []
    for _ in range(max(2, reps // 2)):
        eng.settle()
        gc.collect()
        t0 = time.perf_counter()
        wf = eng.workflow(build_trivial(OURS, width, group), f"bench-{eng.name}-b")
        t1 = time.perf_counter()
        wf.run(return_results=True)
        tb.append(t1 - t0)
        tr.append(time.perf_counter() - t1)
    info(f"split of ours: build graph + workflow object {med(tb) / n * 1e6:.0f} µs/node, run() {med(tr) / n * 1e3:.2f} ms/node")


def fig_storage(eng: Any, scratch: str, reps: int, branches: int, group: int, no_storage: float) -> None:
    """Informational: graph (a) with a file storage, first run and full cached rerun."""
    n = work_nodes(branches, group)
    name = f"bench-{eng.name}-store"
    firsts = []
    folder = ""
    for r in range(reps):
        folder = os.path.join(scratch, f"{eng.name}-{r}")
        eng.settle()
        gc.collect()
        t0 = time.perf_counter()
        eng.ours(build_work(OURS, branches, group), name, storage_factory({"kind": "file", "options": {"path": folder}}))
        firsts.append(time.perf_counter() - t0)
        assert len(eng.last_report.computed) == n, eng.last_report.summary()
    reruns = []
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        eng.ours(build_work(OURS, branches, group), name, storage_factory({"kind": "file", "options": {"path": folder}}))
        reruns.append(time.perf_counter() - t0)
    summary = eng.last_report.summary().split(": ", 1)[-1]
    f, c = med(firsts), med(reruns)
    print(f"[{eng.name:4s} s  file storage, graph a] first run {fmt_t(f).strip()} ({f / no_storage:.2f}x ours without "
          f"storage), fully cached rerun {fmt_t(c).strip()} ({summary}) (no target) info  medians of {reps}", flush=True)


# -- profiling -------------------------------------------------------------------------------


def profile(eng: Any, branches: int, group: int, width: int, tgroup: int) -> None:
    """cProfile of the driver's main thread in ours (graph a once, graph b 5 times)."""
    import cProfile
    import pstats

    eng.ours(build_work(OURS, branches, group), "prof-a")
    eng.ours(build_trivial(OURS, width, tgroup), "prof-b")
    prof = cProfile.Profile()
    prof.enable()
    eng.ours(build_work(OURS, branches, group), "prof-a")
    for _ in range(5):
        eng.ours(build_trivial(OURS, width, tgroup), "prof-b")
    prof.disable()
    n = work_nodes(branches, group) + 5 * trivial_nodes(width, tgroup)
    print(f"cProfile of ours on {eng.name} (driver main thread only; the Dask scheduler thread and the workers are "
          f"not in it): {n} nodes in all, divide by it for per-node costs")
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    global DRIVER_NOTE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller graphs, fewer repetitions (< 1 minute)")
    parser.add_argument("--only", choices=["dask", "ray"], help="benchmark one engine only")
    parser.add_argument("--by-reference", action="store_true",
                        help="send the node functions by reference (imported as module bench_distributed on the "
                             "workers, as for an installed package) instead of by value from __main__")
    parser.add_argument("--profile", choices=["dask", "ray"], help="cProfile the driver in ours on ENGINE and exit")
    parser.add_argument("--scratch", metavar="DIR", default=os.path.join(HERE, "_scratch"),
                        help="parent folder of the file-storage scratch folder (default: benchmarks/_scratch)")
    args = parser.parse_args(argv)
    if args.quick:
        branches, group, width, reps, store_reps, treps = 24, 8, 100, 3, 1, 3
    else:
        # Figure b's runs take a quarter of a second: 21 pairs keep its ratio within
        # about 2% from one run of this script to the next (9 pairs moved it by 5%).
        branches, group, width, reps, store_reps, treps = 96, 8, 400, 9, 3, 21
    tgroup = 10
    if args.by_reference:
        # Ray's workers inherit the environment of the raylet started by ray.init.
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
    ours, plain = node_tables(args.by_reference)
    OURS.update(ours)
    PLAIN.update(plain)

    engines = [args.profile] if args.profile else [args.only] if args.only else ["dask", "ray"]
    scratch_parent = os.path.abspath(args.scratch)
    made_parent = not os.path.isdir(scratch_parent)
    os.makedirs(scratch_parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench-dist-", dir=scratch_parent)
    t_start = time.perf_counter()
    try:
        if not args.profile:
            import dask
            import ray

            print(f"functionfuse distributed benchmarks - Python {platform.python_version()}, numpy {np.__version__}, "
                  f"dask/distributed {dask.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs; {load_avg()}")
            print(f"node work of graph a, measured in the driver: {calibrate()}; node functions sent "
                  f"{'by reference (module bench_distributed)' if args.by_reference else 'by value (__main__)'}")
            print("times are medians of repetitions after a warm-up; ours and the baselines alternate (order "
                  "reversed every repetition) and the cluster is idle before each; ours = build the graph + "
                  "XWorkflow(...) + run(), no storage; the baselines build their graph in every repetition too")
            print("baselines: dask = dask.delayed graph, leaf.compute() on the Client (other: client.submit with "
                  "futures passed along, leaf.result()); ray = @ray.remote functions with ObjectRefs passed along, "
                  "ray.get(leaf)")
        for name in engines:
            t0 = time.perf_counter()
            eng: Any = DaskEngine() if name == "dask" else RayEngine()
            DRIVER_NOTE = "incl. the Dask scheduler's thread" if name == "dask" else "incl. Ray's core-worker threads"
            try:
                if args.profile:
                    profile(eng, branches, group, width, tgroup)
                    continue
                print(f"-- {name}: {eng.describe()}, started in {time.perf_counter() - t0:.1f} s", flush=True)
                o = fig_work(eng, reps, branches, group)
                fig_trivial(eng, treps, width, tgroup)
                fig_storage(eng, scratch, store_reps, branches, group, o)
            finally:
                eng.close()
        if not args.profile:
            print(f"{sum(RESULTS)}/{len(RESULTS)} PASS, total {time.perf_counter() - t_start:.1f} s; {load_avg()}")
        return 0 if all(RESULTS) else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if made_parent:
            try:
                os.rmdir(scratch_parent)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
