"""Which persistent serializer handles which type.

Lookup walks the value's MRO, so a subclass of a registered type matches and
the most specific registration wins.  Decisions are cached per type: the
pickler asks for every object it meets.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from ..errors import SerializationError, SerializerNotRegisteredError

__all__ = ["SerializerRegistry"]

_MISSING = object()


def _check(serializer: Any) -> None:
    missing = [
        attr
        for attr in ("name", "serializer_class", "pickle", "unpickle", "remove")
        if not hasattr(serializer, attr)
    ]
    if missing:
        raise SerializationError(
            f"{serializer!r} is not a persistent serializer: it lacks {', '.join(missing)}. "
            "A serializer needs name, serializer_class, pickle(obj, protocols), "
            "unpickle(pid, protocols) and remove(pid, protocols)."
        )
    if not isinstance(serializer.serializer_class, type):
        raise SerializationError(
            f"serializer {serializer.name!r}: serializer_class must be a type, "
            f"got {serializer.serializer_class!r}"
        )


class SerializerRegistry:
    """Registered persistent serializers, by type and by name."""

    def __init__(self) -> None:
        self._by_type: dict[type, Any] = {}
        self._by_name: dict[str, Any] = {}
        self._cache: dict[type, Any] = {}

    def __bool__(self) -> bool:
        return bool(self._by_type)

    def register(self, *serializers: Any, clobber: bool = True) -> None:
        """Register serializers (classes or instances).

        Registering another serializer for a type replaces the previous one
        (the original package's behaviour); with ``clobber=False`` it is an
        error instead.
        """
        for s in serializers:
            _check(s)
            cls = s.serializer_class
            old = self._by_type.get(cls)
            if old is not None and old is not s and not clobber:
                raise SerializationError(
                    f"type {cls.__qualname__} already has serializer {old.name!r}; "
                    "pass clobber=True to replace it"
                )
            other = self._by_name.get(s.name)
            if other is not None and other is not s and other.serializer_class is not cls:
                raise SerializationError(
                    f"two serializers are named {s.name!r} ({other!r} and {s!r}); names must "
                    "be unique because entries record them"
                )
            self._by_type[cls] = s
            self._by_name[s.name] = s
        self._cache.clear()

    def match(self, cls: type) -> Any | None:
        """The serializer for ``cls`` (walking its MRO), or ``None``."""
        found = self._cache.get(cls, _MISSING)
        if found is _MISSING:
            found = None
            for base in cls.__mro__:
                found = self._by_type.get(base)
                if found is not None:
                    break
            self._cache[cls] = found
        return found

    def by_name(self, name: str) -> Any:
        try:
            return self._by_name[name]
        except KeyError:
            raise SerializerNotRegisteredError(
                f"the entry was written with serializer {name!r}, which is not registered on "
                f"this storage (registered: {sorted(self._by_name) or 'none'}); call "
                "storage.register_persistent_serializers(...) with it before reading"
            ) from None

    @property
    def serializers(self) -> Mapping[str, Any]:
        """Read-only view: name -> serializer."""
        return MappingProxyType(self._by_name)

    def __getstate__(self) -> dict:
        return {"serializers": list(self._by_name.values())}

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # type: ignore[misc]
        self.register(*state["serializers"])
