"""Keys follow the code a node really uses (SPEC §2; issue 8 items 1 and 2).

Each test writes a small project into a temporary folder and runs it in fresh
interpreters, as a user would: as a script, imported, pasted in a notebook
cell, and after editing a file.
"""

import json
import sys
import textwrap

import numpy as np
import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.fingerprint import begin_plan, describe_change, node_fingerprint, references
from helpers import run_script

RUNNER = """
import json, sys
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory

def run(leaf, store):
    wf = LocalWorkflow(leaf, workflow_name="wf")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": store}}))
    result = wf.run()
    events = {e.node: [e.action, e.reason] for e in wf.last_report.events}
    print(json.dumps({"result": result, "events": events}))
"""

PIPELINE = """
import enum
from dataclasses import dataclass
from functionfuse import workflow
import runner

SCALE = 1
CONFIG = {"offset": 10}


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclass
class Params:
    factor: int = 2


def helper(x):
    return x * SCALE


@workflow
def load(n):
    return list(range(n))


@workflow
def transform(xs, params, mode):
    return [helper(x) * params.factor + CONFIG["offset"] for x in xs] + [mode.value]


def build():
    return transform(load(3), Params(), Mode.FAST).set_name("transform")


if __name__ == "__main__":
    import sys
    runner.run(build(), sys.argv[1])
"""


def _project(tmp_path, **files):
    files.setdefault("runner.py", RUNNER)
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def _run(path, *args):
    out = run_script(path, *args)
    return json.loads(out.strip().splitlines()[-1])


def _computed(out):
    return {n: r for n, (a, r) in out["events"].items() if a == "computed"}


def test_script_import_and_notebook_give_one_key(tmp_path):
    proj = _project(tmp_path, **{"pipeline.py": PIPELINE})
    store = tmp_path / "store"
    first = _run(proj / "pipeline.py", store)  # module __main__
    assert first["result"] == [10, 12, 14, "fast"]
    assert set(_computed(first)) == {"load_0000", "transform"}

    imported = proj / "use_import.py"
    imported.write_text("import sys, pipeline, runner\nrunner.run(pipeline.build(), sys.argv[1])\n")
    second = _run(imported, store)  # module 'pipeline'
    assert _computed(second) == {}
    assert second["events"]["transform"] == ["read", "cached"]

    # A notebook: the cell's source is registered with linecache under a name
    # that is not a file, and runs in __main__ (what IPython does).
    notebook = proj / "notebook.py"
    notebook.write_text(textwrap.dedent("""
        import linecache, sys, __main__
        src = open(sys.argv[2]).read().replace('if __name__ == "__main__":', 'if True:')
        cell = "<ipython-input-7-0123456789ab>"
        linecache.cache[cell] = (len(src), None, src.splitlines(True), cell)
        sys.argv = sys.argv[:2]
        exec(compile(src, cell, "exec"), __main__.__dict__)
    """))
    third = _run(notebook, store, proj / "pipeline.py")
    assert _computed(third) == {}
    # Each side kept the other's entries: nothing was deleted as stale.
    assert _computed(_run(proj / "pipeline.py", store)) == {}


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_module_constant_change_recomputes_and_names_it(tmp_path):
    proj = _project(tmp_path, **{"pipeline.py": PIPELINE})
    store = tmp_path / "store"
    _run(proj / "pipeline.py", store)
    assert _computed(_run(proj / "pipeline.py", store)) == {}  # touching nothing recomputes nothing

    _edit(proj / "pipeline.py", "SCALE = 1\n", "SCALE = 100\n")
    out = _run(proj / "pipeline.py", store)
    assert out["result"] == [10, 210, 410, "fast"]
    assert _computed(out) == {"transform": "code changed: helper helper"}

    _edit(proj / "pipeline.py", '{"offset": 10}', '{"offset": 20}')
    out = _run(proj / "pipeline.py", store)
    assert out["result"] == [20, 220, 420, "fast"]
    assert _computed(out) == {"transform": "code changed: global CONFIG"}
    assert _computed(_run(proj / "pipeline.py", store)) == {}


