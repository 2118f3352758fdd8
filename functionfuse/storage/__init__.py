"""Where node results live.

``storage_factory`` keeps the original package's dictionary interface;
:class:`FileStorage`, :class:`FsspecStorage` and :class:`RayStorage` are the typed
constructors (``RayStorage`` imports Ray only when it is used).
"""

from .base import Listing, Storage
from .factory import storage_factory
from .fsstore import FsspecStorage
from .local import FileStorage
from .raystore import RayStorage

__all__ = ["storage_factory", "Storage", "FileStorage", "FsspecStorage", "RayStorage", "Listing"]
