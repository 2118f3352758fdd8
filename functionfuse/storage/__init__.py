"""Where node results live.

``storage_factory`` keeps the original package's dictionary interface;
:class:`FileStorage` and :class:`FsspecStorage` are the typed constructors.
"""

from .base import Listing, Storage
from .factory import storage_factory
from .fsstore import FsspecStorage
from .local import FileStorage

__all__ = ["storage_factory", "Storage", "FileStorage", "FsspecStorage", "Listing"]
