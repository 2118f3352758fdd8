"""S3-storage benchmarks of functionfuse against direct zarr / s3fs code.

Run from the repository root::

    python benchmarks/bench_s3.py                  # ~200 MB array, 1,000 small results (~3-5 min)
    python benchmarks/bench_s3.py --quick          # ~40 MB array, 200 small results (< 1 min)
    python benchmarks/bench_s3.py --profile 3      # cProfile of figure 3's "ours", then exit
    python benchmarks/bench_s3.py --server-process # moto in a child process (client CPU alone)

A moto ``ThreadedMotoServer`` on 127.0.0.1 is the S3 endpoint (a real HTTP
server, as in tests/conftest.py's ``s3_endpoint`` fixture); both sides talk to
it through s3fs with the same fake credentials.  Every figure is measured side
by side with its baseline (repetitions interleaved after a warm-up, medians),
and printed as one line: our time, the baseline time, the ratio and PASS/FAIL
against a target.  Issue 4 gives no number: the targets are ours (see
benchmarks/README.md).

1. store a dask array (float64, 8 MB chunks) as a node result, first run of a
   ``LocalWorkflow`` with ``DaskArraySerializer`` registered, vs ``da.to_zarr``
   into a zarr v3 array with the same chunks and codecs (zstd + crc32c);
2. load it back: a resumed run returning it, then ``.sum().compute()`` (every
   chunk read) vs ``da.from_zarr(...).sum().compute()`` of the direct copy;
3. 1,000 small results (dicts), first run, vs a loop of ``fs.pipe_file``;
4. cache hit, all 1,000 read, vs a loop of ``fs.cat_file`` + ``pickle.loads``.

Dask runs on the threaded scheduler for both sides.
"""

from __future__ import annotations

import argparse
import gc
import logging
import multiprocessing
import os
import pickle
import platform
import re
import resource
import sys
import time
from collections import Counter
from typing import Any, Callable

import dask
import dask.array as da
import numpy as np
import s3fs
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from functionfuse import storage_factory, workflow  # noqa: E402
from functionfuse.backends.builtin.localback import LocalWorkflow  # noqa: E402
from functionfuse.serializers.daskarray import DaskArraySerializer  # noqa: E402
from _report import RESULTS, fmt_t, info, med, report  # noqa: E402  (benchmarks/_report.py)

BUCKET = "functionfuse-bench"
CREDENTIALS = {"key": "functionfuse-bench-key", "secret": "functionfuse-bench-secret"}
REGION = "us-west-2"
CHUNK = (1000, 1000)  # 8 MB of float64 per chunk

# -- the node functions --------------------------------------------------------------

# The in-memory source of the big array, made once (untimed).  The node wraps it
# in a dask array, so both sides pay only for storing it, not for making the data.
SOURCE: dict[str, np.ndarray] = {}
# The source is benchmark state, not an input of the node: emptied before the loads,
# it must not change the node's key (see docs/caching.md, "__functionfuse_ignore__").
__functionfuse_ignore__ = {"SOURCE"}


def big_array(rows: int, cols: int):
    arr = SOURCE["big"]
    assert arr.shape == (rows, cols)
    return da.from_array(arr, chunks=CHUNK, name=False)  # name=False: no 200 MB hash


def seed():
    return 0


def make_record(base, i):
    i = base + i
    return {"i": i, "name": f"item-{i}", "vals": [i, i * 2, i * 3]}


w_big_array = workflow(big_array)
w_seed = workflow(seed)
w_make_record = workflow(make_record)

# -- timing and printing helpers ------------------------------------------------------

USER_CPU: dict[str, list[float]] = {}
SYS_CPU: dict[str, list[float]] = {}
MAIN_CPU: dict[str, list[float]] = {}  # CPU of the calling thread only (not s3fs's, dask's or moto's threads)


COUNTS: dict[str, Counter | None] = {}


