"""What people see while a run goes: a progress bar and one log line per computed node.

Every executor feeds the same small object, made once per run by
:func:`progress_for`, at the points where its driver learns something:

* :meth:`Progress.start` when the plan is made: how many nodes, how many of
  them are cached (those count as done at once);
* :meth:`Progress.node_started` when a node starts (the local executor) or is
  submitted (Dask, Ray);
* :meth:`Progress.node_done` when the driver learns a node finished: the
  local loop after each node, Ray from the status objects it already waits
  for, Dask from events its workers log (:mod:`functionfuse.backends.daskbackend`);
* :meth:`Progress.close` with the run's final counts, failed or not.

The bar is tqdm's (``tqdm.auto``: a widget in Jupyter when ipywidgets is
installed, text on stderr otherwise), imported only when a bar is shown, so
``import functionfuse`` stays light.  Whether it is shown is decided per run:
``run(progress=True|False)``, else the ``FUNCTIONFUSE_PROGRESS`` environment
variable (``1``/``0``), else on when stderr is a terminal or the code runs in
a Jupyter kernel (so CI logs, pipes and pytest get none).

Per-node INFO lines go through the ``functionfuse.progress`` logger.  When
neither a bar nor INFO logging is wanted, executors get :data:`NO_PROGRESS`,
whose ``active`` is False: hot loops test that flag and pay nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

from .caching import format_seconds
from .errors import GraphError

__all__ = ["ENV_VAR", "NO_PROGRESS", "NoProgress", "Progress", "progress_for", "show_progress"]

logger = logging.getLogger(__name__)

#: The environment variable that turns the bar on (``1``) or off (``0``) when
#: ``run(progress=...)`` is not given.
ENV_VAR = "FUNCTIONFUSE_PROGRESS"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

#: Seconds between redraws while nothing finishes (the elapsed time keeps moving,
#: and a long node's name shows).
TICK = 0.5


def show_progress(progress: bool | None = None) -> bool:
    """Whether a run shows a progress bar.

    Parameters
    ----------
    progress : bool or None
        The ``progress`` argument of ``run``: True or False decide; None
        defers to ``FUNCTIONFUSE_PROGRESS``, and without it to whether the
        output is interactive (stderr is a terminal, or a Jupyter kernel runs
        the code).

    Raises
    ------
    GraphError
        ``progress`` is not None, True or False.

    Examples
    --------
    >>> show_progress(True), show_progress(False)
    (True, False)
    """
    if progress is True or progress is False:
        return progress
    if progress is not None:
        raise GraphError(f"progress must be None (automatic), True or False, got {progress!r}")
    value = os.environ.get(ENV_VAR)
    if value is not None:
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        logger.warning("%s=%r is not one of 1, 0, true, false, yes, no, on, off; ignored", ENV_VAR, value)
    return _interactive()


def _interactive() -> bool:
    """Does someone watch stderr: a terminal, or a notebook's output area?"""
    stream = sys.stderr
    try:
        if stream is not None and stream.isatty():
            return True
    except (AttributeError, ValueError):  # a replaced or closed stream
        pass
    return _in_jupyter_kernel()


def _in_jupyter_kernel() -> bool:
    ipython = sys.modules.get("IPython")  # never imported here: only looked at
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - an IPython without a shell, or a broken one
        return False
    if shell is None:
        return False
    return getattr(shell, "kernel", None) is not None or "IPKernelApp" in getattr(shell, "config", {})


class NoProgress:
    """Progress reporting turned off: every method does nothing.

    ``active`` is False so that executors can skip even the calls (and the
    work of naming nodes) in their per-node loops.
    """

    active = False

    def start(self, total: int, cached: int) -> None:
        """A (new) pass over ``total`` nodes, ``cached`` of which need no work."""

    def node_started(self, name: str) -> None:
        """Node ``name`` started (or was submitted to a cluster)."""

    def node_done(self, name: str, action: str, seconds: float, *, recomputed: bool = False) -> None:
        """Node ``name`` finished with ``action`` (a :class:`~functionfuse.caching.CacheEvent` action)."""

    def node_waiting(self, name: str, holder: dict) -> None:
        """Node ``name`` waits for another run that computes it (``holder``: its node lease)."""

    def close(self, counts: dict[str, int] | None = None) -> None:
        """The run is over; ``counts`` are its report's counts per action."""


#: The shared instance executors get when nothing is shown nor logged.
NO_PROGRESS = NoProgress()


def progress_for(
    workflow: str, progress: bool | None = None, *, concurrent: bool = False, file: TextIO | None = None
) -> NoProgress | Progress:
    """The progress reporter of one run of ``workflow``.

    Parameters
    ----------
    workflow : str
        The workflow's name (the bar's label, and in log lines).
    progress : bool or None
        ``run``'s argument (see :func:`show_progress`).
    concurrent : bool
        Nodes run several at a time (Dask, Ray): the bar shows how many are
        running rather than the name of the one that is.
    file : text stream, optional
        Where a text bar goes (default: ``sys.stderr`` when the run starts).

    Returns
    -------
    :data:`NO_PROGRESS` when no bar is shown and ``functionfuse.progress``
    does not log INFO, else a :class:`Progress`.
    """
    show = show_progress(progress)
    log = logger.isEnabledFor(logging.INFO)
    if not show and not log:
        return NO_PROGRESS
    return Progress(workflow, show=show, log=log, concurrent=concurrent, file=file)


