"""docs/format.md is enough to read a store: a reader that follows only that page, with no
import from functionfuse, gets back the value functionfuse returns.

functionfuse writes a small workflow's result (a dict holding a numpy array, a pandas
DataFrame, a nested dict and a float) to a FileStorage, once without compression and once
with ``compression="zstd"``.  A script run in a subprocess, where ``import functionfuse``
fails, then reads it step by step as the page's "What a reader in another language does"
says: FFSTORE.json, the latest run record, the node's key, the sealed manifest, every part
(size, XXH3-128, codec, format) and the result tree.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import FileStorage

pytest.importorskip("zstandard")

WORKFLOW = "format doc/1"  # encoded as a path component: format%20doc%2F1
NODE = "mixed"

# The reader.  It uses json, blake3, xxhash, numpy, pandas (pyarrow), gzip / zstandard and
# the rules of docs/format.md, nothing else.
READER = r'''
import base64
import gzip
import io
import json
import os
import pickle
import re
import struct
import sys

sys.modules["functionfuse"] = None  # any import of functionfuse fails from here on

import blake3
import numpy
import pandas
import xxhash

root, workflow, node, out = sys.argv[1:5]

STORED_ACTIONS = ("computed", "read", "skipped", "replayed")
RUN_ID = re.compile(r"\d{8}T\d{6}\.\d{6}Z-[A-Za-z0-9.-]{1,40}-\d+-[0-9a-f]{4,}")


def read(*path):
    with open(os.path.join(root, *path), "rb") as fh:
        return fh.read()


def encode_name(name):
    """Layout: a workflow name as a path component."""
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,150}", name) and not name.startswith("."):
        return name
    plain = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
    enc = "".join(chr(b) if b in plain else f"%{b:02X}" for b in name.encode("utf-8"))
    if enc.startswith("."):
        enc = "%2E" + enc[1:]
    if len(enc) > 150:
        import hashlib

        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
        enc = enc[:100].rstrip("%0123456789ABCDEF") + "~" + digest
    return enc


def unseal(data):
    """Manifest, "checksum": check the seal, return the parsed document."""
    prefix = b'{"checksum":"'
    assert data.startswith(prefix), "not sealed"
    digest = data[len(prefix) : len(prefix) + 64]
    assert data[len(prefix) + 64 : len(prefix) + 66] == b'",', "no comma after the digest"
    body = b"{" + data[len(prefix) + 66 :]
    assert blake3.blake3(body).hexdigest().encode() == digest, "checksum mismatch"
    return json.loads(body)


# 1. FFSTORE.json
marker = json.loads(read("FFSTORE.json"))
assert marker["format"] == "functionfuse-store" and marker["version"] == 2, marker

# 2. the latest run record
folder = os.path.join(root, "runs", encode_name(workflow))
ids = [n[: -len(".json")] for n in os.listdir(folder) if n.endswith(".json") and RUN_ID.fullmatch(n[:-5])]
latest = max(ids)
record = unseal(read("runs", encode_name(workflow), latest + ".json"))
assert record["format"] == "functionfuse-run" and record["version"] == 2
assert record["workflow"] == workflow and record["run"] == latest

# 3. the node's key in the current state
entry = record["nodes"].get(node)
if entry is not None and entry["action"] in STORED_ACTIONS:
    key = entry["key"]
else:
    key = record["others"][node]

# 4. the manifest, sealed: the loose file, else the first good line of the packs
def checked(data):
    doc = unseal(data)
    assert doc["format"] == "functionfuse-manifest" and doc["version"] == 2
    assert doc["key"] == key
    return doc


def index_entries(name, pack):
    """The pack's index file, read as the page's table says (None without one)."""
    path = os.path.join(root, "packs", name[: -len(".pack")] + ".idx")
    if not os.path.exists(path):
        return None
    data = read("packs", os.path.basename(path))
    assert data[:8] == b"FFPKIDX1"
    if struct.unpack("<Q", data[8:16])[0] != len(pack):
        return None  # the index of another size of the pack: ignored
    assert xxhash.xxh3_128(data[32:]).digest() == data[16:32]
    return [struct.unpack("<16sQI", data[i:i + 28]) for i in range(32, len(data), 28)]


def from_packs():
    folder = os.path.join(root, "packs")
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".pack")):
        pack = read("packs", name)
        lines = pack.split(b"\n")
        assert lines[0] == b'{"format":"functionfuse-pack","version":1}', name
        entries = index_entries(name, pack)
        for line in lines[1:-1]:  # the last piece has no newline: cut, or empty
            if line.startswith(key.encode() + b" "):
                try:
                    doc = checked(line[33:])
                except (AssertionError, ValueError):
                    continue
                if entries is not None:  # the index says where the same line is
                    (offset, length), = [(o, n) for k, o, n in entries if k == bytes.fromhex(key)]
                    assert pack[offset:offset + length] == line[33:]
                return doc, "pack+index" if entries is not None else "pack"
    raise AssertionError(f"no manifest for {key}")


try:
    manifest, found_in = checked(read("manifests", key[:2], key + ".json")), "file"
except FileNotFoundError:
    manifest, found_in = from_packs()
parts = manifest["parts"]


# 5. the parts: size, XXH3-128, codec, format
def undo_codec(data, codec):
    if codec is None:
        return data
    if codec == "gzip":
        return gzip.decompress(data)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if codec == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    raise ValueError(f"unknown codec {codec!r}")


def read_parquet(data, info):
    frame = pandas.read_parquet(io.BytesIO(data), engine="pyarrow")
    for label in info.get("object_columns", ()):
        col = frame[label]
        missing = col.isna().to_numpy()
        col = col.astype(object)
        col[missing] = None
        frame[label] = col
    if info.get("columns_dtype") == "object":
        frame.columns = frame.columns.astype(object)
    if info.get("index_freq") is not None:
        frame.index = type(frame.index)(frame.index, freq=info["index_freq"])
    if info.get("type") == "pandas.Series":
        series = frame.iloc[:, 0]
        series.name = info.get("name")
        return series
    if info.get("type") == "pyarrow.Table":
        import pyarrow.parquet

        return pyarrow.parquet.read_table(io.BytesIO(data))
    return frame


decoded = {}


def part(i):
    if i in decoded:  # one object, however often the tree names it
        return decoded[i]
    p = parts[i]
    h = p["object"]
    data = read("objects", h[:2], h[2:4], h)
    assert len(data) == p["size"], f"part {i}: size"
    assert xxhash.xxh3_128(data).hexdigest() == p["xxh3"], f"part {i}: XXH3-128"
    data = undo_codec(data, p.get("codec"))
    fmt, info = p["format"], p.get("info") or {}
    if fmt == "npy":
        value = numpy.load(io.BytesIO(data), allow_pickle=False)
    elif fmt == "parquet":
        value = read_parquet(data, info)
    elif fmt == "json":
        value = rebuild(json.loads(data.decode("utf-8")))
    else:
        raise ValueError(f"this reader does not read format {fmt!r}")
    decoded[i] = value
    return value


# 6. the result tree
def rebuild(node):
    t = node.get("t")
    if t == "dict":
        return {k: rebuild(v) for k, v in node["items"]}
    if t == "list":
        return [rebuild(v) for v in node["items"]]
    if t == "tuple":
        return tuple(rebuild(v) for v in node["items"])
    if "part" in node:
        value = part(node["part"])
        return value[node["item"]] if "item" in node else value
    if "numpy" in node:
        dt = numpy.dtype(node["numpy"])
        if "hex" in node:
            return numpy.frombuffer(bytes.fromhex(node["hex"]), dtype=dt)[0]
        return dt.type(node["json"])
    if "json" in node:
        return node["json"]
    if "float" in node:
        if "bits" in node:
            return struct.unpack("<d", struct.pack("<Q", int(node["bits"], 16)))[0]
        return float(node["float"])
    if "int" in node:
        return int(node["int"], 16)
    if "bytes" in node:
        return base64.b64decode(node["bytes"])
    raise ValueError(f"unknown tree node {node!r}")


value = rebuild(manifest["result"])
with open(out, "wb") as fh:
    pickle.dump(value, fh)
print(json.dumps({"key": key, "parts": [[p["format"], p.get("codec")] for p in parts], "in": found_in}))
'''


@workflow
def mixed(n):
    rng = np.random.default_rng(n)
    return {
        "weights": rng.normal(size=(n, 3)),
        "frame": pd.DataFrame({
            "x": rng.normal(size=n),
            "count": np.arange(n, dtype=np.int32),
            "label": pd.Series([f"r{i}" if i % 3 else None for i in range(n)], dtype=object),
        }),
        "nested": {
            "k": [1, 2, 3],
            "t": (1, "x", None),
            1: True,
            2.5: "float key",
            "big": 2**70,
            "low": float("-inf"),
            "raw": b"\x00\xff",
            "scalar": np.float32(1.5),
            "long": list(range(20000)),  # over 64 KiB: a json part
        },
        "score": 0.25,
    }


def _same(a, b, where="value"):
    """Equal, with the same types, the same dict order, the same array dtypes."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        assert [type(k) for k in a] == [type(k) for k in b], f"{where}: key types"
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _read(tmp_path, root, node=NODE):
    """Run the reader on the store at ``root``; the value it reads goes to value.pickle."""
    script = tmp_path / "reader.py"
    script.write_text(READER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, str(script), str(root), WORKFLOW, node, str(tmp_path / "value.pickle")],
        check=False, capture_output=True, text=True, env=env, cwd=tmp_path,
    )


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_store_reads_back_following_only_the_format_page(tmp_path, compression):
    storage = FileStorage(tmp_path / "store", compression=compression)
    for _ in range(2):  # two runs: two records, the second one reads the stored result
        wf = LocalWorkflow(mixed(60).set_name(NODE), workflow_name=WORKFLOW)
        wf.set_storage(storage)
        returned = wf.run()
    assert wf.last_report.by_node()[NODE].action == "read"
    assert len(os.listdir(tmp_path / "store" / "runs" / "format%20doc%2F1")) == 2

    proc = _read(tmp_path, tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["key"] == storage.read_task_meta(WORKFLOW, NODE)["key"]
    codecs = {fmt: codec for fmt, codec in seen["parts"]}
    assert sorted(codecs) == ["json", "npy", "parquet"]
    packed = None if compression is None else "zstd"
    assert codecs == {"npy": packed, "json": packed, "parquet": None}  # parquet compresses inside

    with open(tmp_path / "value.pickle", "rb") as fh:
        read_back = pickle.load(fh)
    _same(read_back, storage.read_task(WORKFLOW, NODE))
    _same(read_back, returned)


@workflow
def small(i):
    return {"i": i, "name": f"item-{i}", "ratio": i / 7, "tags": ("a", None)}


def test_small_results_in_a_pack_read_back_following_only_the_format_page(tmp_path):
    """Small results are lines of a pack, not files: the page is enough to find them,
    including past a cut last line that a killed writer left."""
    storage = FileStorage(tmp_path / "store")
    wf = LocalWorkflow(*[small(i).set_name(f"small_{i}") for i in range(5)], workflow_name=WORKFLOW)
    wf.set_storage(storage)
    returned = wf.run()
    assert not os.path.exists(tmp_path / "store" / "manifests")  # no loose manifest at all
    (pack,) = [n for n in os.listdir(tmp_path / "store" / "packs") if n.endswith(".pack")]
    proc = _read(tmp_path, tmp_path / "store", "small_2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["in"] == "pack+index"
    with open(tmp_path / "store" / "packs" / pack, "ab") as fh:
        fh.write(b"0" * 32 + b' {"checksum":"cut by a kil')  # a killed writer's last line
    for i in (0, 4):
        proc = _read(tmp_path, tmp_path / "store", f"small_{i}")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["in"] == "pack"  # the cut line changed its size: no valid index
        with open(tmp_path / "value.pickle", "rb") as fh:
            read_back = pickle.load(fh)
        _same(read_back, storage.read_task(WORKFLOW, f"small_{i}"))
        _same(read_back, returned[i])


def _flip_a_byte(path):
    """Flip the bits of the byte before the last one."""
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_page_checks_catch_a_flipped_byte(tmp_path):
    """The checks the page prescribes are the ones that matter: a damaged object or manifest fails them."""
    root = tmp_path / "store"
    storage = FileStorage(root)
    wf = LocalWorkflow(mixed(60).set_name(NODE), workflow_name=WORKFLOW)
    wf.set_storage(storage)
    wf.run()
    meta = storage.read_task_meta(WORKFLOW, NODE)
    assert _read(tmp_path, root).returncode == 0

    [h] = [p["object"] for p in meta["parts"] if p["format"] == "npy"]
    _flip_a_byte(root / "objects" / h[:2] / h[2:4] / h)
    proc = _read(tmp_path, root)
    assert proc.returncode != 0 and "XXH3-128" in proc.stderr

    key = meta["key"]
    _flip_a_byte(root / "manifests" / key[:2] / f"{key}.json")
    proc = _read(tmp_path, root)
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr


def test_the_reader_encodes_workflow_names_as_the_storage_does():
    """The page's rule for ``runs/<workflow>/`` (the reader's ``encode_name``) is the code's."""
    import ast

    from functionfuse.storage.names import encode_name
    from functionfuse.testing.stores import ODD_NAMES

    [func] = [n for n in ast.parse(READER).body if isinstance(n, ast.FunctionDef) and n.name == "encode_name"]
    scope = {"re": __import__("re")}
    code = compile(ast.Module(body=[func], type_ignores=[]), "reader", "exec")
    exec(code, scope)  # noqa: S102 - the reader's own function, defined above
    names = [*ODD_NAMES, "a" * 150, "a" * 151, "é" * 60, "x/" * 40 + "ABC", "%" * 60]
    assert [scope["encode_name"](n) for n in names] == [encode_name(n) for n in names]
