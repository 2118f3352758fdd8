"""``storage_factory`` options are validated helpfully, before anything is created.

Wrong types name the option, the kind, the type given, the type expected and a
fix; misspelt options, kinds and top-level keys get a "did you mean".  For the
S3 and ray kinds no server or cluster is needed: the storage classes are
replaced by ones that fail if they are ever constructed, which proves the
checks run first.
"""

import pathlib
import re

import pytest

import functionfuse.storage.local as local
import functionfuse.storage.raystore as raystore
import functionfuse.storage.s3store as s3store
from functionfuse.errors import StorageConfigError
from functionfuse.storage import FileStorage, RayStorage, storage_factory
from functionfuse.storage.factory import OPTIONS

VALID = {
    "file": {"path": "/tmp/never-created"},
    "S3": {"path": "/bucket/prefix", "s3fs": {}},
    "ray": {"path": "/tmp/never-created", "remoteArgs": {}},
}


@pytest.fixture
def constructed(monkeypatch):
    """Storage classes record their arguments instead of creating anything."""
    calls = []

    def recorder(name):
        class Recorder:
            def __init__(self, *args, **kwargs):
                calls.append((name, args, kwargs))

        return Recorder

    monkeypatch.setattr(local, "FileStorage", recorder("file"))
    monkeypatch.setattr(s3store, "S3Storage", recorder("S3"))
    monkeypatch.setattr(raystore, "RayStorage", recorder("ray"))
    return calls


def config_error(config, constructed):
    with pytest.raises(StorageConfigError) as info:
        storage_factory(config)
    assert constructed == [], "the storage was constructed before its options were checked"
    return str(info.value)


# -- wrong types ------------------------------------------------------------------
WRONG_TYPES = [
    # kind, option, value, type given, type expected (words of the message)
    ("file", "durable", "no", "str", "bool"),
    ("file", "durable", "false", "str", "bool"),
    ("file", "durable", "True", "str", "bool"),
    ("file", "durable", 0, "int", "bool"),
    ("file", "durable", 1, "int", "bool"),
    ("file", "durable", None, "NoneType", "bool"),
    ("file", "path", 3, "int", "str or os.PathLike"),
    ("file", "path", None, "NoneType", "str or os.PathLike"),
    ("file", "path", b"/x", "bytes", "str or os.PathLike"),
    ("S3", "path", 3, "int", "string"),
    ("S3", "path", pathlib.PurePosixPath("/bucket"), "PurePosixPath", "string"),
    ("S3", "s3fs", "key=1", "str", "dict"),
    ("S3", "s3fs", [("anon", True)], "list", "dict"),
    ("ray", "path", 3, "int", "str or os.PathLike"),
    ("ray", "remoteArgs", None, "NoneType", "dict"),
    ("ray", "remoteArgs", "disk", "str", "dict"),
    ("ray", "rayInitArgs", "local", "str", "dict"),
    ("ray", "durable", "no", "str", "bool"),
    ("ray", "durable", 1, "int", "bool"),
    ("ray", "timeout", True, "bool", "number"),
    ("ray", "timeout", "10", "str", "number"),
]


@pytest.mark.parametrize("kind, option, value, given, expected", WRONG_TYPES)
def test_wrong_type_names_option_kind_types_and_fix(constructed, kind, option, value, given, expected):
    msg = config_error({"kind": kind, "options": {**VALID[kind], option: value}}, constructed)
    assert f"option {option!r}" in msg
    assert f"storage kind {kind!r}" in msg
    assert f"got {value!r} ({given})" in msg
    assert f"must be {OPTIONS[kind][1][option].expected}" in msg and expected in msg
    assert re.search(r"(e\.g\.|write) \{" + re.escape(repr(option)) + ": ", msg), msg  # a valid value


@pytest.mark.parametrize(
    "value, fix",
    [("no", "False"), ("false", "False"), ("0", "False"), ("yes", "True"), ("true", "True"), (0, "False"), (1, "True")],
)
def test_bool_written_as_text_or_number_is_told_the_real_bool(constructed, value, fix):
    msg = config_error({"kind": "file", "options": {"path": "/x", "durable": value}}, constructed)
    assert f"write {{'durable': {fix}}}" in msg
    assert ("without quotes" in msg) == isinstance(value, str)


