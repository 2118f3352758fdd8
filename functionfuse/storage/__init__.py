"""Where node results live.

``storage_factory`` keeps the original package's dictionary interface;
:class:`FileStorage`, :class:`FsspecStorage`, :class:`S3Storage` and
:class:`RayStorage` are the typed constructors (``S3Storage`` imports s3fs and
``RayStorage`` imports Ray only when they are used).
"""

from .base import Listing, Storage
from .factory import storage_factory
from .fsstore import FsspecStorage
from .local import FileStorage
from .raystore import RayStorage
from .s3store import S3Storage

__all__ = ["storage_factory", "Storage", "FileStorage", "FsspecStorage", "RayStorage", "S3Storage", "Listing"]
