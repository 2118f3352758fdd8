"""functionfuse: Python functions as a DAG with correct, crash-safe result caching.

>>> from functionfuse import workflow
>>> from functionfuse.backends.builtin.localback import LocalWorkflow
"""

from .caching import CacheEvent, CacheWarning, RunReport
from .errors import (
    CorruptEntryError,
    EntryNotFoundError,
    ExecutorError,
    FunctionFuseError,
    GraphError,
    HashingError,
    NodeExecutionError,
    SerializationError,
    SerializerNotRegisteredError,
    StorageConfigError,
    StorageError,
)
from .hashing import normalize_token, tokenize
from .storage import storage_factory
from .targeted import compute, explain
from .workflow import workflow

#: The original package's other name for :func:`workflow`.
task = workflow

__version__ = "0.1.0"

__all__ = [
    "workflow",
    "task",
    "compute",
    "explain",
    "storage_factory",
    "tokenize",
    "normalize_token",
    "CacheEvent",
    "CacheWarning",
    "RunReport",
    "FunctionFuseError",
    "GraphError",
    "HashingError",
    "StorageError",
    "StorageConfigError",
    "EntryNotFoundError",
    "CorruptEntryError",
    "SerializationError",
    "SerializerNotRegisteredError",
    "ExecutorError",
    "NodeExecutionError",
    "__version__",
]