def measure(pairs: list[tuple[str, Callable[[], Any], Callable[[], Any] | None]], reps: int,
            endpoint: "Endpoint | None" = None) -> dict[str, list[float]]:
    """Time each ``(label, fn, setup)`` ``reps`` times, interleaved, after one warm-up each.

    ``setup`` (untimed) runs before every call; the order of the sides is
    reversed on every repetition (A B, B A, A B ...); a full GC runs before each
    timed call.  Process CPU (user, kernel) of each call goes to USER_CPU/SYS_CPU.
    With ``endpoint``, the requests the server receives during each warm-up call
    (not its setup) go to COUNTS.
    """
    COUNTS.clear()
    for label, fn, setup in pairs:
        if setup is not None:
            setup()
        if endpoint is not None:
            COUNTS[label] = endpoint.count(fn)
        else:
            fn()
    USER_CPU.clear()
    SYS_CPU.clear()
    MAIN_CPU.clear()
    times: dict[str, list[float]] = {label: [] for label, _, _ in pairs}
    for rep in range(reps):
        for label, fn, setup in pairs if rep % 2 == 0 else pairs[::-1]:
            if setup is not None:
                setup()
            gc.collect()
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            c0 = time.thread_time()
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
            MAIN_CPU.setdefault(label, []).append(time.thread_time() - c0)
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            USER_CPU.setdefault(label, []).append(u1.ru_utime - u0.ru_utime)
            SYS_CPU.setdefault(label, []).append(u1.ru_stime - u0.ru_stime)
    return times


def report_ratio(fig: str, ours: float, base: float, target: float, extra: str) -> None:
    ratio = ours / base
    report(fig, ours, base, ratio, "x", f"<= {target}", ratio <= target, extra)




def spread(t: dict[str, list[float]]) -> str:
    o, b = t["ours"], t["base"]
    paired = med([x / y for x, y in zip(o, b)])
    return (f"spread: ours {min(o):.3f}-{max(o):.3f} s, baseline {min(b):.3f}-{max(b):.3f} s "
            f"({len(o)} reps); median of paired ratios {paired:.3f}x, ratio of minima {min(o) / min(b):.3f}x")


def cpu_line(n: int | None, server_in_process: bool) -> str:
    whose = "client + moto server (same process)" if server_in_process else "client only"
    if n:
        per = {k: (med(USER_CPU[k]) / n * 1e3, med(SYS_CPU[k]) / n * 1e3) for k in ("ours", "base")}
        main = {k: med(MAIN_CPU[k]) / n * 1e3 for k in ("ours", "base")}
        return (f"process CPU per item ({whose}): ours user {per['ours'][0]:.2f} ms + kernel {per['ours'][1]:.2f} ms; "
                f"baseline user {per['base'][0]:.2f} ms + kernel {per['base'][1]:.2f} ms. "
                f"Main thread alone (our Python work + s3fs's sync wrapper; s3fs's requests run in its IO thread): "
                f"ours {main['ours']:.3f} ms, baseline {main['base']:.3f} ms, "
                f"difference {main['ours'] - main['base']:.3f} ms/item")
    per = {k: (med(USER_CPU[k]), med(SYS_CPU[k])) for k in ("ours", "base")}
    return (f"process CPU ({whose}): ours user {per['ours'][0]:.2f} s + kernel {per['ours'][1]:.2f} s; "
            f"baseline user {per['base'][0]:.2f} s + kernel {per['base'][1]:.2f} s")


# -- the S3 endpoint ----------------------------------------------------------------------


class RequestCounter(logging.Handler):
    """Counts the requests moto's server logs (werkzeug's request log), by kind."""

    _ansi = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line, code = str(record.args[0]), str(record.args[1])  # type: ignore[index]
        except (TypeError, IndexError):
            return
        line = self._ansi.sub("", line)
        method, _, rest = line.partition(" ")
        path = rest.rsplit(" ", 1)[0]
        kind = method
        if method == "GET" and ("list-type=" in path or "prefix=" in path):
            kind = "LIST"
        elif method == "POST" and "delete" in path:
            kind = "DELETE(batch)"
        if not code.startswith("2"):
            kind += f"[{code}]"
        self.counts[kind] += 1


