"""Compression of stored parts (store v2, docs/format.md "Compression" and the manifest's ``codec``).

The storage option ``"compression"`` is one of

* ``None``: whole objects are stored as written (the default);
* ``"zstd"``, ``"gzip"`` or ``"lz4"``: that codec at its default level;
* a preset dict such as ``{"codec": "zstd", "level": 3, "shuffle": "byte"}``.

:func:`normalize` checks it once and returns a :class:`Compression` (or ``None``).

=======  ==========================  =============  ====================================
codec    levels (default)            library        pip extra
=======  ==========================  =============  ====================================
zstd     1 to 22 (3)                 zstandard      ``pip install "functionfuse[zstd]"``
gzip     1 to 9 (6)                  zlib (stdlib)  none
lz4      0 to 16 (0; 3+ is LZ4-HC)   lz4            ``pip install "functionfuse[lz4]"``
=======  ==========================  =============  ====================================

``shuffle`` (``None``, ``"byte"`` or ``"bit"``) regroups the bytes (or bits) of
fixed-size elements before compression, which helps numeric data a lot.  It needs
to know the element size, so it applies only to typed formats: HDF5 and zarr
(through hdf5plugin / Blosc) and parquet (``BYTE_STREAM_SPLIT`` for floating-point
columns).  Whole-object compression ignores it: the manifest's ``codec`` says
``"zstd"``, ``"gzip"`` or ``"lz4"`` and nothing else, so undoing the codec with any
standard tool gives back the part's file.

Where compression happens
    * Whole objects (``npy``, ``json``, ``pickle``, ...): :func:`compressing_writer`
      wraps the object writer, and the manifest part records the codec
      (:func:`object_codec`).  Each codec writes one standard stream: a gzip member
      (``gzip -d``, :func:`gzip.decompress`), a zstd frame with a content checksum
      (``zstd -d``), an LZ4 frame with a content checksum (``lz4 -d``).  The
      uncompressed size is not in the header: the writer streams into a sink that
      cannot seek back.
    * Formats with their own codecs (``parquet``, ``hdf5``, ``zarr``, see
      :data:`SELF_COMPRESSED_FORMATS`) carry compression inside the file and record
      ``codec: null``: :func:`parquet_options`, :func:`hdf5_options` and
      :func:`zarr_codecs` translate the preset for their writers.  For them ``None``
      means the format's own default, which is what functionfuse wrote before the
      option existed (parquet: snappy; HDF5: uncompressed; zarr: zstd level 0).

Reading
    :func:`decompress` (bytes) and :func:`open_decompressed` (a stream) undo the codec
    a part records, whatever the current option is.  Damaged compressed data
    (truncated, altered, trailing bytes) raises
    :class:`~functionfuse.errors.CorruptEntryError`; a codec this version does not know,
    or whose library is not installed, raises
    :class:`~functionfuse.errors.SerializationError` naming the codec and what to install.

Keys never involve compression, and objects are named by their stored (compressed)
bytes: the same data stored under two settings is two objects.  For one setting and
one library version the compressed bytes depend only on the data, not on how it was
split into writes, so equal results still share one object.

None of zstandard, lz4, hdf5plugin, zarr or pyarrow is imported by this module until a
function needs it.
"""

from __future__ import annotations

import difflib
import importlib
import io
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, ClassVar

from ..errors import CorruptEntryError, SerializationError, StorageConfigError

__all__ = [
    "CODECS",
    "DEFAULT_LEVELS",
    "LEVELS",
    "SELF_COMPRESSED_FORMATS",
    "PLAIN_FORMATS",
    "SHUFFLES",
    "CompressingWriter",
    "Compression",
    "compressing_writer",
    "decompress",
    "ensure_hdf5_filters",
    "hdf5_options",
    "normalize",
    "object_codec",
    "open_decompressed",
    "parquet_options",
    "zarr_codecs",
]

logger = logging.getLogger(__name__)

#: The storage option this module checks.
OPTION = "compression"
#: Codecs of whole objects, as the manifest's ``codec`` names them.
CODECS = ("zstd", "gzip", "lz4")
#: Valid ``shuffle`` values of a preset (besides ``None``).
SHUFFLES = ("byte", "bit")
#: Valid levels per codec, inclusive.
LEVELS = {"zstd": (1, 22), "gzip": (1, 9), "lz4": (0, 16)}
#: The level used when a preset gives none.
DEFAULT_LEVELS = {"zstd": 3, "gzip": 6, "lz4": 0}
#: Part formats that compress inside the file: their manifest ``codec`` is always null.
SELF_COMPRESSED_FORMATS = frozenset({"parquet", "hdf5", "zarr"})
#: Formats never compressed whole: a ``serializer`` part is a small JSON id, kept readable.
PLAIN_FORMATS = frozenset({"serializer"})

