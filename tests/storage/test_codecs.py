"""Compression of stored parts (functionfuse.storage.codecs, docs/format.md "Compression").

Whole-object streams are checked against the standard tools (``gzip``, ``zstd`` and
``lz4`` command-line programs and the Python libraries), in both directions; every
kind of damage must raise CorruptEntryError; memory stays bounded while writing and
while reading.  The HDF5, zarr and parquet presets are written with the real
libraries and read back (HDF5 in a process that imports only h5py and hdf5plugin).
"""

import gc
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tracemalloc

import h5py
import lz4.frame
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
import zarr
import zstandard
from helpers import ROOT

from functionfuse.errors import CorruptEntryError, SerializationError, StorageConfigError
from functionfuse.storage import codecs
from functionfuse.storage.codecs import (
    CODECS,
    Compression,
    compressing_writer,
    decompress,
    ensure_hdf5_filters,
    hdf5_options,
    normalize,
    object_codec,
    open_decompressed,
    parquet_options,
    zarr_codecs,
)

MiB = 1 << 20
BIG = 20 * MiB  # many times the writer's block (codecs.BLOCK) and the reader's read size
NAME = "ab" * 32  # an object hash, for error messages


def mixed(size: int, seed: int = 0) -> bytes:
    """Deterministic data of every kind a codec meets: a float64 random walk (most of
    it), a run of zeros (zstd RLE blocks), repeated text, and random bytes (raw blocks)."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal(size * 6 // 10 // 8)).tobytes()
    zeros = bytes(size // 10)
    text = (b"functionfuse stores results as plain files; " * (size // 400 + 1))[: size // 5]
    noise = rng.bytes(size - len(walk) - len(zeros) - len(text))
    return walk + zeros + text + noise


def pieces(size: int):
    """Write sizes that vary and do not line up with any block: 1 byte to 64 KiB."""
    sizes, i, k = [1, 7, 4096, 65536, 333, 50_000, 12345, 8], 0, 0
    while i < size:
        n = min(sizes[k % len(sizes)], size - i)
        yield i, n
        i, k = i + n, k + 1


def compress(data: bytes, compression, *, small_writes: bool = True) -> bytes:
    sink = io.BytesIO()
    view = memoryview(data)
    with compressing_writer(sink, compression) as out:
        if small_writes:
            for i, n in pieces(len(data)):
                out.write(view[i : i + n])
        else:
            out.write(data)
    assert not sink.closed
    return sink.getvalue()


@pytest.fixture(scope="module")
def big():
    return mixed(BIG)


@pytest.fixture(scope="module")
def outputs(big):
    """The big data compressed by each codec at its default level, in small writes."""
    return {codec: compress(big, codec) for codec in CODECS}


class Trickle:
    """A source that returns at most ``step`` bytes per read (and cannot seek)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step, self.closed = data, 0, step, False

    def read(self, n: int = -1) -> bytes:
        n = self.step if n is None or n < 0 else min(n, self.step)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def read_all(stream, size: int = 65536) -> bytes:
    return b"".join(iter(lambda: stream.read(size), b""))


# -- the option ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, expected",
    [
        ("zstd", Compression("zstd")),
        ("gzip", Compression("gzip")),
        ("lz4", Compression("lz4")),
        ({"codec": "zstd"}, Compression("zstd")),
        ({"codec": "zstd", "level": 3, "shuffle": "byte"}, Compression("zstd", 3, "byte")),
        ({"codec": "gzip", "level": 9, "shuffle": None}, Compression("gzip", 9)),
        ({"codec": "lz4", "level": np.int64(12), "shuffle": "bit"}, Compression("lz4", 12, "bit")),
        (Compression("zstd", 19), Compression("zstd", 19)),
    ],
)
def test_normalize_accepts(option, expected):
    got = normalize(option)
    assert got == expected and type(got.level) in (int, type(None))
    assert normalize(got.to_json()) == got  # a preset survives JSON


def test_normalize_none_and_levels():
    assert normalize(None) is None
    for codec, (low, high) in codecs.LEVELS.items():
        assert normalize({"codec": codec, "level": low}).effective_level == low
        assert normalize({"codec": codec, "level": high}).effective_level == high
        assert normalize(codec).effective_level == codecs.DEFAULT_LEVELS[codec]
    assert hash(Compression("zstd", 3)) == hash(Compression("zstd", 3))  # frozen, usable as a key
    with pytest.raises(AttributeError):
        Compression("zstd").level = 5


