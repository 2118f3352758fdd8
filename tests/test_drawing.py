"""Drawings (issue 10 item 3): DOT text, rendered files, networkx, HTML tables, GraphWorkflow."""

import html
import itertools
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT

from functionfuse import FunctionFuseError, GraphError, workflow
from functionfuse.backends.builtin.graphback import GraphWorkflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.drawing import (
    STATUS_COLOURS,
    DrawingError,
    DrawingFormatError,
    GraphvizNotFoundError,
    html_table,
    to_dot,
)
from functionfuse.storage import FileStorage

RATE = 2  # a global scale() reads: changing it changes scale's key

GREEN = STATUS_COLOURS["cached"][0]
ORANGE = STATUS_COLOURS["will compute"][0]
YELLOW = STATUS_COLOURS["replay"][0]
GREY = STATUS_COLOURS["not stored"][0]


@workflow
def load(n):
    return list(range(n))


@workflow
def scale(xs, factor):
    return [x * factor * RATE for x in xs]


@workflow
def total(xs):
    return sum(xs)


@workflow
def plot(value):
    logging.getLogger(__name__).debug("plotting %s", value)


@workflow
class Counter:
    def __init__(self):
        self.count = 0

    def add(self, n):
        self.count += n
        return self.count


def pipeline():
    data = load(4).set_name("load")
    scaled = scale(data, 3).set_name("scale")
    result = total(scaled).set_name("total")
    plot(result).set_name("plot")
    return data, result


# -- a reader of our DOT that does what Graphviz does with it -----------------------------

QSTRING = r'"(?:[^"\\]|\\.)*"'
NODE_LINE = re.compile(rf"^    ({QSTRING}) \[(.*)\];$")
EDGE_LINE = re.compile(rf"^    ({QSTRING}) -> ({QSTRING})( \[.*\])?;$")
ATTR = re.compile(rf"(\w+)=({QSTRING})")


def unquote(quoted):
    """A quoted DOT string as Graphviz's lexer, then its entity decoding, read it."""
    inner = quoted[1:-1]
    # Only \" (and \n in labels) may appear: no raw backslash another Graphviz version could misread.
    assert "\\" not in inner.replace('\\"', "").replace("\\n", ""), quoted
    return html.unescape(inner.replace('\\"', '"'))