#: Uncompressed bytes handed to a compressor at a time (the writer holds at most this).
BLOCK = 1 << 20
#: Compressed bytes read from the source at a time by :func:`open_decompressed`.
READ_SIZE = 1 << 20
#: Uncompressed bytes :func:`decompress` decodes at a time.
_ONE_SHOT_CHUNK = 4 << 20

_EXAMPLE = '{"codec": "zstd", "level": 3, "shuffle": "byte"}'
_ACCEPTED = f'None, "zstd", "gzip", "lz4", or a preset dict like {_EXAMPLE}'
_KEYS = ("codec", "level", "shuffle")
#: (module to import, package to install, pip extra) per codec.
_LIBRARIES = {
    "zstd": ("zstandard", "zstandard", "zstd"),
    "gzip": ("zlib", None, None),
    "lz4": ("lz4.frame", "lz4", "lz4"),
}
# Names people write for a codec, a preset key or a shuffle mode.
_CODEC_ALIASES = {
    "zstandard": "zstd", "zst": "zstd", "zstd-frame": "zstd",
    "gz": "gzip", "zlib": "gzip", "deflate": "gzip", "gunzip": "gzip",
    "lz4hc": "lz4", "lz4-hc": "lz4", "lz4_hc": "lz4", "lz4frame": "lz4", "lz4_frame": "lz4",
}
_NONE_WORDS = frozenset({"none", "null", "off", "no", "false", "uncompressed", ""})
_KEY_ALIASES = {
    "cname": "codec", "compressor": "codec", "algorithm": "codec", "method": "codec",
    "compression": "codec", "name": "codec", "type": "codec",
    "clevel": "level", "compression_level": "level", "compresslevel": "level", "compression_opts": "level",
    "filters": "shuffle", "filter": "shuffle",
}
_SHUFFLE_ALIASES = {
    "shuffle": "byte", "byteshuffle": "byte", "byte_shuffle": "byte", "bytes": "byte",
    "byte_stream_split": "byte", "bitshuffle": "bit", "bit_shuffle": "bit", "bits": "bit",
}


@dataclass(frozen=True)
class Compression:
    """A checked compression preset (see :func:`normalize`).

    ``level`` ``None`` means the codec's default (:data:`DEFAULT_LEVELS`, see
    :attr:`effective_level`); ``shuffle`` is ``None``, ``"byte"`` or ``"bit"``.
    Constructing one checks the values (:class:`~functionfuse.errors.StorageConfigError`)
    but not that the codec's library is installed: :func:`normalize` does.

    >>> Compression("zstd", 19, "bit")
    Compression(codec='zstd', level=19, shuffle='bit')
    >>> Compression("gzip").effective_level
    6
    """

    codec: str
    level: int | None = None
    shuffle: str | None = None

    def __post_init__(self) -> None:
        codec, level, shuffle = self.codec, self.level, self.shuffle
        if not isinstance(codec, str) or codec not in CODECS:
            raise _option_error(codec, what="codec")
        if level is not None:
            object.__setattr__(self, "level", _check_level(codec, level))
        if shuffle is not None and (not isinstance(shuffle, str) or shuffle not in SHUFFLES):
            raise _shuffle_error(shuffle)

    @property
    def effective_level(self) -> int:
        """``level``, or the codec's default level when it is ``None``."""
        return DEFAULT_LEVELS[self.codec] if self.level is None else self.level

    def to_json(self) -> dict:
        """The preset as a JSON-able dict, accepted back by :func:`normalize`."""
        return {"codec": self.codec, "level": self.level, "shuffle": self.shuffle}

    def __str__(self) -> str:
        text = f"{self.codec} level {self.effective_level}"
        return text + (f", {self.shuffle} shuffle" if self.shuffle else "")


# -- the option ---------------------------------------------------------------------------
def normalize(option: Any) -> Compression | None:
    """Check the storage option ``"compression"``; return its :class:`Compression`, or ``None``.

    Accepts ``None``, a codec name (``"zstd"``, ``"gzip"``, ``"lz4"``), a preset dict
    with the keys ``codec`` (required), ``level`` and ``shuffle``, or a
    :class:`Compression`.  Checks that the codec's library can be imported.

    Raises
    ------
    StorageConfigError
        The message names the option, the value given and the accepted values, with
        a "did you mean" for near misses, or the pip extra that installs the codec.

    Examples
    --------
    >>> normalize(None) is None
    True
    >>> normalize("gzip")
    Compression(codec='gzip', level=None, shuffle=None)
    >>> normalize({"codec": "gzip", "level": 9, "shuffle": "byte"})
    Compression(codec='gzip', level=9, shuffle='byte')
    >>> try:
    ...     normalize("gz")
    ... except StorageConfigError as exc:
    ...     print(exc)  # doctest: +NORMALIZE_WHITESPACE
    option 'compression' got 'gz' (str); did you mean 'gzip'? It accepts None, "zstd", "gzip",
    "lz4", or a preset dict like {"codec": "zstd", "level": 3, "shuffle": "byte"}
    """
    if option is None:
        return None
    if isinstance(option, Compression):
        result = option
    elif isinstance(option, str):
        result = Compression(_check_codec(option))
    elif isinstance(option, dict):
        result = _from_dict(option)
    else:
        raise _option_error(option)
    _import_codec(result.codec, StorageConfigError, f"option {OPTION!r} is {result.codec!r}, which")
    return result


