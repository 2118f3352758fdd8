import logging
import os
import sys
import types
import uuid

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


# -- a real S3 endpoint, started once per session ----------------------------------

S3_BUCKET = "functionfuse-tests"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real HTTP S3 endpoint on 127.0.0.1: moto's ``ThreadedMotoServer``.

    Tests talk to it through s3fs exactly as a user's code talks to AWS or
    MinIO.  Fake credentials travel in the s3fs options, never through
    ``os.environ``.  Yields a namespace with ``endpoint_url``, ``options`` (s3fs
    keyword arguments), ``bucket`` (created here, through s3fs) and ``server``.
    """
    import s3fs
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")  # moto's request log
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint_url = f"http://{host}:{port}"
    options = {
        "key": "functionfuse-test-key",
        "secret": "functionfuse-test-secret",
        "client_kwargs": {"endpoint_url": endpoint_url, "region_name": "us-west-2"},
    }
    s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir(S3_BUCKET)
    try:
        yield types.SimpleNamespace(
            endpoint_url=endpoint_url, options=options, bucket=S3_BUCKET, server=server
        )
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture
def s3_url(s3_endpoint):
    """A fresh, empty prefix in the session's bucket: ``s3://functionfuse-tests/<uuid>``."""
    return f"s3://{s3_endpoint.bucket}/{uuid.uuid4().hex}"