ACCEPTED = ['"zstd"', '"gzip"', '"lz4"', "None", '{"codec": "zstd", "level": 3, "shuffle": "byte"}']


@pytest.mark.parametrize(
    "option, words",
    [
        ("zstandard", ["'zstandard' (str)", "did you mean 'zstd'?", *ACCEPTED]),
        ("gz", ["'gz' (str)", "did you mean 'gzip'?", *ACCEPTED]),
        ("zlib", ["did you mean 'gzip'?", *ACCEPTED]),
        ("ZSTD", ["did you mean 'zstd'?", "lowercase", *ACCEPTED]),
        ("lz4hc", ["did you mean 'lz4'?"]),
        ("snappy", ["'snappy' is not a codec", *ACCEPTED]),
        ("none", ["write None, without quotes", *ACCEPTED]),
        (True, ["True (bool)", 'write "zstd"', *ACCEPTED]),
        (3, ["3 (int)", *ACCEPTED]),
        (["zstd"], ["['zstd'] (list)", *ACCEPTED]),
        ({"codec": "zstandard"}, ["preset codec", "did you mean 'zstd'?", *ACCEPTED]),
        ({"codec": None}, ["preset codec got None", *ACCEPTED]),
        ({"level": 3}, ["has no 'codec'", "'level' and 'shuffle'"]),
        ({"codec": "zstd", "clevel": 3}, ["unknown preset key 'clevel'", "did you mean 'level'?"]),
        ({"codec": "zstd", "cname": "zstd"}, ["unknown preset key 'cname'"]),
        ({"codec": "zstd", "levle": 3}, ["unknown preset key 'levle'", "did you mean 'level'?"]),
        ({"codec": "zstd", "level": 23}, ["level 23 is out of range for 'zstd'", "1 to 22"]),
        ({"codec": "zstd", "level": 0}, ["level 0 is out of range for 'zstd'"]),
        ({"codec": "zstd", "level": -5}, ["level -5 is out of range for 'zstd'"]),
        ({"codec": "gzip", "level": 10}, ["level 10 is out of range for 'gzip'", "1 to 9"]),
        ({"codec": "gzip", "level": 0}, ["level 0", "write None instead"]),
        ({"codec": "lz4", "level": 17}, ["level 17 is out of range for 'lz4'", "0 to 16"]),
        ({"codec": "lz4", "level": -1}, ["level -1 is out of range for 'lz4'"]),
        ({"codec": "zstd", "level": 3.0}, ["level must be an integer from 1 to 22", "3.0 (float)"]),
        ({"codec": "zstd", "level": "3"}, ["level must be an integer", "'3' (str)"]),
        ({"codec": "gzip", "level": True}, ["level must be an integer", "True (bool)"]),
        ({"codec": "zstd", "shuffle": "bits"}, ["shuffle must be None, 'byte' or 'bit'", "did you mean 'bit'?"]),
        ({"codec": "zstd", "shuffle": "bitshuffle"}, ["did you mean 'bit'?"]),
        ({"codec": "zstd", "shuffle": True}, ["True (bool)", "did you mean 'byte'?"]),
        ({"codec": "zstd", "shuffle": "none"}, ["write None, without quotes"]),
    ],
)
def test_normalize_rejects_with_a_helpful_message(option, words):
    with pytest.raises(StorageConfigError) as info:
        normalize(option)
    message = str(info.value)
    assert "'compression'" in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_a_missing_codec_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now fails
    monkeypatch.setitem(sys.modules, "lz4.frame", None)
    for codec in ("zstd", "lz4"):
        extra = f'pip install "functionfuse[{codec}]"'
        with pytest.raises(StorageConfigError, match="'compression'") as info:
            normalize({"codec": codec, "level": 3})
        assert extra in str(info.value)
        for read in (lambda c=codec: decompress(b"data", c, name=NAME),
                     lambda c=codec: open_decompressed(io.BytesIO(), c)):
            with pytest.raises(SerializationError) as info:
                read()
            assert extra in str(info.value) and repr(codec) in str(info.value)
            assert not isinstance(info.value, CorruptEntryError)  # not damage: the entry is kept
    assert normalize("gzip") == Compression("gzip")  # the standard library is enough


