"""Local-backend benchmarks of functionfuse against hand-written baselines.

Run from the repository root::

    python benchmarks/bench_local.py            # all figures
    python benchmarks/bench_local.py --quick    # fewer repetitions (smoke test)
    python benchmarks/bench_local.py --profile 3   # cProfile of figure 3's "ours"

Every figure is measured in one process run, side by side with its baseline
(repetitions of "ours" and "baseline" are interleaved, after a warm-up), and
printed as one line: our time, the baseline time, the ratio and PASS/FAIL
against the target of SPEC.md section 6.  See benchmarks/README.md.

Scratch files live in a temporary folder next to this script (same disk as the
project) and are removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
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
from functionfuse.backends.builtin.localback import LocalWorkflow  # noqa: E402
from _report import RESULTS, fmt_t, info, med, report  # noqa: E402  (benchmarks/_report.py)

# -- the node functions (plain functions; decorated copies below) ----------------


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def seed():
    return 0


def make_record(base, i):
    i = base + i
    return {"i": i, "name": f"item-{i}", "vals": [i, i * 2, i * 3]}


def step(rec):
    i = rec["i"] + 1
    return {"i": i, "name": f"item-{i}", "vals": [i, i * 2, i * 3]}


def make_array(nbytes, seed):
    return np.full(nbytes // 8, float(seed), dtype=np.float64)


def array_step(arr):
    return arr + 1.0


def summarize(arr):
    return float(arr[0]) + arr.size


w_inc = workflow(inc)
w_add = workflow(add)
w_seed = workflow(seed)
w_make_record = workflow(make_record)
w_step = workflow(step)
w_make_array = workflow(make_array)
w_array_step = workflow(array_step)
w_summarize = workflow(summarize)

# -- timing helpers ---------------------------------------------------------------


def measure(pairs: list[tuple[str, Callable[[], Any], Callable[[], Any] | None]], reps: int) -> dict[str, list[float]]:
    """Time each ``(label, fn, setup)`` ``reps`` times, interleaved.

    ``setup`` (untimed) runs before every repetition; a full GC runs before
    each timed call so garbage from a previous repetition is not collected
    inside another one's timing.  One untimed warm-up call per function first.
    """
    for _, fn, setup in pairs:
        if setup is not None:
            setup()
        fn()
    times: dict[str, list[float]] = {label: [] for label, _, _ in pairs}
    for _ in range(reps):
        for label, fn, setup in pairs:
            if setup is not None:
                setup()
            gc.collect()
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            USER_CPU.setdefault(label, []).append(u1.ru_utime - u0.ru_utime)
            SYS_CPU.setdefault(label, []).append(u1.ru_stime - u0.ru_stime)
    return times


# user / kernel CPU seconds of each repetition of the last measure() call per label
USER_CPU: dict[str, list[float]] = {}
SYS_CPU: dict[str, list[float]] = {}




class Scratch:
    """Fresh sub-folders of one temporary folder, deleted as we go."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.n = 0

    def fresh(self, tag: str) -> str:
        self.n += 1
        path = os.path.join(self.root, f"{tag}-{self.n}")
        os.makedirs(path)
        return path

    @staticmethod
    def drop(path: str | None) -> None:
        if path:
            shutil.rmtree(path, ignore_errors=True)


# -- figure 1: per-node overhead without storage -------------------------------------


def build_mixed(n: int):
    """A chain of ``inc`` with a fan-in ``add`` every 4th node (joins the node 3 back)."""
    nodes = [w_inc(0)]
    for i in range(1, n):
        if i % 4 == 0:
            nodes.append(w_add(nodes[-1], nodes[-3]))
        else:
            nodes.append(w_inc(nodes[-1]))
    return nodes[-1]


def loop_mixed(n: int):
    vals = [inc(0)]
    for i in range(1, n):
        if i % 4 == 0:
            vals.append(add(vals[-1], vals[-3]))
        else:
            vals.append(inc(vals[-1]))
    return vals[-1]