def label_text(quoted):
    """A label as Graphviz shows it: decoded, then its escString backslashes applied."""
    text, out, i = unquote(quoted), [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append("\n" if text[i + 1] == "n" else text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse(dot):
    """``(nodes {id: {attr: raw quoted value}}, edges [(parent, child, raw attrs)])``; every line checked."""
    lines = dot.splitlines()
    assert lines[0].startswith("// functionfuse workflow ")
    assert lines[1].startswith("digraph ") and lines[1].endswith(" {")
    assert lines[-1] == "}" and dot.endswith("}\n")
    nodes, edges = {}, []
    for line in lines[2:-1]:
        if line.startswith(("    graph [", "    node [", "    edge [")):
            continue
        edge = EDGE_LINE.match(line)
        if edge:
            edges.append((unquote(edge[1]), unquote(edge[2]), edge[3] or ""))
            continue
        node = NODE_LINE.match(line)
        assert node, f"not a node, edge or attribute line: {line!r}"
        attrs = dict(ATTR.findall(node[2]))
        assert ", ".join(f"{k}={v}" for k, v in attrs.items()) == node[2]  # nothing else on the line
        nodes[unquote(node[1])] = attrs
    return nodes, edges


def fill_of(nodes):
    return {name: unquote(attrs["fillcolor"]) if "fillcolor" in attrs else None for name, attrs in nodes.items()}


# -- DOT text -------------------------------------------------------------------------------


def test_dot_structure_without_storage():
    data, _ = pipeline()
    wf = LocalWorkflow(data, workflow_name="wf")
    dot = wf.to_dot()
    nodes, edges = parse(dot)
    assert list(nodes) == ["load", "scale", "total", "plot"]
    assert {name: label_text(attrs["label"]) for name, attrs in nodes.items()} == {n: n for n in nodes}
    assert [(p, c) for p, c, _ in edges] == [("load", "scale"), ("scale", "total"), ("total", "plot")]
    assert fill_of(nodes) == dict.fromkeys(nodes)  # no storage: nothing to colour by
    assert "legend" not in dot
    assert dot.splitlines()[1] == 'digraph "wf" {'
    assert to_dot(wf) == dot  # the method and the function agree
    # deterministic: the same graph built again draws the same bytes
    again, _ = pipeline()
    assert LocalWorkflow(again, workflow_name="wf").to_dot() == dot


def test_dot_default_names_and_stateful_call_order():
    a = load(2)
    counter = Counter().set_name("counter")
    first = counter.add(total(a))
    second = counter.add(5)
    wf = LocalWorkflow(second, workflow_name="wf")
    nodes, edges = parse(wf.to_dot())
    assert list(nodes) == ["load_0000", "counter", "total_0000", "Counter.add_0000", "Counter.add_0001"]  # creation order
    assert first.get_name() == "Counter.add_0000"
    styles = {(p, c): "dashed" in attrs for p, c, attrs in edges}
    assert styles == {
        ("load_0000", "total_0000"): False,
        ("total_0000", "Counter.add_0000"): False,
        ("counter", "Counter.add_0000"): True,  # same instance, call order
        ("Counter.add_0000", "Counter.add_0001"): True,
    }
    assert "method Counter.add" in unquote(nodes["Counter.add_0001"]["tooltip"])


NASTY = [
    'say "hi"',
    "ends with a backslash\\",
    'backslash then quote \\"',
    "two\nlines",
    "a & b &amp; &#92; <tag>",
    "a\\b",
    "a&#92;b",  # must not collide with a\b
    "café ☕ 😀",
    "tab\there",
    "\\N \\G \\n \\l",  # Graphviz escapes, shown literally
    "{record|like}",
]


def test_dot_escapes_any_name():
    nodes_made = [load(1).set_name(NASTY[0])]
    for name in NASTY[1:]:
        nodes_made.append(total([nodes_made[-1]]).set_name(name))
    wf = LocalWorkflow(nodes_made[0], workflow_name='wf "quoted" \\ é\n')
    dot = wf.to_dot()
    nodes, edges = parse(dot)
    assert list(nodes) == NASTY
    assert [label_text(attrs["label"]) for attrs in nodes.values()] == NASTY
    assert [(p, c) for p, c, _ in edges] == list(itertools.pairwise(NASTY))
    header = dot.splitlines()[1]
    assert unquote(header[len("digraph ") : -len(" {")]) == 'wf "quoted" \\ é\n'
    assert "\n" not in dot.splitlines()[0]  # a newline in the name cannot end the comment
    # no raw control character anywhere (tabs and newlines are escaped), UTF-8 kept as text
    assert not [c for c in dot if ord(c) < 0x20 and c != "\n"]
    assert "café ☕ 😀" in dot


def test_dot_survives_unencodable_names(tmp_path):
    node = load(1).set_name("bad \udc80 surrogate")
    wf = LocalWorkflow(node, workflow_name="wf")
    path = wf.draw(tmp_path / "g.gv")
    nodes, _ = parse(path.read_text(encoding="utf-8"))
    assert list(nodes) == ["bad \ufffd surrogate"]


# -- colours from the plan -------------------------------------------------------------------


def test_colours_follow_the_plan(tmp_path, monkeypatch):
    storage = FileStorage(tmp_path / "s")
    data, _ = pipeline()
    wf = LocalWorkflow(data, workflow_name="wf")
    wf.set_storage(storage)
    wf.log_nodes("plot")

    nodes, _ = parse(wf.to_dot())  # nothing stored yet: everything would compute, as "new"
    assert fill_of(nodes) == {"load": ORANGE, "scale": ORANGE, "total": ORANGE, "plot": GREY}
    assert label_text(nodes["scale"]["label"]) == "scale\nnew"

    wf.run()
    dot = wf.to_dot()
    nodes, _ = parse(dot)
    assert fill_of(nodes) == {"load": GREEN, "scale": GREEN, "total": GREEN, "plot": GREY}
    assert label_text(nodes["total"]["label"]) == "total"
    assert "cached (read or skipped)" in dot and "not stored" in dot and "will compute" not in dot

    monkeypatch.setitem(globals(), "RATE", 5)  # scale's code now reads another value
    dot = wf.to_dot()
    nodes, _ = parse(dot)
    assert fill_of(nodes) == {"load": GREEN, "scale": ORANGE, "total": ORANGE, "plot": GREY}
    assert label_text(nodes["scale"]["label"]) == "scale\ncode changed: global RATE"
    assert label_text(nodes["total"]["label"]) == (
        "total\ninput changed: scale; may be cut off: depends on whether scale changes"
    )
    assert unquote(nodes["scale"]["tooltip"]).startswith("scale: compute (code changed: global RATE)")
    assert "will compute (reason under the name)" in dot
    # the drawing says what explain() says, and planning wrote nothing
    plan = wf.explain().by_node()
    assert plan["scale"].action == "compute" and plan["load"].reason == "cached"
    assert storage.list_tasks("wf") == ["load", "scale", "total"]

    # plan=False draws the bare graph without reading the storage
    bare, _ = parse(wf.to_dot(plan=False))
    assert fill_of(bare) == dict.fromkeys(bare)


def test_replayed_calls_are_yellow(tmp_path):
    storage = FileStorage(tmp_path / "s")

    def build(last):
        counter = Counter().set_name("counter")
        counter.add(1).set_name("first")
        return counter.add(last).set_name("second")

    wf = LocalWorkflow(build(2), workflow_name="wf")
    wf.set_storage(storage)
    assert wf.run() == 3
    wf = LocalWorkflow(build(10), workflow_name="wf")
    wf.set_storage(storage)
    nodes, _ = parse(wf.to_dot())
    assert fill_of(nodes) == {"counter": YELLOW, "first": YELLOW, "second": ORANGE}
    assert wf.run() == 11


# -- files ---------------------------------------------------------------------------------


def test_draw_text_formats(tmp_path):
    data, _ = pipeline()
    wf = LocalWorkflow(data, workflow_name="wf")
    for name in ("g.gv", "g.dot", "G.GV"):
        path = wf.draw(str(tmp_path / name))
        assert path == tmp_path / name
        assert path.read_text(encoding="utf-8") == wf.to_dot()
    assert sorted(os.listdir(tmp_path)) == ["G.GV", "g.dot", "g.gv"]  # no temporary files left


def test_draw_rejects_unknown_suffix(tmp_path):
    data, _ = pipeline()
    wf = LocalWorkflow(data, workflow_name="wf")
    with pytest.raises(DrawingFormatError, match=r"\.gv.*\.svg") as info:
        wf.draw(tmp_path / "g.jpeg")
    assert isinstance(info.value, ValueError) and isinstance(info.value, FunctionFuseError)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", [".svg", ".png", ".pdf"])
def test_draw_rendered_without_dot_says_how_to_fix(tmp_path, monkeypatch, suffix):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    data, _ = pipeline()
    wf = LocalWorkflow(data, workflow_name="wf")
    with pytest.raises(GraphvizNotFoundError) as info:
        wf.draw(tmp_path / f"g{suffix}")
    message = str(info.value)
    for fix in ("apt install graphviz", "brew install graphviz", "conda install graphviz", ".gv"):
        assert fix in message
    assert isinstance(info.value, FunctionFuseError) and isinstance(info.value, RuntimeError)
    assert sorted(os.listdir(tmp_path)) == ["bin"]


def fake_dot(folder, body):
    """A ``dot`` program on PATH that runs ``body`` (Python; ``data`` holds its stdin)."""
    folder.mkdir(exist_ok=True)
    script = folder / "dot"
    script.write_text(
        f"#!{sys.executable}\nimport sys\ndata = sys.stdin.buffer.read()\n" + textwrap.dedent(body)
    )
    script.chmod(0o755)
    return folder


def test_draw_runs_dot_and_writes_its_output(tmp_path, monkeypatch):
    folder = fake_dot(
        tmp_path / "bin",
        """
        assert sys.argv[1:] == ["-Tsvg"], sys.argv
        sys.stdout.buffer.write(b"<svg>" + data + b"</svg>")
        """,
    )
    monkeypatch.setenv("PATH", str(folder))
    data, _ = pipeline()
    wf = LocalWorkflow(data, workflow_name="wf")
    out = tmp_path / "out"
    out.mkdir()
    path = wf.draw(out / "g.svg")
    assert path.read_bytes() == b"<svg>" + wf.to_dot().encode("utf-8") + b"</svg>"
    assert os.listdir(out) == ["g.svg"]


def test_draw_reports_dot_failure_and_leaves_no_file(tmp_path, monkeypatch):
    folder = fake_dot(tmp_path / "bin", 'sys.stderr.write("Error: syntax error in line 3")\nsys.exit(2)\n')
    monkeypatch.setenv("PATH", str(folder))
    data, _ = pipeline()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DrawingError, match="exit status 2: Error: syntax error in line 3"):
        LocalWorkflow(data, workflow_name="wf").draw(out / "g.png")
    assert os.listdir(out) == []


def test_draw_times_out(tmp_path, monkeypatch):
    folder = fake_dot(tmp_path / "bin", "import time\ntime.sleep(30)\n")
    monkeypatch.setenv("PATH", str(folder))
    data, _ = pipeline()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DrawingError, match="did not finish within 0.5 s"):
        LocalWorkflow(data, workflow_name="wf").draw(out / "g.svg", timeout=0.5)
    assert os.listdir(out) == []


