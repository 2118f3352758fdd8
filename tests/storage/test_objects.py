"""The content-addressed object layer of store v2 (functionfuse.storage.objects).

Every behaviour runs on local files (tmp_path) and on a real S3 endpoint (moto's
HTTP server, see conftest.s3_endpoint), through the same ObjectStore API.
"""

import io
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc

import blake3
import pytest
import s3fs
import xxhash

from functionfuse.errors import CorruptEntryError, EntryNotFoundError, StorageConfigError, StorageError
from functionfuse.storage import objects as objects_module
from functionfuse.storage.objects import ObjectRef, ObjectStore, object_path

MiB = 1 << 20
PART = 5 * MiB  # the smallest S3 part: multipart paths are reached with small payloads


def _payload(seed: str, size: int) -> bytes:
    return blake3.blake3(seed.encode()).digest(length=size)


def _chunks(seed: str, n: int):
    """``n`` deterministic MiB-chunks (a large payload never held at once)."""
    for i in range(n):
        yield _payload(f"{seed}-{i}", MiB)


def _s3fs(s3_endpoint):
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **s3_endpoint.options)


class Local:
    kind = "local"

    def __init__(self, tmp_path):
        self.root = str(tmp_path / "store")

    def store(self, **kw):
        return ObjectStore.from_url(self.root, **kw)

    def files(self, sub=""):
        """{path relative to root: size} of every file under root/sub."""
        out = {}
        for folder, _, names in os.walk(os.path.join(self.root, sub)):
            for name in names:
                p = os.path.join(folder, name)
                out[os.path.relpath(p, self.root)] = os.path.getsize(p)
        return out

    def read(self, rel):
        with open(os.path.join(self.root, rel), "rb") as f:
            return f.read()

    def write(self, rel, data):
        with open(os.path.join(self.root, rel), "wb") as f:
            f.write(data)

    def pending_uploads(self):
        return []


class S3:
    kind = "s3"

    def __init__(self, s3_endpoint, s3_url):
        self.endpoint, self.url, self.root = s3_endpoint, s3_url, s3_url[len("s3://") :]
        self.fs = _s3fs(s3_endpoint)

    def store(self, **kw):
        return ObjectStore.from_url(self.url, self.endpoint.options, part_size=PART, **kw)

    def files(self, sub=""):
        try:
            found = self.fs.find(f"{self.root}/{sub}".rstrip("/"), detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(self.root) + 1 :]: info["size"] for p, info in found.items()}

    def read(self, rel):
        return self.fs.cat_file(f"{self.root}/{rel}")

    def write(self, rel, data):
        self.fs.pipe_file(f"{self.root}/{rel}", data)

    def pending_uploads(self):
        prefix = self.root.split("/", 1)[1]
        out = self.fs.call_s3("list_multipart_uploads", Bucket=self.endpoint.bucket, Prefix=prefix)
        return out.get("Uploads", [])


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    if request.param == "local":
        return Local(tmp_path)
    return S3(request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_url"))


# -- references and layout -------------------------------------------------------------


def test_object_ref_json_and_validation():
    ref = ObjectRef("ab" * 32, 3, "0f" * 16)
    part = {"format": "npy", **ref.to_json(), "codec": None}
    assert ref.to_json() == {"object": "ab" * 32, "size": 3, "xxh3": "0f" * 16}
    assert ObjectRef.from_json(json.loads(json.dumps(part))) == ref
    for bad in ["../../etc/passwd".ljust(64, "0"), "AB" * 32, "ab" * 31, 7]:
        with pytest.raises(ValueError, match="64 lowercase hex"):
            ObjectRef(bad, 3, "0f" * 16)
    with pytest.raises(ValueError, match="size"):
        ObjectRef("ab" * 32, -1, "0f" * 16)
    with pytest.raises(ValueError, match="XXH3"):
        ObjectRef("ab" * 32, 1, "0f")
    with pytest.raises(ValueError, match="needs 'object'"):
        ObjectRef.from_json({"object": "ab" * 32})
    assert object_path("cd" * 32) == "objects/cd/cd/" + "cd" * 32


# -- put / get -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, 3 * MiB, 11 * MiB])
def test_round_trip(where, size):
    store = where.store()
    data = _payload(f"rt{size}", size)
    ref = store.put_bytes(data)
    assert ref == ObjectRef(blake3.blake3(data).hexdigest(), size, xxhash.xxh3_128(data).hexdigest())
    assert where.files() == {object_path(ref.hash): size}  # nothing else: no temporary
    assert store.get_bytes(ref) == data
    with store.open(ref) as f:
        assert f.read() == data
    if where.kind == "local":
        assert store.local_path(ref) == os.path.join(where.root, object_path(ref.hash))
    else:
        assert store.local_path(ref) is None
    assert list(store.iter_hashes()) == [ref.hash]
    assert where.pending_uploads() == []


def test_bytes_like_inputs_and_put_file(where, tmp_path):
    np = pytest.importorskip("numpy")
    store = where.store()
    arr = np.arange(1000, dtype="<f8").reshape(10, 100)
    ref = store.put_bytes(memoryview(arr))  # a 2-D float view is stored as its bytes
    assert store.get_bytes(ref) == arr.tobytes()
    assert store.put_bytes(bytearray(arr.tobytes())) == ref
    src = tmp_path / "src.bin"
    src.write_bytes(_payload("file", 7 * MiB))
    fref = store.put_file(src)
    assert store.get_bytes(fref) == src.read_bytes()
    assert src.exists()  # copied, not moved
    assert set(store.iter_hashes()) == {ref.hash, fref.hash}


def test_writer_with_serializers(where):
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    store = where.store()
    arr = np.random.default_rng(0).normal(size=(300, 200))
    with store.writer() as f:
        np.save(f, arr)
        assert f.tell() > arr.nbytes
    assert np.array_equal(np.load(io.BytesIO(store.get_bytes(f.ref))), arr)
    df = pd.DataFrame({"a": range(1000), "b": [str(i) for i in range(1000)]})
    with store.writer() as g:
        df.to_parquet(g)
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(store.get_bytes(g.ref))), df)
    with store.open(g.ref) as h:  # a streaming reader, unchecked
        pd.testing.assert_frame_equal(pd.read_parquet(h), df)


