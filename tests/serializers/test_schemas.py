"""Schema records of dataclass / attrs / pydantic results and their change detection."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import textwrap
import uuid

import attrs
import pydantic
import pytest

from functionfuse.serializers import schemas
from functionfuse.serializers.schemas import REASON, changed_schema, schemas_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write Python modules into a folder on sys.path; forget them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a rewritten file is always re-read
    created: list[str] = []

    def write(source: str, name: str | None = None) -> str:
        """Write module ``name`` (``pkg.mod``; ``pkg.__init__`` for a package)."""
        name = name or f"ff_schema_{uuid.uuid4().hex[:12]}"
        path = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        created.append(name)
        return name

    write.folder = tmp_path  # type: ignore[attr-defined]
    yield write
    folder = str(tmp_path)
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(folder) or name in created:
            sys.modules.pop(name, None)


def run_python(code: str, *, cwd: str | None = None, path: str | None = None, seed: str = "12345") -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONHASHSEED"] = seed
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code] if cwd is None else [sys.executable, code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


TEMPLATES = {
    "dataclass": ("import dataclasses\n\n@dataclasses.dataclass\nclass Point:\n", "dataclass"),
    "frozen dataclass": (
        "import dataclasses\n\n@dataclasses.dataclass(frozen=True)\nclass Point:\n",
        "dataclass",
    ),
    "attrs": ("import attrs\n\n@attrs.define\nclass Point:\n", "attrs"),
    "attrs frozen": ("import attrs\n\n@attrs.frozen\nclass Point:\n", "attrs"),
    "pydantic": ("import pydantic\n\nclass Point(pydantic.BaseModel):\n", "pydantic"),
}


def point_module(template: str, fields: list[tuple[str, str]]) -> str:
    head, _ = TEMPLATES[template]
    body = "".join(f"    {name}: {type_}\n" for name, type_ in fields) or "    pass\n"
    return head + body


def make_point(module: str, **values):
    return importlib.import_module(module).Point(**values)


# -- records ------------------------------------------------------------------------------


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_record_shape(modules, template):
    name = modules(point_module(template, [("x", "int"), ("y", "list[float]")]))
    records = schemas_of([make_point(name, x=1, y=[2.0])])
    assert records == [
        {
            "class": f"{name}.Point",
            "module": name,
            "kind": TEMPLATES[template][1],
            "fields": [["x", "int"], ["y", "list[float]"]],
        }
    ]
    assert json.loads(json.dumps(records)) == records
    assert changed_schema(records) is None
    assert changed_schema(json.loads(json.dumps(records))) is None


def test_plain_objects_give_no_record():
    class Plain:
        pass

    @dataclasses.dataclass
    class Local:  # defined in a function: no record (cloudpickle stores it by value)
        x: int

    values = [1, 2.5, "s", b"b", None, Plain(), [1, "a", Plain()], {"a": (1, 2)}, {3}, Plain, Local]
    assert schemas_of(values) == []
    assert schemas_of([]) == []
    assert schemas_of(iter(values)) == []
    assert schemas._CACHE[Plain] is None  # answered once per class
    assert schemas_of([Local(1)]) == []


def test_one_record_per_class_in_first_met_order(modules):
    name = modules(
        """
        import dataclasses

        @dataclasses.dataclass
        class A:
            x: int

        @dataclasses.dataclass
        class B:
            y: str
        """
    )
    mod = importlib.import_module(name)
    records = schemas_of([mod.B("q"), 1, mod.A(1), mod.B("r"), mod.A(2)])
    assert [r["class"] for r in records] == [f"{name}.B", f"{name}.A"]


def test_field_order_matters_and_classvar_initvar_are_not_fields(modules):
    name = modules(
        """
        import dataclasses
        from typing import ClassVar

        @dataclasses.dataclass
        class Point:
            b: int
            a: str
            count: ClassVar[int] = 0
            scale: dataclasses.InitVar[float] = 1.0
            c: float = dataclasses.field(init=False, default=0.0)
        """
    )
    (record,) = schemas_of([make_point(name, b=1, a="x")])
    assert record["fields"] == [["b", "int"], ["a", "str"], ["c", "float"]]


def test_attrs_untyped_attribute_and_old_api(modules):
    name = modules(
        """
        import attr

        @attr.s
        class Point:
            x = attr.ib()
            y = attr.ib(type=int)
        """
    )
    (record,) = schemas_of([make_point(name, x=1, y=2)])
    assert record["kind"] == "attrs"
    assert record["fields"] == [["x", ""], ["y", "int"]]
    assert changed_schema([record]) is None


def test_pydantic_field_defaults_and_constraints_are_not_the_shape(modules):
    name = modules(
        """
        from typing import Annotated, Optional
        import pydantic

        class Point(pydantic.BaseModel):
            x: Annotated[int, pydantic.Field(gt=0)]
            label: Optional[str] = pydantic.Field(default=None, alias="Label")
        """
    )
    (record,) = schemas_of([make_point(name, x=3)])
    assert record["fields"] == [["x", "int"], ["label", "Optional[str]"]]


# -- type texts ---------------------------------------------------------------------------

ANNOTATED_MODULE = """
{future}
import collections.abc
import typing
from typing import Annotated, Callable, ClassVar, Dict, List, Literal, Optional, Sequence, TypeVar, Union
import dataclasses