def _coerce(compression: Any) -> Compression | None:
    return compression if isinstance(compression, Compression) else normalize(compression)


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _option_error(value: Any, what: str | None = None, hint: str | None = None) -> StorageConfigError:
    where = f"option {OPTION!r}" + (f" preset {what}" if what else "")
    if hint is None:
        hint = _codec_hint(value)
    text = f"{where} got {_got(value)}" + (f"; {hint}" if hint else "")
    return StorageConfigError(f"{text}{' ' if text.endswith('?') else '. '}It accepts {_ACCEPTED}")


def _codec_hint(value: Any) -> str | None:
    if isinstance(value, bool):
        return 'write "zstd" (or another codec) to compress' if value else "write None, without quotes"
    if not isinstance(value, str):
        return None
    word = value.strip().lower()
    if word in _NONE_WORDS:
        return "write None, without quotes, for no compression"
    if word in CODECS:
        return f"did you mean {word!r}? (codec names are lowercase, without blanks)"
    if word in _CODEC_ALIASES:
        return f"did you mean {_CODEC_ALIASES[word]!r}?"
    close = difflib.get_close_matches(word, CODECS, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"{value!r} is not a codec functionfuse compresses with"


def _check_codec(value: Any, what: str | None = None) -> str:
    if isinstance(value, str) and value in CODECS:
        return value
    raise _option_error(value, what)


def _check_level(codec: str, level: Any) -> int:
    low, high = LEVELS[codec]
    if isinstance(level, bool) or not hasattr(level, "__index__"):
        raise StorageConfigError(
            f"option {OPTION!r}: level must be an integer from {low} to {high} for {codec!r} "
            f"(default {DEFAULT_LEVELS[codec]}), got {_got(level)}"
        )
    level = int(level.__index__())
    if not low <= level <= high:
        hint = ""
        if codec == "gzip" and level == 0:
            hint = "; level 0 stores without compressing: write None instead"
        raise StorageConfigError(
            f"option {OPTION!r}: level {level} is out of range for {codec!r}, which takes {low} to {high} "
            f"(default {DEFAULT_LEVELS[codec]}){hint}. Levels: "
            + ", ".join(f"{c} {lo}-{hi}" for c, (lo, hi) in LEVELS.items())
        )
    return level


def _shuffle_error(value: Any) -> StorageConfigError:
    hint = ""
    if isinstance(value, str):
        word = value.strip().lower()
        close = _SHUFFLE_ALIASES.get(word) or next(iter(difflib.get_close_matches(word, SHUFFLES, 1, 0.5)), None)
        if word in SHUFFLES:
            close = word
        if word in _NONE_WORDS or word == "noshuffle":
            hint = "; write None, without quotes, for no shuffle"
        elif close:
            hint = f"; did you mean {close!r}?"
    elif value is True:
        hint = "; did you mean 'byte'?"
    elif value is False:
        hint = "; write None for no shuffle"
    return StorageConfigError(
        f"option {OPTION!r}: shuffle must be None, 'byte' or 'bit', got {_got(value)}{hint}"
    )


def _from_dict(option: dict) -> Compression:
    for key in option:
        if key not in _KEYS:
            close = _KEY_ALIASES.get(str(key).strip().lower()) if isinstance(key, str) else None
            if close is None:
                close = next(iter(difflib.get_close_matches(str(key), _KEYS, 1, 0.6)), None)
            hint = f"did you mean {close!r}? " if close and close not in option else ""
            raise StorageConfigError(
                f"option {OPTION!r}: unknown preset key {key!r}; {hint}a preset takes 'codec' (required), "
                f"'level' and 'shuffle', like {_EXAMPLE}"
            )
    if "codec" not in option:
        raise StorageConfigError(
            f"option {OPTION!r}: the preset {option!r} has no 'codec'; it takes 'codec' (required), "
            f"'level' and 'shuffle', like {_EXAMPLE}"
        )
    codec = _check_codec(option["codec"], what="codec")
    return Compression(codec, option.get("level"), option.get("shuffle"))


def _import_codec(codec: str, error: type[Exception], subject: str) -> Any:
    """The codec's module; ``error`` (``subject`` + "needs ...") says what to install when it is missing."""
    module, package, extra = _LIBRARIES[codec]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise error(
            f"{subject} needs the {package} package, which cannot be imported ({exc}); "
            f'install it with: pip install "functionfuse[{extra}]"'
        ) from exc


def object_codec(compression: Any, format: str) -> str | None:
    """The manifest ``codec`` of a part in ``format`` under ``compression`` (``None``: stored as is).

    >>> object_codec("zstd", "npy"), object_codec("zstd", "parquet"), object_codec(None, "npy")
    ('zstd', None, None)
    """
    compression = _coerce(compression)
    if compression is None or format in SELF_COMPRESSED_FORMATS or format in PLAIN_FORMATS:
        return None
    return compression.codec


# -- writing --------------------------------------------------------------------------------
class CompressingWriter(io.BufferedIOBase):
    """A write-only binary stream that compresses into ``sink`` (see :func:`compressing_writer`).

    Attributes ``codec`` (``None`` passes bytes through), ``bytes_in`` (uncompressed
    bytes written) and ``bytes_out`` (bytes given to the sink).
    """

    def __init__(self, sink: Any, compression: Compression | None) -> None:
        super().__init__()
        self._sink, self._finished, self._pending = sink, False, bytearray()
        self.codec = compression.codec if compression is not None else None
        self.compression, self.bytes_in, self.bytes_out = compression, 0, 0
        self._compress: Callable[[Any], bytes] | None = None
        self._flush: Callable[[], bytes] | None = None
        if compression is not None:
            if compression.shuffle:
                logger.debug("whole-object %s compression ignores shuffle=%r", compression.codec,
                             compression.shuffle)
            header, self._compress, self._flush = _encoder(compression)
            self._put(header)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        """Uncompressed bytes written so far."""
        return self.bytes_in

    def write(self, data: Any) -> int:
        if self._finished:
            raise ValueError("write to a finished compressing writer")
        view = memoryview(data)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = len(view)
        self.bytes_in += n
        if self._compress is None:
            self._put(view)
            return n
        # The compressor always sees the stream cut every BLOCK bytes, whatever the
        # writes were: the output depends on the data only (equal objects dedup).
        start = 0
        if self._pending:
            start = min(BLOCK - len(self._pending), n)
            self._pending += view[:start]
            if len(self._pending) < BLOCK:
                return n
            self._put(self._compress(self._pending))
            self._pending = bytearray()
        while n - start >= BLOCK:
            self._put(self._compress(view[start : start + BLOCK]))
            start += BLOCK
        if start < n:
            self._pending += view[start:]
        return n

    def flush(self) -> None:
        """Does nothing to the compressor (a frame ends only at :meth:`finish`)."""
        if self.closed:
            raise ValueError("flush of a closed compressing writer")

    def finish(self) -> int:
        """Compress what is left and write the end of the stream; the sink stays open.

        Returns ``bytes_out``.  Idempotent; writes are refused afterwards.
        """
        if not self._finished:
            self._finished = True
            if self._compress is not None and self._flush is not None:
                if self._pending:
                    self._put(self._compress(self._pending))
                    self._pending = bytearray()
                self._put(self._flush())
            if self.codec is not None:
                logger.debug("compressed %d bytes into %d with %s", self.bytes_in, self.bytes_out,
                             self.compression)
        return self.bytes_out

    def close(self) -> None:
        """:meth:`finish`, then close this stream (never the sink)."""
        if not self.closed:
            try:
                self.finish()
            finally:
                super().close()

    def abandon(self) -> None:
        """Close without ending the stream (what was written is incomplete: the caller drops it)."""
        self._finished, self._pending = True, bytearray()
        super().close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close() if exc_type is None else self.abandon()

    def __del__(self) -> None:  # never writes a trailer from the garbage collector
        if not self.closed:
            self.abandon()

    def _put(self, data: Any) -> None:
        view = memoryview(data)
        size = len(view)
        while view:
            written = self._sink.write(view)
            if not written:
                raise OSError(f"the sink {self._sink!r} accepted no bytes")
            view = view[written:]
        self.bytes_out += size


def _encoder(c: Compression) -> tuple[bytes, Callable[[Any], bytes], Callable[[], bytes]]:
    """``(header, compress, flush)`` of a fresh compressor for ``c``."""
    level = c.effective_level
    if c.codec == "gzip":
        # wbits 31: a gzip member with mtime 0 and no name, so the bytes depend on the data only.
        z = zlib.compressobj(level, zlib.DEFLATED, 31)
        return b"", z.compress, z.flush
    if c.codec == "zstd":
        zstandard = _import_codec("zstd", StorageConfigError, "compression 'zstd'")
        obj = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
        return b"", obj.compress, obj.flush
    lz4_frame = _import_codec("lz4", StorageConfigError, "compression 'lz4'")
    frame = lz4_frame.LZ4FrameCompressor(compression_level=level, content_checksum=True)
    return frame.begin(), frame.compress, frame.flush


def compressing_writer(sink: Any, compression: Any) -> CompressingWriter:
    """A write-only stream that compresses into ``sink`` as it is written.

    ``sink`` needs only ``write`` (it is not read, sought, flushed or closed), e.g. an
    :class:`~functionfuse.storage.objects.ObjectWriter`.  ``compression`` is anything
    :func:`normalize` accepts; ``None`` passes bytes through unchanged.  Memory is
    bounded: at most :data:`BLOCK` uncompressed bytes are held, plus the codec's own
    window (zstd levels 20-22 use up to 128 MiB; the others a few MiB at most).

    ``close()`` (or :meth:`~CompressingWriter.finish`, or leaving a ``with`` block)
    writes the end of the stream and leaves ``sink`` open; leaving a ``with`` block by
    an exception writes no end (the sink's writer discards the object anyway)::

        with store.writer() as sink:
            with compressing_writer(sink, "zstd") as out:
                numpy.save(out, array)
        ref = sink.ref  # the manifest part then records "codec": "zstd"

    >>> import gzip
    >>> sink = io.BytesIO()
    >>> with compressing_writer(sink, "gzip") as out:
    ...     _ = out.write(b"x" * 1000)
    >>> gzip.decompress(sink.getvalue()) == b"x" * 1000, sink.closed
    (True, False)
    """
    return CompressingWriter(sink, _coerce(compression))


# -- reading -------------------------------------------------------------------------------
def _reader_library(codec: Any, name: str | None) -> Any:
    """The module that decodes ``codec``, or :class:`SerializationError` saying what to do."""
    what = f"object {name}" if name else "a part"
    if not isinstance(codec, str) or codec not in CODECS:
        raise SerializationError(
            f"{what} is compressed with codec {codec!r}, which this version of functionfuse does not "
            f"know (it reads {', '.join(map(repr, CODECS))} and null); the part was written by a newer "
            "functionfuse or another program: upgrade functionfuse (pip install -U functionfuse) "
            "and install the extra of that codec"
        )
    return _import_codec(codec, SerializationError, f"reading {what} compressed with {codec!r}")


def _corrupt(codec: str, name: str | None, problem: str) -> CorruptEntryError:
    what = f"object {name}" if name else "compressed data"
    return CorruptEntryError(f"{what} is not a valid {codec} stream: {problem}")


def _decode_errors(codec: str, module: Any) -> tuple[type[BaseException], ...]:
    """What the codec's decoder raises for damaged data (never what reading the source raises)."""
    if codec == "zstd":
        return (_BadFrames, module.ZstdError)
    if codec == "lz4":
        return (_BadFrames, RuntimeError)  # lz4.frame reports damage as RuntimeError
    return (_BadFrames, zlib.error)


def decompress(data: bytes | bytearray | memoryview, codec: str | None, *, name: str | None = None) -> bytes:
    """Undo ``codec`` (a part's manifest ``codec``) on ``data``; ``None`` returns the bytes as they are.

    Reads any stream of the codec, also from other programs: concatenated gzip members
    or zstd / LZ4 frames, zstd skippable frames, with or without sizes and checksums.
    ``name`` (an object hash) goes into error messages.

    Raises
    ------
    CorruptEntryError
        Truncated, altered or followed by stray bytes.
    SerializationError
        An unknown codec, or one whose library is not installed.

    >>> import gzip
    >>> decompress(gzip.compress(b"hello"), "gzip")
    b'hello'
    """
    if codec is None:
        return data if isinstance(data, bytes) else bytes(data)
    module = _reader_library(codec, name)
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if not len(view):
        raise _corrupt(codec, name, "it is empty")
    # The streaming decoder into a growing buffer: one copy of the output, and faster
    # than the libraries' one-shot calls when the frame does not give its size.
    raw, out = _DecompressedRaw(_MemoryReader(view), codec, module, name), io.BytesIO()
    while chunk := raw.next_chunk(_ONE_SHOT_CHUNK):
        out.write(chunk)
    return out.getvalue()


def open_decompressed(fileobj: BinaryIO, codec: str | None, *, name: str | None = None) -> BinaryIO:
    """A readable binary stream of ``fileobj`` with ``codec`` undone, decompressed as it is read.

    Takes ``fileobj`` over: closing the stream closes it.  ``None`` returns ``fileobj``
    itself.  Memory is bounded whatever the compression ratio (a read returns at most
    what was asked for; :data:`READ_SIZE` compressed bytes are read at a time).  The
    stream can ``tell``, and ``seek`` forward (by reading) and backward (within its
    buffer, or by starting again when ``fileobj`` can seek), so ``numpy.load`` and
    ``pickle.load`` read from it.  It cannot seek from the end: formats that start
    reading there (zip files: skops, ``.npz``) go through :func:`decompress` and
    :class:`io.BytesIO`.  Errors as for :func:`decompress`, raised by the read that
    meets them: a truncated stream fails at its end, never returns short.
    """
    if codec is None:
        return fileobj
    module = _reader_library(codec, name)
    return io.BufferedReader(_DecompressedRaw(fileobj, codec, module, name), buffer_size=256 << 10)


class _BadFrames(ValueError):
    """A compressed stream's structure is broken (truncated, stray bytes)."""


def _truncated(codec: str, complete: int) -> str:
    """Why a stream ends inside its ``complete + 1``-th gzip member or LZ4 frame."""
    unit = "member" if codec == "gzip" else "frame"
    if complete:
        return f"stray bytes after {unit} {complete}, or a truncated {unit} after it"
    return f"truncated: the data ends inside a {unit}"


class _GzipMember:
    """One gzip member, decoded incrementally."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(31)

    @property
    def eof(self) -> bool:
        return self._d.eof

    def step(self, data: Any, max_length: int) -> tuple[bytes, bytes]:
        out = self._d.decompress(data, max(0, max_length))
        return out, (self._d.unused_data if self._d.eof else self._d.unconsumed_tail)


class _Lz4Frame:
    """One LZ4 frame, decoded incrementally (it keeps unconsumed input itself)."""

    def __init__(self, module: Any) -> None:
        self._d = module.LZ4FrameDecompressor()

    @property
    def eof(self) -> bool:
        return self._d.eof

    def step(self, data: Any, max_length: int) -> tuple[bytes, bytes]:
        out = self._d.decompress(data, max_length)
        return out, ((self._d.unused_data or b"") if self._d.eof else b"")


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_BLOCK_MAX = 128 << 10


class _ZstdFrames:
    """Follows zstd frame boundaries (RFC 8878) through a byte stream without decoding.

    zstandard's streaming decoders end quietly when their input stops inside a frame;
    this tells a truncated stream from a complete one, and stray bytes from a frame.
    Only headers are looked at: each block's 3-byte header gives its size.
    """

    _NEEDS: ClassVar[dict[str, int]] = {"magic": 4, "descriptor": 1, "block": 3, "skippable": 4}  # header bytes per state

    def __init__(self) -> None:
        self._header, self._skip, self._after, self._checksum = bytearray(), 0, "", False
        self.frames = 0
        self._enter("magic")

    def _enter(self, state: str) -> None:
        if state == "last_block_done":  # then the checksum, if the frame has one
            self._skip_then(4 if self._checksum else 0, "frame_end")
            return
        if state == "frame_end":
            self.frames += 1
            state = "magic"
        self._state, self._need = state, self._NEEDS[state]

    def _skip_then(self, count: int, state: str) -> None:
        if count:
            self._skip, self._after = count, state
        else:
            self._enter(state)

    def feed(self, data: Any) -> None:
        view, i = memoryview(data), 0
        n = len(view)
        while i < n:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                if not self._skip:
                    self._enter(self._after)
                continue
            k = min(self._need - len(self._header), n - i)
            self._header += view[i : i + k]
            i += k
            if len(self._header) == self._need:
                field = int.from_bytes(self._header, "little")
                self._header.clear()
                self._parse(field)

    def _parse(self, field: int) -> None:
        state = self._state
        if state == "magic":
            if field == _ZSTD_MAGIC:
                self._enter("descriptor")
            elif field & 0xFFFFFFF0 == 0x184D2A50:
                self._enter("skippable")
            else:
                where = "stray bytes after the last frame" if self.frames else "no zstd frame at the start"
                raise _BadFrames(f"{where} (magic number {field:#010x})")
        elif state == "descriptor":
            fcs_flag, single, reserved = field >> 6, (field >> 5) & 1, (field >> 3) & 1
            if reserved:
                raise _BadFrames("a frame header has its reserved bit set")
            self._checksum = bool((field >> 2) & 1)
            rest = (0 if single else 1) + (0, 1, 2, 4)[field & 3] + ((1 if single else 0), 2, 4, 8)[fcs_flag]
            self._skip_then(rest, "block")
        elif state == "block":
            last, kind, size = field & 1, (field >> 1) & 3, field >> 3
            if kind == 3 or size > _ZSTD_BLOCK_MAX:
                raise _BadFrames("a block header is invalid")
            self._skip_then(1 if kind == 1 else size, "last_block_done" if last else "block")
        elif state == "skippable":
            self._skip_then(field, "frame_end")

    def end(self) -> None:
        """The input ended: complain unless it ended after a complete frame."""
        if self._skip or self._header or self._state != "magic":
            raise _BadFrames("truncated: the data ends inside a frame")
        if not self.frames:
            raise _BadFrames("no zstd frame (the data is empty)")


class _Tap:
    """A source that shows every byte read to a :class:`_ZstdFrames` and checks the end."""

    def __init__(self, src: Any, frames: _ZstdFrames) -> None:
        self._src, self._frames = src, frames

    def read(self, size: int = -1) -> bytes:
        data = self._src.read(size)
        if data:
            self._frames.feed(data)
        else:
            self._frames.end()
        return data


class _MemoryReader:
    """``read``, ``seek`` and ``tell`` over a memoryview, without copying it."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._pos = view, 0

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        chunk = self._view[self._pos : end]
        self._pos += len(chunk)
        return chunk

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        self._pos = pos
        return pos

    def close(self) -> None:
        pass


class _DecompressedRaw(io.RawIOBase):
    """The raw stream behind :func:`open_decompressed`."""

    def __init__(self, src: Any, codec: str, module: Any, name: str | None) -> None:
        super().__init__()
        self._src, self._codec, self._module, self._name = src, codec, module, name
        self._errors = _decode_errors(codec, module)
        try:
            self._start = src.tell() if src.seekable() else None
        except (AttributeError, OSError, ValueError):
            self._start = None
        self._reset()

    def _reset(self) -> None:
        self._pos, self._input, self._member, self._members, self._done = 0, b"", None, 0, False
        self._zstd = None
        if self._codec == "zstd":
            tap = _Tap(self._src, _ZstdFrames())
            self._zstd = self._module.ZstdDecompressor().stream_reader(
                tap, read_size=READ_SIZE, read_across_frames=True, closefd=False
            )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        data = self.next_chunk(len(view))
        view[: len(data)] = data
        return len(data)

    def next_chunk(self, n: int) -> bytes:
        """At most ``n`` (> 0) decompressed bytes; ``b""`` only at the end of a complete stream."""
        try:
            data = self._read(n)
        except self._errors as exc:
            raise _corrupt(self._codec, self._name, str(exc) or type(exc).__name__) from exc
        self._pos += len(data)
        return data

    def _read(self, n: int) -> bytes:
        if self._zstd is not None:
            return self._zstd.read(n)
        while not self._done:
            if self._member is None:
                if not self._input and not self._fill():
                    if not self._members:
                        raise _BadFrames("the data is empty")
                    self._done = True
                    break
                self._member = _GzipMember() if self._codec == "gzip" else _Lz4Frame(self._module)
            out, self._input = self._member.step(self._input, n)
            if self._member.eof:
                self._member, self._members = None, self._members + 1
            if out:
                return out
            if self._member is not None and not self._input and not self._fill():
                raise _BadFrames(_truncated(self._codec, self._members))
        return b""

    def _fill(self) -> bool:
        data = self._src.read(READ_SIZE)
        self._input = data if data else b""
        return bool(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a decompressed stream cannot seek from its end")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        if offset < self._pos:
            if self._start is None:
                raise io.UnsupportedOperation("cannot seek backward: the compressed source cannot seek")
            self._src.seek(self._start)
            self._reset()
        buffer = bytearray(min(READ_SIZE, max(offset - self._pos, 1)))
        while self._pos < offset:
            want = min(len(buffer), offset - self._pos)
            if not self.readinto(memoryview(buffer)[:want]):
                break
        return self._pos

    def close(self) -> None:
        if not self.closed:
            try:
                self._src.close()
            finally:
                super().close()


# -- formats with their own codecs --------------------------------------------------------
def parquet_options(compression: Any, schema: Any = None) -> dict:
    """Keyword arguments of ``pyarrow.parquet.write_table`` for ``compression``.

    ``None`` gives ``{}``: pyarrow's default (snappy), as before the option existed.
    Otherwise ``compression`` and ``compression_level``: ``"lz4"`` is pyarrow's
    ``LZ4_RAW`` (levels 3 and up are LZ4-HC).  A ``shuffle`` (``"byte"``, and ``"bit"``
    alike: parquet has only byte shuffle) turns on the ``BYTE_STREAM_SPLIT`` encoding
    of the floating-point columns of ``schema`` (a ``pyarrow.Schema``), and dictionary
    encoding for the others only (it would take precedence); without a schema shuffle
    is ignored.

    >>> parquet_options({"codec": "zstd", "level": 7})
    {'compression': 'zstd', 'compression_level': 7}
    >>> parquet_options(None)
    {}
    """
    c = _coerce(compression)
    if c is None:
        return {}
    options: dict[str, Any] = {"compression": c.codec, "compression_level": c.effective_level}
    if c.codec == "lz4" and c.effective_level < 3:
        del options["compression_level"]  # the fast mode has no level
    if c.shuffle and schema is not None:
        import pyarrow as pa

        floats = [f.name for f in schema if pa.types.is_float32(f.type) or pa.types.is_float64(f.type)]
        if floats:
            others = [f.name for f in schema if f.name not in floats]
            options["use_byte_stream_split"] = floats
            options["use_dictionary"] = others or False
    elif c.shuffle:
        logger.debug("parquet_options: shuffle=%r ignored without a schema", c.shuffle)
    return options


def _hdf5plugin() -> Any:
    try:
        import hdf5plugin
    except ImportError as exc:
        raise StorageConfigError(
            f"option {OPTION!r}: HDF5 compression with zstd, lz4 or bit shuffle needs the hdf5plugin "
            f'package ({exc}); install it with: pip install "functionfuse[hdf5]"'
        ) from exc
    return hdf5plugin


def _blosc_zstd_level(level: int) -> int:
    """The lowest Blosc clevel whose zstd level (``2 * clevel - 1``, 22 at 9) is at least ``level``."""
    return min(9, (level + 2) // 2)


def _lz4_blosc(level: int) -> tuple[str, int]:
    """Blosc's ``(cname, clevel)`` for an lz4 level: fast lz4, or lz4hc for levels 3 and up."""
    return ("lz4", 5) if level < 3 else ("lz4hc", min(level, 9))


def hdf5_options(compression: Any) -> dict:
    """Keyword arguments of h5py's ``create_dataset`` for ``compression`` (``None``: ``{}``, uncompressed).

    * gzip: HDF5's built-in deflate, ``compression="gzip"``, ``compression_opts=level``,
      plus ``shuffle=True`` (HDF5's byte shuffle filter) for ``"byte"``; bit shuffle is
      Blosc (zlib inside).
    * zstd: hdf5plugin's Zstd filter at the level, after HDF5's byte shuffle for
      ``"byte"``; Bitshuffle's zstd mode for ``"bit"``.
    * lz4: hdf5plugin's LZ4 filter (after byte shuffle for ``"byte"``), Bitshuffle's
      lz4 mode for ``"bit"``; levels 3 and up use Blosc's lz4hc.

    The values are plain ints and tuples (picklable).  HDF5 fills in chunking when
    there is a filter.  Reading a dataset written with a plugin filter needs the
    filter registered in the reading process: ``import hdf5plugin`` first, or
    :func:`ensure_hdf5_filters`.

    >>> hdf5_options({"codec": "gzip", "level": 4, "shuffle": "byte"})
    {'compression': 'gzip', 'compression_opts': 4, 'shuffle': True}
    """
    c = _coerce(compression)
    if c is None:
        return {}
    level, byte = c.effective_level, c.shuffle == "byte"
    if c.codec == "gzip" and c.shuffle != "bit":
        options: dict[str, Any] = {"compression": "gzip", "compression_opts": level}
    else:
        h5p = _hdf5plugin()
        if c.codec == "gzip":
            plugin = h5p.Blosc(cname="zlib", clevel=level, shuffle=h5p.Blosc.BITSHUFFLE)
        elif c.codec == "zstd":
            plugin = h5p.Bitshuffle(cname="zstd", clevel=level) if c.shuffle == "bit" else h5p.Zstd(clevel=level)
        elif level >= 3:
            cname, clevel = _lz4_blosc(level)
            mode = {None: h5p.Blosc.NOSHUFFLE, "byte": h5p.Blosc.SHUFFLE, "bit": h5p.Blosc.BITSHUFFLE}[c.shuffle]
            plugin, byte = h5p.Blosc(cname=cname, clevel=clevel, shuffle=mode), False
        else:
            plugin = h5p.Bitshuffle(cname="lz4") if c.shuffle == "bit" else h5p.LZ4()
        options = {"compression": int(plugin["compression"]), "compression_opts": tuple(plugin["compression_opts"])}
    if byte:
        options["shuffle"] = True
    return options


def ensure_hdf5_filters() -> bool:
    """Register hdf5plugin's HDF5 filters (zstd, lz4, Blosc, Bitshuffle) in this process.

    Returns ``False`` when hdf5plugin is not installed: datasets written with those
    filters then cannot be read (HDF5 says the filter is not available), while gzip
    and uncompressed ones can.  Call it before opening HDF5 files that may use them.
    """
    try:
        import hdf5plugin  # noqa: F401 - importing registers the filters with HDF5
    except ImportError:
        logger.debug("hdf5plugin is not installed: HDF5 zstd/lz4/Blosc filters are unavailable")
        return False
    return True


def zarr_codecs(compression: Any) -> list:
    """zarr v3 bytes-to-bytes codecs (``compressors=`` of ``zarr.create_array``) for ``compression``.

    * ``None``: ``[ZstdCodec()]``, zarr 3's own default (zstd level 0, i.e. zstd's default).
    * No shuffle: ``ZstdCodec(level=...)`` or ``GzipCodec(level=...)``.  lz4 has no codec
      of its own in zarr v3: it is ``BloscCodec`` with ``cname="lz4"`` (``"lz4hc"`` for
      levels 3 and up).
    * ``"byte"`` / ``"bit"``: ``BloscCodec(shuffle="shuffle" / "bitshuffle")`` with the
      codec inside Blosc (``zstd``, ``zlib`` for gzip, ``lz4``).  Blosc's level is 0-9:
      a zstd level maps to the Blosc level whose zstd level is at least as high.

    All are codecs of the zarr v3 specification (Blosc through numcodecs), readable by
    any zarr v3 implementation.  Append ``Crc32cCodec()`` for a checksum per chunk.
    """
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    c = _coerce(compression)
    if c is None:
        return [ZstdCodec()]
    level = c.effective_level
    shuffle = {None: "noshuffle", "byte": "shuffle", "bit": "bitshuffle"}[c.shuffle]
    if c.codec == "zstd":
        if c.shuffle is None:
            return [ZstdCodec(level=level)]
        return [BloscCodec(cname="zstd", clevel=_blosc_zstd_level(level), shuffle=shuffle)]
    if c.codec == "gzip":
        if c.shuffle is None:
            return [GzipCodec(level=level)]
        return [BloscCodec(cname="zlib", clevel=level, shuffle=shuffle)]
    cname, clevel = _lz4_blosc(level)
    return [BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle)]
