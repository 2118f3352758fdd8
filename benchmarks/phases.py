"""Where the time of bench_local's figures 1 and 4 goes, phase by phase, without a profiler.

Run from the repository root::

    python benchmarks/phases.py            # N = 2000 (figure 1) and 1000 (figure 4)
    python benchmarks/phases.py --reps 41

cProfile inflates the many small calls that planning makes, so this script times the
phases themselves instead: each repetition does what ``LocalWorkflow.run`` does, step
by step, with the same functions, and reads the parts of planning from
``Plan.phases``.  Every line is a median over the repetitions (a full
``gc.collect()`` before each), in ms and in µs per node.  It prints no PASS/FAIL:
bench_local.py checks the targets; this says what the figures are made of.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

import bench_local  # noqa: E402  (the figures' graphs and functions)
from _report import figures_1_and_4  # noqa: E402

from functionfuse import caching, cutoff, storage_factory  # noqa: E402
from functionfuse.backends.builtin.localback import LocalWorkflow  # noqa: E402
from functionfuse.backends.local import _LocalRun  # noqa: E402


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def _show(title: str, n: int, parts: dict[str, list[float]]) -> None:
    print(title)
    total = 0.0
    for name, values in parts.items():
        m = _median(values)
        if not name.startswith(" "):
            total += m
        print(f"  {name:<38} {m * 1e3:7.3f} ms  {m / n * 1e6:6.2f} µs/node")
    print(f"  {'sum of the top-level phases':<38} {total * 1e3:7.3f} ms  {total / n * 1e6:6.2f} µs/node")


def figure1(reps: int, n: int = 2000) -> None:
    parts: dict[str, list[float]] = defaultdict(list)
    for _ in range(reps + 1):
        gc.collect()
        t0 = time.perf_counter()
        leaf = bench_local.build_mixed(n)
        t1 = time.perf_counter()
        wf = LocalWorkflow(leaf, workflow_name="phases-1")
        t2 = time.perf_counter()
        wf.run()
        t3 = time.perf_counter()
        t4 = time.perf_counter()
        bench_local.loop_mixed(n)
        t5 = time.perf_counter()
        if _ == 0:
            continue  # warm-up
        parts["building the graph"].append(t1 - t0)
        parts["LocalWorkflow()"].append(t2 - t1)
        parts["run() (no storage)"].append(t3 - t2)
        parts[" the plain loop (baseline)"].append(t5 - t4)
    _show(f"figure 1: {n} nodes, no storage", n, parts)


def figure4(reps: int, folder: str, n: int = 1000) -> None:
    storage = {"kind": "file", "options": {"path": folder}}

    def workflow() -> LocalWorkflow:
        wf = LocalWorkflow(bench_local.build_chain(n), workflow_name="phases-4")
        wf.set_storage(storage_factory(storage))
        return wf

    workflow().run()  # store the chain
    parts: dict[str, list[float]] = defaultdict(list)
    clock = time.perf_counter
    for rep in range(reps + 1):
        gc.collect()
        t0 = clock()
        leaf = bench_local.build_chain(n)
        t1 = clock()
        wf = LocalWorkflow(leaf, workflow_name="phases-4")
        wf.set_storage(storage_factory(storage))
        t2 = clock()
        named = wf._named()
        t3 = clock()
        plan = caching.make_plan(wf.workflow_name, named, wf._funcs, wf.object_storage)
        t4a = clock()
        cutoff.want_contents(plan)
        cutoff.mark_candidates(plan)
        t4 = clock()
        caching.begin_run(plan)
        caching.packing(plan, True)
        t5 = clock()
        runner = _LocalRun(plan, wf.leaves)
        runner.execute()
        t6 = clock()
        caching.finish_report(plan, None)
        caching.record_run(plan, None, "local")
        t7 = clock()
        caching.packing(plan, False)
        caching.end_run(plan)
        report = plan.report(t7 - t2)
        report.summary()
        t8 = clock()
        assert len(report.read) == 1 and not report.computed, report.summary()
        if rep == 0:
            continue  # warm-up
        parts["building the graph"].append(t1 - t0)
        parts["LocalWorkflow() + storage_factory()"].append(t2 - t1)
        parts["names"].append(t3 - t2)
        parts["planning (make_plan)"].append(t4a - t3)
        for name, seconds in plan.phases.items():
            parts[f"   {name}"].append(seconds)
        parts["early cutoff candidates"].append(t4 - t4a)
        parts["run lease + pack"].append(t5 - t4)
        parts["executing (1 read, 999 skipped)"].append(t6 - t5)
        parts["writing the run record"].append(t7 - t6)
        parts["closing the run, the report"].append(t8 - t7)
    paths = [os.path.join(folder, "base", f"{i}.pkl") for i in range(n)]
    os.makedirs(os.path.dirname(paths[0]))
    import pickle

    value = bench_local.make_record(0, 0)
    for path in paths:
        with open(path, "wb") as f:
            f.write(pickle.dumps(value))
    base = []
    for _ in range(reps):
        gc.collect()
        t0 = clock()
        for path in paths:
            with open(path, "rb") as f:
                pickle.loads(f.read())
        base.append(clock() - t0)
    parts[" baseline: open + read + unpickle every node"] = base
    _show(f"figure 4: resume of a {n}-node chain, only the leaf needed", n, parts)


def main(argv: list[str] | None = None) -> int:
    return figures_1_and_4(__doc__, argv, 21, "phases-", figure1, figure4)

if __name__ == "__main__":
    sys.exit(main())
