"""Ray storage: a file storage whose I/O runs in Ray tasks.

:class:`RayStorage` stores results exactly like
:class:`~functionfuse.storage.local.FileStorage` (same layout, same
format, same guarantees), but every storage operation runs as **one Ray task**
submitted with the user's ``remote_args`` (``storage_factory``'s
``remoteArgs``), for example ``{"resources": {"disk": 0.01}}`` to pin the I/O to
the node that owns the disk.  The task opens a ``FileStorage`` on that node and
calls the same method on it.

Invariants
----------
* Nothing is read or written on the machine that creates or unpickles the
  storage object: the folder is created by the first task, on the node Ray
  picks.  Creating or unpickling a ``RayStorage`` neither starts Ray nor
  touches the disk; the first operation does (``ray.init(**ray_init_args)``
  when Ray is not running in this process yet).
* Errors raised in the task reach the caller as the same exception types
  (``EntryNotFoundError`` is a ``FileNotFoundError``, ``CorruptEntryError``,
  ``SerializationError`` ...), not wrapped in Ray's ``RayTaskError``; the
  remote traceback is attached as a note.  Ray-level failures (a crashed
  worker, a lost node, a timeout) raise :class:`StorageError`.
* Results cross the process boundary as plain pickles, so a value read back
  is the same as the one ``FileStorage`` would return (for example a
  writable numpy array, not a read-only view of Ray's object store).
* A request that no node of the cluster can ever satisfy (a resource no node
  has, more CPUs than any node offers) is reported at the first operation as
  a :class:`StorageConfigError` instead of leaving the task pending forever;
  ``timeout`` bounds every operation for the other cases (a busy or vanished
  node).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import Any

from ..errors import SerializationError, StorageConfigError, StorageError
from .base import Listing, Storage
from .factory import check_option

__all__ = ["RayStorage"]

logger = logging.getLogger(__name__)

#: Ray options that would break the one-task-one-result protocol.
_FORBIDDEN_OPTIONS = ("num_returns", "_generator_backpressure_num_objects", "_num_objects_per_yield")
#: Options under which the per-node feasibility check cannot be evaluated.
_UNCHECKABLE = ("placement_group", "label_selector", "fallback_strategy")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

_lock = threading.Lock()
_remote_function: Any = None
_feasible: set[str] = set()  # remote-args checked in this process
_warned: set[str] = set()  # ignored ray-init-args already reported in this process


_ENVIRONMENT = "_functionfuse_environment"  # not a ray.init argument: set before it


def _joining(ray_init_args: dict) -> dict:
    """Init arguments for a copy of the storage sent to another process.

    When Ray runs here, the copy joins this Ray cluster (a process that is
    not a Ray worker, such as a Dask worker, would otherwise start a Ray of
    its own, with its own tasks and resources).
    """
    if "address" in ray_init_args:
        return ray_init_args
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ray_init_args
    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - older Ray: the copy starts as configured
        return ray_init_args
    joined: dict[str, Any] = {"address": address}
    # How this process authenticates to the cluster (token mode), for a
    # process started before Ray was (a Dask worker, for example).
    auth = {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")}
    if auth:
        joined[_ENVIRONMENT] = auth
    if "namespace" in ray_init_args:
        joined["namespace"] = ray_init_args["namespace"]
    return joined


def _storage_task(request: bytes) -> bytes:
    """Body of every Ray task: open the file storage here and call one method.

    ``request`` is the cloudpickle of ``(target, method, args, kwargs)``, where
    ``target`` is ``(path, durable, options, serializers, always_read)``, the state a
    ``FileStorage`` pickles as.  The result goes back cloudpickled too, so both
    directions use the pickler (and the ``register_pickle_by_value`` choices)
    of functionfuse rather than Ray's own copy of cloudpickle, and values come
    back as ``FileStorage`` returns them (no read-only views of Ray's object
    store).
    """
    import cloudpickle

    from .local import FileStorage

    target, method, args, kwargs = cloudpickle.loads(request)
    path, durable, options, serializers, always_read = target
    inner = FileStorage(path, durable=durable, **options)
    if serializers:
        inner.register_persistent_serializers(*serializers)
    inner.always_read = always_read
    result = getattr(inner, method)(*args, **kwargs)
    if method == "save":
        result = (result, args[4])  # the entry name and the meta dict save() completed
    try:
        return cloudpickle.dumps(result, protocol=5)
    except Exception as exc:  # noqa: BLE001 - any pickling failure: say what and where
        raise SerializationError(
            f"{method}{args!r} ran on the storage's node but its result (a "
            f"{type(result).__module__}.{type(result).__qualname__}) cannot be sent back from the "
            f"Ray task: {type(exc).__name__}: {exc}. Objects restored by a persistent serializer "
            "that hold open files (a lazy HDF5-backed dask array) cannot leave the node that owns "
            "the disk."
        ) from exc


def _task_function() -> Any:
    """The ``ray.remote`` version of :func:`_storage_task`, made on first use."""
    global _remote_function
    if _remote_function is None:
        ray = _import_ray()
        with _lock:
            if _remote_function is None:
                _remote_function = ray.remote(_storage_task)
    return _remote_function


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "the 'ray' storage needs Ray; install it with: pip install 'functionfuse[ray]'"
        ) from exc
    return ray


def _in_ray_worker(ray: Any) -> bool:
    """True inside a Ray task or actor (where Ray was started for us)."""
    try:
        return ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001 - private detail of Ray: assume a driver
        return False


def _check_dict(value: Any, option: str, example: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StorageConfigError(
            f"option {option!r} of the ray storage must be a dict, e.g. {example}, got {value!r}"
        )
    return dict(value)


def resource_demand(remote_args: dict) -> dict[str, float] | None:
    """Resources one Ray task with these options asks of a single node, or None if not checkable."""
    if any(remote_args.get(o) is not None for o in _UNCHECKABLE):
        return None
    strategy = remote_args.get("scheduling_strategy")
    if strategy is not None and not isinstance(strategy, str):
        return None  # node affinity / placement group: Ray reports those itself
    num_cpus = remote_args.get("num_cpus")
    demand: dict[str, float] = {
        "CPU": 1.0 if num_cpus is None else float(num_cpus),  # Ray's default for tasks
        "GPU": float(remote_args.get("num_gpus") or 0),
        "memory": float(remote_args.get("memory") or 0),
    }
    for name, amount in (remote_args.get("resources") or {}).items():
        demand[name] = float(amount)
    accelerator = remote_args.get("accelerator_type")
    if accelerator:
        demand[f"accelerator_type:{accelerator}"] = 0.001
    return {k: v for k, v in demand.items() if v > 0}


class RayStorage(Storage):
    """File storage whose every operation runs in a Ray task.

    Parameters
    ----------
    path : str or os.PathLike
        The storage folder on the node(s) the tasks run on.  A relative path
        is made absolute here, against this process's working directory.  The
        folder is created by the first task; it must not be a file.
    remote_args : dict
        Ray task options for the storage tasks (``storage_factory``'s
        ``remoteArgs``), e.g. ``{"resources": {"disk": 0.01}}``.  Ray's
        defaults apply to what is not given (one CPU per task).
    ray_init_args : dict, optional
        Arguments of ``ray.init`` (``rayInitArgs``), used when Ray is not
        running in the process that first uses the storage.  When Ray already
        runs they are ignored with a logged warning.
    durable : bool
        ``fsync`` each result before publishing it (see ``FileStorage``).
    safe : bool
        Safe mode (see ``FileStorage``).
    compression : None, str or dict
        Compression (see ``FileStorage``).
    timeout : float, optional
        Seconds to wait for one storage operation; ``None`` (default) waits
        as long as it takes.  An operation that times out is cancelled and
        raises :class:`StorageError`.

    Raises
    ------
    StorageConfigError
        A bad ``path``, ``remote_args``, ``ray_init_args`` or ``timeout``
        (checked without starting Ray), and at the first operation, a
        ``remote_args`` request that no node of the cluster can satisfy.

    Notes
    -----
    Values cross the process boundary: a result must be picklable (with
    cloudpickle) to be saved, and whatever a persistent serializer restores
    must be picklable to be read back.  Serializers run on the storage's
    node, where the side data lives.

    Example configuration::

        storage_factory({"kind": "ray", "options": {
            "path": "/data/cache",
            "remoteArgs": {"resources": {"disk": 0.01}},
            "rayInitArgs": {"address": "auto"},
        }})
    """

    packs_small_results = False  # its saves run in Ray tasks: manifests are loose files

    def __init__(
        self,
        path: str | os.PathLike,
        remote_args: dict | None = None,
        ray_init_args: dict | None = None,
        *,
        durable: bool = False,
        timeout: float | None = None,
        safe: bool = False,
        compression: Any = None,
        lease: bool | float = False,
    ) -> None:
        super().__init__()
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise StorageConfigError(
                f"option 'path' of the ray storage must be a non-empty str or path, got {path!r}"
            )
        self.path = os.path.abspath(os.fspath(path))
        check_option("ray", "durable", durable)  # only True/False: "no" is truthy
        self.remote_args = _check_dict(remote_args, "remoteArgs", "{'resources': {'disk': 0.01}}")
        self.ray_init_args = _check_dict(ray_init_args, "rayInitArgs", "{'address': 'auto'}")
        # A copy sent from a Ray driver: authenticate like it, set before Ray
        # is imported here (Ray reads its auth mode when it loads).
        for name, value in self.ray_init_args.get(_ENVIRONMENT, {}).items():
            os.environ.setdefault(name, value)
        self.durable = durable
        if lease is not False:
            raise StorageConfigError(
                "option 'lease' is not available on the ray storage kind (its I/O runs in Ray tasks, node "
                "leases are taken where nodes run); use the 'file' kind on a folder every worker reaches"
            )
        self._set_options("ray", safe, compression)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise StorageConfigError(
                f"option 'timeout' of the ray storage must be seconds > 0, got {timeout!r}"
            )
        self.timeout = None if timeout is None else float(timeout)
        bad = [o for o in _FORBIDDEN_OPTIONS if o in self.remote_args]
        if bad:
            raise StorageConfigError(
                f"option 'remoteArgs' of the ray storage cannot set {', '.join(map(repr, bad))}: "
                "each storage operation is one task with one result"
            )
        # I/O needs no CPU slot; taking one could starve behind node tasks or
        # actors holding every CPU while they wait for their own save.
        options = {"num_cpus": 0, **self.remote_args}
        try:  # Ray checks the option names and types locally, without starting
            self._task = _task_function().options(**options)
        except (ValueError, TypeError) as exc:
            raise StorageConfigError(f"option 'remoteArgs' of the ray storage is invalid: {exc}") from exc

    def _constructor_args(self) -> tuple[tuple, dict]:
        return (self.path,), {
            "remote_args": self.remote_args,
            "ray_init_args": _joining(self.ray_init_args),
            "durable": self.durable,
            "timeout": self.timeout,
            **self._option_kwargs(),
        }

    def __repr__(self) -> str:
        return f"RayStorage({self.path!r}, remote_args={self.remote_args!r})"

    # -- running one operation as one task -----------------------------------
    def _ensure_ray(self) -> Any:
        """Ray, initialised (``ray.init(**ray_init_args)`` if needed) and checked."""
        ray = _import_ray()
        if not ray.is_initialized():
            with _lock:
                if not ray.is_initialized():
                    args = dict(self.ray_init_args)
                    for name, value in args.pop(_ENVIRONMENT, {}).items():
                        os.environ.setdefault(name, value)
                    logger.info("%r: Ray is not running; ray.init(**%r)", self, args)
                    ray.init(**args)
        elif self.ray_init_args and _ENVIRONMENT not in self.ray_init_args and not _in_ray_worker(ray):
            key = repr(sorted(self.ray_init_args.items(), key=lambda kv: kv[0]))
            if key not in _warned:
                _warned.add(key)
                logger.warning(
                    "%r: Ray is already initialized, so rayInitArgs %r are ignored; drop them or "
                    "call ray.init(...) with them yourself before using the storage",
                    self,
                    self.ray_init_args,
                )
        self._check_feasible(ray)
        return ray

    def _check_feasible(self, ray: Any) -> None:
        """Fail fast when no node can ever run the storage tasks (Ray would wait forever)."""
        key = repr(sorted(self.remote_args.items(), key=lambda kv: kv[0]))
        if key in _feasible:
            return
        demand = resource_demand({"num_cpus": 0, **self.remote_args})
        if demand:
            offers = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
            if not any(all(res.get(k, 0) >= v for k, v in demand.items()) for res in offers):
                shown = [
                    {k: v for k, v in res.items() if not k.startswith("node:") and k != "object_store_memory"}
                    for res in offers
                ]
                raise StorageConfigError(
                    f"option 'remoteArgs' {self.remote_args!r} of {self!r} asks each storage task for "
                    f"{demand}, which no node of the Ray cluster offers (nodes: {shown}); the tasks "
                    "would wait forever. Start the node that owns the disk with that resource "
                    "(ray start --resources='{\"disk\": 1}'), or change remoteArgs"
                )
        _feasible.add(key)

    def _target(self) -> tuple:
        return (
            self.path, self.durable, self._option_kwargs(), tuple(self.registry.serializers.values()),
            self._always_read,
        )

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``FileStorage.<method>(*args, **kwargs)`` in one Ray task and return its result."""
        import cloudpickle

        request = cloudpickle.dumps((self._target(), method, args, kwargs), protocol=5)
        return self._submit(method, request)

    def _submit(self, method: str, request: bytes) -> Any:
        ray = self._ensure_ray()
        ref = self._task.remote(request)
        try:
            data = ray.get(ref, timeout=self.timeout)
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc, self, method) from None
        except ray.exceptions.GetTimeoutError as exc:
            try:
                ray.cancel(ref)
            except Exception as cancel_exc:  # noqa: BLE001 - finished meanwhile, or Ray refuses
                logger.debug("cannot cancel the %s task: %s", method, cancel_exc)
            raise StorageError(
                f"{self!r}: {method} did not finish within {self.timeout} s (the storage's node may be "
                "busy or gone); the task was cancelled"
            ) from exc
        except ray.exceptions.RayError as exc:
            raise StorageError(f"{self!r}: the Ray task running {method} failed: {exc}") from exc
        return self._value(data, method)

    @property
    def fs(self) -> Any:
        """Not available: the files are reached through Ray tasks on the storage's node."""
        raise StorageError(
            f"{self!r} has no local filesystem handle: its files live where its Ray tasks run"
        )

    def _join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def _object_store(self) -> Any:
        raise StorageError(f"{self!r}: its objects are reached through Ray tasks on the storage's node")

    # -- every policy operation is one task ----------------------------------
    def _side_protocols(self, side: str) -> dict:
        """Not available here: serializers get their handles inside the storage tasks."""
        raise StorageError(
            f"{self!r}: serializers of a ray storage run in its Ray tasks, on the node with the disk"
        )

    def list_tasks(self, workflow_name: str, pattern: str = "*") -> list[str]:
        """Names of the stored nodes of a workflow matching a glob ``pattern``, sorted."""
        return self._call("list_tasks", workflow_name, pattern)

    def read_task(self, workflow_name: str, task_name: str) -> Any:
        """The stored result of node ``task_name``.

        Raises EntryNotFoundError (a FileNotFoundError) when nothing is stored
        under that name, CorruptEntryError when the entry fails its check.
        """
        return self._call("read_task", workflow_name, task_name)

    def read_task_meta(self, workflow_name: str, task_name: str) -> dict:
        """Metadata of node ``task_name``'s entry, without loading the result."""
        return self._call("read_task_meta", workflow_name, task_name)

    def remove_task(
        self, workflow_name: str, task_name: str | None = None, pattern: str | None = None
    ) -> list[str]:
        """Remove stored results (and their side data) by name or glob pattern; returns the names."""
        return self._call("remove_task", workflow_name, task_name=task_name, pattern=pattern)

    def remove_workflow(self, workflow_name: str) -> None:
        """Remove everything stored for a workflow (a missing one is not an error)."""
        self._call("remove_workflow", workflow_name)

    def scan(self, workflow_name: str) -> Listing:
        """The workflow's current state (its latest run record)."""
        return self._call("scan", workflow_name)

    def present(self, keys: Any) -> set[str]:
        """The keys among ``keys`` whose result is stored (one task for the batch)."""
        return self._call("present", list(keys))

    def begin_run(self, workflow_name: str, run_id: str, *, base: str | None, keys: list[str]) -> None:
        self._call("begin_run", workflow_name, run_id, base=base, keys=keys)

    def end_run(self, workflow_name: str, run_id: str) -> None:
        self._call("end_run", workflow_name, run_id)

    def record_run(self, workflow_name: str, run_id: str, nodes: dict[str, dict], **fields: Any) -> str:
        """Write the record of one run (one task)."""
        return self._call("record_run", workflow_name, run_id, nodes, **fields)

    def save(
        self, workflow_name: str, node_name: str, key: str, value: Any, meta: dict, *, overwrite: bool = False,
        digest: bool = False,
    ) -> str:
        """Send ``value`` to a storage task that serializes and publishes it.

        Returns the key and updates ``meta`` as
        :meth:`Storage.save` does.  Raises SerializationError (naming the
        node) when ``value`` cannot be pickled to travel, or cannot be stored.
        """
        import cloudpickle

        args = (workflow_name, node_name, key, value, meta)
        try:
            request = cloudpickle.dumps(
                (self._target(), "save", args, {"overwrite": overwrite, "digest": digest}), protocol=5
            )
        except Exception as exc:  # noqa: BLE001 - any failure of user __reduce__: name the node
            raise SerializationError(
                f"the result of node {node_name!r} (a {type(value).__module__}.{type(value).__qualname__}) "
                f"cannot be sent to the ray storage's task: {type(exc).__name__}: {exc}. Results stored "
                "in a ray storage must be picklable with cloudpickle (persistent serializers run on the "
                "storage's node, after the value arrived); keep the node out of storage with "
                "workflow.log_nodes(pattern) otherwise."
            ) from exc
        name, stored_meta = self._submit("save", request)
        meta.update(stored_meta)
        return name

    def load(self, workflow_name: str, key: str, *, with_tree: bool = False) -> Any:
        """Load and verify one result (EntryNotFoundError, CorruptEntryError, SerializationError)."""
        if with_tree:
            return self._call("load", workflow_name, key, with_tree=True)
        return self._call("load", workflow_name, key)

    def alias(
        self, workflow_name: str, node_name: str, key: str, stored: str, meta: dict, *, manifest: dict | None = None
    ) -> dict:
        """Publish ``stored``'s result as ``key``'s too (one task; see :meth:`Storage.alias`)."""
        return self._call("alias", workflow_name, node_name, key, stored, meta, manifest=manifest)

    def read_meta(self, workflow_name: str, key: str) -> dict:
        """The manifest of ``key``."""
        return self._call("read_meta", workflow_name, key)

    def _value(self, data: bytes, method: str) -> Any:
        import cloudpickle

        try:
            return cloudpickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - e.g. a class importable on the worker only
            raise SerializationError(
                f"{self!r}: the result of {method} came back from its Ray task but cannot be "
                f"unpickled here: {exc!r}"
            ) from exc


def _unwrap(exc: Any, storage: RayStorage, method: str) -> BaseException:
    """The exception raised inside the task, with the remote traceback as a note."""
    cause = getattr(exc, "cause", None)
    if not isinstance(cause, BaseException):
        return StorageError(f"{storage!r}: the Ray task running {method} failed: {exc}")
    if hasattr(cause, "add_note"):  # Python >= 3.11
        cause.add_note(f"Raised in the Ray task running {method} for {storage!r}:\n{_ANSI.sub('', str(exc))}")
    return cause
