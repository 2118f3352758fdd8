import pytest

from functionfuse import SerializationError, workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.serializers import FILE_PROTOCOL, SerializerRegistry


class Base:
    def __init__(self, v):
        self.v = v


class Child(Base):
    pass


class GrandChild(Child):
    pass


def make_serializer(name, cls, log):
    class S:
        serializer_class = cls
        version = "7"

        @staticmethod
        def pickle(obj, protocols):
            handle = protocols[FILE_PROTOCOL]
            fname = f"{name}-{obj.v}.txt"
            with handle.open(fname, "wb") as fh:
                fh.write(str(obj.v).encode())
            log.append(("pickle", name, type(obj).__name__))
            return (name, fname)

        @staticmethod
        def unpickle(fname, protocols):
            with protocols[FILE_PROTOCOL].open(fname, "rb") as fh:
                value = int(fh.read())
            log.append(("unpickle", name))
            return (name, value)

        @staticmethod
        def remove(fname, protocols):
            protocols[FILE_PROTOCOL].remove(fname)
            log.append(("remove", name))

    S.name = name
    return S


def test_mro_matching_most_specific_first():
    log = []
    reg = SerializerRegistry()
    base, child = make_serializer("base", Base, log), make_serializer("child", Child, log)
    reg.register(base, child)
    assert reg.match(Base) is base
    assert reg.match(Child) is child
    assert reg.match(GrandChild) is child
    assert reg.match(int) is None


def test_bad_serializer_rejected():
    with pytest.raises(SerializationError, match="lacks.*unpickle"):
        SerializerRegistry().register(type("X", (), {"name": "x", "serializer_class": int, "pickle": 1}))


def test_nested_dispatch_side_data_and_removal(storage):
    log = []
    storage.register_persistent_serializers(make_serializer("base", Base, log), make_serializer("child", Child, log))

    @workflow
    def produce():
        return {"a": [Base(1), (GrandChild(2),)], "plain": 3}

    wf = LocalWorkflow(produce().set_name("p"), workflow_name="wf")
    wf.set_storage(storage)
    wf.run()
    assert ("pickle", "base", "Base") in log and ("pickle", "child", "GrandChild") in log
    meta = storage.read_task_meta("wf", "p")
    assert meta["persistent"] == ["base", "child"]
    assert meta["persistent_versions"] == {"base": "7", "child": "7"}
    assert storage.read_task("wf", "p") == {"a": [("base", 1), (("child", 2),)], "plain": 3}
    side = storage.path + "/side/wf"
    import os

    assert sorted(os.listdir(side)) == ["base-1.txt", "child-2.txt"]
    storage.remove_task("wf", "p")
    assert os.listdir(side) == []
    assert ("remove", "base") in log and ("remove", "child") in log


def test_reading_with_unregistered_serializer_is_clear(storage, tmp_path):
    log = []
    storage.register_persistent_serializers(make_serializer("base", Base, log))
    storage.save("wf", "n", "0" * 32, Base(1), {})
    from functionfuse.storage import FileStorage

    fresh = FileStorage(storage.path)
    with pytest.raises(SerializationError, match="serializer 'base'.*not registered.*register_persistent_serializers"):
        fresh.load("wf", "0" * 32)
