"""The plain-data fast path of pickling.dumps writes exactly cloudpickle's bytes."""

import collections
import enum
import functools
import pickle
import subprocess
import sys
import textwrap
import threading

import cloudpickle
import pytest

from functionfuse.serializers import pickling


class Color(enum.IntEnum):
    RED = 1


class MyDict(dict):
    pass


class MyStr(str):
    pass


class Plain:
    def __init__(self, v):
        self.v = v


shared = [1, 2]
PLAIN = [
    None, True, False, 0, -1, 2**70, 1.5, float("nan"), float("inf"), "", "é\udcff", b"x", bytearray(b"y"),
    (), [], {}, set(), frozenset(),
    {"i": 5, "name": "item-5", "vals": [5, 10, 15]},
    [shared, shared, (shared, {"k": shared})],
    {1: (2, 3.0), (4, "a"): frozenset({5}), None: {6, 7}},
    list(range(5000)), "x" * 200_000, b"z" * 900_000,
]
NOT_PLAIN = [
    Color.RED, MyDict(a=1), MyStr("s"), Plain(1), [Plain(2)], {"f": len}, int, Plain,
    lambda x: x, functools.partial(max, 1), collections.OrderedDict(a=1), range(3), 1j,
]


@pytest.mark.parametrize("value", PLAIN, ids=range(len(PLAIN)))
def test_plain_values_take_the_fast_path_with_cloudpickles_bytes(value):
    fast = pickling._plain_dumps(value)
    assert fast is not None
    assert fast == cloudpickle.dumps(value, protocol=pickling.PICKLE_PROTOCOL)
    assert pickling.dumps(value) == (fast, [])
    again = pickling._plain_dumps(value)  # the reused pickler starts afresh
    assert again == fast


@pytest.mark.parametrize("value", NOT_PLAIN, ids=range(len(NOT_PLAIN)))
def test_other_values_go_to_cloudpickle(value):
    assert pickling._plain_dumps(value) is None
    data, pids = pickling.dumps(value)
    assert data == cloudpickle.dumps(value, protocol=pickling.PICKLE_PROTOCOL) and pids == []
    # The fast path still works afterwards, from a clean state.
    assert pickling._plain_dumps([1, "a"]) == pickle.dumps([1, "a"], protocol=5)


@pytest.mark.parametrize("value", [b"z" * (2 << 20), ["x" * 700_000, "y" * 700_000], [b"z" * (2 << 20), Plain(1)]])
def test_large_results_go_to_cloudpickle(value):
    assert pickling._plain_dumps(value) is None
    data, _ = pickling.dumps(value)
    assert data == cloudpickle.dumps(value, protocol=pickling.PICKLE_PROTOCOL)
    assert pickling._plain_dumps({"a": 1}) == pickle.dumps({"a": 1}, protocol=5)


def test_recursion_falls_back_to_cloudpickle():
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert pickling._plain_dumps(deep) is None
    with pytest.raises(Exception):
        pickling.dumps(deep)
    assert pickling._plain_dumps({"a": 1}) == pickle.dumps({"a": 1}, protocol=5)


def test_returned_bytes_survive_later_dumps():
    first = pickling._plain_dumps({"a": [1, 2, 3]})
    copy = bytes(first)
    pickling._plain_dumps(["something", "else", 3])
    assert first == copy and pickle.loads(first) == {"a": [1, 2, 3]}


def test_threads_do_not_share_a_pickler():
    errors = []

    def work(i):
        try:
            for j in range(2000):
                value = {"i": i, "j": j, "data": list(range(j % 50))}
                assert pickle.loads(pickling.dumps(value)[0]) == value
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_main_module_functions_and_classes_still_pickled_by_value(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import pickle, sys
        from functionfuse.serializers import pickling

        class Point:
            def __init__(self, x):
                self.x = x

        def double(v):
            return 2 * v

        data, _ = pickling.dumps({"f": double, "p": Point(3), "cls": Point})
        sys.stdout.buffer.write(data)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, check=True).stdout
    value = pickle.loads(out)  # in another process, without the script's __main__
    assert value["f"](21) == 42 and value["p"].x == 3 and value["cls"].__name__ == "Point"
