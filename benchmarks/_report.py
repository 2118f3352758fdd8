"""What the benchmark scripts share: medians, time formatting, one line per figure.

Each ``bench_*.py`` runs as a script (``python benchmarks/bench_local.py``), so
this module is imported from the scripts' own folder.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from typing import Callable

#: PASS/FAIL of every figure with a target, in the order printed.
RESULTS: list[bool] = []


def med(ts: list[float]) -> float:
    return statistics.median(ts)


def fmt_t(sec: float) -> str:
    """A duration in s, ms or µs, right-aligned in 11 characters."""
    if sec >= 1.0:
        return f"{sec:8.3f} s "
    if sec >= 1e-3:
        return f"{sec * 1e3:8.2f} ms"
    return f"{sec * 1e6:8.1f} µs"


def report(
    fig: str,
    ours: float,
    base: float,
    value: float,
    unit: str,
    target: str | None,
    ok: bool | None,
    extra: str = "",
) -> None:
    """One figure's line; ``target``/``ok`` of None make it informational."""
    if ok is not None:
        RESULTS.append(ok)
    verdict = "info" if ok is None else "PASS" if ok else "FAIL"
    tgt = f"target {target}" if target else "no target"
    print(
        f"[{fig}] ours {fmt_t(ours)} | baseline {fmt_t(base)} | {value:8.3f}{unit} ({tgt}) {verdict}"
        f"{'  ' + extra if extra else ''}",
        flush=True,
    )


def info(text: str) -> None:
    print(f"      {text}", flush=True)


def figures_1_and_4(doc: str, argv: list[str] | None, reps: int, prefix: str,
                    figure1: Callable[[int], None], figure4: Callable[[int, str], None]) -> int:
    """``main()`` of the scripts that take figures 1 and 4 apart (phases.py, floor.py):
    ``--reps``, then both figures, figure 4 in a temporary folder removed at the end."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=reps, help=f"repetitions (default {reps})")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix=prefix)
    try:
        figure1(args.reps)
        figure4(args.reps, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0
