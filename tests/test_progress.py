"""Progress bars and per-node log lines (functionfuse.progress), on every executor.

The distributed tests run on the session's Ray (``ray.init(num_cpus=2)``) and
Dask ``LocalCluster`` (two worker processes), see conftest.py.
"""

import io
import logging
import re
import subprocess
import sys
import threading
import time
import types

import cloudpickle
import pytest
from helpers import ROOT

from functionfuse import workflow
from functionfuse.backends.builtin.daskback import DaskWorkflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.errors import GraphError, NodeExecutionError
from functionfuse.progress import ENV_VAR, NO_PROGRESS, Progress, progress_for, show_progress

# Workers cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

COMPUTED_LINE = re.compile(r"computed node '(\w+)' in (\d+(?:\.\d+)?) (µs|ms|s) \(workflow '(\w+)'\)")


@workflow
def inc(x):
    return x + 1


@workflow
def nap(x, seconds):
    time.sleep(seconds)
    return x + 1


@workflow
def boom(x):
    raise ValueError("no")


def chain():
    a = inc(1).set_name("a")
    b = inc(a).set_name("b")
    return inc(b).set_name("c")


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self):
        return True


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _final_line(text):
    """The bar as last drawn (tqdm redraws in place with carriage returns)."""
    return [part for part in re.split(r"[\r\n]", text) if part.strip()][-1]


def _computed_lines(caplog):
    return [
        COMPUTED_LINE.fullmatch(r.getMessage())
        for r in caplog.records
        if r.name == "functionfuse.progress" and r.levelno == logging.INFO
    ]


def _seconds(match):
    value, unit = float(match.group(2)), match.group(3)
    return value * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


# -- when a bar is shown ---------------------------------------------------------------


def test_forced_bar_shows_total_and_computed_then_cached_counts(storage, capsys):
    wf = LocalWorkflow(chain(), workflow_name="demo")
    wf.set_storage(storage)
    assert wf.run(progress=True) == 4
    first = _final_line(capsys.readouterr().err)
    assert first.startswith("demo: 100%")
    assert "3/3" in first and "cached=0" in first and "computed=3" in first

    assert wf.run(progress=True) == 4
    second = _final_line(capsys.readouterr().err)
    assert "3/3" in second and "cached=3" in second and "computed=0" in second
    assert "read=1" in second  # the result returned was loaded


def test_forced_bar_without_storage(capsys):
    assert LocalWorkflow(chain(), workflow_name="plain").run(progress=True) == 4
    last = _final_line(capsys.readouterr().err)
    assert "3/3" in last and "computed=3" in last


def test_bar_of_a_failed_run_counts_the_failure_and_what_never_ran(storage, capsys):
    last = inc(boom(inc(1).set_name("a")).set_name("bad")).set_name("after")
    wf = LocalWorkflow(last, workflow_name="broken")
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError):
        wf.run(progress=True)
    final = _final_line(capsys.readouterr().err)
    assert "2/3" in final  # "after" never ran
    assert "computed=1" in final and "failed=1" in final and "not run=1" in final
    assert not [t for t in threading.enumerate() if t.name == "functionfuse-progress"]  # ticker stopped


def test_auto_is_off_when_stderr_is_not_a_terminal(no_env, storage, capsys):
    assert not sys.stderr.isatty()
    assert show_progress(None) is False
    wf = LocalWorkflow(chain(), workflow_name="quiet")
    wf.set_storage(storage)
    assert wf.run() == 4
    assert capsys.readouterr().err == ""