def test_draw_with_the_real_dot_or_its_absence(tmp_path):
    """With Graphviz installed, the real ``dot`` renders our DOT without complaint; on a
    machine without it (pip cannot install it), the error names the fix and writes nothing."""
    nodes_made = [load(1).set_name(NASTY[0])]
    for name in NASTY[1:]:
        nodes_made.append(total([nodes_made[-1]]).set_name(name))
    wf = LocalWorkflow(nodes_made[0], workflow_name="wf")
    wf.set_storage(FileStorage(tmp_path / "s"))
    if shutil.which("dot") is None:
        with pytest.raises(GraphvizNotFoundError, match="apt install graphviz"):
            wf.draw(tmp_path / "g.svg")
        assert not (tmp_path / "g.svg").exists()
        return
    svg = wf.draw(tmp_path / "g.svg").read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    assert "Warning" not in svg and "Error" not in svg
    # dot reads our DOT back as the same graph
    canon = subprocess.run(["dot", "-Tcanon"], input=wf.to_dot(), capture_output=True, text=True, check=True)
    assert canon.stderr == ""


# -- networkx ----------------------------------------------------------------------------------


def test_to_networkx(tmp_path):
    import networkx as nx

    data, _ = pipeline()
    wf = LocalWorkflow(data, workflow_name="wf")
    graph = wf.to_networkx()
    assert isinstance(graph, nx.DiGraph) and graph.graph["name"] == "wf"
    assert list(graph.nodes) == ["load", "scale", "total", "plot"]
    assert list(graph.edges) == [("load", "scale"), ("scale", "total"), ("total", "plot")]
    assert graph.nodes["scale"] == {"name": "scale", "function": "scale", "kind": "function"}
    assert list(nx.topological_sort(graph)) == ["load", "scale", "total", "plot"]

    wf.set_storage(FileStorage(tmp_path / "s"))
    wf.run()
    wf.replace_func(wf.find_nodes("total")[0], lambda xs: -sum(xs))
    graph = wf.to_networkx()
    assert graph.nodes["load"]["status"] == "cached"
    total_attrs = graph.nodes["total"]
    assert (total_attrs["action"], total_attrs["reason"], total_attrs["status"]) == (
        "compute", "code changed: the function", "will compute",
    )
    assert total_attrs["function"].endswith("<lambda>") and len(total_attrs["key"]) == 32
    assert graph.edges["load", "scale"] == {"kind": "data"}


