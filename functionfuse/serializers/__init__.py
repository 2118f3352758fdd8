"""Serializers: how parts of a result are stored.

``FILE_PROTOCOL`` and ``S3_PROTOCOL`` name the handles a storage gives a
serializer (see :mod:`functionfuse.serializers.base`).  Persistent serializers
such as :class:`functionfuse.serializers.daskarray.DaskArraySerializer` are
registered on a storage with ``storage.register_persistent_serializers(...)``;
everything else is pickled with cloudpickle.
"""

from .base import FILE_PROTOCOL, S3_PROTOCOL, FileProtocol, PersistentSerializer, generate_name
from .registry import SerializerRegistry

__all__ = [
    "FILE_PROTOCOL",
    "S3_PROTOCOL",
    "FileProtocol",
    "PersistentSerializer",
    "SerializerRegistry",
    "generate_name",
]
