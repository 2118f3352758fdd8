"""Names as path components: distinct names never share a file (SPEC §3)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from functionfuse.storage import FileStorage
from functionfuse.storage.names import MAX_ENCODED, decode_name, encode_name, is_shortened
from functionfuse.testing.stores import _save


def test_tilde_is_encoded_so_it_never_looks_shortened():
    long_name = "x" * 300
    short = encode_name(long_name)
    assert is_shortened(short)
    crafted = short  # a user name spelled like the shortened form of another
    assert encode_name(crafted) != short
    assert not is_shortened(encode_name(crafted))
    assert decode_name(encode_name("a~b")) == "a~b"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_distinct_short_names_encode_distinctly(a, b):
    if a != b:
        assert encode_name(a) != encode_name(b)
        if not is_shortened(encode_name(a)):
            assert decode_name(encode_name(a)) == a


def test_recomputing_one_node_keeps_the_other_whose_name_has_a_tilde(tmp_path):
    storage = FileStorage(tmp_path / "s")
    long_name = "n" * 300
    crafted = encode_name(long_name)
    _save(storage, "wf", long_name, 1, "a" * 32)
    _save(storage, "wf", crafted, 2, "b" * 32)
    _save(storage, "wf", crafted, 3, "c" * 32)  # recomputing one never touches the other
    assert storage.read_task("wf", crafted) == 3
    assert storage.read_task("wf", long_name) == 1


# Arbitrary Unicode (surrogates included: Python strings may hold them), with the
# characters the encoding gives meaning to, and long names that get shortened.
_CHARS = st.characters(codec=None, categories=None) | st.sampled_from("~%./\\ .-_")
_NAMES = st.text(_CHARS, min_size=1, max_size=20) | st.text(_CHARS, min_size=140, max_size=400) | st.builds(
    lambda n: encode_name("x" * n), st.integers(151, 400))  # spelled like a shortened form


@settings(max_examples=500, deadline=None)
@given(_NAMES, _NAMES)
def test_the_encoding_is_one_to_one_and_safe(a, b):
    ea, eb = encode_name(a), encode_name(b)
    if a != b:
        assert ea != eb
    for name, enc in ((a, ea), (b, eb)):
        assert enc not in ("", ".", "..") and "/" not in enc and "\\" not in enc and "\x00" not in enc
        assert not enc.startswith(".") and len(enc) <= MAX_ENCODED
        assert set(enc) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-%~")
        if is_shortened(enc):
            assert len(name.encode("utf-8", "surrogatepass")) > 40  # only long names are shortened
        else:
            assert decode_name(enc) == name


def test_the_empty_name_is_refused():
    import pytest

    with pytest.raises(ValueError, match="non-empty"):
        encode_name("")