def test_writer_discards_on_error(where):
    store = where.store()
    with pytest.raises(ZeroDivisionError):
        with store.writer() as f:
            f.write(_payload("partial", 6 * MiB))
            1 / 0
    assert where.files() == {} and where.pending_uploads() == []
    w = store.writer()
    w.write(b"dropped by the garbage collector")
    del w
    assert where.files() == {}
    w = store.writer()
    w.write(b"x")
    w.discard()
    with pytest.raises(ValueError):
        w.write(b"y")
    assert where.files() == {}


# -- dedup -----------------------------------------------------------------------------


def test_same_bytes_are_stored_once(where, tmp_path, monkeypatch):
    store = where.store()
    data = _payload("dedup", 6 * MiB)
    ref = store.put_bytes(data)
    before = where.files()
    inode = os.stat(store.local_path(ref)).st_ino if where.kind == "local" else None

    def no_write(*args, **kwargs):
        raise AssertionError("put_bytes wrote an object that is stored already")

    with monkeypatch.context() as m:  # present bytes cost a stat (a HEAD), never a write
        m.setattr(store, "_open_sink", no_write)
        if where.kind == "s3":
            m.setattr(store.fs, "call_s3", no_write)  # PUTs (HEADs go through the async _call_s3)
        assert store.put_bytes(data) == ref
    with store.writer() as f:
        for i in range(0, len(data), 1000):
            f.write(data[i : i + 1000])
    assert f.ref == ref
    (tmp_path / "same.bin").write_bytes(data)
    assert store.put_file(tmp_path / "same.bin") == ref
    assert where.files() == before == {object_path(ref.hash): len(data)}
    assert sum(where.files().values()) == len(data)  # bytes on storage: one copy
    if inode is not None:
        assert os.stat(store.local_path(ref)).st_ino == inode  # the first copy stays
    assert where.pending_uploads() == []


# -- bounded memory ----------------------------------------------------------------------

