"""Manifests and run records of store v2 (docs/format.md): encoding, verification, ordering."""

import json
import random

import pytest

from functionfuse.errors import CorruptEntryError
from functionfuse.storage.manifests import canonical_json, decode_manifest, encode_manifest, manifest_path
from functionfuse.storage.runs import decode_record, encode_record, latest_run_id, new_run_id, run_path

KEY = "3f9a0c1d2e3f40516273849aabbccdde"


def manifest(**extra):
    fields = {
        "key": KEY,
        "node": "fit", "workflow": "wf",
        "arguments": {"alpha": 0.5, "name": "é"},
        "result": {"t": "dict", "items": [["coef", {"part": 0}], ["score", {"json": 0.93}]]},
        "parts": [{"format": "npy", "object": "ab" * 32, "size": 128, "xxh3": "cd" * 16, "codec": None}],
    }
    fields.update(extra)
    return encode_manifest(fields)


def test_round_trip_and_canonical_bytes():
    data = manifest()
    doc = decode_manifest(data, KEY, "m.json")
    assert doc["format"] == "functionfuse-manifest" and doc["version"] == 2
    assert doc["parts"][0]["size"] == 128 and doc["arguments"]["name"] == "é"
    body = {k: v for k, v in doc.items() if k != "checksum"}
    assert data.endswith(canonical_json(body)[1:])  # the body is canonical JSON
    assert manifest_path(KEY) == f"manifests/3f/{KEY}.json"


def test_checksum_is_blake3_of_the_bytes_as_written():
    import blake3

    data = manifest()
    assert data.startswith(b'{"checksum":"')
    digest, rest = data[13:77], data[79:]
    assert data[77:79] == b'",'
    assert blake3.blake3(b"{" + rest).hexdigest().encode() == digest  # no JSON re-serialization
    assert json.loads(data)["checksum"] == digest.decode()


def test_every_bit_flip_is_detected():
    data = bytearray(manifest())
    rng = random.Random(7)
    offsets = list(range(len(data)))
    for offset in offsets:
        damaged = bytearray(data)
        damaged[offset] ^= 1 << rng.randrange(8)
        with pytest.raises(CorruptEntryError):
            decode_manifest(bytes(damaged), KEY, "m.json")


def test_truncation_wrong_key_wrong_format_missing_members():
    data = manifest()
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(CorruptEntryError, match="m.json"):
            decode_manifest(data[:cut], KEY, "m.json")
    with pytest.raises(CorruptEntryError, match="is for key"):
        decode_manifest(data, "0" * 32, "m.json")
    from functionfuse.storage.manifests import seal

    doc = json.loads(data)
    del doc["checksum"]
    doc["version"] = 3
    with pytest.raises(CorruptEntryError, match="version 3"):
        decode_manifest(seal(canonical_json(doc)), KEY, "m.json")
    with pytest.raises(ValueError, match="needs parts"):
        encode_manifest({"key": KEY, "result": {}})
    bad = json.loads(data)
    del bad["parts"][0]["xxh3"], bad["checksum"]
    with pytest.raises(CorruptEntryError, match="part 0 member 'xxh3'"):
        decode_manifest(encode_manifest(bad), KEY, "m.json")


def test_not_json_values_are_refused_when_writing():
    with pytest.raises(TypeError):
        manifest(arguments={"alpha": {1, 2}})
    with pytest.raises(TypeError):
        manifest(arguments={"alpha": object()})


def test_what_the_tree_and_summaries_tag_never_reaches_json_raw():
    from functionfuse.arguments import summarize_arguments
    from functionfuse.serializers.parts import split

    tree, _ = split({"nan": float("nan"), "inf": float("-inf"), "big": 10**30})
    args = summarize_arguments(lambda a, b: None, (float("nan"), 10**30), {}, str)
    data = encode_manifest({"key": "a" * 32, "result": tree, "parts": [], "arguments": args})
    assert b"NaN" not in data and b"null" not in data and b"Infinity" not in data


def test_run_ids_sort_by_time_and_latest_is_found():
    ids = [new_run_id(t, "h", 1) for t in (1.5, 1000.25, 1_800_000_000.999999, 1_800_000_001.0)]
    assert ids == sorted(ids)
    names = [run_path("wf", i).rsplit("/", 1)[1] for i in ids]
    random.Random(1).shuffle(names)
    assert latest_run_id(names + ["junk.json", ids[0] + ".running"]) == ids[-1]
    # Names larger than every id that are not ids, and full paths (an S3 listing).
    junk = ["zz.json", "99999999T999999.999999Z-x.json", ids[-1] + "-copy.json", "~.json", ".json"]
    assert latest_run_id(junk + names) == ids[-1]
    assert latest_run_id([f"bucket/pre/runs/wf/{n}" for n in junk + names]) == ids[-1]
    assert latest_run_id(junk) is None
    assert latest_run_id([]) is None
    with pytest.raises(ValueError, match="not a run id"):
        run_path("wf", "../../etc/passwd")
    assert run_path("a/b", ids[0]).startswith("runs/a%2Fb/")


def test_run_record_round_trip_and_damage():
    run_id = new_run_id()
    data = encode_record(
        "wf", run_id, {"fit": {"key": KEY, "action": "computed", "reason": "new", "seconds": 1.5}},
        started="s", finished="f", outcome="ok", executor="local",
    )
    doc = decode_record(data, "r.json")
    assert doc["nodes"]["fit"]["key"] == KEY and doc["run"] == run_id and doc["outcome"] == "ok"
    damaged = data.replace(KEY.encode(), ("0" + KEY[1:]).encode())
    with pytest.raises(CorruptEntryError, match="checksum"):
        decode_record(damaged, "r.json")
    with pytest.raises(ValueError, match="outcome"):
        encode_record("wf", run_id, {}, started="s", finished="f", outcome="maybe", executor="local")


def test_the_view_of_a_record_skips_entries_of_another_shape():
    """A record as written gives its stored nodes' keys; a hand-edited one with entries of
    other shapes gives the same for the entries that are right, and skips the others."""
    from functionfuse.storage.base import current_view

    good = {"a": {"key": "k" * 32, "action": "read", "reason": "cached"},
            "b": {"key": "j" * 32, "action": "failed", "reason": "new"},
            "c": {"key": "i" * 32, "action": "computed", "reason": "new"}}
    others = {"z": "z" * 32, "bad": 3}
    assert current_view({"nodes": good, "others": others}) == {"a": "k" * 32, "c": "i" * 32, "z": "z" * 32}
    for bad in ([], {"action": "read"}, {"key": "x" * 32}, {"key": 5, "action": "read"},
                {"key": "x" * 32, "action": ["read"]}, "read"):
        view = current_view({"nodes": {**good, "bad": bad}, "others": others})
        assert view == {"a": "k" * 32, "c": "i" * 32, "z": "z" * 32}, bad