class Progress(NoProgress):
    """A run's progress, drawn with tqdm and/or logged, safe to feed from several threads.

    The bar counts nodes: cached ones are done from the start, a node that
    runs is done when it finishes; a cached node loaded later (``read``) is
    counted apart and does not move the bar.  Its text shows the counts per
    action and, while nodes run, the running node's name (or how many run,
    with ``concurrent``: on Dask and Ray, the nodes submitted and not yet
    finished, queued ones included).
    """

    active = True

    def __init__(
        self, workflow: str, *, show: bool, log: bool, concurrent: bool = False, file: TextIO | None = None
    ) -> None:
        self.workflow = workflow
        self.show = show
        self.log = log
        self.concurrent = concurrent
        self.file = file
        self.total = 0
        self.done = 0
        self.counts: dict[str, int] = {}
        self.running: dict[str, None] = {}  # names, in start order
        self.waiting: dict[str, str] = {}  # name -> the run computing it (host:pid), see node_waiting
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self._lock = threading.RLock()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    # -- what executors call ---------------------------------------------------------
    def start(self, total: int, cached: int) -> None:
        with self._lock:
            self.total, self.done = total, cached
            self.counts = {"cached": cached, "computed": 0}
            self.running.clear()
            self.waiting.clear()
            if not self.show:
                return
            if self._bar is None:
                self._bar = self._open_bar(cached)
                if self._bar is not None:
                    self._start_ticker()
            else:  # a second pass (Dask/Ray retry after unusable entries)
                self._bar.reset(total)
                self._bar.n = cached
                self._bar.set_postfix_str(self._postfix())

    def node_started(self, name: str) -> None:
        with self._lock:
            self.running[name] = None
            bar = self._bar
            if bar is not None:
                bar.set_postfix_str(self._postfix(), refresh=False)
                if time.time() - bar.last_print_t >= bar.mininterval:  # a new long node shows at once
                    bar.refresh()

    def node_waiting(self, name: str, holder: dict) -> None:
        with self._lock:
            self.waiting[name] = f"{holder.get('host')}:{holder.get('pid')}"
            bar = self._bar
            if bar is not None:
                bar.set_postfix_str(self._postfix())

    def node_done(self, name: str, action: str, seconds: float, *, recomputed: bool = False) -> None:
        """Node ``name`` finished with ``action`` after ``seconds``.

        ``recomputed`` says it was counted as cached at :meth:`start` and had
        to be computed after all (its entry was unusable): it moves from the
        cached count to ``action`` without moving the bar.
        """
        with self._lock:
            self.running.pop(name, None)
            self.waiting.pop(name, None)
            self.counts[action] = self.counts.get(action, 0) + 1
            advance = 0
            if recomputed:
                self.counts["cached"] -= 1
            elif action != "read":  # a cached node was done already
                self.done += 1
                advance = 1
            bar = self._bar
            if bar is not None:
                bar.set_postfix_str(self._postfix(), refresh=False)
                bar.update(advance)  # redraws at most every ``mininterval``
        if self.log:
            self._log(name, action, seconds)

    def close(self, counts: dict[str, int] | None = None) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            self.running.clear()
            self.waiting.clear()
            if counts is not None:  # the report's word is final (failures, nodes never reached)
                self.counts = _display_counts(counts)
                self.done = self.total - counts.get("not run", 0)
            bar, self._bar = self._bar, None
            if bar is not None:
                bar.n = self.done
                bar.set_postfix_str(self._postfix(), refresh=False)
                bar.close()
            redirect, self._redirect = self._redirect, None
        if redirect is not None:
            redirect.close()

    # -- drawing -----------------------------------------------------------------------
    def _open_bar(self, cached: int) -> Any:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            logger.warning("no progress bar: it needs tqdm (pip install tqdm)")
            self.show = False
            return None
        bar = tqdm(
            total=self.total,
            initial=cached,
            desc=self.workflow,
            unit="node",
            file=self.file if self.file is not None else sys.stderr,
            dynamic_ncols=True,
            leave=True,
            postfix=self._postfix(),
        )
        notebook = sys.modules.get("tqdm.notebook")  # imported by tqdm.auto in a notebook only
        if notebook is None or not isinstance(bar, notebook.tqdm_notebook):
            # Log lines printed to the console would break a text bar; while
            # it is shown, the root logger's console handlers print above it.
            # (A notebook widget is not in the text stream: nothing to do.)
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm(tqdm_class=type(bar)))
        return bar

    def _postfix(self) -> str:
        counts = self.counts
        parts = [f"{action}={n}" for action, n in counts.items() if n or action in ("cached", "computed")]
        running = self.running
        if running:
            if self.concurrent:
                parts.append(f"running={len(running)}")
            else:
                parts.append(f"node={next(reversed(running))}")
        if self.waiting:
            name, holder = next(reversed(self.waiting.items()))
            parts.append(f"waiting for {name} (computed by {holder})" if len(self.waiting) == 1
                         else f"waiting={len(self.waiting)}")
        return ", ".join(parts)

    def _start_ticker(self) -> None:
        """Redraw every :data:`TICK` seconds, so the elapsed time moves during a long node."""
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="functionfuse-progress", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            with self._lock:
                bar = self._bar
                if bar is not None and time.time() - bar.last_print_t >= TICK:
                    bar.refresh()

    def _log(self, name: str, action: str, seconds: float) -> None:
        level = logging.INFO if action == "computed" else logging.DEBUG
        if logger.isEnabledFor(level):
            logger.log(
                level, "%s node %r in %s (workflow %r)", action, name, format_seconds(seconds), self.workflow
            )


def _display_counts(counts: dict[str, int]) -> dict[str, int]:
    """A report's counts as the bar names them: cached nodes are those skipped or read."""
    shown = {
        "cached": counts.get("skipped", 0) + counts.get("read", 0),
        "computed": counts.get("computed", 0),
    }
    for action in ("read", "replayed", "failed", "not run"):
        if counts.get(action):
            shown[action] = counts[action]
    return shown