def test_helper_edits_in_same_and_other_module_recompute(tmp_path):
    proj = _project(
        tmp_path,
        **{
            "mathlib.py": """
                OFFSET = 1

                def shift(x):
                    return x + OFFSET

                def unused(x):
                    return -x
            """,
            "pipeline.py": """
                import sys
                import mathlib
                from functionfuse import workflow
                import runner

                def local_helper(x):
                    return mathlib.shift(x) * 2

                @workflow
                def compute(n):
                    from mathlib import shift
                    return [local_helper(i) for i in range(n)] + [shift(0)]

                @workflow
                def other(n):
                    return n

                runner.run(compute(other(3)).set_name("compute"), sys.argv[1])
            """,
        },
    )
    store = tmp_path / "store"
    assert _run(proj / "pipeline.py", store)["result"] == [2, 4, 6, 1]

    _edit(proj / "mathlib.py", "return -x", "return -2 * x")  # not used by the node
    assert _computed(_run(proj / "pipeline.py", store)) == {}

    _edit(proj / "mathlib.py", "OFFSET = 1", "OFFSET = 5")  # followed through shift
    out = _run(proj / "pipeline.py", store)
    assert out["result"] == [10, 12, 14, 5]
    assert set(_computed(out)) == {"compute"}
    assert "helper" in _computed(out)["compute"]

    _edit(proj / "pipeline.py", "* 2", "* 3")  # a helper in the node's own module
    out = _run(proj / "pipeline.py", store)
    assert out["result"] == [15, 18, 21, 5]
    assert _computed(out) == {"compute": "code changed: helper local_helper"}
    assert _computed(_run(proj / "pipeline.py", store)) == {}


SCALE = 3


def _uses_numpy_and_scale(x):
    return np.asarray(x) * SCALE


def test_installed_packages_count_by_version_not_source():
    begin_plan()
    refs = references(_uses_numpy_and_scale)
    assert refs["np"].startswith("module:numpy@numpy==" + np.__version__)
    assert refs["SCALE"].startswith("value:")


def test_global_value_changes_in_one_process(monkeypatch):
    begin_plan()
    before, parts_before = node_fingerprint(_uses_numpy_and_scale)
    monkeypatch.setitem(globals(), "SCALE", 4)
    begin_plan()  # every plan re-reads module-level values
    after, parts_after = node_fingerprint(_uses_numpy_and_scale)
    assert before != after
    assert describe_change(parts_before, parts_after) == "global SCALE"
    monkeypatch.setitem(globals(), "SCALE", 3)
    begin_plan()
    assert node_fingerprint(_uses_numpy_and_scale)[0] == before


def test_unhashable_global_counts_by_type_only():
    import threading

    lock = threading.Lock()
    namespace = {"LOCK": lock}
    exec("def f(x):\n    with LOCK:\n        return x\n", namespace)
    begin_plan()
    assert references(namespace["f"]) == {"LOCK": "type:_thread.lock"}


def test_ignored_module_state_does_not_change_keys():
    namespace = {"CALLS": [], "__functionfuse_ignore__": {"CALLS"}}
    exec("def f(x):\n    CALLS.append(x)\n    return x\n", namespace)
    begin_plan()
    first = node_fingerprint(namespace["f"])[0]
    namespace["CALLS"].append(1)
    begin_plan()
    assert node_fingerprint(namespace["f"])[0] == first
    assert references(namespace["f"]) == {}


def test_recursive_helpers_terminate():
    namespace = {}
    exec(
        "def even(n):\n    return True if n == 0 else odd(n - 1)\n"
        "def odd(n):\n    return False if n == 0 else even(n - 1)\n",
        namespace,
    )
    begin_plan()
    refs = references(namespace["even"])
    assert set(refs) == {"odd"}


def test_version_stands_for_the_code():
    begin_plan()
    fp, parts = node_fingerprint(_uses_numpy_and_scale, "7")
    assert parts == {"function": fp, "refs": {}}


