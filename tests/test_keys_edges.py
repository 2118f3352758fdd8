"""Keys follow code through the less common shapes of user code (issue 8 item 2).

Each test builds user code in a temporary folder or namespace, takes the
node's fingerprint, edits the code as a user would, and checks the
fingerprint changed (never a stale hit) — or, for edits that do not matter,
did not change (never a needless recompute).
"""

import importlib
import importlib.util
import json
import sys
import textwrap

import pytest

from functionfuse import tokenize
from functionfuse.fingerprint import begin_plan, node_fingerprint, references
from helpers import run_script


def fp(func):
    begin_plan()
    return node_fingerprint(func)[0]


def define(source, name="node", **namespace):
    namespace.setdefault("__name__", "__main__")
    exec(textwrap.dedent(source), namespace)
    return namespace[name], namespace


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write modules into a folder on sys.path; ``write(name, src)`` (re)loads one."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name, source):
        path = tmp_path / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        written.append(name)
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        return importlib.import_module(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_user_modules_importing_each_other(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "ffpkg").mkdir()
    (tmp_path / "ffpkg" / "__init__.py").write_text("from . import utils, models\n")
    (tmp_path / "ffpkg" / "utils.py").write_text("import ffpkg.models\ndef norm(x):\n    return x * 2\n")
    (tmp_path / "ffpkg" / "models.py").write_text("import ffpkg.utils\ndef fit(x):\n    return ffpkg.utils.norm(x) + 1\n")
    importlib.invalidate_caches()
    try:
        pkg = importlib.import_module("ffpkg")
        node, _ = define("def node(x):\n    return ffpkg.models.fit(x)\n", ffpkg=pkg)
        before = fp(node)
        (tmp_path / "ffpkg" / "utils.py").write_text("import ffpkg.models\ndef norm(x):\n    return x * 3\n")
        importlib.reload(sys.modules["ffpkg.utils"])
        assert fp(node) != before
    finally:
        for name in ("ffpkg", "ffpkg.utils", "ffpkg.models"):
            sys.modules.pop(name, None)


def test_globals_whose_attribute_access_raises():
    class Lazy:
        def __getattr__(self, name):
            raise RuntimeError("not inside a request")

    class AttrDict(dict):
        __getattr__ = dict.get

    node, ns = define("def node(x):\n    return LAZY, CFG['lr'] * x\n", LAZY=Lazy(), CFG=AttrDict(lr=1))
    before = fp(node)
    ns["CFG"] = AttrDict(lr=50)
    assert fp(node) != before


def test_functions_used_as_values_follow_their_helpers():
    node, ns = define(
        """
        K = 1
        def helper(x):
            return x * K
        OPS = {"scale": helper}
        def node(name, x, fn=helper):
            return OPS[name](x) + fn(x)
        """
    )
    before = fp(node)
    ns["K"] = 2
    assert fp(node) != before
    # a function passed as an argument
    token = tokenize(ns["helper"])
    ns["K"] = 3
    assert tokenize(ns["helper"]) != token


def test_lru_cached_and_wrapped_helpers_are_followed():
    node, ns = define(
        """
        import functools
        @functools.lru_cache
        def cached(x):
            return x + 1
        def node(x):
            return cached(x)
        """
    )
    before = fp(node)
    exec("import functools\n@functools.lru_cache\ndef cached(x):\n    return x + 2\n", ns)
    assert fp(node) != before


def test_imports_inside_the_body(modules):
    modules("ffhelp", "def helper(x):\n    return x + 1\n")
    node, _ = define("def node(x):\n    import ffhelp\n    return ffhelp.helper(x)\n")
    alias, _ = define("def node(x):\n    import ffhelp as h\n    return h.helper(x)\n")
    before, before_alias = fp(node), fp(alias)
    modules("ffhelp", "def helper(x):\n    return x + 2\n")
    assert fp(node) != before and fp(alias) != before_alias


def test_import_of_a_module_not_imported_yet_counts_its_source(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fflater.py").write_text("def helper(x):\n    return x\n")
    importlib.invalidate_caches()
    node, _ = define("def node(x):\n    from fflater import helper\n    return helper(x)\n")
    assert "fflater" not in sys.modules
    before = fp(node)
    assert fp(node) == before
    (tmp_path / "fflater.py").write_text("def helper(x):\n    return -x\n")
    assert fp(node) != before
    assert "fflater" not in sys.modules  # planning imports nothing


def test_mutual_recursion_does_not_hide_an_edit():
    src = """
    def f(n):
        return 0 if n <= 0 else g(n - 1) + {a}
    def g(n):
        return 0 if n <= 0 else f(n - 1) + 1
    def node1(x):
        return f(x)
    def node2(x):
        return g(x)
    """
    _, ns = define(src.format(a=1), name="f")
    begin_plan()
    from functionfuse.fingerprint import planning

    with planning():
        first = (node_fingerprint(ns["node1"])[0], node_fingerprint(ns["node2"])[0])
    exec(textwrap.dedent(src.format(a=5)), ns)
    with planning():
        second = (node_fingerprint(ns["node1"])[0], node_fingerprint(ns["node2"])[0])
    assert first[0] != second[0] and first[1] != second[1]


def test_unhashable_global_of_a_user_class_counts_its_code():
    src = """
    import threading
    class Proc:
        def __init__(self):
            self.lock = threading.Lock()
        def run(self, x):
            return x + {a}
    PROC = Proc()
    def node(x):
        return PROC.run(x)
    """
    node, _ = define(src.format(a=1))
    node2, _ = define(src.format(a=2))
    assert fp(node) != fp(node2)


def test_method_defaults_and_dataclass_factories_of_helper_classes():
    src = """
    from dataclasses import dataclass, field
    THRESH = {t}
    class Model:
        def predict(self, x, t=THRESH):
            return x > t
        class Inner:
            def m(self):
                return SCALE
    SCALE = {s}
    @dataclass
    class Conf:
        sizes: list = field(default_factory=lambda: [{f}])
    def node(x):
        return Model().predict(x), Model.Inner().m(), Conf()
    """
    base = fp(define(src.format(t=1, s=1, f=1))[0])
    assert fp(define(src.format(t=2, s=1, f=1))[0]) != base
    assert fp(define(src.format(t=1, s=2, f=1))[0]) != base
    assert fp(define(src.format(t=1, s=1, f=2))[0]) != base
    assert fp(define(src.format(t=1, s=1, f=1))[0]) == base


def test_module_loaded_from_a_file_without_registering_it(tmp_path):
    path = tmp_path / "loose.py"

    def load(body):
        path.write_text(f"def helper(x):\n    return {body}\n")
        spec = importlib.util.spec_from_file_location("loose_not_registered", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    node, ns = define("def node(x):\n    return M.helper(x)\n", M=load("x + 1"))
    before = fp(node)
    ns["M"] = load("x + 2")
    assert fp(node) != before


def test_class_attribute_reassigned_in_process():
    node, ns = define("class Model:\n    K = 1\ndef node(x):\n    return Model.K * x\n")
    from functionfuse.fingerprint import code_fingerprint

    before, cls_before = fp(node), code_fingerprint(ns["Model"])
    ns["Model"].K = 5
    assert fp(node) != before
    assert code_fingerprint(ns["Model"]) != cls_before


def test_two_lambdas_on_one_line_differ(tmp_path):
    path = tmp_path / "lams.py"
    path.write_text("OPS = [lambda x: x + 1, lambda x: x * 100]\n")
    ns = {"__name__": "lams_mod"}
    exec(compile(path.read_text(), str(path), "exec"), ns)
    assert tokenize(ns["OPS"][0]) != tokenize(ns["OPS"][1])


def test_attribute_named_like_a_global_is_not_that_global():
    node, ns = define("import re\nstart = 1.0\ndef node(s):\n    return re.search('a', s).start()\n")
    assert "start" not in references(node)
    before = fp(node)
    ns["start"] = 2.0
    assert fp(node) == before


def test_code_without_source_is_keyed_alike_in_every_process(tmp_path):
    script = tmp_path / "nosource.py"
    script.write_text(
        "import json\n"
        "from functionfuse.fingerprint import node_fingerprint\n"
        "ns = {'__name__': '__main__'}\n"
        "exec('def node(x):\\n    return x in {\"a\", \"b\", \"c\", \"d\"}\\n', ns)\n"
        "print(json.dumps(node_fingerprint(ns['node'])[0]))\n"
    )
    import os

    outs = set()
    for seed in ("1", "2", "3"):
        os.environ["PYTHONHASHSEED"] = seed
        try:
            outs.add(run_script(script).strip())
        finally:
            del os.environ["PYTHONHASHSEED"]
    assert len(outs) == 1, outs
    json.loads(outs.pop())