@pytest.mark.parametrize(
    "kind, options",
    [
        ("file", {"path": "/x", "durable": True}),
        ("file", {"path": pathlib.Path("/x"), "durable": False}),
        ("S3", {"path": "s3://bucket/prefix", "s3fs": None}),
        ("S3", {"path": "/bucket", "s3fs": {"anon": True}}),
        ("ray", {"path": pathlib.Path("/x"), "remoteArgs": {}, "rayInitArgs": None, "timeout": None}),
        ("ray", {"path": "/x", "remoteArgs": {"num_cpus": 1}, "rayInitArgs": {}, "durable": True, "timeout": 5}),
        ("ray", {"path": "/x", "remoteArgs": {}, "timeout": 0.5}),
    ],
)
def test_valid_options_are_passed_on(constructed, kind, options):
    storage_factory({"kind": kind, "options": options})
    [(name, args, kwargs)] = constructed
    assert name == kind
    assert options["path"] in args
    if "durable" in options:
        assert kwargs["durable"] is options["durable"]


def test_constructors_reject_non_bool_durable(tmp_path):
    with pytest.raises(StorageConfigError, match="option 'durable'.*must be a bool.*'no' \\(str\\)"):
        FileStorage(tmp_path / "s", durable="no")
    assert not (tmp_path / "s").exists()
    with pytest.raises(StorageConfigError, match="option 'durable'.*must be a bool.*1 \\(int\\)"):
        RayStorage(tmp_path / "s", {}, durable=1)
    assert FileStorage(tmp_path / "s", durable=True).durable is True


# -- misspelt options -------------------------------------------------------------
MISSPELT = [
    ("file", {"pth": "/x"}, "pth", "path"),
    ("file", {"path": "/x", "duarble": True}, "duarble", "durable"),
    ("file", {"Path": "/x"}, "Path", "path"),
    ("S3", {"pth": "/bucket", "s3fs": {}}, "pth", "path"),
    ("S3", {"path": "/bucket", "s3_fs": {}}, "s3_fs", "s3fs"),
    ("ray", {"path": "/x", "remote_args": {}}, "remote_args", "remoteArgs"),
    ("ray", {"path": "/x", "remoteArgs": {}, "ray_init_args": {}}, "ray_init_args", "rayInitArgs"),
    ("ray", {"path": "/x", "remoteArgs": {}, "timout": 3}, "timout", "timeout"),
    ("ray", {"path": "/x", "remoteArgs": {}, "duarble": True}, "duarble", "durable"),
]


@pytest.mark.parametrize("kind, options, wrong, right", MISSPELT)
def test_misspelt_option_gets_did_you_mean(constructed, kind, options, wrong, right):
    msg = config_error({"kind": kind, "options": options}, constructed)
    assert msg.startswith(f"unknown option {wrong!r} for storage kind {kind!r}; did you mean {right!r}?")
    for option in OPTIONS[kind][1]:
        assert option in msg  # and the valid options are listed


@pytest.mark.parametrize("kind", ["file", "S3", "ray"])
def test_unknown_option_with_nothing_close_lists_valid_options(constructed, kind):
    msg = config_error({"kind": kind, "options": {**VALID[kind], "encryption": "aes"}}, constructed)
    assert "did you mean" not in msg
    required, optional = [[n for n, o in OPTIONS[kind][1].items() if o.required == r] for r in (True, False)]
    expected = ", ".join(required + [o + " (optional)" for o in optional])
    assert msg == f"unknown option 'encryption' for storage kind {kind!r}; it takes {expected}"


@pytest.mark.parametrize("kind", ["file", "S3", "ray"])
def test_bad_compression_names_the_option_and_the_fix(constructed, kind):
    msg = config_error({"kind": kind, "options": {**VALID[kind], "compression": "zstandard"}}, constructed)
    assert "'compression'" in msg and "'zstandard'" in msg and "'zstd'" in msg