T = TypeVar("T")


@dataclasses.dataclass
class Holder:
    a: list[int]
    b: dict[str, "Other"]
    c: Optional[str]
    d: "Other"
    e: List[int]
    f: int | None
    g: "Missing"
    h: Annotated[int, "metadata"]
    i: Union[int, str]
    j: tuple[int, ...]
    k: Literal["a", 1]
    l: Callable[[int], str]
    m: Sequence[T]
    n: Dict[str, List["Other"]]
    o: "Optional[Other]"
    p: typing.Any
    q: "list[Missing]"
    r: Union[int, str, None]
    count: ClassVar[int] = 0


@dataclasses.dataclass
class Other:
    v: float
"""


def expected_holder_fields(mod: str) -> list[list[str]]:
    return [
        ["a", "list[int]"],
        ["b", f"dict[str, {mod}.Other]"],
        ["c", "Optional[str]"],
        ["d", f"{mod}.Other"],
        ["e", "list[int]"],
        ["f", "Optional[int]"],
        ["g", "Missing"],
        ["h", "int"],
        ["i", "Union[int, str]"],
        ["j", "tuple[int, ...]"],
        ["k", "Literal['a', 1]"],
        ["l", "collections.abc.Callable[[int], str]"],
        ["m", "collections.abc.Sequence[~T]"],
        ["n", f"dict[str, list[{mod}.Other]]"],
        ["o", f"Optional[{mod}.Other]"],
        ["p", "typing.Any"],
        ["q", "list[Missing]"],
        ["r", "Union[int, str, None]"],
    ]


def make_holder(mod):
    o = mod.Other(1.0)
    return mod.Holder([1], {"k": o}, None, o, [], None, None, 1, 1, (1,), "a", str, [], {}, None, 0, [], None)


@pytest.mark.parametrize("future", ["", "from __future__ import annotations"])
def test_generic_annotations_and_forward_references(modules, future):
    name = modules(ANNOTATED_MODULE.format(future=future))
    mod = importlib.import_module(name)
    records = schemas_of([make_holder(mod)])
    assert records[0] == {
        "class": f"{name}.Holder",
        "module": name,
        "kind": "dataclass",
        "fields": expected_holder_fields(name),
    }
    assert records[1]["fields"] == [["v", "float"]]
    assert changed_schema(records) is None
    assert not any(" at 0x" in t for r in records for _, t in r["fields"])


def test_pydantic_and_attrs_forward_references(modules):
    name = modules(
        """
        from __future__ import annotations
        from typing import Optional
        import attrs
        import pydantic

        class Model(pydantic.BaseModel):
            child: Optional[Child] = None
            items: list["Child"] = []

        @attrs.define
        class Box:
            inner: Optional[Child]
            many: dict[str, "Child"]

        class Child(pydantic.BaseModel):
            n: int
        """
    )
    mod = importlib.import_module(name)
    records = schemas_of([mod.Model(child=mod.Child(n=1)), mod.Box(None, {})])
    by_class = {r["class"]: r["fields"] for r in records}
    assert by_class[f"{name}.Model"] == [
        ["child", f"Optional[{name}.Child]"],
        ["items", f"list[{name}.Child]"],
    ]
    assert by_class[f"{name}.Box"] == [
        ["inner", f"Optional[{name}.Child]"],
        ["many", f"dict[str, {name}.Child]"],
    ]
    assert by_class[f"{name}.Child"] == [["n", "int"]]
    assert changed_schema(records) is None


# -- changes ------------------------------------------------------------------------------

CHANGES = {
    "unchanged": ([("x", "int"), ("y", "int")], None),
    "added": ([("x", "int"), ("y", "int"), ("z", "int")], "{cls} gained field z"),
    "removed": ([("x", "int")], "{cls} lost field y"),
    "renamed": ([("x", "int"), ("w", "int")], "{cls} field y renamed to w"),
    "reordered": ([("y", "int"), ("x", "int")], "{cls} fields reordered (x, y) -> (y, x)"),
    "type changed": ([("x", "float"), ("y", "int")], "{cls} field x int -> float"),
    "two added": ([("x", "int"), ("y", "int"), ("z", "int"), ("t", "int")], "{cls} gained fields z, t"),
    "one lost one gained": ([("y", "int"), ("z", "int")], "{cls} lost field x and gained field z"),
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("template", list(TEMPLATES))
def test_changes_are_described(modules, template, change):
    name = modules(point_module(template, [("x", "int"), ("y", "int")]))
    records = json.loads(json.dumps(schemas_of([make_point(name, x=1, y=2)])))
    modules(point_module(template, CHANGES[change][0]), name=name)  # the class as it is now
    assert name not in sys.modules
    expected = CHANGES[change][1]
    found = changed_schema(records)
    assert name in sys.modules  # imported to be compared
    if expected is None:
        assert found is None
    else:
        assert found == f"{REASON}: " + expected.format(cls=f"{name}.Point")


def test_class_gone_module_gone_or_broken(modules):
    name = modules(point_module("dataclass", [("x", "int")]))
    records = schemas_of([make_point(name, x=1)])

    modules("class Other:\n    pass\n", name=name)
    assert changed_schema(records) == f"{REASON}: class {name}.Point no longer exists"

    modules("Point = 3\n", name=name)
    assert changed_schema(records) == f"{REASON}: {name}.Point is no longer a class"

    modules("class Point:\n    x: int\n", name=name)
    assert changed_schema(records) == f"{REASON}: {name}.Point is no longer a dataclass"

    modules("raise RuntimeError('broken on import')\n", name=name)
    assert changed_schema(records) == (
        f"{REASON}: class {name}.Point no longer exists: module {name} cannot be imported (RuntimeError)"
    )

    os.remove(modules.folder / f"{name}.py")
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    assert changed_schema(records) == f"{REASON}: class {name}.Point no longer exists"


@pytest.mark.parametrize(
    ("before", "after"), [("dataclass", "attrs"), ("attrs", "pydantic"), ("pydantic", "dataclass")]
)
def test_kind_changed(modules, before, after):
    name = modules(point_module(before, [("x", "int")]))
    records = schemas_of([make_point(name, x=1)])
    modules(point_module(after, [("x", "int")]), name=name)
    assert changed_schema(records) == f"{REASON}: {name}.Point is now {after}, was {before}"


def test_first_changed_record_is_reported(modules):
    a = modules(point_module("dataclass", [("x", "int")]))
    b = modules(point_module("attrs", [("x", "int")]))
    records = schemas_of([make_point(a, x=1), make_point(b, x=1)])
    modules(point_module("attrs", [("x", "str")]), name=b)
    assert changed_schema(records) == f"{REASON}: {b}.Point field x int -> str"


# -- nesting ------------------------------------------------------------------------------

NESTED_MODULE = """
from __future__ import annotations
import dataclasses
from typing import Any, Optional
import attrs
import pydantic


