import subprocess
import sys

from helpers import ROOT

HEAVY = ["dask", "distributed", "ray", "s3fs", "zarr", "h5py", "pandas", "numpy", "boto3", "botocore"]


def test_import_functionfuse_is_light():
    code = (
        "import sys, functionfuse, functionfuse.storage, functionfuse.serializers, "
        "functionfuse.backends.builtin.localback\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert out == ""


def test_public_api():
    import functionfuse

    assert set(functionfuse.__all__) >= {"workflow", "storage_factory", "NodeExecutionError", "tokenize"}
    for name in functionfuse.__all__:
        assert hasattr(functionfuse, name)