def fig1(reps: int, n: int = 2000) -> None:
    def ours():
        return LocalWorkflow(build_mixed(n), workflow_name="bench-overhead").run()

    def base():
        return loop_mixed(n)

    assert ours() == base(), "figure 1: results differ"
    t = measure([("ours", ours, None), ("base", base, None)], reps)
    o, b = med(t["ours"]), med(t["base"])
    per_node = (o - b) / n * 1e6
    report("1 overhead, no storage      ", o, b, per_node, " µs/node", "<= 3 µs/node", per_node <= 3.0,
           f"N={n} chain+fan-in, graph building included; ratio {o / b:.1f}x")
    # Split build vs run (informative only).
    tb = []
    tr = []
    for _ in range(max(3, reps // 2)):
        gc.collect()
        t0 = time.perf_counter()
        leaf = build_mixed(n)
        wf = LocalWorkflow(leaf, workflow_name="bench-overhead")
        t1 = time.perf_counter()
        wf.run()
        t2 = time.perf_counter()
        tb.append(t1 - t0)
        tr.append(t2 - t1)
    info(f"split: build graph + LocalWorkflow() {med(tb) / n * 1e6:.2f} µs/node, run() {med(tr) / n * 1e6:.2f} µs/node, "
         f"plain loop {b / n * 1e6:.2f} µs/node")


# -- figure 2: first run with file storage ------------------------------------------


def build_records(n: int):
    """N independent nodes hanging off one shared root.

    (A shared root because default names are numbered per connected component:
    N disconnected ``make_record(i)`` nodes would all be ``make_record_0000``.)
    """
    s = w_seed()
    return [w_make_record(s, i) for i in range(n)]


def loop_records(n: int) -> list:
    s = seed()
    return [s] + [make_record(s, i) for i in range(n)]


def fig2(scratch: Scratch, reps: int, n: int = 1000) -> None:
    state: dict[str, Any] = {}

    # Folders are kept until the end of the figure: deleting files right
    # before a timed repetition slows the next file creations on some disks.
    made: list[str] = []

    def setup_ours():
        state["ours"] = scratch.fresh("fig2-ours")
        made.append(state["ours"])

    def setup_base():
        state["base"] = scratch.fresh("fig2-base")
        made.append(state["base"])

    def ours():
        storage = storage_factory({"kind": "file", "options": {"path": state["ours"]}})
        wf = LocalWorkflow(*build_records(n), workflow_name="bench-first")
        wf.set_storage(storage)
        out = wf.run()
        state["report"] = wf.last_report
        return out

    def base():
        folder = state["base"]
        out = []
        s = seed()
        for i in range(-1, n):  # -1: the shared root
            value = s if i < 0 else make_record(s, i)
            data = pickle.dumps(value, protocol=5)
            final = os.path.join(folder, f"make_record_{i:04d}")
            tmp = final + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, final)
            out.append(value)
        return out

    USER_CPU.clear()
    SYS_CPU.clear()
    t = measure([("ours", ours, setup_ours), ("base", base, setup_base)], reps)
    rep = state["report"]
    assert len(rep.computed) == n + 1, f"figure 2: expected {n} computed nodes, got {rep.summary()}"
    o, b = med(t["ours"]), med(t["base"])
    ratio = o / b
    report("2 first run, file storage   ", o, b, ratio, "x", "<= 1.0", ratio <= 1.0,
           f"N={n} independent nodes (small dicts) + 1 shared root, baseline writes N+1 files too; {o / n * 1e6:.1f} vs {b / n * 1e6:.1f} µs/node")
    cpu = {k: (med(USER_CPU[k]) / n * 1e6, med(SYS_CPU[k]) / n * 1e6) for k in ("ours", "base")}
    info(f"CPU per node: ours user {cpu['ours'][0]:.1f} µs + kernel {cpu['ours'][1]:.1f} µs; "
         f"baseline user {cpu['base'][0]:.1f} µs + kernel {cpu['base'][1]:.1f} µs "
         "(medians; user = Python-side work, kernel = mostly file creation)")
    for folder in made:
        Scratch.drop(folder)


# -- figure 3: cache hit, every node loaded ------------------------------------------


def write_baseline_files(folder: str, names: list[str], values: list[Any]) -> list[str]:
    paths = []
    for name, value in zip(names, values):
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(pickle.dumps(value, protocol=5))
        paths.append(path)
    return paths


def fig3(scratch: Scratch, reps: int, n: int = 1000) -> None:
    folder = scratch.fresh("fig3-ours")
    storage = storage_factory({"kind": "file", "options": {"path": folder}})
    wf = LocalWorkflow(*build_records(n), workflow_name="bench-hit")
    wf.set_storage(storage)
    expected = wf.run()
    base_folder = scratch.fresh("fig3-base")
    paths = write_baseline_files(base_folder, [f"make_record_{i:04d}" for i in range(n)], expected)
    assert expected == loop_records(n)[1:]
    state: dict[str, Any] = {}

    def ours():
        wf = LocalWorkflow(*build_records(n), workflow_name="bench-hit")
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": folder}}))
        out = wf.run()
        state["report"] = wf.last_report
        return out

    def base():
        out = []
        for path in paths:
            os.stat(path)
            with open(path, "rb") as f:
                out.append(pickle.loads(f.read()))
        return out

    assert ours() == expected == base(), "figure 3: results differ"
    t = measure([("ours", ours, None), ("base", base, None)], reps)
    rep = state["report"]
    assert len(rep.read) == n, f"figure 3: expected {n} nodes read, got {rep.summary()}"
    o, b = med(t["ours"]), med(t["base"])
    ratio = o / b
    report("3 cache hit, all loaded     ", o, b, ratio, "x", "<= 1.3", ratio <= 1.3,
           f"N={n} nodes, all {n} are outputs so each is read; {o / n * 1e6:.1f} vs {b / n * 1e6:.1f} µs/node")
    # Informative: the same without graph building / storage construction.
    leaves = build_records(n)
    wf2 = LocalWorkflow(*leaves, workflow_name="bench-hit")
    wf2.set_storage(storage_factory({"kind": "file", "options": {"path": folder}}))
    tr = measure([("run", wf2.run, None)], reps)["run"]
    info(f"run() alone (graph prebuilt): {fmt_t(med(tr)).strip()} = {med(tr) / n * 1e6:.1f} µs/node, ratio {med(tr) / b:.2f}x")
    Scratch.drop(folder)
    Scratch.drop(base_folder)


# -- figure 4: full resume of a chain, leaf only -------------------------------------


def build_chain(n: int):
    node = w_make_record(0, 0)
    for _ in range(1, n):
        node = w_step(node)
    return node


def fig4(scratch: Scratch, reps: int, n: int = 1000) -> None:
    folder = scratch.fresh("fig4-ours")
    wf = LocalWorkflow(build_chain(n), workflow_name="bench-chain")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": folder}}))
    expected = wf.run()
    values = [make_record(0, 0)]
    for _ in range(1, n):
        values.append(step(values[-1]))
    assert values[-1] == expected
    base_folder = scratch.fresh("fig4-base")
    paths = write_baseline_files(base_folder, [f"node_{i:04d}" for i in range(n)], values)
    state: dict[str, Any] = {}

    def ours():
        wf = LocalWorkflow(build_chain(n), workflow_name="bench-chain")
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": folder}}))
        out = wf.run()
        state["report"] = wf.last_report
        return out

    def base():
        out = None
        for path in paths:
            with open(path, "rb") as f:
                out = pickle.loads(f.read())
        return out

    assert ours() == expected == base(), "figure 4: results differ"
    t = measure([("ours", ours, None), ("base", base, None)], reps)
    rep = state["report"]
    assert len(rep.read) == 1 and len(rep.computed) == 0, f"figure 4: {rep.summary()}"
    o, b = med(t["ours"]), med(t["base"])
    ratio = o / b
    report("4 resume chain, leaf only   ", o, b, ratio, "x", "< 1", ratio < 1.0,
           f"N={n} chain; ours: {rep.summary().split(': ', 1)[1]}")
    Scratch.drop(folder)
    Scratch.drop(base_folder)


# -- figure 5: resume independent of intermediate size --------------------------------


def build_array_chain(nbytes: int, length: int):
    node = w_make_array(nbytes, 1)
    for _ in range(length - 2):
        node = w_array_step(node)
    return w_summarize(node)


def fig5(scratch: Scratch, reps: int, small_mb: int = 1, large_mb: int = 64, length: int = 20) -> None:
    timings = {}
    folders = []
    try:
        for mb in (small_mb, large_mb):
            nbytes = mb << 20
            folder = scratch.fresh(f"fig5-{mb}mb")
            folders.append(folder)
            name = f"bench-big-{mb}"
            wf = LocalWorkflow(build_array_chain(nbytes, length), workflow_name=name)
            wf.set_storage(storage_factory({"kind": "file", "options": {"path": folder}}))
            t0 = time.perf_counter()
            expected = wf.run()
            first = time.perf_counter() - t0
            os.sync()  # background write-back of the big entries must not overlap the timings
            state: dict[str, Any] = {}

            def ours(nbytes=nbytes, folder=folder, name=name, state=state):
                wf = LocalWorkflow(build_array_chain(nbytes, length), workflow_name=name)
                wf.set_storage(storage_factory({"kind": "file", "options": {"path": folder}}))
                out = wf.run()
                state["report"] = wf.last_report
                return out

            assert ours() == expected
            timings[mb] = med(measure([("ours", ours, None)], reps)["ours"])
            rep = state["report"]
            assert len(rep.read) == 1 and len(rep.computed) == 0, f"figure 5: {rep.summary()}"
            stored = sum(  # every object, manifest and run record of the store
                os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files
            )
            info(f"{mb:3d} MB intermediates: first run {fmt_t(first).strip()}, {stored / 2**20:.0f} MiB stored, "
                 f"resume {fmt_t(timings[mb]).strip()} ({rep.summary().split(': ', 1)[1]})")
    finally:
        for f in folders:
            Scratch.drop(f)
    o, b = timings[large_mb], timings[small_mb]
    ratio = o / b
    report("5 resume, large vs small    ", o, b, ratio, "x", "<= 1.5", ratio <= 1.5,
           f"chain of {length}, {large_mb} MB vs {small_mb} MB arrays (baseline = the {small_mb} MB run)")


def probe_disk(scratch: Scratch, n: int = 200) -> str:
    """Cost of the file-system primitives in the scratch folder (context for figures 2-4)."""
    folder = scratch.fresh("probe")
    paths = [os.path.join(folder, f"p{i}") for i in range(n)]
    c0, t0 = os.times(), time.perf_counter()
    for p in paths:
        with open(p, "wb") as f:
            f.write(b"x" * 100)
    t1, c1 = time.perf_counter(), os.times()
    for p in paths:
        os.stat(p)
    t2 = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            f.read()
    t3 = time.perf_counter()
    Scratch.drop(folder)
    return (f"disk probe in scratch: create+write 100 B file {(t1 - t0) / n * 1e6:.0f} µs "
            f"(kernel CPU {(c1.system - c0.system) / n * 1e6:.0f} µs), stat {(t2 - t1) / n * 1e6:.1f} µs, "
            f"open+read {(t3 - t2) / n * 1e6:.1f} µs")


# -- main -------------------------------------------------------------------------------


def profile_figure(fig: int, scratch: Scratch) -> None:
    """cProfile "ours" of one figure (top functions by tottime)."""
    import cProfile
    import pstats

    n = 1000
    if fig == 1:
        def target():
            for _ in range(20):
                LocalWorkflow(build_mixed(2000), workflow_name="bench-overhead").run()
    elif fig == 2:
        folders = [scratch.fresh("prof2") for _ in range(5)]

        def target():
            for folder in folders:
                wf = LocalWorkflow(*build_records(n), workflow_name="bench-first")
                wf.set_storage(storage_factory({"kind": "file", "options": {"path": folder}}))
                wf.run()
    elif fig in (3, 4):
        folder = scratch.fresh("prof")
        build = (lambda: build_records(n)) if fig == 3 else (lambda: [build_chain(n)])

        def once():
            wf = LocalWorkflow(*build(), workflow_name="bench-prof")
            wf.set_storage(storage_factory({"kind": "file", "options": {"path": folder}}))
            return wf.run()

        once()

        def target():
            for _ in range(10):
                once()
    else:
        raise SystemExit("--profile takes 1, 2, 3 or 4")
    prof = cProfile.Profile()
    prof.enable()
    target()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--scratch", metavar="DIR", default=os.path.join(HERE, "_scratch"),
                        help="parent folder of the temporary scratch folder (default: benchmarks/_scratch)")
    parser.add_argument("--profile", type=int, metavar="FIG", help="print a cProfile of figure FIG's 'ours' and exit")
    parser.add_argument("--figures", default="1,2,3,4,5", metavar="LIST",
                        help="the figures to run, comma-separated (default: all)")
    args = parser.parse_args(argv)
    scale = 3 if args.quick else 1

    scratch_parent = os.path.abspath(args.scratch)
    made_parent = not os.path.isdir(scratch_parent)
    os.makedirs(scratch_parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="bench-", dir=scratch_parent)
    scratch = Scratch(root)
    try:
        if args.profile:
            profile_figure(args.profile, scratch)
            return 0
        print(f"functionfuse local benchmarks - Python {platform.python_version()} "
              f"({platform.python_implementation()}), numpy {np.__version__}, {os.cpu_count()} CPUs, "
              f"scratch on {root}")
        print(probe_disk(scratch))
        print("baselines: 1 = plain Python loop calling the same undecorated functions; "
              "2 = per node: pickle.dumps, write a temp file, os.replace to a file named after the node; "
              "3 = per node: os.stat + open + read + pickle.loads; "
              "4 = open + read + pickle.loads of EVERY node of the chain; "
              "5 = our own resume with 1 MB intermediates (ratio large/small)")
        print("times are medians of interleaved repetitions after a warm-up; 'ours' includes building the graph, "
              "LocalWorkflow(...), storage_factory(...) and run()")
        t0 = time.perf_counter()
        wanted = {int(f) for f in args.figures.split(",") if f.strip()}
        if 1 in wanted:
            fig1(max(5, 40 // scale))
        if 2 in wanted:
            fig2(scratch, max(3, 7 // scale))
        if 3 in wanted:
            fig3(scratch, max(5, 21 // scale))
        if 4 in wanted:
            fig4(scratch, max(5, 21 // scale))
        if 5 in wanted:
            fig5(scratch, max(11, 101 // scale))
        print(f"{sum(RESULTS)}/{len(RESULTS)} PASS, total {time.perf_counter() - t0:.1f} s")
        return 0 if all(RESULTS) else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if made_parent:
            try:
                os.rmdir(scratch_parent)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