@dataclasses.dataclass
class Leaf:
    v: {leaf_type}


@attrs.define
class Tag:
    name: str


class Meta(pydantic.BaseModel):
    author: str
    leaf: Optional[Leaf] = None


@dataclasses.dataclass
class Tree:
    leaf: Any
    tags: list
    meta: Any = None
    by_name: dict = dataclasses.field(default_factory=dict)
    parent: Optional[Tree] = None
"""


def test_nested_instances_are_recorded(modules):
    name = modules(NESTED_MODULE.format(leaf_type="int"))
    mod = importlib.import_module(name)
    tree = mod.Tree(
        leaf=mod.Leaf(1),
        tags=[mod.Tag("a"), mod.Tag("b")],
        meta=mod.Meta(author="me", leaf=mod.Leaf(2)),
        by_name={"x": 1},
    )
    tree.parent = tree  # a cycle ends
    records = schemas_of([tree])
    assert [r["class"].rsplit(".", 1)[1] for r in records] == ["Tree", "Leaf", "Tag", "Meta"]
    assert [r["kind"] for r in records] == ["dataclass", "dataclass", "attrs", "pydantic"]
    assert changed_schema(records) is None

    modules(NESTED_MODULE.format(leaf_type="float"), name=name)
    assert changed_schema(records) == f"{REASON}: {name}.Leaf field v int -> float"


def test_instances_inside_plain_containers_and_dict_keys(modules):
    name = modules(
        """
        import dataclasses

        @dataclasses.dataclass(frozen=True)
        class Key:
            k: str

        @dataclasses.dataclass
        class Value:
            v: int
        """
    )
    mod = importlib.import_module(name)
    shared = [mod.Value(1)]
    value = {"a": (shared, shared), mod.Key("k"): {frozenset({1}), 2}}
    value["self"] = value
    records = schemas_of([value, shared])
    assert sorted(r["class"] for r in records) == [f"{name}.Key", f"{name}.Value"]


def test_plain_object_attributes_are_not_searched(modules):
    name = modules(point_module("dataclass", [("x", "int")]))

    class Holder:
        def __init__(self, inner):
            self.inner = inner

    assert schemas_of([Holder(make_point(name, x=1))]) == []


def test_local_class_fields_are_still_searched(modules):
    name = modules(point_module("dataclass", [("x", "int")]))

    @dataclasses.dataclass
    class Local:
        inner: object

    assert [r["class"] for r in schemas_of([Local(make_point(name, x=1))])] == [f"{name}.Point"]


def test_failing_field_does_not_break_recording():
    @dataclasses.dataclass
    class Late:
        x: int
        y: int = dataclasses.field(init=False)  # never set

    assert schemas_of([Late(1)]) == []  # local: no record, and no AttributeError


# -- __main__ -----------------------------------------------------------------------------


def test_main_classes_in_process(monkeypatch):
    main = sys.modules["__main__"]
    name = f"MainPoint{uuid.uuid4().hex[:8]}"
    cls = dataclasses.make_dataclass(name, [("x", int)], namespace={"__module__": "__main__"})
    cls.__qualname__ = name
    monkeypatch.setattr(main, name, cls, raising=False)
    records = schemas_of([cls(1)])
    assert records == [
        {"class": f"__main__.{name}", "module": "__main__", "kind": "dataclass", "fields": [["x", "int"]]}
    ]
    assert changed_schema(records) is None

    changed = dataclasses.make_dataclass(name, [("x", int), ("y", str)], namespace={"__module__": "__main__"})
    changed.__qualname__ = name
    monkeypatch.setattr(main, name, changed)
    assert changed_schema(records) == f"{REASON}: __main__.{name} gained field y"

    monkeypatch.delattr(main, name)
    assert changed_schema(records) == f"{REASON}: class __main__.{name} no longer exists"


def test_main_classes_in_a_script(tmp_path):
    script = tmp_path / "pipeline.py"
    script.write_text(
        textwrap.dedent(
            """
            import dataclasses, json
            from typing import Optional
            from functionfuse.serializers.schemas import schemas_of, changed_schema

            @dataclasses.dataclass
            class Point:
                x: int
                y: Optional["Point"] = None

            records = schemas_of([Point(1, Point(2))])
            edited = json.loads(json.dumps(records))
            edited[0]["fields"][0][1] = "float"
            print(json.dumps([records, changed_schema(records), changed_schema(edited)]))
            """
        )
    )
    records, same, edited = json.loads(run_python(str(script), cwd=str(tmp_path)))
    assert records == [
        {
            "class": "__main__.Point",
            "module": "__main__",
            "kind": "dataclass",
            "fields": [["x", "int"], ["y", "Optional[__main__.Point]"]],
        }
    ]
    assert same is None
    assert edited == f"{REASON}: __main__.Point field x float -> int"


# -- across processes ---------------------------------------------------------------------

STABLE_MODULE = (
    ANNOTATED_MODULE.format(future="")
    + """