def test_auto_is_on_when_stderr_is_a_terminal(no_env, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert show_progress(None) is True
    assert LocalWorkflow(chain(), workflow_name="tty").run() == 4
    assert "3/3" in _final_line(terminal.getvalue())


def test_auto_is_on_in_a_jupyter_kernel(no_env, monkeypatch):
    class Shell:  # what get_ipython() returns in a notebook: it has a kernel
        def __init__(self):
            self.kernel = object()
            self.config = {"IPKernelApp": {}}

    class TerminalShell:  # plain IPython in a terminal: no kernel
        def __init__(self):
            self.config = {}

    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    fake.get_ipython = TerminalShell
    assert show_progress(None) is False  # and stderr is not a terminal under pytest
    fake.get_ipython = Shell
    assert show_progress(None) is True


def test_environment_variable_overrides_auto_but_not_the_argument(monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, "1")
    assert LocalWorkflow(chain(), workflow_name="env").run() == 4
    assert "3/3" in capsys.readouterr().err
    assert LocalWorkflow(chain(), workflow_name="env").run(progress=False) == 4
    assert capsys.readouterr().err == ""

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv(ENV_VAR, "0")
    assert LocalWorkflow(chain(), workflow_name="env").run() == 4
    assert terminal.getvalue() == ""
    assert LocalWorkflow(chain(), workflow_name="env").run(progress=True) == 4
    assert "3/3" in terminal.getvalue()


def test_unknown_environment_value_is_logged_and_auto_decides(monkeypatch, caplog):
    monkeypatch.setenv(ENV_VAR, "maybe")
    with caplog.at_level(logging.WARNING, logger="functionfuse.progress"):
        assert show_progress(None) is False  # pytest's stderr is not a terminal
    assert "FUNCTIONFUSE_PROGRESS='maybe'" in caplog.text and "1, 0" in caplog.text


def test_progress_argument_must_be_none_or_a_bool():
    with pytest.raises(GraphError, match="progress must be None"):
        LocalWorkflow(chain(), workflow_name="w").run(progress="yes")


def test_nothing_shown_nor_logged_costs_nothing(no_env):
    assert progress_for("w", None) is NO_PROGRESS
    assert progress_for("w", False) is NO_PROGRESS
    assert isinstance(progress_for("w", True), Progress)


def test_running_node_is_named_and_concurrent_runs_are_counted():
    out = io.StringIO()
    bar = Progress("w", show=True, log=False, file=out)
    bar.start(3, 1)
    time.sleep(0.15)  # longer than tqdm's minimum interval: a new node redraws at once
    bar.node_started("train")
    assert "node=train" in _final_line(out.getvalue())
    bar.node_done("train", "computed", 1.0)
    bar.close()
    assert "2/3" in _final_line(out.getvalue())

    out = io.StringIO()
    bar = Progress("w", show=True, log=False, concurrent=True, file=out)
    bar.start(4, 0)
    bar.node_started("a")
    bar.node_started("b")
    time.sleep(0.15)
    bar.node_started("c")
    assert "running=3" in _final_line(out.getvalue())
    bar.close()


def test_a_read_or_recomputed_cached_node_does_not_move_the_bar():
    bar = Progress("w", show=False, log=False)
    bar.start(4, 2)
    bar.node_done("x", "read", 0.1)
    bar.node_done("y", "computed", 0.2, recomputed=True)  # its entry was unusable
    bar.node_done("z", "computed", 0.3)
    assert bar.done == 3
    assert bar.counts == {"cached": 1, "computed": 2, "read": 1}


def test_import_functionfuse_does_not_import_tqdm():
    code = (
        "import sys, functionfuse\n"
        "from functionfuse.backends.builtin.localback import LocalWorkflow\n"
        "@functionfuse.workflow\n"
        "def f(x):\n"
        "    return x\n"
        "LocalWorkflow(f(1), workflow_name='w').run(progress=False)\n"
        "print('tqdm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


# -- log lines ---------------------------------------------------------------------------


def test_each_computed_node_is_logged_at_info_with_its_duration(no_env, storage, caplog, capsys):
    wf = LocalWorkflow(nap(inc(1).set_name("first"), 0.05).set_name("slow"), workflow_name="logged")
    wf.set_storage(storage)
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        wf.run()
    lines = _computed_lines(caplog)
    assert all(lines), [r.getMessage() for r in caplog.records]
    assert [m.group(1) for m in lines] == ["first", "slow"]
    assert {m.group(4) for m in lines} == {"logged"}
    assert 0.05 <= _seconds(lines[1]) < 5
    summary = [r.getMessage() for r in caplog.records if r.name == "functionfuse.backends.local"]
    assert len(summary) == 1 and re.fullmatch(r"workflow 'logged': 2 computed in .+", summary[0])
    assert capsys.readouterr().err == ""  # logging alone draws no bar

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        wf.run()  # all cached: nothing computed, nothing logged per node
    assert _computed_lines(caplog) == []
    assert any("1 read, 1 skipped" in r.getMessage() for r in caplog.records)


def test_computed_nodes_are_logged_without_storage_too(no_env, caplog):
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        LocalWorkflow(chain(), workflow_name="bare").run()
    assert [m.group(1) for m in _computed_lines(caplog)] == ["a", "b", "c"]


# -- Dask and Ray ----------------------------------------------------------------------------


@pytest.fixture(params=["dask", "ray"])
def cluster_workflow(request):
    """``make(*nodes, workflow_name=...)`` building a Dask or Ray workflow, and ``run(wf, **kw)``."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")

        def make(*nodes, workflow_name):
            return RayWorkflow(*nodes, workflow_name=workflow_name)

        make.run = lambda wf, **kw: wf.run(return_results=True, **kw)
    else:
        client = request.getfixturevalue("dask_client")

        def make(*nodes, workflow_name):
            return DaskWorkflow(*nodes, workflow_name=workflow_name, client=client)

        make.run = lambda wf, **kw: wf.run(**kw)
    return make


def _fan(n):
    root = inc(0).set_name("root")
    return [nap(root, 0.02).set_name(f"leaf{i}") for i in range(n)]


def test_cluster_bar_counts_computed_then_cached(cluster_workflow, storage, capsys):
    wf = cluster_workflow(*_fan(4), workflow_name="fan")
    wf.set_storage(storage)
    assert cluster_workflow.run(wf, progress=True) == [2, 2, 2, 2]
    first = _final_line(capsys.readouterr().err)
    assert first.startswith("fan: 100%") and "5/5" in first and "computed=5" in first

    assert cluster_workflow.run(wf, progress=True) == [2, 2, 2, 2]
    second = _final_line(capsys.readouterr().err)
    assert "5/5" in second and "cached=5" in second and "computed=0" in second


def test_cluster_nodes_are_reported_as_they_finish(cluster_workflow, storage, monkeypatch):
    # What the driver hears from the cluster during the run, before the run's report exists.
    heard = []
    original = Progress.node_done

    def spy(self, name, action, seconds, **kw):
        heard.append((name, action, seconds))
        original(self, name, action, seconds, **kw)

    monkeypatch.setattr(Progress, "node_done", spy)
    wf = cluster_workflow(*_fan(3), workflow_name="heard")
    wf.set_storage(storage)
    cluster_workflow.run(wf, progress=True)
    assert sorted(name for name, _, _ in heard) == ["leaf0", "leaf1", "leaf2", "root"]
    assert all(action == "computed" for _, action, _ in heard)
    assert all(seconds >= 0.02 for name, _, seconds in heard if name.startswith("leaf"))


def test_cluster_computed_nodes_are_logged_with_durations(no_env, cluster_workflow, storage, caplog, capsys):
    wf = cluster_workflow(*_fan(2), workflow_name="clog")
    wf.set_storage(storage)
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        cluster_workflow.run(wf)
    lines = _computed_lines(caplog)
    assert all(lines) and sorted(m.group(1) for m in lines) == ["leaf0", "leaf1", "root"]
    assert all(_seconds(m) >= 0.02 for m in lines if m.group(1).startswith("leaf"))
    # The workers' durations reach the run's report too.
    assert all(e.seconds >= 0.02 for e in wf.last_report.events if e.node.startswith("leaf"))
    assert capsys.readouterr().err == ""  # auto: no bar under pytest

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        cluster_workflow.run(wf)
    assert _computed_lines(caplog) == []


def test_cluster_auto_shows_nothing_under_pytest(no_env, cluster_workflow, storage, capsys):
    wf = cluster_workflow(*_fan(2), workflow_name="silent")
    wf.set_storage(storage)
    assert cluster_workflow.run(wf) == [2, 2]
    assert capsys.readouterr().err == ""