_S3_MEMORY = """
import json, sys, tracemalloc
import blake3
from functionfuse.storage.objects import ObjectStore
url, options, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
store = ObjectStore.from_url(url, options, part_size=5 << 20)
store.exists(["0" * 64])  # botocore loads its service model (~10 MiB, once per process) on a first request
tracemalloc.start()
with store.writer() as f:
    for i in range(n):
        f.write(blake3.blake3(f"big-{i}".encode()).digest(length=1 << 20))
        if i == 0:
            tracemalloc.reset_peak()  # count from the first chunk on
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1], "ref": f.ref.to_json()}))
"""


def test_writer_streams_50MB_in_bounded_memory(where):
    n = 50
    expected = blake3.blake3()
    for chunk in _chunks("big", n):
        expected.update(chunk)
    if where.kind == "local":
        store = where.store()
        chunks = _chunks("big", n)
        tracemalloc.start()
        try:
            with store.writer() as f:
                for i, chunk in enumerate(chunks):
                    f.write(chunk)
                    if i == 0:
                        tracemalloc.reset_peak()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        ref = f.ref
    else:  # in a child: moto's server in this process holds the uploaded object in memory
        out = subprocess.run(
            [sys.executable, "-c", _S3_MEMORY, where.url, json.dumps(where.endpoint.options), str(n)],
            capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        peak, ref = result["peak"], ObjectRef.from_json(result["ref"])
        store = where.store()
    assert ref.size == n * MiB and ref.hash == expected.hexdigest()
    limit = 12 * MiB if where.kind == "local" else 20 * MiB
    assert peak < limit, f"peak {peak / MiB:.1f} MiB while streaming {n} MiB"
    assert store.exists([ref]) == {ref.hash}
    assert where.files() == {object_path(ref.hash): n * MiB} and where.pending_uploads() == []


# -- damage ----------------------------------------------------------------------------


def test_flipped_byte_is_detected(where):
    store = where.store()
    data = _payload("flip", 100_000)
    ref = store.put_bytes(data)
    rel = object_path(ref.hash)
    damaged = bytearray(data)
    damaged[54321] ^= 0x04
    where.write(rel, bytes(damaged))
    with pytest.raises(CorruptEntryError, match="XXH3") as err:
        store.get_bytes(ref)
    assert ref.hash in str(err.value) and where.root in str(err.value)
    assert store.put_bytes(data) == ref  # same size: taken as present (a reader never deletes)
    assert store.put_bytes(data, replace=True) == ref  # the rewrite after a failed check
    assert store.get_bytes(ref) == data and where.files() == {rel: len(data)}


def test_truncated_object_is_detected_and_replaced(where):
    store = where.store()
    data = _payload("trunc", 100_000)
    ref = store.put_bytes(data)
    rel = object_path(ref.hash)
    where.write(rel, data[:-1])
    with pytest.raises(CorruptEntryError, match="99999 bytes, expected 100000"):
        store.get_bytes(ref)
    assert store.exists([ref]) == set() and store.exists([ref.hash]) == {ref.hash}
    with store.writer() as f:  # publishing sees the wrong size and replaces the copy
        f.write(data)
    assert store.get_bytes(ref) == data and where.files() == {rel: len(data)}


# -- concurrency -----------------------------------------------------------------------


def test_concurrent_writers_in_threads_leave_one_object(where):
    store = where.store()
    data = _payload("threads", 6 * MiB)
    barrier, refs, errors = threading.Barrier(6), [], []

    def write():
        try:
            barrier.wait()
            with store.writer() as f:
                for i in range(0, len(data), MiB):
                    f.write(data[i : i + MiB])
            refs.append(f.ref)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(refs)) == 1 and len(refs) == 6
    assert where.files() == {object_path(refs[0].hash): len(data)}
    assert store.get_bytes(refs[0]) == data and where.pending_uploads() == []


_PROCESS_WRITER = """
import os, sys, time
import blake3
from functionfuse.storage.objects import ObjectStore
root, go = sys.argv[1], sys.argv[2]
store = ObjectStore.from_url(root)
while not os.path.exists(go):
    time.sleep(0.001)
for k in range(8):
    with store.writer() as f:
        for i in range(4):
            f.write(blake3.blake3(f"proc-{k}-{i}".encode()).digest(length=1 << 20))
    print(f.ref.hash)
"""


