"""The entry format's fast paths agree with the straightforward ones."""

import json
from datetime import datetime, timezone

import pytest

from functionfuse.errors import CorruptEntryError
from functionfuse.storage import entry
from functionfuse.storage.base import utc_now_iso

METAS = [
    {},
    {"fingerprint": "ab" * 32, "inputs": {"seed_0000": "0b6c40b5", 'we"ird\\ \n\u00e9\U0001f600': "k"},
     "function": "f.<locals>.g", "duration_s": 4e-06, "node": "n/ä", "key": "08d1", "created": utc_now_iso(),
     "payload_size": 55, "payload_crc32": "0b24cb84"},
    {"a": 1.0, "b": -0.0, "c": 1e300, "d": 2**80, "e": True, "f": False, "g": None, "h": "\x00\x1f\x7f"},
    {"nan": float("nan"), "inf": float("-inf")},  # json's NaN / -Infinity: the encoder's path
    {"list": [1, 2], "nested": {"x": {"y": 1}}, "set": {1}},
    {"dt": datetime(2020, 1, 2, tzinfo=timezone.utc)},  # default=str
    {"ints": {1: "a"}},  # non-str keys
    {"sub": True, "n": 3, "s": type("S", (str,), {})("sub-str")},
]


@pytest.mark.parametrize("meta", METAS, ids=range(len(METAS)))
def test_json_object_is_json_dumps(meta):
    assert entry.json_object(meta) == json.dumps(meta, separators=(",", ":"), default=str)


def test_utc_now_iso_is_isoformat():
    text = utc_now_iso()
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo == timezone.utc
    assert abs((datetime.now(timezone.utc) - parsed).total_seconds()) < 5
    assert text == parsed.isoformat()


@pytest.mark.parametrize("size", [10, 70_000])
def test_pack_unpack_round_trip_and_corruption(size):
    payload = bytes(range(256)) * (size // 256 + 1)
    data = entry.pack({"node": "n"}, [("ser", "pid")], payload, b'"workflow":"w"')
    ent = entry.unpack(data, "here")
    assert bytes(ent.payload) == payload and ent.pids == [("ser", "pid")]
    assert ent.meta["node"] == "n" and ent.meta["workflow"] == "w" and ent.meta["payload_size"] == len(payload)
    meta, pids, need = entry.read_meta_and_pids(data[:4096], "here")
    assert need == 0 and meta == ent.meta and pids == ent.pids
    with pytest.raises(CorruptEntryError, match="truncated"):
        entry.unpack(data[:-1], "here")
    with pytest.raises(CorruptEntryError, match="checksum"):
        entry.unpack(data[:-1] + bytes([data[-1] ^ 1]), "here")
    with pytest.raises(CorruptEntryError, match="header"):
        entry.unpack(b"FFENTRY", "here")
    with pytest.raises(CorruptEntryError, match="header"):
        entry.unpack(b"X" * 100, "here")


def test_json_object_rejects_cycles_and_recovers():
    cyclic = {"a": 1}
    cyclic["self"] = cyclic
    with pytest.raises((ValueError, RecursionError)):
        entry.json_object(cyclic)
    meta = {"x": [1, {"y": 2}]}
    assert entry.json_object(meta) == json.dumps(meta, separators=(",", ":"))
