"""What a node was called with, as a small JSON document for people.

Each stored entry's metadata records the node's literal arguments by parameter
name (``{"alpha": 0.5, "solver": "lbfgs"}``), so a person browsing a store can
tell which hyperparameters produced a model.  It is a *summary*, never used
for keys (keys hash the full values): small plain values are kept as they are;
large or rich values are described by type, shape and a short token::

    {"X": {"node": "split_0000", "item": ["X_train"]},
     "estimator": {"class": "sklearn.svm._classes.SVC"},
     "params": {"C": 0.025, "kernel": "linear"},
     "weights": {"type": "numpy.ndarray", "shape": [1000, 3], "dtype": "float64", "token": "9f2c…"}}

Arguments that are other nodes appear as ``{"node": name}`` (plus ``"item"``
for ``node[i]``).  Building the summary never fails: whatever cannot be
described otherwise is given by its type.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import math
from typing import Any

from .graph import BaseNode, FunctionNode, NodeItem
from .modules import stable_name, stable_type_name

__all__ = ["summarize_arguments", "summarize_value"]

#: Longest string kept whole; longer ones are cut and marked.
MAX_STR = 200
#: Most items of a list/tuple/dict kept; larger ones are described.
MAX_ITEMS = 20
#: Deepest nesting described item by item.
MAX_DEPTH = 4


def summarize_arguments(func: Any, args: tuple, kwargs: dict, name_of: Any) -> dict[str, Any]:
    """``{parameter name: summary}`` of a call ``func(*args, **kwargs)``.

    ``name_of(ref)`` gives the name of a node (or ``node[i]``) argument.
    Parameters are named from the function's signature where the call binds
    to it; otherwise positional arguments are ``"arg0"``, ``"arg1"`` ...

    >>> def fit(X, alpha=1.0, *, solver="lbfgs"):
    ...     pass
    >>> summarize_arguments(fit, ([1, 2],), {"solver": "saga"}, str)
    {'X': [1, 2], 'solver': 'saga'}
    """
    params = _params(func)
    if params is not None and not kwargs and len(args) <= len(params[0]):
        bound = dict(zip(params[0], args))  # the common call: positional arguments only
    else:
        bound = _bind(func, args, kwargs)
    if bound is None:
        bound = {f"arg{i}": a for i, a in enumerate(args)}
        bound.update(kwargs)
    out = {}
    for name, value in bound.items():  # the commonest values first, without a call
        cls = type(value)
        if (cls is int and -_MAX_INT < value < _MAX_INT) or (cls is str and len(value) <= MAX_STR):
            out[name] = value
        elif cls is FunctionNode:
            out[name] = {"node": name_of(value)}
        else:
            out[name] = summarize_value(value, name_of)
    return out


_MAX_INT = 2**53  # larger integers do not survive a JSON reader that uses doubles


_PARAMS: dict[Any, tuple[tuple[str, ...], frozenset[str], bool, bool] | None] = {}


def _params(func: Any) -> tuple[tuple[str, ...], frozenset[str], bool, bool] | None:
    """``(positional names, keyword names, takes *args, takes **kwargs)`` of
    ``func``, memoised (a node function is summarised once per stored node)."""
    try:
        return _PARAMS[func]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable
        return None
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        found = None
    else:
        kinds = inspect.Parameter
        positional = tuple(p.name for p in parameters if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD))
        keyword = frozenset(p.name for p in parameters if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY))
        found = (
            positional,
            keyword,
            any(p.kind is kinds.VAR_POSITIONAL for p in parameters),
            any(p.kind is kinds.VAR_KEYWORD for p in parameters),
        )
    if len(_PARAMS) >= 1024:
        _PARAMS.clear()
    _PARAMS[func] = found
    return found


def _bind(func: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """Arguments by parameter name (``*args`` extras as ``"args[i]"``), or None
    when the call does not bind to the signature."""
    params = _params(func)
    if params is None:
        return None
    positional, keyword, var_args, var_kwargs = params
    if len(args) > len(positional) and not var_args:
        return None
    bound = dict(zip(positional, args))
    if len(args) > len(positional):
        for i, extra in enumerate(args[len(positional):]):
            bound[f"args[{i}]"] = extra
    for name, value in kwargs.items():
        if name in bound or (name not in keyword and not var_kwargs):
            return None
        bound[name] = value
    return bound


def summarize_value(value: Any, name_of: Any = None, depth: int = 0) -> Any:
    """A JSON-able description of one value (see the module docstring).

    >>> summarize_value({"a": 1, "b": [1.5, None, "x"]})
    {'a': 1, 'b': [1.5, None, 'x']}
    >>> summarize_value(list(range(100)))["type"], summarize_value(list(range(100)))["len"]
    ('list', 100)
    """
    try:
        return _summarize(value, name_of, depth)
    except Exception:  # noqa: BLE001 - a summary never fails a run
        return {"type": stable_type_name(type(value))}


def _summarize(value: Any, name_of: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    cls = type(value)
    if cls is int:
        return value if abs(value) < 2**53 else {"type": "int", "value": str(value)}
    if cls is float:
        return value if math.isfinite(value) else {"type": "float", "value": repr(value)}
    if cls is str:
        return value if len(value) <= MAX_STR else {"type": "str", "len": len(value), "start": value[:60]}
    if isinstance(value, BaseNode):
        return {"node": name_of(value) if name_of else value.get_name()}
    if isinstance(value, NodeItem):
        return {
            "node": name_of(value.node) if name_of else value.node.get_name(),
            "item": [_summarize(p, name_of, depth + 1) for p in value.path],
        }
    if isinstance(value, enum.Enum):
        return {"enum": f"{stable_type_name(cls)}.{value.name}"}
    if isinstance(value, type):
        return {"class": stable_type_name(value)}
    if inspect.isfunction(value) or inspect.isbuiltin(value) or inspect.ismethod(value):
        return {"function": stable_name(value)}
    if hasattr(value, "__wrapped_func__"):  # a @workflow function or class
        return {"function": stable_name(value.__wrapped_func__)}
    if cls in (list, tuple, set, frozenset):
        items = list(value)
        if cls in (set, frozenset):
            try:
                items = sorted(items)
            except TypeError:
                pass
        if len(items) <= MAX_ITEMS and depth < MAX_DEPTH:
            out = [_summarize(v, name_of, depth + 1) for v in items]
            return out if cls is list else {"type": cls.__name__, "items": out}
        return _described(value, {"type": cls.__name__, "len": len(items)})
    if cls is dict:
        if len(value) <= MAX_ITEMS and depth < MAX_DEPTH and all(isinstance(k, (str, int)) for k in value):
            return {str(k): _summarize(v, name_of, depth + 1) for k, v in value.items()}
        return _described(value, {"type": "dict", "len": len(value)})
    if dataclasses.is_dataclass(value) and depth < MAX_DEPTH:
        fields = {f.name: _summarize(getattr(value, f.name), name_of, depth + 1) for f in dataclasses.fields(value)}
        return {"type": stable_type_name(cls), "fields": fields}
    get_params = getattr(value, "get_params", None)
    if callable(get_params) and depth < MAX_DEPTH:  # scikit-learn estimators and kernels
        params = get_params(deep=False)
        return {
            "type": stable_type_name(cls),
            "params": {str(k): _summarize(v, name_of, depth + 1) for k, v in sorted(params.items())},
        }
    shape = getattr(value, "shape", None)
    info: dict[str, Any] = {"type": stable_type_name(cls)}
    if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
        info["shape"] = list(shape)
        dtype = getattr(value, "dtype", None)
        if dtype is not None:
            info["dtype"] = str(dtype)
        if shape == () and hasattr(value, "item"):  # a numpy scalar
            return _summarize(value.item(), name_of, depth)
    elif hasattr(value, "__len__"):
        try:
            info["len"] = len(value)
        except Exception:  # noqa: BLE001
            pass
    return _described(value, info)


def _described(value: Any, info: dict[str, Any]) -> dict[str, Any]:
    """``info`` plus the value's token, when it has one."""
    from .errors import HashingError
    from .hashing import tokenize

    try:
        info["token"] = tokenize(value)[:16]
    except (HashingError, RecursionError):
        pass
    return info
