"""Write a stored result as plain files of its formats, without decoding it
(``functionfuse export``; docs/cli.md)."""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import FunctionFuseError
from .objects import ObjectRef

__all__ = ["EXTENSIONS", "export_result"]

#: Part format -> file extension of the plain file it is.
EXTENSIONS = {
    "npy": ".npy",
    "parquet": ".parquet",
    "polars": ".parquet",
    "json": ".json",
    "pickle": ".pkl",
    "skops": ".skops",
    "safetensors": ".safetensors",
    "xgboost": ".ubj",
    "lightgbm": ".txt",
    "catboost": ".cbm",
    "zarr": ".zarr.zip",
}


def _part_bytes(results: Any, part: dict) -> bytes:
    """A part's stored bytes, checked and decompressed."""
    data = results.objects.get_bytes(ObjectRef.from_json(part))
    codec = part.get("codec")
    if codec is not None:
        from .codecs import decompress

        data = decompress(data, codec, name=part.get("object"))
    return data


def _write_part(results: Any, part: dict, path: str) -> None:
    """Write a part's file: a local uncompressed object is checked in place (over a
    memory map) and copied file to file, never read whole into memory."""
    if results._local and part.get("codec") is None:
        import shutil

        source = results.objects.checked_path(ObjectRef.from_json(part))
        _write(path, None, copy_from=source, copy=shutil.copyfile)
    else:
        _write(path, _part_bytes(results, part))


def _with_extension(dest: str, ext: str) -> str:
    return dest if dest.endswith(ext) else dest + ext


def export_result(results: Any, doc: dict, dest: str, *, node: str = "") -> dict[str, Any]:
    """Write the result ``doc`` (a checked manifest) describes to ``dest``.

    One part: ``dest`` (its format's extension added when missing).  No part
    (the manifest's tree holds it): ``dest`` as JSON of the tree.  Several:
    a folder ``dest`` with ``part-<i><ext>`` files and ``result.json``.
    Returns ``{"written": [...], "formats": [...], "pickled": bool}``.
    Never decodes (nor unpickles) anything.
    """
    parts = doc.get("parts") or []
    formats = [p.get("format") for p in parts]
    for i, part in enumerate(parts):
        if part.get("format") not in EXTENSIONS:
            raise FunctionFuseError(
                f"node {node!r}: part {i} is stored by a persistent serializer ({part.get('format')!r}) "
                "whose data lives beside the store; read it with storage.read_task(...) instead"
            )
    if os.path.isdir(dest) and parts and len(parts) == 1:
        raise FunctionFuseError(f"export destination {dest} is a folder; give a file name")
    written: list[str] = []
    tree = doc.get("result")
    if not parts:
        path = _with_extension(dest, ".json")
        _write(path, _tree_json(tree))
        written.append(path)
    elif len(parts) == 1 and tree == {"part": 0}:
        path = _with_extension(dest, EXTENSIONS[parts[0]["format"]])
        _write_part(results, parts[0], path)
        written.append(path)
    else:
        os.makedirs(dest, exist_ok=True)
        for i, part in enumerate(parts):
            path = os.path.join(dest, f"part-{i}{EXTENSIONS[part['format']]}")
            _write_part(results, part, path)
            written.append(path)
        path = os.path.join(dest, "result.json")
        layout = {"result": tree, "parts": [{"file": os.path.basename(w), "format": f}
                                            for w, f in zip(written, formats)]}
        _write(path, json.dumps(layout, indent=1).encode())
        written.append(path)
    return {"written": written, "formats": formats, "pickled": "pickle" in formats}


def _tree_json(tree: Any) -> bytes:
    """A result held in its manifest as plain JSON; values JSON cannot hold (bytes,
    NaN, tuples kept apart from lists ...) keep the manifest's tree grammar
    (docs/format.md) under ``functionfuse_tree``."""
    from ..serializers.parts import join

    try:
        value = join(tree, (), (), safe=True)  # no parts: nothing to unpickle
        return json.dumps(value, indent=1, allow_nan=False, default=_refuse).encode()
    except (TypeError, ValueError, FunctionFuseError):
        return json.dumps({"functionfuse_tree": tree}, indent=1).encode()


def _refuse(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _write(path: str, data: bytes | None, *, copy_from: str | None = None, copy: Any = None) -> None:
    """Write ``path`` whole or not at all (a temporary renamed into place): ``data``,
    or the file ``copy_from`` copied with ``copy(src, dst)``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if copy_from is not None:
            copy(copy_from, tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data)  # type: ignore[arg-type]
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