def test_to_networkx_without_networkx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "networkx", None)  # import networkx now raises ImportError
    data, _ = pipeline()
    with pytest.raises(ImportError, match=re.escape('pip install "functionfuse[graph]"')):
        LocalWorkflow(data, workflow_name="wf").to_networkx()


def test_drawing_imports_nothing_heavy():
    code = (
        "import sys, functionfuse, functionfuse.drawing, functionfuse.backends.builtin.graphback\n"
        "print(','.join(m for m in ('networkx', 'graphviz') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


# -- HTML tables in notebooks --------------------------------------------------------------------


def test_explanation_and_report_render_escaped_html(tmp_path):
    data = load(3).set_name("<script>alert('x')</script> & co")
    wf = LocalWorkflow(total(data).set_name("total"), workflow_name="wf")
    wf.set_storage(FileStorage(tmp_path / "s"))

    page = wf.explain()._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    assert re.findall(r"<th[^>]*>(\w+)</th>", page) == ["node", "action", "reason"]
    assert page.count("<tr>") == 3 and "compute" in page and "new" in page

    wf.run()
    page = wf.last_report._repr_html_()
    assert "<script>" not in page and "&amp; co" in page
    assert re.findall(r"<th[^>]*>(\w+)</th>", page) == ["node", "action", "reason", "time"]
    rows = re.findall(r"<tr><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td></tr>", page)
    assert [(r[1], r[2]) for r in rows] == [("computed", "new"), ("computed", "new")]
    assert all(re.fullmatch(r"[\d.]+ (µs|ms|s)", r[3]) for r in rows)
    assert html.escape(wf.last_report.totals()) in page  # the footer


def test_report_html_without_storage():
    wf = LocalWorkflow(total(load(3)), workflow_name="wf")
    assert wf.run() == 3
    page = wf.last_report._repr_html_()
    assert "load_0000" in page and "total_0000" in page and "no storage" in page


def test_html_table_limits_rows():
    page = html_table("many", ["n"], ([i] for i in range(12)), max_rows=10)
    assert page.count("<tr>") == 1 + 10 + 1  # header, 10 rows, the "more" row
    assert "and 2 more" in page


# -- GraphWorkflow (the original's graphback) ------------------------------------------------------


def test_graph_workflow_writes_gv_and_leaves_graph_usable(tmp_path, monkeypatch, caplog):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    data, result = pipeline()
    docs = tmp_path / "docs" / "nested"  # created when missing, as the original's graphviz did
    graph_wf = GraphWorkflow(data, workflow_name="pipeline", doc_path=str(docs))
    with caplog.at_level(logging.INFO, logger="functionfuse.backends.builtin.graphback"):
        assert graph_wf.run() is None  # as the original's run()
    assert sorted(os.listdir(docs)) == ["pipeline.gv"]
    nodes, edges = parse((docs / "pipeline.gv").read_text(encoding="utf-8"))
    assert list(nodes) == ["load", "scale", "total", "plot"]
    assert [(p, c) for p, c, _ in edges] == [("load", "scale"), ("scale", "total"), ("total", "plot")]
    assert "no SVG" in caplog.text and "'dot' is not on PATH" in caplog.text and "install Graphviz" in caplog.text

    # the same nodes still run, and can be drawn again identically
    assert LocalWorkflow(data, result, workflow_name="pipeline").run()[1] == sum(x * 3 * RATE for x in range(4))
    GraphWorkflow(data, workflow_name="pipeline", doc_path=docs).run()
    assert (docs / "pipeline.gv").read_text(encoding="utf-8") == graph_wf.to_dot()


def test_graph_workflow_renders_svg_when_dot_exists(tmp_path, monkeypatch):
    folder = fake_dot(tmp_path / "bin", 'sys.stdout.buffer.write(b"<svg/>")\n')
    monkeypatch.setenv("PATH", str(folder))
    data, _ = pipeline()
    GraphWorkflow(data, workflow_name="pipeline", doc_path=tmp_path / "docs").run()
    assert sorted(os.listdir(tmp_path / "docs")) == ["pipeline.gv", "pipeline.gv.svg"]
    assert (tmp_path / "docs" / "pipeline.gv.svg").read_bytes() == b"<svg/>"


@pytest.mark.parametrize("name", ["a/b", "..", "a\\b"])
def test_graph_workflow_name_must_be_a_file_name(tmp_path, name):
    data, _ = pipeline()
    with pytest.raises(GraphError, match="must be a file name"):
        GraphWorkflow(data, workflow_name=name, doc_path=tmp_path)