def test_concurrent_writers_in_processes_leave_one_object(tmp_path):
    where = Local(tmp_path)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROCESS_WRITER, where.root, str(go)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    hashes = [o[0].split() for o in outs]
    assert hashes[0] == hashes[1] and len(set(hashes[0])) == 8
    assert set(where.files()) == {object_path(h) for h in hashes[0]}  # no temporaries
    store = where.store()
    for k, h in enumerate(hashes[0]):
        data = b"".join(_chunks(f"proc-{k}", 4))
        assert store.get_bytes(ObjectRef(h, len(data), xxhash.xxh3_128(data).hexdigest())) == data


# -- leftovers of killed writers --------------------------------------------------------

_KILLED_LOCAL = """
import os, signal, sys
from functionfuse.storage.objects import ObjectStore
store = ObjectStore.from_url(sys.argv[1])
f = store.writer()
f.write(os.urandom(12 << 20))  # more than a chunk: written to the temporary before the kill
os.kill(os.getpid(), signal.SIGKILL)
"""

_KILLED_S3 = """
import json, os, signal, sys
from functionfuse.storage.objects import ObjectStore
store = ObjectStore.from_url(sys.argv[1], json.loads(sys.argv[2]), part_size=5 << 20)
call_s3, parts = store.fs.call_s3, []
def dying(method, *args, **kwargs):  # the process dies after the first part is uploaded
    if method == "upload_part" and parts:
        os.kill(os.getpid(), signal.SIGKILL)
    parts.append(method)
    return call_s3(method, *args, **kwargs)
store.fs.call_s3 = dying
store.put_bytes(os.urandom(16 << 20))
"""


def test_killed_writer_leftovers_are_removed(where):
    if where.kind == "local":
        args = [_KILLED_LOCAL, where.root]
    else:
        args = [_KILLED_S3, where.url, json.dumps(where.endpoint.options)]
    out = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
    store = where.store()
    assert list(store.iter_hashes()) == []  # nothing partial is visible
    if where.kind == "local":
        (tmp,) = where.files("tmp")
        assert where.files() == {tmp: 12 * MiB}
        assert store.remove_stale_temporaries() == 0  # a young temporary may be a live writer's
        old = time.time() - 7200
        os.utime(os.path.join(where.root, tmp), (old, old))
        assert store.remove_stale_temporaries(older_than_s=3600) == 1
    else:
        (upload,) = where.pending_uploads()
        assert where.files() == {}
        age = time.time() - upload["Initiated"].timestamp()  # moto reports a fixed date in 2010
        assert store.remove_stale_temporaries(older_than_s=age + 3600) == 0  # younger: kept
        assert store.remove_stale_temporaries(older_than_s=max(age - 3600, 0)) == 1
        assert where.pending_uploads() == []
    assert where.files() == {}


# -- batched existence, listing, deletion -------------------------------------------------


def test_exists_is_batched(where, monkeypatch):
    store = where.store()
    refs = [store.put_bytes(_payload(f"e{i}", 100 + i)) for i in range(5)]
    missing = [blake3.blake3(f"missing{i}".encode()).hexdigest() for i in range(195)]
    wrong_size = ObjectRef(refs[0].hash, refs[0].size + 1, refs[0].xxh3)
    if where.kind == "s3":  # count HEADs in flight at once
        inflight, peak, call = [0], [0], store.fs._call_s3

        async def counting(method, *args, **kwargs):
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
            try:
                return await call(method, *args, **kwargs)
            finally:
                inflight[0] -= 1

        monkeypatch.setattr(store.fs, "_call_s3", counting)
    found = store.exists([*refs, *missing, refs[1].hash, wrong_size])
    assert found == {r.hash for r in refs[1:]}  # refs[0] is named with a wrong size last
    assert store.exists(refs) == {r.hash for r in refs}
    assert store.exists([]) == set()
    if where.kind == "s3":
        assert 1 < peak[0] <= objects_module.HEAD_CONCURRENCY
    assert sorted(store.iter_hashes()) == sorted(r.hash for r in refs)
    store.delete(refs[0].hash)
    store.delete(refs[0].hash)  # absent is fine
    assert store.exists(refs) == {r.hash for r in refs[1:]}
    with pytest.raises(EntryNotFoundError, match=refs[0].hash):
        store.get_bytes(refs[0])