@pytest.mark.parametrize("codec", ["brotli", "zstd-dict", "", 7])
def test_an_unknown_codec_is_a_serialization_error_not_damage(codec):
    for read in (lambda: decompress(b"data", codec, name=NAME),
                 lambda: open_decompressed(io.BytesIO(b"x"), codec, name=NAME)):
        with pytest.raises(SerializationError) as info:
            read()
        assert not isinstance(info.value, CorruptEntryError)
        message = str(info.value)
        assert repr(codec) in message and "upgrade functionfuse" in message and NAME in message


def test_object_codec():
    for fmt in ("npy", "json", "pickle", "skops"):
        assert object_codec({"codec": "lz4", "level": 9}, fmt) == "lz4"
        assert object_codec(None, fmt) is None
    for fmt in codecs.SELF_COMPRESSED_FORMATS:
        assert object_codec("zstd", fmt) is None


# -- writing and reading whole objects ---------------------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_of_large_data_in_small_writes(codec, big, outputs):
    out = outputs[codec]
    assert len(out) < len(big) * 0.9  # it compressed
    assert decompress(out, codec, name=NAME) == big
    assert decompress(memoryview(out), codec) == big
    assert read_all(open_decompressed(io.BytesIO(out), codec)) == big
    # The bytes depend on the data only, not on how it was split into writes: equal
    # results written by different code still dedup to one object.
    assert compress(big, codec, small_writes=False) == out


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("where", ["low", "mid", "high"])
@pytest.mark.parametrize("shuffle", [None, "bit"])
def test_round_trip_at_each_level(codec, where, shuffle):
    low, high = codecs.LEVELS[codec]
    level = {"low": low, "mid": (low + high) // 2, "high": high}[where]
    data = mixed(3 * MiB + 17, seed=level)
    preset = {"codec": codec, "level": level, "shuffle": shuffle}  # shuffle: ignored for whole objects
    out = compress(data, preset)
    assert decompress(out, codec) == data
    assert read_all(open_decompressed(io.BytesIO(out), codec), 1000) == data
    assert out == compress(data, {"codec": codec, "level": level})


@pytest.mark.parametrize("codec", CODECS)
def test_writing_holds_a_bounded_amount_of_memory(codec, big, outputs):
    class HashingSink:
        """Keeps nothing: hashes what it gets, records its largest write."""

        def __init__(self):
            self.hash, self.largest, self.size = xxhash.xxh3_128(), 0, 0

        def write(self, data):
            self.hash.update(data)
            self.largest, self.size = max(self.largest, len(data)), self.size + len(data)
            return len(data)

    sink, view = HashingSink(), memoryview(big)
    tracemalloc.start()
    try:
        writer = compressing_writer(sink, codec)
        for i, n in pieces(len(big)):
            writer.write(view[i : i + n])
            assert len(writer._pending) < codecs.BLOCK
        writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * MiB, f"{peak / MiB:.1f} MiB held while compressing {BIG // MiB} MiB"
    assert sink.largest <= 2 * MiB
    assert writer.tell() == writer.bytes_in == BIG and writer.bytes_out == sink.size
    assert sink.hash.hexdigest() == xxhash.xxh3_128(outputs[codec]).hexdigest()


@pytest.mark.parametrize("codec", CODECS)
def test_reading_holds_a_bounded_amount_of_memory(codec):
    """256 MiB of zeros compress to little; reading 1 MiB of it never decodes it all."""
    zeros, sink = bytes(MiB), io.BytesIO()
    with compressing_writer(sink, codec) as out:
        for _ in range(256):
            out.write(zeros)
    packed = sink.getvalue()
    assert len(packed) < 4 * MiB
    del sink
    tracemalloc.start()
    try:
        stream = open_decompressed(io.BytesIO(packed), codec)
        assert stream.read(MiB) == zeros and stream.read(MiB) == zeros
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB + len(packed), f"{peak / MiB:.1f} MiB held to read 2 MiB"


@pytest.mark.parametrize("codec", CODECS)
def test_standard_tools_read_our_streams(codec, big, outputs):
    out = outputs[codec]
    if codec == "gzip":
        assert gzip.decompress(out) == big
    elif codec == "zstd":
        assert zstandard.ZstdDecompressor().decompress(out, max_output_size=len(big)) == big
        params = zstandard.get_frame_parameters(out)
        assert params.has_checksum
    else:
        assert lz4.frame.decompress(out) == big
    tool = shutil.which(codec)
    assert tool is not None, f"the {codec} command-line program is part of the machine image"
    got = subprocess.run([tool, "-d", "-c"], input=out, capture_output=True, check=True, timeout=120).stdout
    assert got == big


def foreign_streams(codec: str, data: bytes) -> dict:
    """Streams of ``codec`` made by other programs, each holding ``data`` once or twice."""
    tool = shutil.which(codec)
    assert tool is not None
    cli = subprocess.run([tool, "-c"], input=data, capture_output=True, check=True, timeout=120).stdout
    if codec == "gzip":
        one = gzip.compress(data, mtime=1234)
        return {"cli": (cli, 1), "library": (one, 1), "members": (one + gzip.compress(data, 1), 2)}
    if codec == "zstd":
        skippable = (0x184D2A5E).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
        sized = zstandard.ZstdCompressor(level=5, write_content_size=True).compress(data)
        plain = zstandard.ZstdCompressor(write_checksum=False, write_content_size=False).compress(data)
        return {"cli": (cli, 1), "sized": (sized, 1), "no checksum": (plain, 1),
                "frames": (skippable + sized + skippable + plain, 2)}
    sized = lz4.frame.compress(data, store_size=True, block_checksum=True, block_linked=False)
    return {"cli": (cli, 1), "sized": (sized, 1), "frames": (sized + lz4.frame.compress(data), 2)}


@pytest.mark.parametrize("codec", CODECS)
def test_we_read_streams_of_other_programs(codec):
    data = mixed(3 * MiB)
    for label, (stream, times) in foreign_streams(codec, data).items():
        assert decompress(stream, codec) == data * times, label
        assert read_all(open_decompressed(io.BytesIO(stream), codec)) == data * times, label
        assert read_all(open_decompressed(Trickle(stream, 4099), codec)) == data * times, label


def test_every_codec_reads_its_own_output_and_rejects_the_others(big, outputs):
    stored = {None: big, **outputs}
    for written, blob in stored.items():
        assert decompress(blob, written) == big
        for other in CODECS:
            if other == written:
                continue
            with pytest.raises(CorruptEntryError):
                decompress(blob, other, name=NAME)
            with pytest.raises(CorruptEntryError):
                read_all(open_decompressed(io.BytesIO(blob), other))


def damaged(out: bytes) -> dict:
    mid = len(out) // 2
    return {
        "empty": b"",
        "one byte": out[:1],
        "header only": out[:12],
        "half": out[:mid],
        "last byte missing": out[:-1],
        "flipped byte": out[:mid] + bytes([out[mid] ^ 0x40]) + out[mid + 1 :],
        "flipped last byte": out[:-1] + bytes([out[-1] ^ 0x01]),
        "stray byte": out + b"\x00",
        "stray bytes": out + b"garbage after the end",
        "stream twice, truncated": out + out[:-3],
    }


@pytest.mark.parametrize("codec", CODECS)
def test_damage_is_corrupt_entry_error(codec):
    data = mixed(2 * MiB)
    out = compress(data, codec)
    for label, blob in damaged(out).items():
        with pytest.raises(CorruptEntryError) as info:
            decompress(blob, codec, name=NAME)
        assert NAME in str(info.value) and codec in str(info.value), label
        stream = open_decompressed(io.BytesIO(blob), codec, name=NAME)
        with pytest.raises(CorruptEntryError):
            read_all(stream)  # a damaged stream never ends as if it were complete
        with pytest.raises(CorruptEntryError):
            read_all(open_decompressed(Trickle(blob, 1000), codec))


def test_the_zstd_frame_walker_reads_byte_by_byte():
    data = mixed(300_000)
    for blob, times in foreign_streams("zstd", data).values():
        assert read_all(open_decompressed(Trickle(blob, 1), "zstd")) == data * times
        with pytest.raises(CorruptEntryError, match="truncated"):
            read_all(open_decompressed(Trickle(blob[:-1], 1), "zstd"))


@pytest.mark.parametrize("codec", CODECS)
def test_streams_feed_numpy_load_and_pickle_load(codec, tmp_path):
    array, extra = np.cumsum(np.ones(300_000)), {"key": list(range(1000))}
    sink = io.BytesIO()
    with compressing_writer(sink, codec) as out:
        np.save(out, array)
        pickle.dump(extra, out)
    blob = sink.getvalue()
    (tmp_path / "part").write_bytes(blob)
    with open(tmp_path / "part", "rb") as source:
        stream = open_decompressed(source, codec)
        np.testing.assert_array_equal(np.load(stream), array)
        assert pickle.load(stream) == extra
        assert stream.read() == b""
        stream.seek(0)  # backward: starts again on a source that can seek
        assert stream.tell() == 0
        np.testing.assert_array_equal(np.load(stream), array)
        stream.seek(10)
        assert stream.tell() == 10
        stream.close()
        assert source.closed  # the stream took the source over
    stream = open_decompressed(Trickle(blob, 5000), codec)
    np.testing.assert_array_equal(np.load(stream), array)  # numpy's small backward seek is buffered
    with pytest.raises(io.UnsupportedOperation):
        stream.seek(0)


def test_no_codec_is_a_pass_through():
    source = io.BytesIO(b"plain")
    assert open_decompressed(source, None) is source
    assert decompress(b"plain", None) == b"plain" and decompress(bytearray(b"x"), None) == b"x"
    sink = io.BytesIO()
    with compressing_writer(sink, None) as out:
        out.write(b"as ")
        out.write(memoryview(b"is"))
    assert sink.getvalue() == b"as is" and out.bytes_out == out.bytes_in == 5


@pytest.mark.parametrize("codec", CODECS)
def test_writer_lifecycle(codec):
    sink = io.BytesIO()
    writer = compressing_writer(sink, codec)
    assert writer.writable() and not writer.seekable() and not writer.readable()
    writer.write(b"abc" * 1000)
    writer.flush()  # does not end the frame
    size = writer.finish()
    assert size == writer.bytes_out == len(sink.getvalue()) and writer.finish() == size
    with pytest.raises(ValueError):
        writer.write(b"more")
    writer.close()
    assert writer.closed and not sink.closed
    assert decompress(sink.getvalue(), codec) == b"abc" * 1000

    empty = io.BytesIO()
    compressing_writer(empty, codec).close()
    assert empty.getvalue() and decompress(empty.getvalue(), codec) == b""

    # An exception in the block: no end of stream is written, so what was written
    # cannot pass for a complete object.
    broken = io.BytesIO()
    with pytest.raises(KeyError), compressing_writer(broken, codec) as out:
        out.write(mixed(3 * MiB))
        raise KeyError("the serializer failed")
    with pytest.raises(CorruptEntryError):
        decompress(broken.getvalue(), codec)

    # Dropped without closing: the garbage collector writes nothing either.
    dropped = io.BytesIO()
    writer = compressing_writer(dropped, codec)
    writer.write(b"x" * 10)
    before = dropped.getvalue()
    del writer
    gc.collect()
    assert dropped.getvalue() == before


def test_the_gzip_stream_has_no_time_or_name():
    out = compress(b"same bytes, same object", "gzip")
    assert out[:4] == b"\x1f\x8b\x08\x00" and out[4:8] == b"\x00\x00\x00\x00"  # no flags, mtime 0


def test_importing_the_module_imports_no_codec_library():
    heavy = ["zstandard", "lz4", "hdf5plugin", "zarr", "pyarrow", "h5py", "numcodecs", "numpy"]
    code = f"import sys, functionfuse.storage.codecs\nprint([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -- formats with their own codecs -------------------------------------------------------
PRESETS = [
    None,
    "gzip",
    {"codec": "gzip", "level": 9, "shuffle": "byte"},
    {"codec": "gzip", "level": 1, "shuffle": "bit"},
    "zstd",
    {"codec": "zstd", "level": 19, "shuffle": "byte"},
    {"codec": "zstd", "level": 1, "shuffle": "bit"},
    "lz4",
    {"codec": "lz4", "shuffle": "byte"},
    {"codec": "lz4", "shuffle": "bit"},
    {"codec": "lz4", "level": 9},
    {"codec": "lz4", "level": 12, "shuffle": "bit"},
]
PRESET_IDS = [json.dumps(p) for p in PRESETS]


def walk_array():
    """Random walks (which only shuffle makes compressible) and a block of zeros (which every codec is)."""
    array = np.cumsum(np.random.default_rng(7).standard_normal((500, 400)), axis=1)
    array[400:] = 0
    return array


def test_parquet_options_per_preset():
    table = pa.table({"x": np.cumsum(np.random.default_rng(3).standard_normal(200_000)),
                      "y": np.arange(200_000, dtype=np.float32), "n": np.arange(200_000) % 7,
                      "s": [f"s{i % 11}" for i in range(200_000)]})
    sizes = {}
    for preset in PRESETS:
        for schema in (None, table.schema):
            options = parquet_options(preset, schema=schema)
            sink = io.BytesIO()
            pq.write_table(table, sink, **options)
            blob = sink.getvalue()
            assert pq.read_table(io.BytesIO(blob)).equals(table)
            meta = pq.ParquetFile(io.BytesIO(blob)).metadata.row_group(0)
            columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
            c = normalize(preset)
            want = "SNAPPY" if c is None else {"zstd": "ZSTD", "gzip": "GZIP", "lz4": "LZ4"}[c.codec]
            assert {col.compression for col in columns.values()} == {want}, preset
            split = c is not None and c.shuffle is not None and schema is not None
            for name in ("x", "y"):
                assert ("BYTE_STREAM_SPLIT" in columns[name].encodings) == split, (preset, name)
            assert "RLE_DICTIONARY" in columns["s"].encodings  # other columns keep dictionaries
            sizes[json.dumps(preset), schema is not None] = len(blob)
    assert parquet_options(None) == {}
    assert parquet_options({"codec": "zstd", "level": 5}) == {"compression": "zstd", "compression_level": 5}
    assert parquet_options("lz4") == {"compression": "lz4"}
    shuffled = json.dumps({"codec": "zstd", "level": 19, "shuffle": "byte"})
    assert sizes[shuffled, True] < sizes[shuffled, False]  # byte stream split pays on floats


# A process that sees only h5py and hdf5plugin reads every dataset back: the files are
# plain HDF5 for any reader with the filters.
_H5_READER = r"""
import hashlib, json, sys
import h5py
import hdf5plugin  # registers the zstd, lz4, Blosc and Bitshuffle filters
report = {}
with h5py.File(sys.argv[1], "r") as f:
    for name, dset in f.items():
        plist = dset.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        data = dset[()]
        report[name] = {"sha256": hashlib.sha256(data.tobytes()).hexdigest(), "dtype": str(data.dtype),
                        "filters": filters, "stored": dset.id.get_storage_size()}
bad = [m for m in sys.modules if m.split(".")[0] in ("functionfuse", "zstandard", "lz4", "zarr", "pyarrow")]
print(json.dumps({"datasets": report, "imported": bad}))
"""

# HDF5 filter ids: deflate 1, shuffle 2, Blosc 32001, LZ4 32004, Bitshuffle 32008, Zstd 32015.
EXPECTED_FILTERS = {
    "null": [],
    '"gzip"': [1],
    '{"codec": "gzip", "level": 9, "shuffle": "byte"}': [2, 1],
    '{"codec": "gzip", "level": 1, "shuffle": "bit"}': [32001],
    '"zstd"': [32015],
    '{"codec": "zstd", "level": 19, "shuffle": "byte"}': [2, 32015],
    '{"codec": "zstd", "level": 1, "shuffle": "bit"}': [32008],
    '"lz4"': [32004],
    '{"codec": "lz4", "shuffle": "byte"}': [2, 32004],
    '{"codec": "lz4", "shuffle": "bit"}': [32008],
    '{"codec": "lz4", "level": 9}': [32001],
    '{"codec": "lz4", "level": 12, "shuffle": "bit"}': [32001],
}


def test_hdf5_presets_write_files_that_plain_h5py_reads(tmp_path):
    array = walk_array()
    path = tmp_path / "presets.h5"
    with h5py.File(path, "w") as f:
        for label, preset in zip(PRESET_IDS, PRESETS):
            options = hdf5_options(preset)
            assert pickle.loads(pickle.dumps(options)) == options  # plain values: travel to workers
            f.create_dataset(label, data=array, chunks=(100, 400), **options)
    out = subprocess.run([sys.executable, "-c", _H5_READER, str(path)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["imported"] == []
    digest = hashlib.sha256(array.tobytes()).hexdigest()
    for label in PRESET_IDS:
        got = report["datasets"][label]
        assert got["sha256"] == digest and got["dtype"] == "float64", label
        assert got["filters"] == EXPECTED_FILTERS[label], label
        if label != "null":
            assert got["stored"] < array.nbytes, label
    stored = {label: report["datasets"][label]["stored"] for label in PRESET_IDS}
    assert stored['{"codec": "zstd", "level": 19, "shuffle": "byte"}'] < stored['"zstd"']  # shuffle pays


_H5_WITHOUT_PLUGIN = r"""
import sys
import h5py
with h5py.File(sys.argv[1], "r") as f:
    try:
        f["zstd"][()]
        print("read without the filter")
    except OSError as exc:
        print("no filter:", exc)
    from functionfuse.storage.codecs import ensure_hdf5_filters
    assert ensure_hdf5_filters()
    print("after ensure_hdf5_filters:", float(f["zstd"][()].sum()))
"""


def test_ensure_hdf5_filters_is_what_a_reader_needs(tmp_path):
    path = tmp_path / "zstd.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("zstd", data=np.ones(1000), **hdf5_options("zstd"))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("HDF5_PLUGIN_PATH", None)
    out = subprocess.run([sys.executable, "-c", _H5_WITHOUT_PLUGIN, str(path)], capture_output=True, text=True,
                         timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first.startswith("no filter:") and second == "after ensure_hdf5_filters: 1000.0"
    assert ensure_hdf5_filters() is True


def test_hdf5_gzip_needs_no_plugin():
    assert hdf5_options(None) == {}
    assert hdf5_options("gzip") == {"compression": "gzip", "compression_opts": 6}
    assert hdf5_options({"codec": "gzip", "level": 2, "shuffle": "byte"}) == {
        "compression": "gzip", "compression_opts": 2, "shuffle": True}


@pytest.mark.parametrize("preset", PRESETS, ids=PRESET_IDS)
def test_zarr_presets_write_arrays_that_read_back(preset, tmp_path):
    array = walk_array()
    compressors = zarr_codecs(preset)
    store = zarr.storage.LocalStore(str(tmp_path / "a.zarr"))
    target = zarr.create_array(store, shape=array.shape, dtype=array.dtype, chunks=(100, 400),
                               compressors=compressors, zarr_format=3)
    target[...] = array
    again = zarr.open_array(zarr.storage.LocalStore(str(tmp_path / "a.zarr"), read_only=True), mode="r")
    np.testing.assert_array_equal(again[...], array)
    meta = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]]
    c = normalize(preset)
    if c is None or (c.shuffle is None and c.codec != "lz4"):
        assert names[1:] == ["zstd" if c is None else c.codec]
        if c is not None:
            assert meta["codecs"][1]["configuration"]["level"] == c.effective_level
    else:
        assert names[1:] == ["blosc"]
        config = meta["codecs"][1]["configuration"]
        assert config["shuffle"] == {None: "noshuffle", "byte": "shuffle", "bit": "bitshuffle"}[c.shuffle]
        assert config["cname"] == {"zstd": "zstd", "gzip": "zlib"}.get(c.codec, "lz4" if c.effective_level < 3
                                                                       else "lz4hc")
        assert config["typesize"] == 8
    chunk_bytes = sum(p.stat().st_size for p in (tmp_path / "a.zarr").rglob("c/**/*") if p.is_file())
    assert 0 < chunk_bytes < array.nbytes


def test_zarr_shuffle_maps_zstd_levels_onto_blosc_levels():
    for level, clevel in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (15, 8), (16, 9), (22, 9)]:
        (codec,) = zarr_codecs({"codec": "zstd", "level": level, "shuffle": "byte"})
        assert codec.clevel == clevel
        assert (2 * clevel - 1 if clevel < 9 else 22) >= level  # Blosc's zstd level is never lower
