import os
import sys

import pytest

from functionfuse.storage import FileStorage

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)


@pytest.fixture
def storage(tmp_path):
    return FileStorage(tmp_path / "store")


@pytest.fixture(autouse=True)
def _clear_memory_fs():
    yield
    try:
        from fsspec.implementations.memory import MemoryFileSystem
    except ImportError:  # pragma: no cover
        return
    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs.clear()
    MemoryFileSystem.pseudo_dirs.append("")
