"""Early cutoff: a rerun after a change that leaves a result identical (issue 13).

Run from the repository root::

    python benchmarks/bench_cutoff.py            # 3 repetitions per side
    python benchmarks/bench_cutoff.py --quick    # 2 repetitions, no Dask figure

The pipeline is ``load -> clean -> train (1 s) -> evaluate``: ``load`` makes a 1 MB
array, ``clean`` scales it, ``train`` sleeps one second and returns a small model,
``evaluate`` scores it.  Each repetition changes ``load``'s code (a new ``version=``)
without changing its result, then runs the pipeline again:

* ours: ``run()`` (early cutoff on): ``load`` runs, the rest is reused;
* baseline: ``run(early_cutoff=False)``: keys alone decide, so ``clean``, ``train`` and
  ``evaluate`` run again (what every Merkle-keyed cache does).

The target: the rerun costs ``load`` plus a few reads, not ``train``.  The printed value
is ours / (baseline - train's 1 s), ours against what the baseline spends besides
``train`` (running ``load``, ``clean``, ``evaluate`` and storing them); target <= 1.5,
room for the reads and manifests a cutoff costs.  ours / baseline follows, for
information.  Figures: the local executor on a folder, on S3 (moto's server on
127.0.0.1, in this process), and on Dask (a LocalCluster with 2 worker processes, on a
folder).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from _report import RESULTS, info, med, report  # noqa: E402

from functionfuse import storage_factory, workflow  # noqa: E402
from functionfuse.backends.builtin.localback import LocalWorkflow  # noqa: E402

TRAIN_SECONDS = 1.0


def pipeline(version: str):
    """``load -> clean -> train -> evaluate``, ``load`` at code version ``version``."""

    @workflow(version=version)
    def load():
        return np.linspace(0.0, 1.0, 131_072)  # 1 MiB, the same whatever the version

    @workflow
    def clean(x):
        return (x - x.mean()) / x.std()

    @workflow
    def train(x):
        time.sleep(TRAIN_SECONDS)
        return {"weights": [float(x[:10].sum()), float(x[-10:].sum())], "n": int(x.size)}

    @workflow
    def evaluate(model):
        return model["weights"][1] - model["weights"][0]

    x = load().set_name("load")
    return evaluate(train(clean(x).set_name("clean")).set_name("train")).set_name("evaluate")


def figure(name: str, make_workflow, storage, reps: int) -> None:
    """Time reruns after a no-op change of ``load``, with and without early cutoff."""
    wf = make_workflow(pipeline("v0"))
    wf.set_storage(storage)
    expected = wf.run()
    times: dict[str, list[float]] = {"ours": [], "base": []}
    summaries: dict[str, str] = {}
    serial = 0
    for _ in range(reps):
        for side in ("ours", "base"):
            serial += 1
            wf = make_workflow(pipeline(f"v{serial}"))  # load's code changed, its result did not
            wf.set_storage(storage)
            start = time.perf_counter()
            result = wf.run(early_cutoff=side == "ours")
            times[side].append(time.perf_counter() - start)
            assert result == expected, f"{name}: results differ"
            summaries[side] = wf.last_report.summary().split(": ", 1)[1]
            ran = wf.last_report.computed
            if side == "ours":
                assert ran == ["load"], f"{name}: early cutoff ran {ran}"
            else:
                assert "train" in ran, f"{name}: without early cutoff train must run, ran {ran}"
    ours, base = med(times["ours"]), med(times["base"])
    ratio = ours / max(base - TRAIN_SECONDS, 1e-9)
    report(name, ours, base, ratio, "x", "<= 1.5", ratio <= 1.5,
           f"ours / baseline {ours / base:.3f}; ours: {summaries['ours']}; baseline: {summaries['base']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 repetitions, no Dask figure")
    args = parser.parse_args(argv)
    reps = 2 if args.quick else 3
    logging.getLogger("distributed").setLevel(logging.ERROR)
    scratch = tempfile.mkdtemp(prefix="bench-cutoff-")
    print("rerun after a change to load's code that leaves its result identical; ours = early cutoff on, "
          f"baseline = early_cutoff=False; train takes {TRAIN_SECONDS:.0f} s; medians of {reps}")
    t0 = time.perf_counter()
    try:
        local = lambda leaf: LocalWorkflow(leaf, workflow_name="cutoff")  # noqa: E731
        folder = storage_factory({"kind": "file", "options": {"path": os.path.join(scratch, "folder")}})
        figure("C1 local, folder           ", local, folder, reps)

        import s3fs
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            options = {"key": "bench", "secret": "bench",
                       "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "us-west-2"}}
            s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir("bench-cutoff")
            s3 = storage_factory({"kind": "S3", "options": {"path": f"s3://bench-cutoff/{uuid.uuid4().hex}",
                                                            "s3fs": options}})
            figure("C2 local, S3 (moto)        ", local, s3, reps)
        finally:
            server.stop()

        if not args.quick:
            import distributed

            from functionfuse.backends.builtin.daskback import DaskWorkflow

            with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                          dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
                on_dask = lambda leaf: DaskWorkflow(leaf, workflow_name="cutoff", client=client)  # noqa: E731
                dask_folder = storage_factory({"kind": "file", "options": {"path": os.path.join(scratch, "dask")}})
                figure("C3 Dask, folder            ", on_dask, dask_folder, reps)
                info("on Dask the worker that would run a node checks it, and hands on the reused result's key: "
                     "only a consumer that computes, or the driver, reads it")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{sum(RESULTS)}/{len(RESULTS)} PASS, total {time.perf_counter() - t0:.1f} s")
    return 0 if all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