class Endpoint:
    """moto's ThreadedMotoServer on 127.0.0.1, in this process or in a child process."""

    def __init__(self, in_process: bool) -> None:
        self.in_process = in_process
        self.counter = RequestCounter()
        self._werkzeug = logging.getLogger("werkzeug")  # moto's request log
        self._werkzeug.setLevel(logging.ERROR)
        self._werkzeug.propagate = False
        self._werkzeug.addHandler(self.counter)  # also keeps werkzeug from adding a console handler
        if in_process:
            from moto.server import ThreadedMotoServer

            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.server.start()
            host, port = self.server.get_host_and_port()
        else:
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            self._stop = ctx.Event()
            self.process = ctx.Process(target=_serve, args=(queue, self._stop), daemon=True)
            self.process.start()
            host, port = queue.get(timeout=60)
        self.url = f"http://{host}:{port}"
        # What a user puts in the "s3fs" options; both sides use exactly these.
        self.options = {**CREDENTIALS, "client_kwargs": {"endpoint_url": self.url, "region_name": REGION}}
        s3fs.S3FileSystem(skip_instance_cache=True, **self.options).mkdir(BUCKET)

    def count(self, fn: Callable[[], Any]) -> Counter | None:
        """Requests the server received during ``fn()`` (None with a child-process server)."""
        if not self.in_process:
            fn()
            return None
        self.counter.counts.clear()
        self._werkzeug.setLevel(logging.INFO)
        try:
            fn()
        finally:
            self._werkzeug.setLevel(logging.ERROR)
        return Counter(self.counter.counts)

    def stop(self) -> None:
        if self.in_process:
            self.server.stop()
        else:
            self._stop.set()
            self.process.join(10)
            if self.process.is_alive():
                self.process.terminate()


def _serve(queue, stop) -> None:  # in the child process of --server-process
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    queue.put(server.get_host_and_port())
    stop.wait()
    server.stop()


def counts_line() -> str:
    """The requests of the last measure()'s warm-up calls."""
    if any(c is None for c in COUNTS.values()):
        return "requests: not counted (server in a child process)"

    def fmt(counts: Counter) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"

    return f"requests (one call, counted by the server): ours {fmt(COUNTS['ours'])} | baseline {fmt(COUNTS['base'])}"


class Prefixes:
    """Fresh prefixes in the bucket; the previous ones of a figure are deleted (untimed)."""

    def __init__(self, fs: s3fs.S3FileSystem) -> None:
        self.fs = fs
        self.n = 0

    def fresh(self, tag: str) -> str:
        self.n += 1
        return f"{BUCKET}/{tag}-{self.n}"

    def drop(self, prefix: str | None) -> None:
        if prefix and self.fs.find(prefix):
            self.fs.rm(prefix, recursive=True)


def s3_storage(prefix: str, options: dict):
    """What a user's script does: the S3 storage with DaskArraySerializer registered."""
    storage = storage_factory({"kind": "S3", "options": {"path": f"s3://{prefix}", "s3fs": options}})
    storage.register_persistent_serializers(DaskArraySerializer)
    return storage


def stored_size(fs: s3fs.S3FileSystem, prefix: str) -> tuple[int, int]:
    """(number of objects, bytes) under a prefix."""
    found = fs.find(prefix, detail=True)
    return len(found), sum(v["size"] for v in found.values())


# -- figures 1 and 2: a big dask array ---------------------------------------------------------


