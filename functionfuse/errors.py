"""One exception tree for functionfuse.

Every error the library raises on purpose derives from :class:`FunctionFuseError`,
grouped in families a caller can catch selectively.  Messages name the node,
option or file at fault and say how to fix the problem.
"""

from __future__ import annotations

__all__ = [
    "FunctionFuseError",
    "GraphError",
    "HashingError",
    "StorageError",
    "StorageConfigError",
    "EntryNotFoundError",
    "CorruptEntryError",
    "SerializationError",
    "SerializerNotRegisteredError",
    "SchemaChangedError",
    "ExecutorError",
    "NodeExecutionError",
]


class FunctionFuseError(Exception):
    """Base class of every error raised by functionfuse."""


class GraphError(FunctionFuseError, ValueError):
    """The graph is malformed: a non-node given as a node, duplicate names, ..."""


class HashingError(FunctionFuseError, TypeError):
    """A value cannot be hashed deterministically (raised in strict mode)."""


class StorageError(FunctionFuseError):
    """A storage cannot be created, opened, read or written."""


class StorageConfigError(StorageError, ValueError):
    """A storage configuration is invalid (unknown kind, missing option, bad path)."""


class EntryNotFoundError(StorageError, FileNotFoundError):
    """A stored entry (a node result) does not exist."""


class CorruptEntryError(StorageError):
    """A stored entry fails its integrity check (truncated or altered)."""


class SerializationError(FunctionFuseError):
    """A result cannot be serialized or deserialized."""


class SchemaChangedError(SerializationError):
    """A stored result's class (dataclass, attrs, pydantic) has another schema now.

    The result is not loaded into the wrong shape: the node is recomputed with
    reason ``result schema changed``.
    """


class SerializerNotRegisteredError(SerializationError):
    """An entry needs a persistent serializer this storage does not have.

    A configuration mistake, not damage: the entry is kept and the run stops,
    rather than recomputing and replacing a good result.
    """


class ExecutorError(FunctionFuseError):
    """A backend cannot run the graph (scheduler or cluster problem)."""


class NodeExecutionError(FunctionFuseError):
    """A node's function raised.

    The user's exception is chained as ``__cause__``; ``node`` and ``key`` name
    the node and its cache key.
    """

    def __init__(
        self, message: str, *, node: str, key: str | None = None, remote_traceback: str | None = None
    ) -> None:
        super().__init__(message)
        self.node = node
        self.key = key
        #: The traceback of the user's exception when it was raised on a worker,
        #: naming the user's files, lines and source text (see
        #: :mod:`functionfuse.backends.tracebacks`).
        self.remote_traceback = remote_traceback
        #: How long the node's function ran before it raised (for reports).
        self.seconds: float = 0.0

    def __reduce__(self):  # keep node, key and the cause across processes
        cause = self.__cause__
        try:
            import pickle

            pickle.dumps(cause)
        except Exception:  # noqa: BLE001 - an unpicklable cause travels as text only
            cause = None
        return (
            _rebuild_node_error,
            (type(self), self.args[0], self.node, self.key, self.remote_traceback, cause, self.seconds),
        )

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nTraceback on the worker:\n" + self.remote_traceback.rstrip()
        return text


def _rebuild_node_error(cls, message, node, key, remote_traceback, cause, seconds=0.0):  # type: ignore[no-untyped-def]
    err = cls(message, node=node, key=key, remote_traceback=remote_traceback)
    err.__cause__ = cause
    err.seconds = seconds
    return err
