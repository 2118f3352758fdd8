"""Faults of the S3 endpoint: unreachable in the middle of a run, then back.

A second moto server, on its own port, plays the endpoint that goes down.
Stopping it and starting a new one on the same port loses nothing: moto keeps
its state in process-wide backends, which every moto server in this process
serves (the session's server in conftest sees the same buckets and objects).
So "the endpoint is back" is a new server on the same address with the data
written before the fault, as after a restart of MinIO or a network outage, and
the session's server is used to look at the bucket while the endpoint is down.
"""

import logging
import time

import dask.array as da
import numpy as np
import pytest
import s3fs

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import StorageError
from functionfuse.serializers.daskarray import DaskArraySerializer
from functionfuse.storage import S3Storage


class RestartableEndpoint:
    """A moto server on a fixed 127.0.0.1 port that can be stopped and started again."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            # ThreadedMotoServer.stop() leaves the listening socket open (clients
            # would hang in its backlog); close it so connections are refused.
            self.server._server.server_close()
            self.running = False

    def start(self) -> None:
        if not self.running:
            self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.server.start()
            self.running = True


@pytest.fixture(scope="module")
def endpoint(s3_endpoint):
    srv = RestartableEndpoint()
    yield srv
    srv.stop()


@pytest.fixture
def flaky(endpoint, s3_endpoint, s3_url):
    """An S3 storage on the restartable endpoint, with the retries a user would configure."""
    endpoint.start()
    options = {
        **s3_endpoint.options,
        "client_kwargs": {"endpoint_url": endpoint.url, "region_name": "us-west-2"},
        "config_kwargs": {"retries": {"max_attempts": 2}, "connect_timeout": 1, "read_timeout": 2},
    }
    yield S3Storage(s3_url, options)
    endpoint.start()
    _FAULT["stop"] = None


# Call counters are test state, not inputs of the nodes that update them.
__functionfuse_ignore__ = {"CALLS", "_FAULT"}
CALLS = []
_FAULT = {"stop": None}


def _fault_point():
    """Stop the endpoint here, once (a module global: not part of any node's key)."""
    stop, _FAULT["stop"] = _FAULT["stop"], None
    if stop is not None:
        stop()


@workflow
def first():
    CALLS.append("first")
    return 1


@workflow
def middle(x):
    CALLS.append("middle")
    _fault_point()
    return x + 1


@workflow
def last(x):
    CALLS.append("last")
    return x * 10


def _objects(s3_endpoint, url):
    fs = s3fs.S3FileSystem(use_listings_cache=False, **s3_endpoint.options)  # through the session's server
    root = url[len("s3://") :]
    return sorted(k[len(root) + 1 :] for k in fs.find(root) if not k.endswith("/FFSTORE.json"))


def test_endpoint_down_mid_run_then_back(endpoint, flaky, s3_endpoint, s3_url, caplog):
    pipeline = last(middle(first().set_name("first")).set_name("middle")).set_name("last")
    wf = LocalWorkflow(pipeline, workflow_name="w")
    wf.set_storage(flaky)
    CALLS.clear()
    _FAULT["stop"] = endpoint.stop
    start = time.perf_counter()
    with pytest.raises(StorageError) as info:
        wf.run()
    elapsed = time.perf_counter() - start
    msg = str(info.value)
    assert msg.startswith("node 'middle' of workflow 'w': result not stored:")
    assert f"S3 endpoint {endpoint.url} is unreachable" in msg
    assert "retries" in msg and "config_kwargs" in msg  # says how to tune them
    assert elapsed < 30, "the configured retries bound the wait"
    assert CALLS == ["first", "middle"]

    # Looking at the bucket through the other server: the manifest of 'first' and the run's
    # lease, nothing else (neither the record could be written nor the lease removed: the run
    # is like a killed one, and gc removes its lease once it is stale).
    found = _objects(s3_endpoint, s3_url)
    leases = [k for k in found if k.endswith(".running")]
    assert len(leases) == 1 and leases[0].startswith("runs/w/")
    [only] = [k for k in found if k not in leases]
    key = wf.last_report.by_node()["first"].key
    assert only == f"manifests/{key[:2]}/{key}.json"

    # Still down: the next run fails at its first request, naming the endpoint.
    with pytest.raises(StorageError, match=f"S3 endpoint {endpoint.url} is unreachable while listing"):
        wf.run()

    endpoint.start()
    CALLS.clear()
    assert wf.run() == 20
    assert CALLS == ["middle", "last"]
    assert wf.last_report.read == ["first"]  # reused what was stored before the fault


def _fault_block(x, block_info=None):
    if block_info[0]["chunk-location"] == (5,):
        _fault_point()
    return x * 2


@workflow
def array(n):
    CALLS.append("array")
    return da.arange(n * 100, chunks=10).map_blocks(_fault_block, dtype="int64")


@workflow
def total(a):
    CALLS.append("total")
    return int(a.sum().compute())


def test_endpoint_down_while_writing_zarr_chunks(endpoint, flaky, s3_endpoint, s3_url, caplog):
    flaky.register_persistent_serializers(DaskArraySerializer)
    pipeline = total(array(first().set_name("first")).set_name("array")).set_name("total")
    wf = LocalWorkflow(pipeline, workflow_name="z")
    wf.set_storage(flaky)
    CALLS.clear()
    _FAULT["stop"] = endpoint.stop  # stops while the 6th of 10 chunks is computed
    with caplog.at_level(logging.WARNING), pytest.raises(StorageError) as info:
        wf.run()
    msg = str(info.value)
    assert msg.startswith("node 'array' of workflow 'z': result not stored:")
    assert f"S3 endpoint {endpoint.url} is unreachable" in msg
    assert CALLS == ["first", "array"]

    # The manifest is the commit marker: none for 'array', only unreferenced chunks.
    reader = S3Storage(s3_url, s3_endpoint.options)
    keys = {e.node: e.key for e in wf.last_report.events}
    assert reader.present(keys.values()) == {keys["first"]}
    assert "partial zarr array" in caplog.text  # could not be cleaned up while down: logged

    endpoint.start()
    CALLS.clear()
    assert wf.run() == 2 * sum(range(100))
    assert CALLS == ["array", "total"]
    assert wf.last_report.read == ["first"]
    np.testing.assert_array_equal(flaky.read_task("z", "array").compute(), np.arange(100) * 2)