def test_misspelling_of_an_option_already_given_is_not_suggested(constructed):
    msg = config_error({"kind": "file", "options": {"path": "/x", "pth": "/y"}}, constructed)
    assert "did you mean" not in msg and "'pth'" in msg


def test_several_unknown_options_are_all_named(constructed):
    msg = config_error({"kind": "file", "options": {"pth": "/x", "zzz": 1}}, constructed)
    assert "unknown options 'pth' (did you mean 'path'?), 'zzz' for storage kind 'file'" in msg


def test_unknown_option_is_reported_before_missing_option(constructed):
    msg = config_error({"kind": "ray", "options": {"path": "/x", "remote_args": {}}}, constructed)
    assert "did you mean 'remoteArgs'?" in msg and "missing" not in msg


@pytest.mark.parametrize("kind", ["file", "S3", "ray"])
def test_missing_required_option(constructed, kind):
    options = dict(VALID[kind])
    del options["path"]
    msg = config_error({"kind": kind, "options": options}, constructed)
    assert f"storage kind {kind!r} is missing option(s) 'path'" in msg


# -- kinds and the top level ------------------------------------------------------
@pytest.mark.parametrize(
    "kind, right",
    [("fiel", "file"), ("File", "file"), (" file", "file"), ("s3 ", "S3"), ("s3", "S3"), ("S 3", "S3"),
     ("Ray", "ray"), ("rya", "ray")],
)
def test_misspelt_kind_gets_did_you_mean(constructed, kind, right):
    msg = config_error({"kind": kind, "options": {"path": "/x"}}, constructed)
    assert msg.startswith(f"unknown storage kind {kind!r}; did you mean {right!r}? valid kinds: 'file'")


@pytest.mark.parametrize("kind", ["disk", "", None, 3, ["file"], {"file": 1}])
def test_unknown_kind_lists_valid_kinds(constructed, kind):
    msg = config_error({"kind": kind, "options": {"path": "/x"}}, constructed)
    assert msg.startswith(f"unknown storage kind {kind!r}; valid kinds: ")
    assert "'file'" in msg and "'S3'" in msg and "'ray'" in msg


def test_missing_kind(constructed):
    msg = config_error({"options": {"path": "/x"}}, constructed)
    assert "no 'kind'" in msg and "'file'" in msg


@pytest.mark.parametrize(
    "config, key, right",
    [
        ({"kind": "file", "option": {"path": "/x"}}, "option", "options"),
        ({"kind": "S3", "Options": VALID["S3"]}, "Options", "options"),
        ({"knd": "ray", "options": VALID["ray"]}, "knd", "kind"),
        ({"kind": "file", "options": {"path": "/x"}, "durable": True}, "durable", None),
    ],
)
def test_unknown_top_level_key(constructed, config, key, right):
    msg = config_error(config, constructed)
    assert msg.startswith(f"unknown key {key!r} in the storage configuration; ")
    assert (f"did you mean {right!r}?" in msg) == (right is not None)
    assert "'kind' and 'options'" in msg


@pytest.mark.parametrize("kind", ["file", "S3", "ray"])
@pytest.mark.parametrize("options", [["/x"], "/x", None, ("path", "/x")])
def test_options_not_a_dict(constructed, kind, options):
    msg = config_error({"kind": kind, "options": options}, constructed)
    assert msg.startswith(f"storage kind {kind!r} needs an 'options' dict with ") and "'path'" in msg
    assert f"got {options!r} ({type(options).__name__})" in msg


@pytest.mark.parametrize("config", ["file", None, [("kind", "file")], 3])
def test_config_not_a_dict(constructed, config):
    msg = config_error(config, constructed)
    assert msg.startswith("storage_factory takes a dict like {'kind': 'file', 'options': {'path': ...}}")
    assert f"got {config!r} ({type(config).__name__})" in msg


def test_real_storages_are_still_made(tmp_path):
    s = storage_factory({"kind": "file", "options": {"path": tmp_path / "s", "durable": True}})
    assert isinstance(s, FileStorage) and s.durable is True
    s3 = storage_factory({"kind": "S3", "options": {"path": "/bucket/p", "s3fs": None}})
    assert s3.url == "s3://bucket/p" and s3._fs is None  # nothing contacted