def big_figures(ep: Endpoint, prefixes: Prefixes, shape: tuple[int, int], reps_store: int, reps_load: int) -> None:
    opts = ep.options
    fs = prefixes.fs
    rows, cols = shape
    SOURCE["big"] = np.random.default_rng(42).random(shape)
    nbytes = SOURCE["big"].nbytes
    mb = nbytes / 1e6
    nchunks = -(-rows // CHUNK[0]) * -(-cols // CHUNK[1])
    codecs = {"compressors": [ZstdCodec(), Crc32cCodec()]}  # what DaskArraySerializer uses on S3
    wf_name = "bench-big"

    # -- figure 1: store --
    state: dict[str, Any] = {}

    def setup_ours():
        prefixes.drop(state.get("ours"))
        state["ours"] = prefixes.fresh("big-ours")

    def setup_base():
        prefixes.drop(state.get("base"))
        state["base"] = prefixes.fresh("big-base")

    def ours():
        wf = LocalWorkflow(w_big_array(rows, cols), workflow_name=wf_name)
        wf.set_storage(s3_storage(state["ours"], opts))
        out = wf.run()
        state["report"] = wf.last_report
        return out

    def base():
        x = big_array(rows, cols)
        da.to_zarr(x, f"s3://{state['base']}/array.zarr", storage_options=opts, zarr_format=3, **codecs)

    t = measure([("ours", ours, setup_ours), ("base", base, setup_base)], reps_store, ep)
    rep = state["report"]
    assert rep.computed == [rep.events[0].node] and len(rep.events) == 1, rep.summary()
    o, b = med(t["ours"]), med(t["base"])
    report_ratio("1 store dask array, first run ", o, b, 1.2,
           f"{mb:.0f} MB float64 {rows}x{cols}, {nchunks} chunks of {CHUNK[0]}x{CHUNK[1]} (8 MB); "
           f"{mb / o:.0f} vs {mb / b:.0f} MB/s")
    info(spread(t))
    info(cpu_line(None, ep.in_process))
    n_o, b_o = stored_size(fs, state["ours"])
    n_b, b_b = stored_size(fs, state["base"])
    info(f"stored: ours {n_o} objects, {b_o / 1e6:.1f} MB (zarr chunks + zarr.json + the entry); "
         f"baseline {n_b} objects, {b_b / 1e6:.1f} MB (zarr chunks + zarr.json)")
    info(counts_line())

    # -- figure 2: load --
    # The copies written by the last calls above stay for the loads.
    ours_prefix, base_url = state["ours"], f"s3://{state['base']}/array.zarr"
    expected = float(da.from_array(SOURCE["big"], chunks=CHUNK).sum().compute())
    SOURCE.clear()  # the loads must not touch the source

    def ours_load():
        wf = LocalWorkflow(w_big_array(rows, cols), workflow_name=wf_name)
        wf.set_storage(s3_storage(ours_prefix, opts))
        arr = wf.run()
        state["report"] = wf.last_report
        return float(arr.sum().compute())

    def base_load():
        return float(da.from_zarr(base_url, storage_options=opts).sum().compute())

    def ours_read_task():
        return float(s3_storage(ours_prefix, opts).read_task(wf_name, rep.events[0].node).sum().compute())

    assert ours_load() == base_load() == ours_read_task() == expected, "figure 2: sums differ"
    t = measure([("ours", ours_load, None), ("base", base_load, None)], reps_load, ep)
    rep2 = state["report"]
    assert len(rep2.read) == 1 and not rep2.computed, rep2.summary()
    o, b = med(t["ours"]), med(t["base"])
    report_ratio("2 load it back, .sum().compute()", o, b, 1.2,
           f"a resumed run returns the lazy array (1 node read) vs da.from_zarr; "
           f"{mb / o:.0f} vs {mb / b:.0f} MB/s")
    info(spread(t))
    info(cpu_line(None, ep.in_process))
    info(counts_line())
    tr = measure([("read_task", ours_read_task, None)], max(3, reps_load // 2))["read_task"]
    info(f"storage.read_task(...).sum().compute() instead of a resumed run: {fmt_t(med(tr)).strip()} "
         f"({med(tr) / b:.3f}x the baseline)")
    prefixes.drop(state["ours"])
    prefixes.drop(state["base"])


# -- figures 3 and 4: 1,000 small results ------------------------------------------------------


def build_records(n: int):
    """N independent nodes hanging off one shared root (as in bench_local.py figure 2:
    default names are numbered per connected component, so disconnected
    ``make_record(i)`` nodes would all get the same name)."""
    s = w_seed()
    return [w_make_record(s, i) for i in range(n)]


def small_figures(ep: Endpoint, prefixes: Prefixes, n: int, reps_first: int, reps_hit: int) -> None:
    opts = ep.options
    wf_name = "bench-small"
    state: dict[str, Any] = {}

    # -- figure 3: first run --
    def setup_ours():
        prefixes.drop(state.get("ours"))
        state["ours"] = prefixes.fresh("small-ours")

    def setup_base():
        prefixes.drop(state.get("base"))
        state["base"] = prefixes.fresh("small-base")

    def ours():
        wf = LocalWorkflow(*build_records(n), workflow_name=wf_name)
        wf.set_storage(s3_storage(state["ours"], opts))
        out = wf.run()
        state["report"] = wf.last_report
        return out

    def base():
        fs = s3fs.S3FileSystem(**opts)
        folder = state["base"]
        out = []
        s = seed()
        for i in range(-1, n):  # -1: the shared root, so both sides write N+1 objects
            value = s if i < 0 else make_record(s, i)
            fs.pipe_file(f"{folder}/make_record_{i:04d}", pickle.dumps(value, protocol=5))
            out.append(value)
        return out[1:]

    t = measure([("ours", ours, setup_ours), ("base", base, setup_base)], reps_first, ep)
    rep = state["report"]
    assert len(rep.computed) == n + 1, rep.summary()
    o, b = med(t["ours"]), med(t["base"])
    report_ratio("3 small results, first run    ", o, b, 1.5,
           f"N={n} nodes (small dicts) + 1 shared root vs N+1 fs.pipe_file; "
           f"{o / n * 1e3:.2f} vs {b / n * 1e3:.2f} ms/node")
    info(spread(t))
    info(cpu_line(n, ep.in_process))
    info(counts_line())

    # -- figure 4: cache hit, all N read --
    ours_prefix, base_prefix = state["ours"], state["base"]
    expected = [make_record(0, i) for i in range(n)]
    keys = [f"{base_prefix}/make_record_{i:04d}" for i in range(n)]

    def ours_hit():
        wf = LocalWorkflow(*build_records(n), workflow_name=wf_name)
        wf.set_storage(s3_storage(ours_prefix, opts))
        out = wf.run()
        state["report"] = wf.last_report
        return out

    def base_hit():
        fs = s3fs.S3FileSystem(**opts)
        # max_concurrency=1: one GET per object.  s3fs's default (10) first asks
        # for the size with a HEAD, to split big objects: two requests per key.
        return [pickle.loads(fs.cat_file(k, max_concurrency=1)) for k in keys]

    def base_hit_plain():
        fs = s3fs.S3FileSystem(**opts)
        return [pickle.loads(fs.cat_file(k)) for k in keys]

    assert ours_hit() == base_hit() == expected, "figure 4: results differ"
    t = measure([("ours", ours_hit, None), ("base", base_hit, None)], reps_hit, ep)
    rep = state["report"]
    assert len(rep.read) == n and not rep.computed, rep.summary()
    o, b = med(t["ours"]), med(t["base"])
    report_ratio("4 small results, cache hit    ", o, b, 1.5,
           f"N={n} nodes all read (root skipped) vs N x (fs.cat_file + pickle.loads); "
           f"{o / n * 1e3:.2f} vs {b / n * 1e3:.2f} ms/node")
    info(spread(t))
    info(cpu_line(n, ep.in_process))
    info(counts_line())
    listing = s3_storage(ours_prefix, opts)
    tl = measure([("list", lambda: listing.scan(wf_name), None)], 5)["list"]
    info(f"of ours: listing the workflow's {n + 1} entries once at the start of run() (the baseline knows its keys): "
         f"{fmt_t(med(tl)).strip()} = {med(tl) / n * 1e3:.3f} ms/node, {med(tl) / o:.1%} of ours")
    t0 = time.perf_counter()
    base_hit_plain()
    plain = time.perf_counter() - t0
    info(f"baseline with s3fs's default fs.cat_file(key) (HEAD + GET per key), one run: {fmt_t(plain).strip()} "
         f"= {plain / n * 1e3:.2f} ms/node; ours / that = {o / plain:.3f}x")
    prefixes.drop(ours_prefix)
    prefixes.drop(base_prefix)


# -- profiling ---------------------------------------------------------------------------------


def profile_figure(fig: int, ep: Endpoint, prefixes: Prefixes, n: int, shape: tuple[int, int]) -> None:
    """cProfile "ours" of one figure (main thread only: dask's and s3fs's threads are not seen)."""
    import cProfile
    import pstats

    opts = ep.options
    rows, cols = shape
    if fig in (1, 2):
        SOURCE["big"] = np.random.default_rng(42).random(shape)
        prefix = prefixes.fresh("prof-big")

        def once():
            wf = LocalWorkflow(w_big_array(rows, cols), workflow_name="bench-big")
            wf.set_storage(s3_storage(prefix, opts))
            out = wf.run()
            if fig == 2:
                out.sum().compute()

        once()  # stores it (figure 1 is profiled on the next, fresh prefix)
        if fig == 1:
            prefixes.drop(prefix)
            prefix = prefixes.fresh("prof-big")
        target = once
    else:
        prefix = prefixes.fresh("prof-small")

        def once():
            wf = LocalWorkflow(*build_records(n), workflow_name="bench-small")
            wf.set_storage(s3_storage(prefix, opts))
            wf.run()

        if fig == 4:
            once()
        target = once
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    target()
    prof.disable()
    print(f"figure {fig}, ours: {time.perf_counter() - t0:.3f} s wall (under cProfile)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~40 MB array, 200 small results, 3 repetitions")
    parser.add_argument("--server-process", action="store_true",
                        help="run moto's server in a child process (then process CPU is the client's alone; "
                             "no request counts)")
    parser.add_argument("--profile", type=int, metavar="FIG", choices=(1, 2, 3, 4),
                        help="print a cProfile of figure FIG's 'ours' (1-4) and exit")
    args = parser.parse_args(argv)
    if args.quick:
        shape, n, reps_store, reps_load, reps_first, reps_hit = (5000, 1000), 200, 3, 3, 3, 3
    else:
        shape, n, reps_store, reps_load, reps_first, reps_hit = (5000, 5000), 1000, 5, 7, 5, 5

    dask.config.set(scheduler="threads")
    ep = Endpoint(in_process=not args.server_process)
    prefixes = Prefixes(s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **ep.options))
    try:
        if args.profile:
            profile_figure(args.profile, ep, prefixes, n, shape)
            return 0
        import moto

        print(f"functionfuse S3 benchmarks - Python {platform.python_version()}, s3fs {s3fs.__version__}, "
              f"zarr {zarr.__version__}, dask {dask.__version__}, moto {moto.__version__}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        where = ("in this process: its threads share the CPU and the GIL with the client" if ep.in_process
                 else "in a child process")
        print(f"endpoint: moto ThreadedMotoServer at {ep.url} ({where}); "
              f"dask scheduler: threads ({dask.system.CPU_COUNT} workers)")
        print("baselines: 1 = da.to_zarr into a zarr v3 array, same chunks, same codecs (zstd + crc32c); "
              "2 = da.from_zarr(...).sum().compute(); 3 = fs.pipe_file(key, pickle.dumps(value)) per result; "
              "4 = pickle.loads(fs.cat_file(key)) per result")
        print("times are medians of interleaved repetitions after a warm-up; 'ours' includes building the graph, "
              "LocalWorkflow(...), storage_factory(...) + register_persistent_serializers, set_storage and run(); "
              "targets are ours (issue 4 gives none)")
        t0 = time.perf_counter()
        big_figures(ep, prefixes, shape, reps_store, reps_load)
        small_figures(ep, prefixes, n, reps_first, reps_hit)
        print(f"{sum(RESULTS)}/{len(RESULTS)} PASS, total {time.perf_counter() - t0:.1f} s, "
              f"load average {os.getloadavg()[0]:.2f}")
        return 0 if all(RESULTS) else 1
    finally:
        try:
            if prefixes.fs.find(BUCKET):
                prefixes.fs.rm(BUCKET + "/*", recursive=True)
        except Exception:  # noqa: BLE001 - the server goes away with the process anyway
            pass
        ep.stop()


if __name__ == "__main__":
    sys.exit(main())