# -- S3 conditional create ---------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["put", "multipart"])
def test_s3_object_appearing_between_check_and_put_is_kept(s3_endpoint, s3_url, monkeypatch, size):
    where = S3(s3_endpoint, s3_url)
    store = where.store()
    data = _payload(f"race{size}", size)
    ref = ObjectRef(blake3.blake3(data).hexdigest(), size, xxhash.xxh3_128(data).hexdigest())
    path = f"{where.root}/{object_path(ref.hash)}"
    where.fs.pipe_file(path, data, ContentType="application/x-first-writer")  # the other writer
    monkeypatch.setattr(store, "_sizes", lambda hashes: [None] * len(hashes))  # our HEAD saw nothing
    with store.writer() as f:
        f.write(data)
    assert f.ref == ref
    assert store.put_bytes(data) == ref
    info = where.fs.info(path)
    assert info["ContentType"] == "application/x-first-writer"  # If-None-Match: * kept theirs
    assert where.files() == {object_path(ref.hash): size} and where.pending_uploads() == []


def test_s3_source_changed_while_uploading_is_not_published(s3_endpoint, s3_url, tmp_path, monkeypatch):
    where = S3(s3_endpoint, s3_url)
    store = where.store()
    src = tmp_path / "src.bin"
    src.write_bytes(_payload("before", 7 * MiB))

    def rewrite_then_absent(hashes):
        src.write_bytes(_payload("after", 7 * MiB))  # same size, other bytes
        return [None] * len(hashes)

    monkeypatch.setattr(store, "_sizes", rewrite_then_absent)
    with pytest.raises(StorageError, match="source changed"):
        store.put_file(src)
    assert where.files() == {} and where.pending_uploads() == []


# -- errors ----------------------------------------------------------------------------


def test_errors_name_the_object_and_the_storage(tmp_path, s3_endpoint):
    (tmp_path / "file").write_bytes(b"")
    store = ObjectStore.from_url(str(tmp_path / "file"))  # the root is a file
    with pytest.raises(StorageError, match=str(tmp_path / "file")):
        store.put_bytes(b"abc")
    store = ObjectStore.from_url(str(tmp_path / "empty"))
    ref = ObjectRef("ab" * 32, 1, "00" * 16)
    with pytest.raises(EntryNotFoundError, match="ab" * 32 + ".*" + str(tmp_path / "empty")):
        store.get_bytes(ref)
    with pytest.raises(EntryNotFoundError):
        store.open(ref)
    missing = ObjectStore.from_url("s3://no-such-bucket-here/p", s3_endpoint.options)
    with pytest.raises(StorageConfigError, match="no-such-bucket-here.*does not exist") as err:
        missing.put_bytes(b"abc")
    assert "s3://no-such-bucket-here/p" in str(err.value)
    generic = ObjectStore.from_url("memory://objects-generic")  # any fsspec filesystem works
    ref = generic.put_bytes(b"abc")
    assert generic.get_bytes(ref) == b"abc" and generic.exists([ref]) == {ref.hash}
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {**s3_endpoint.options, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}",
                                                         "region_name": "us-west-2"},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    down = ObjectStore.from_url("s3://functionfuse-tests/p", options)
    with pytest.raises(StorageError, match=f"{ref.hash} of storage s3://functionfuse-tests/p.*unreachable"):
        down.get_bytes(ref)


def test_s3_client_is_renewed_in_another_process(s3_endpoint, s3_url):
    import pickle

    store = S3(s3_endpoint, s3_url).store()
    ref = store.put_bytes(b"before")
    first = store.fs
    store._pid = -1  # as in a forked child, where s3fs's event loop thread did not follow
    assert store.get_bytes(ref) == b"before" and store.fs is not first
    clone = pickle.loads(pickle.dumps(store))  # a Dask or Ray worker
    assert clone.get_bytes(clone.put_bytes(b"after")) == b"after"


def test_durable_local_store(tmp_path):
    store = ObjectStore.from_url(str(tmp_path / "d"), durable=True)
    ref = store.put_bytes(b"durable")
    with store.writer() as f:
        f.write(b"also durable")
    assert store.get_bytes(ref) == b"durable" and store.get_bytes(f.ref) == b"also durable"
    assert store.remove_stale_temporaries(older_than_s=0) == 0  # none left behind
