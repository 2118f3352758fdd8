import textwrap

from functionfuse.fingerprint import code_fingerprint, normalized_source


def _define(src, name="f"):
    namespace = {}
    path = f"/tmp/_ff_fp_{abs(hash(src))}.py"
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(src))
    code = compile(textwrap.dedent(src), path, "exec")
    exec(code, namespace)
    return namespace[name]


BASE = """
def f(x):
    return x + 1
"""


def test_comments_docstrings_formatting_ignored():
    variants = [
        '''
def f(x):
    """A docstring."""
    # a comment
    return x + 1  # trailing
''',
        """
def f(x):

    return (x +
            1)
""",
    ]
    base = code_fingerprint(_define(BASE))
    for src in variants:
        assert code_fingerprint(_define(src)) == base


def test_code_changes_change_the_fingerprint():
    base = code_fingerprint(_define(BASE))
    assert code_fingerprint(_define(BASE.replace("+ 1", "+ 2"))) != base
    assert code_fingerprint(_define(BASE.replace("x + 1", "1 + x"))) != base


def test_version_replaces_source():
    f1 = _define(BASE)
    f2 = _define(BASE.replace("+ 1", "+ 2"))
    assert code_fingerprint(f1, "3") == code_fingerprint(f2, "3")
    assert code_fingerprint(f1, "3") != code_fingerprint(f1, "4")


def test_decorators_ignored_in_source():
    plain = normalized_source(_define(BASE))
    decorated = normalized_source(_define("import functools\n@functools.lru_cache\n" + BASE.lstrip()))
    assert plain == decorated


def test_lambda_and_no_source_fall_back_to_bytecode():
    f = eval("lambda x: x + 1")
    g = eval("lambda x: x + 2")
    assert code_fingerprint(f) != code_fingerprint(g)
    assert code_fingerprint(f) == code_fingerprint(eval("lambda x: x + 1"))


def test_inner_decorators_are_code():
    src = """
def f(x):
    @times({k})
    def g(y):
        return y + 1
    return g(x)
"""
    assert code_fingerprint(_define(src.format(k=2))) != code_fingerprint(_define(src.format(k=3)))


def test_source_edited_on_disk_but_not_reimported(tmp_path, caplog):
    import importlib.util
    import linecache

    path = tmp_path / "edited_mod.py"

    def load():
        spec = importlib.util.spec_from_file_location("edited_mod", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.f

    path.write_text("def f(x):\n    return x + 1\n")
    running = load()
    path.write_text("def f(x):\n    return x + 1000\n")  # edited, not re-imported
    linecache.checkcache(str(path))
    stale = code_fingerprint(running)
    assert "differs from the code that runs" in caplog.text
    assert stale != code_fingerprint(load())