import attrs
import pydantic


@attrs.frozen
class Pair:
    left: Holder
    right: Optional["Model"]


class Model(pydantic.BaseModel):
    a: list[int]
    b: dict[str, Optional[float]]
    c: "Optional[Model]" = None


class Outer:
    @dataclasses.dataclass
    class Inner:
        z: tuple[str, int]


def sample():
    o = Other(1.0)
    holder = Holder([1], {"k": o}, None, o, [], None, None, 1, 1, (1,), "a", str, [], {}, None, 0, [], None)
    return [Pair(holder, Model(a=[1], b={"x": None}, c=Model(a=[], b={}))), Outer.Inner(("s", 1)), 42]
"""
)


@pytest.mark.parametrize("seed", ["0", "987"])
def test_records_are_the_same_in_another_process(modules, seed):
    name = modules(STABLE_MODULE)
    code = textwrap.dedent(
        f"""
        import json
        from functionfuse.serializers.schemas import schemas_of
        import {name}
        print(json.dumps(schemas_of({name}.sample())))
        """
    )
    theirs = json.loads(run_python(code, path=str(modules.folder), seed=seed))
    assert name not in sys.modules
    assert changed_schema(theirs) is None  # imports the module here and finds the same schema
    ours = schemas_of(importlib.import_module(name).sample())
    assert ours == theirs
    assert {r["class"] for r in ours} == {
        f"{name}.{c}" for c in ("Pair", "Holder", "Other", "Model", "Outer.Inner")
    }
    inner = next(r for r in ours if r["class"].endswith("Outer.Inner"))
    assert inner["module"] == name and inner["fields"] == [["z", "tuple[str, int]"]]


def test_change_made_after_another_process_recorded(modules):
    name = modules(point_module("pydantic", [("x", "int"), ("y", "list[int]")]))
    code = f"import json, {name}\nfrom functionfuse.serializers.schemas import schemas_of\n"
    code += f"print(json.dumps(schemas_of([{name}.Point(x=1, y=[2])])))\n"
    theirs = json.loads(run_python(code, path=str(modules.folder)))
    modules(point_module("pydantic", [("x", "int"), ("y", "list[str]")]), name=name)
    assert changed_schema(theirs) == f"{REASON}: {name}.Point field y list[int] -> list[str]"


# -- records without "module" -------------------------------------------------------------


def test_record_without_module_finds_the_longest_module_prefix(modules):
    modules("", name="ffpkg_schema.__init__")
    name = modules(
        """
        import dataclasses

        class Outer:
            @dataclasses.dataclass
            class Inner:
                x: int
        """,
        name="ffpkg_schema.sub",
    )
    try:
        record = schemas_of([importlib.import_module(name).Outer.Inner(1)])[0]
        assert record["class"] == "ffpkg_schema.sub.Outer.Inner" and record["module"] == "ffpkg_schema.sub"
        del record["module"]
        assert changed_schema([record]) is None
        for loaded in ("ffpkg_schema.sub", "ffpkg_schema"):
            sys.modules.pop(loaded, None)
        assert changed_schema([record]) is None  # imported from the prefix
        record["fields"] = [["x", "str"]]
        assert changed_schema([record]) == f"{REASON}: ffpkg_schema.sub.Outer.Inner field x str -> int"
        record["class"] = "ffpkg_schema.sub.Outer.Gone"
        assert changed_schema([record]) == f"{REASON}: class ffpkg_schema.sub.Outer.Gone no longer exists"
    finally:
        for loaded in ("ffpkg_schema.sub", "ffpkg_schema"):
            sys.modules.pop(loaded, None)


# -- malformed records --------------------------------------------------------------------

GOOD = {"class": "json.JSONDecoder", "module": "json", "kind": "dataclass", "fields": []}


@pytest.mark.parametrize(
    "records",
    [
        {"class": "x"},
        "text",
        [1],
        [None],
        [{}],
        [{**GOOD, "class": 3}],
        [{**GOOD, "class": ""}],
        [{**GOOD, "module": 5}],
        [{**GOOD, "module": "yaml"}],
        [{**GOOD, "module": "json.JSONDecoder"}],
        [{**GOOD, "kind": "namedtuple"}],
        [{**GOOD, "kind": None}],
        [{**GOOD, "fields": "x"}],
        [{**GOOD, "fields": [["x"]]}],
        [{**GOOD, "fields": [["x", 1]]}],
        [{**GOOD, "fields": [[1, "int"]]}],
        [{**GOOD, "fields": [{"x": "int"}]}],
    ],
)
def test_malformed_records_are_described_not_raised(records):
    found = changed_schema(records)
    assert isinstance(found, str)
    assert found.startswith(f"{REASON}: malformed schema record (")


def test_nothing_recorded_is_unchanged():
    assert changed_schema(None) is None
    assert changed_schema([]) is None


def test_existing_plain_class_is_described():
    assert changed_schema([GOOD]) == f"{REASON}: json.JSONDecoder is no longer a dataclass"
    gone = {**GOOD, "class": "json.decoder.Nope.Deeper", "module": "json.decoder"}
    assert changed_schema([gone]) == f"{REASON}: class json.decoder.Nope.Deeper no longer exists"
    unknown = {**GOOD, "class": "no_such_module_ff_schema.Point", "module": "no_such_module_ff_schema"}
    assert changed_schema([unknown]) == f"{REASON}: class no_such_module_ff_schema.Point no longer exists"


def test_unhashable_class_and_hostile_fields_do_not_raise(modules):
    class Meta(type):
        def __eq__(cls, other):
            return cls is other

        __hash__ = None  # type: ignore[assignment]

    class Odd(metaclass=Meta):
        pass

    assert schemas_of([Odd(), [Odd()]]) == []

    name = modules(
        """
        import dataclasses

        @dataclasses.dataclass
        class Point:
            x: int

            def __getattribute__(self, item):
                if item == "x":
                    raise ValueError("no")
                return object.__getattribute__(self, item)
        """
    )
    point = importlib.import_module(name).Point.__new__(importlib.import_module(name).Point)
    assert [r["class"] for r in schemas_of([point])] == [f"{name}.Point"]


# -- imports ------------------------------------------------------------------------------


def test_import_and_use_do_not_import_attrs_or_pydantic():
    code = textwrap.dedent(
        """
        import dataclasses, sys
        import functionfuse.serializers.schemas as schemas

        @dataclasses.dataclass
        class P:
            x: int

        records = schemas.schemas_of([P(1), 1, "a", [P(2)], {"k": object()}])
        assert records and records[0]["kind"] == "dataclass", records
        assert schemas.changed_schema(records) is None
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("attr", "attrs", "pydantic", "pydantic_core")))
        """
    )
    assert run_python(code).strip() == "[]"


def test_installed_libraries_are_the_expected_majors():
    assert int(pydantic.VERSION.split(".")[0]) == 2
    assert hasattr(attrs, "define")
