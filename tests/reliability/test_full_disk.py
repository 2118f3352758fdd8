"""A full disk (issue 11, item 5): a small tmpfs mounted by the test (as root).

Every failure is a StorageError naming the node and the storage and saying what
to do; nothing partial is left visible; HDF5 side data never crashes the
interpreter; and the run completes once space is freed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="mounting a tmpfs needs root (CI runs as root)",
    ),
]

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import dask.array as da
    from functionfuse import storage_factory, workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.errors import StorageError

    store, kind = sys.argv[1], sys.argv[2]

    @workflow
    def small():
        return {"a": 1}

    @workflow
    def big(x):
        if kind == "npy":
            return np.ones(1_000_000)  # 8 MB
        return da.ones((2000, 1000), chunks=(500, 1000))  # 16 MB of HDF5 side data

    wf = LocalWorkflow(big(small().set_name("small")).set_name("big"), workflow_name="full")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": store}}))
    try:
        out = wf.run()
    except StorageError as exc:
        print("STORAGE_ERROR", exc)
        sys.exit(0)
    print("DONE", out.shape, wf.last_report.summary())
""")


@pytest.fixture
def tiny(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", f"ff-{uuid.uuid4().hex[:8]}", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run(script, store, kind):
    done = subprocess.run(
        [sys.executable, str(script), str(store), kind], capture_output=True, text=True, timeout=300
    )
    return done


@pytest.mark.parametrize("kind", ["npy", "hdf5"])
def test_a_full_disk_is_a_clear_error_then_the_run_completes(tmp_path, tiny, kind):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    store = tiny / "store"
    done = run(script, store, kind)
    assert done.returncode == 0, (
        f"the interpreter must survive a full disk: {done.returncode} {done.stderr[-2000:]}"
    )
    out = done.stdout
    assert out.startswith("STORAGE_ERROR node 'big' of workflow 'full': result not stored"), out + done.stderr
    assert str(store) in out and "disk is full" in out and "free space" in out
    # nothing partial visible: no temporary, no side data, no manifest naming a missing object
    leftovers = [p for p in (store / "tmp").rglob("*") if p.is_file()] if (store / "tmp").exists() else []
    side = [p for p in (store / "side").rglob("*") if p.is_file()] if (store / "side").exists() else []
    assert leftovers == [] and side == []
    from functionfuse import storage_factory

    storage = storage_factory({"kind": "file", "options": {"path": str(store)}})
    assert storage.read_task("full", "small") == {"a": 1}  # what fitted is stored
    assert "big" not in storage.list_tasks("full")
    # space freed (the disk grows): the next run completes, reading what was stored
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny)], check=True)
    done = run(script, store, kind)
    assert done.returncode == 0 and done.stdout.startswith("DONE"), done.stdout + done.stderr
    assert "1 computed" in done.stdout
