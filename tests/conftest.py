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


# -- real clusters, started once per session ------------------------------------
# Functions sent to workers must be pickled by value: test modules call
# ``cloudpickle.register_pickle_by_value(sys.modules[__name__])``.


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance with two CPUs and a custom resource ``"disk"``."""
    import ray  # the test extra installs it: a missing Ray fails loudly

    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            resources={"disk": 1},
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
        )
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def dask_client():
    """A ``distributed`` client on a LocalCluster with two worker processes."""
    import distributed

    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        resources={"disk": 1},
    )
    client = distributed.Client(cluster, set_as_default=False)  # other tests compute locally
    yield client
    client.close()
    cluster.close()
