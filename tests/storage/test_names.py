from functionfuse.testing.stores import _save
"""Names as path components: distinct names never share a file (SPEC §3)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from functionfuse.storage import FileStorage
from functionfuse.storage.names import decode_name, encode_name, is_shortened


def test_tilde_is_encoded_so_it_never_looks_shortened():
    long_name = "x" * 300
    short = encode_name(long_name)
    assert is_shortened(short)
    crafted = short  # a user name spelled like the shortened form of another
    assert encode_name(crafted) != short
    assert not is_shortened(encode_name(crafted))
    assert decode_name(encode_name("a~b")) == "a~b"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
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
