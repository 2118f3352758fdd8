"""Store v2 (``ResultStore``, docs/format.md) against raw numpy and parquet, side by side.

The targets of issue 9 (figures 1 and 2 through a workflow and its storage, 3-5 on
``ResultStore``, the layer every storage delegates to):

1. a large float64 array: the first run of a one-node workflow (``np.full``) on a
   ``FileStorage`` vs ``np.full`` + ``np.save`` to a new file (ours / baseline; target
   <= 1.25, i.e. >= 0.8x the throughput);
2. the cached rerun returning that array, then ``.sum()``, vs ``np.load`` + ``.sum()``
   (target <= 1.25), and the rerun alone (memory-mapped: O(1), target < 50 ms);
3. a 2M-row mixed-type DataFrame: save vs ``df.to_parquet`` (target <= 1.2), and bytes
   on disk (target: no more than parquet's);
4. the same frame: load vs ``pd.read_parquet`` (target <= 1.2);
5. content addressing: saving the same array again under another key (stored once:
   hash + stat, no write) vs the first save (informational); and figure 1 against the same
   run without hashing (1c: what naming objects by content costs, target <= 1.10).

Usage::

    python benchmarks/bench_store.py            # 1 GiB array, 2M rows
    python benchmarks/bench_store.py --quick    # 256 MiB, 500k rows

Scratch files go to a temporary folder under ``benchmarks/_scratch/`` and are removed.
Timings are medians of alternating repetitions after a warm-up; the page cache is not
dropped (neither side's), so these are the figures of a warm machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import RESULTS, info, med, report  # noqa: E402

from functionfuse import workflow  # noqa: E402
from functionfuse.backends.builtin.localback import LocalWorkflow  # noqa: E402
from functionfuse.storage import FileStorage  # noqa: E402
from functionfuse.storage.results import ResultStore  # noqa: E402


def timed(fn) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(ours, base, reps: int) -> tuple[float, float]:
    ours(), base()  # warm-up
    a, b = [], []
    for i in range(reps):
        pair = [(a, ours), (b, base)] if i % 2 == 0 else [(b, base), (a, ours)]
        for out, fn in pair:
            out.append(timed(fn))
    return med(a), med(b)


def frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "id": np.arange(rows, dtype="int64"),
        "x": rng.standard_normal(rows),
        "flag": rng.integers(0, 2, rows).astype(bool),
        "when": pd.date_range("2020-01-01", periods=rows, freq="s", tz="UTC"),
        "city": pd.Categorical(rng.choice(["Paris", "Lyon", "Nice", "Oslo"], rows)),
        "name": pd.array([f"user{i % 5000}" for i in range(rows)], dtype="string[pyarrow]"),
    })


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    nbytes = (256 if args.quick else 1024) << 20
    rows = 500_000 if args.quick else 2_000_000
    reps = 3
    base_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_scratch")
    os.makedirs(base_dir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="store-", dir=base_dir)
    print(f"store v2 benchmarks - numpy {np.__version__}, pandas {pd.__version__}, scratch {scratch}")
    try:
        run(scratch, nbytes, rows, reps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{sum(RESULTS)}/{len(RESULTS)} PASS")
    return 0 if all(RESULTS) else 1


def key() -> str:
    return uuid.uuid4().hex


@workflow
def full(n):
    return np.full(n, 1.5)


def run(scratch: str, nbytes: int, rows: int, reps: int) -> None:
    arr = np.full(nbytes // 8, 1.5)
    state = {"n": 0}

    def fresh_store() -> ResultStore:
        state["n"] += 1
        return ResultStore.from_url(os.path.join(scratch, f"s{state['n']}"))

    def raw_path() -> str:
        state["n"] += 1
        return os.path.join(scratch, f"raw{state['n']}.npy")

    def cleanup() -> None:
        for name in os.listdir(scratch):
            shutil.rmtree(os.path.join(scratch, name), ignore_errors=True)
            if name.endswith((".npy", ".parquet")):
                os.unlink(os.path.join(scratch, name))

    def workflow_run(folder: str) -> tuple[Any, Any]:
        wf = LocalWorkflow(full(nbytes // 8).set_name("full"), workflow_name="bench")
        wf.set_storage(FileStorage(folder))
        return wf.run(), wf.last_report

    def ours_save() -> None:  # a first run: the node computes np.full, the storage stores it
        cleanup()
        state["n"] += 1
        _, rep = workflow_run(os.path.join(scratch, f"s{state['n']}"))
        assert rep.computed == ["full"], rep.summary()

    def base_save() -> None:
        cleanup()
        np.save(raw_path(), np.full(nbytes // 8, 1.5))

    o, b = alternate(ours_save, base_save, reps)
    report("1 array first run ", o, b, o / b, "x", "<= 1.25", o / b <= 1.25,
           f"{nbytes >> 20} MiB float64 node (np.full) run and stored vs np.full + np.save; "
           f"{nbytes / o / 1e9:.2f} vs {nbytes / b / 1e9:.2f} GB/s")

    # Content addressing: the same first run with the two hashes replaced by a counter
    # (each object then gets a random name), to see what naming objects by content costs.
    from functionfuse.storage import objects as objects_module

    class _Null:
        def update(self, view: Any) -> None:
            pass

    class _NoHash:
        def __init__(self) -> None:
            self.size = 0
            self.b3 = self.x3 = _Null()  # the writer's overlapped path: it counts the size itself

        def update(self, view: Any) -> None:
            self.size += len(memoryview(view).cast("B"))

        def ref(self) -> Any:
            return objects_module.ObjectRef(uuid.uuid4().hex * 2, self.size, "0" * 32)

    real_hasher = objects_module._Hasher
    without = []
    for _ in range(reps):
        objects_module._Hasher = _NoHash
        try:
            without.append(timed(ours_save))
        finally:
            objects_module._Hasher = real_hasher
    w = med(without)
    report("1c hashing's share", o, w, o / w, "x", "<= 1.10", o / w <= 1.10,
           "figure 1 with BLAKE3 + XXH3 vs the same run with both replaced by a byte counter")

    cleanup()
    folder = os.path.join(scratch, "cached")
    workflow_run(folder)
    raw = raw_path()
    np.save(raw, arr)
    load_alone = []

    def ours_load() -> None:  # a cached rerun returning the array, then its sum
        t = time.perf_counter()
        value, rep = workflow_run(folder)
        load_alone.append(time.perf_counter() - t)
        assert rep.read == ["full"], rep.summary()
        value.sum()

    o, b = alternate(ours_load, lambda: np.load(raw).sum(), reps)
    report("2 cached rerun+sum", o, b, o / b, "x", "<= 1.25", o / b <= 1.25,
           f"the rerun alone {med(load_alone) * 1e3:.2f} ms (memory-mapped; target < 50 ms); "
           "baseline np.load + sum")
    RESULTS.append(med(load_alone) < 0.05)
    cleanup()
    k = key()

    t_first = timed(lambda: fresh_store().save(key(), arr))
    dedup = fresh_store()
    dedup.save(key(), arr)
    t_again = timed(lambda: dedup.save(key(), arr))
    objects = len(list(dedup.objects.iter_hashes()))
    report("5 same bytes again", t_again, t_first, t_again / t_first, "x", None, None,
           f"second key, same array: stored once ({objects} object), hash + stat only")
    cleanup()

    df = frame(rows)

    def ours_df_save() -> None:
        cleanup()
        fresh_store().save(key(), df)

    def base_df_save() -> None:
        cleanup()
        state["n"] += 1
        df.to_parquet(os.path.join(scratch, f"raw{state['n']}.parquet"))

    o, b = alternate(ours_df_save, base_df_save, reps)
    cleanup()
    s = fresh_store()
    manifest = s.save(k, df)
    ours_bytes = sum(p["size"] for p in manifest["parts"])
    raw_pq = os.path.join(scratch, "frame.parquet")
    df.to_parquet(raw_pq)
    raw_bytes = os.path.getsize(raw_pq)
    formats = ",".join(p["format"] for p in manifest["parts"])
    report("3 frame save      ", o, b, o / b, "x", "<= 1.2", o / b <= 1.2,
           f"{rows:,} rows as {formats}; {ours_bytes:,} B vs parquet {raw_bytes:,} B")
    RESULTS.append(ours_bytes <= raw_bytes)
    info(f"3b bytes on disk: ours {ours_bytes:,} B vs parquet {raw_bytes:,} B = {ours_bytes / raw_bytes:.3f}x "
         f"(target <= 1.0) {'PASS' if ours_bytes <= raw_bytes else 'FAIL'}")
    o, b = alternate(lambda: s.load(k), lambda: pd.read_parquet(raw_pq), reps)
    report("4 frame load      ", o, b, o / b, "x", "<= 1.2", o / b <= 1.2)
    info(f"on disk: store {du(s.objects.root):,} B (objects + manifest)")


if __name__ == "__main__":
    sys.exit(main())