def test_explain_names_changed_global_in_process(tmp_path):
    from functionfuse.storage import FileStorage

    namespace = {"workflow": workflow, "RATE": 0.5}
    exec("@workflow\ndef decay(x):\n    return x * RATE\n", namespace)
    storage = FileStorage(tmp_path / "s")

    def go():
        wf = LocalWorkflow(namespace["decay"](8).set_name("decay"), workflow_name="wf")
        wf.set_storage(storage)
        return wf.run(), wf.last_report.by_node()["decay"]

    assert go()[0] == 4
    namespace["RATE"] = 0.25
    value, event = go()
    assert value == 2 and (event.action, event.reason) == ("computed", "code changed: global RATE")
    assert go()[1].action == "read"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_editing_a_method_of_an_argument_object_changes_its_token():
    from functionfuse import tokenize

    def make(body):
        namespace = {"__name__": "__main__"}
        exec(
            "from dataclasses import dataclass\n"
            "@dataclass\nclass Prior:\n    scale: float = 1.0\n"
            f"    def sample(self):\n        return {body}\n"
            "class Plain:\n    def __init__(self):\n        self.k = 2\n"
            f"    def go(self):\n        return {body}\n",
            namespace,
        )
        return namespace

    a, b, c = make("self.scale * 2"), make("self.scale * 3"), make("self.scale * 2")
    assert tokenize(a["Prior"]()) != tokenize(b["Prior"]())
    assert tokenize(a["Prior"]()) == tokenize(c["Prior"]())
    assert tokenize(a["Plain"]()) != tokenize(b["Plain"]())
    assert tokenize(a["Plain"]()) == tokenize(c["Plain"]())


def test_helper_called_by_a_method_of_an_argument_object_counts(tmp_path):
    from functionfuse.storage import FileStorage

    namespace = {"workflow": workflow, "__name__": "__main__"}
    exec(
        "def clip(x):\n    return min(x, 2)\n"
        "class Config:\n    def __init__(self, x):\n        self.x = x\n"
        "    def value(self):\n        return clip(self.x)\n"
        "@workflow\ndef use(cfg):\n    return cfg.value()\n",
        namespace,
    )
    storage = FileStorage(tmp_path / "s")

    def go():
        wf = LocalWorkflow(namespace["use"](namespace["Config"](100)).set_name("use"), workflow_name="wf")
        wf.set_storage(storage)
        return wf.run(), wf.last_report.by_node()["use"]

    assert go()[0] == 2
    exec("def clip(x):\n    return min(x, 1000)\n", namespace)  # the helper, edited
    value, event = go()
    assert value == 100 and event.action == "computed"
    assert event.reason == "input changed: argument cfg"
    assert go()[1].action == "read"


def test_a_dotted_import_inside_a_node_gives_one_key_before_and_after_it_is_imported(tmp_path):
    # ``import xml.dom.minidom`` inside the node: in a fresh interpreter the package is
    # not imported when the first run is planned, and is when the second is.  Both runs
    # (and a later process that imported it first) must give the node one key.
    proj = _project(tmp_path, **{"dotted.py": """
        import json, sys
        from functionfuse import workflow
        import runner

        @workflow
        def parse(text):
            import xml.dom.minidom
            return xml.dom.minidom.parseString(text).documentElement.tagName

        if __name__ == "__main__":
            if len(sys.argv) > 2:
                import xml.dom.minidom  # noqa: F401 - imported before planning
            assert len(sys.argv) > 2 or "xml" not in sys.modules, "the test needs xml not imported yet"
            runner.run(parse("<doc/>"), sys.argv[1])
            runner.run(parse("<doc/>"), sys.argv[1])
    """})
    store = tmp_path / "store"
    out = run_script(proj / "dotted.py", store).strip().splitlines()
    first, second = (json.loads(line) for line in out[-2:])
    assert first["result"] == second["result"] == "doc"
    assert _computed(first) == {"parse_0000": "new"}
    assert _computed(second) == {}, second["events"]
    assert _computed(_run(proj / "dotted.py", store, "imported-first")) == {}
