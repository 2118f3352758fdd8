"""S3 storage: store v2 (docs/format.md) under a prefix of a bucket, through ``s3fs``.

:class:`S3Storage` is :class:`~functionfuse.storage.fsstore.FsspecStorage` on
an ``s3fs.S3FileSystem``: the layout and policy of every storage
(:mod:`.base`).  What S3 needs is in :mod:`.objects` and :mod:`.results`:

Publishing
    S3 never shows a partial object: a single ``PutObject`` is atomic, and a
    multipart upload appears only at ``CompleteMultipartUpload``.  Objects,
    manifests and run records are written directly to their final keys; no
    temporary object and no move.  The manifest is written after every object
    it names, so whoever sees a manifest sees its parts complete.

Create-if-absent
    Objects and manifests are uploaded with ``If-None-Match: *`` (S3
    conditional writes: AWS S3, MinIO, Cloudflare R2, moto).  ``412`` means
    another writer published the same bytes or the same key first: theirs is
    kept, and side data we wrote for it is removed.  ``409
    ConditionalRequestConflict`` is retried.  An endpoint that rejects the
    header as not implemented gets "HEAD, then PUT" (logged once): racing
    writers then both write the same computation's result.

Forced and damaged results
    A plain ``PUT`` replaces a manifest or object atomically.

Round trips
    A plan reads the workflow's latest run record (one LIST of its run folder,
    one GET) and HEADs, concurrently, only the keys that record does not name.
    A load is one GET of the manifest and one GET per part (small results come
    from the run record: no GET at all).  A save is a HEAD and at most one PUT
    per part, and one PUT of the manifest; a run ends with one PUT of its
    record.  Listing caches of s3fs are off (``use_listings_cache=False``), so
    another process's results are seen at once.

Errors
    The first operation in a process checks the bucket with one
    ``ListObjectsV2`` on the prefix (the permission the storage needs anyway).
    A missing bucket, rejected or missing credentials, a denied access, a
    bucket in another region and an unreachable endpoint raise
    :class:`~functionfuse.errors.StorageConfigError` or
    :class:`~functionfuse.errors.StorageError` naming the endpoint, the bucket
    and what to fix, with the botocore error chained as ``__cause__``.  During
    a run, :meth:`~functionfuse.storage.base.Storage.save` adds the node's
    name.  Retries and timeouts are botocore options passed through s3fs's
    ``config_kwargs``, for example ``{"config_kwargs": {"retries":
    {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5,
    "read_timeout": 30}}``: botocore makes each request up to ``max_attempts``
    times; s3fs adds its own retries (``s3fs.S3FileSystem.retries``, 5) for
    timeouts and dropped connections, but not for a refused connection.

Pickling
    A storage pickles as its path and s3fs options (plus its serializers), so
    a Dask or Ray worker opens its own client.  Credentials given in the
    options travel with it; credentials from the environment, a profile or an
    instance role are looked up by each process instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from ..errors import StorageConfigError, StorageError
from ..serializers.base import S3_PROTOCOL, S3Protocol
from .fsstore import FsspecStorage

__all__ = ["S3Storage", "parse_s3_path"]

logger = logging.getLogger(__name__)

#: Defaults added to the user's s3fs options (the user's value wins).
DEFAULT_OPTIONS: dict[str, Any] = {"use_listings_cache": False}

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"}
_REGION_CODES = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
    "301",
}
_RETRY_HINT = (
    "the s3fs option 'config_kwargs', e.g. {'config_kwargs': {'retries': {'max_attempts': 5, "
    "'mode': 'standard'}, 'connect_timeout': 5, 'read_timeout': 30}}"
)

#: Storages (endpoint, URL and options) whose bucket was checked in this process.
_checked: set[str] = set()


def parse_s3_path(path: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``"/bucket/prefix"``, ``"s3://bucket/prefix"`` or ``"bucket/prefix"``.

    >>> parse_s3_path("/my-bucket/cache/run1/")
    ('my-bucket', 'cache/run1')
    >>> parse_s3_path("s3://my-bucket")
    ('my-bucket', '')
    """
    if not isinstance(path, str):
        raise StorageConfigError(
            f"option 'path' of the S3 storage must be a string like '/bucket/prefix' or "
            f"'s3://bucket/prefix', got {path!r}"
        )
    rest = path[len("s3://") :] if path.startswith("s3://") else path
    parts = [p for p in rest.split("/") if p]
    if not parts:
        raise StorageConfigError(
            f"option 'path' of the S3 storage must name a bucket, like '/bucket/prefix' or "
            f"'s3://bucket/prefix', got {path!r}"
        )
    if "://" in parts[0] or ":" in parts[0]:
        raise StorageConfigError(
            f"option 'path' of the S3 storage is {path!r}; give '/bucket/prefix' or 's3://bucket/prefix' "
            "(the endpoint goes into the s3fs options: {'endpoint_url': 'http://host:port'})"
        )
    return parts[0], "/".join(parts[1:])


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code of ``exc`` or of the botocore error it was translated from."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 4:
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            code = error.get("Code")
            if code:
                return str(code)
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if status:
                return str(status)
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _unreachable(exc: BaseException) -> bool:
    """True for connection failures and timeouts (the endpoint did not answer)."""
    kinds: tuple[type, ...] = (ConnectionError, TimeoutError)
    boto = sys.modules.get("botocore.exceptions")
    if boto is not None:
        kinds += (boto.ConnectionError, boto.HTTPClientError)
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        kinds += (aiohttp.ClientConnectionError,)
    return isinstance(exc, kinds)


def _no_credentials(exc: BaseException) -> bool:
    boto = sys.modules.get("botocore.exceptions")
    return boto is not None and isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError))


def _s3_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    boto = sys.modules.get("botocore.exceptions")
    if boto is not None and isinstance(exc, (boto.BotoCoreError, boto.ClientError)):
        return True
    aiohttp = sys.modules.get("aiohttp")
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)


class S3Storage(FsspecStorage):
    """Storage under a prefix of an S3 bucket (AWS S3, MinIO or any S3-compatible store).

    Parameters
    ----------
    path : str
        ``"/bucket/prefix"`` (the original package's form), ``"s3://bucket/prefix"``
        or ``"bucket/prefix"``.  The bucket must exist; the prefix may be empty.
    s3fs_options : dict, optional
        Keyword arguments of ``s3fs.S3FileSystem``: ``key``, ``secret``, ``token``,
        ``profile``, ``anon``, ``endpoint_url`` (or ``client_kwargs={"endpoint_url":
        ..., "region_name": ...}``), ``retries``, ``config_kwargs`` (botocore
        ``Config``: retries, timeouts) ...  See docs/storage.md.

    Notes
    -----
    Nothing is contacted until the first operation, which checks the bucket.

    Examples
    --------
    >>> storage = S3Storage("/my-bucket/cache", {"anon": False})
    >>> storage
    S3Storage('s3://my-bucket/cache')
    >>> storage == S3Storage("s3://my-bucket/cache/", {"anon": False})
    True
    """

    def __init__(
        self, path: str, s3fs_options: dict | None = None, *, safe: bool = False, compression: Any = None,
        lease: bool | float = False,
    ) -> None:
        bucket, prefix = parse_s3_path(path)
        if s3fs_options is None:
            s3fs_options = {}
        if not isinstance(s3fs_options, dict):
            raise StorageConfigError(
                "option 's3fs' of the S3 storage must be a dict of s3fs.S3FileSystem keyword arguments "
                f"(e.g. {{'key': ..., 'secret': ..., 'endpoint_url': ...}}), got {s3fs_options!r}"
            )
        if s3fs_options.get("asynchronous"):
            raise StorageConfigError(
                "the S3 storage uses s3fs synchronously; drop 's3fs': {'asynchronous': True}"
            )
        self.bucket = bucket
        self.prefix = prefix
        self.s3fs_options = dict(s3fs_options)
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        super().__init__(url, {**DEFAULT_OPTIONS, **self.s3fs_options})
        self._set_options("S3", safe, compression, lease)

    def _constructor_args(self) -> tuple[tuple, dict]:
        return (self.url,), {"s3fs_options": self.s3fs_options, **self._option_kwargs()}

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"

    @property
    def endpoint(self) -> str:
        """The endpoint this storage talks to, as error messages name it."""
        opts = self.storage_options
        client_kwargs = opts.get("client_kwargs") or {}
        endpoint = opts.get("endpoint_url") or client_kwargs.get("endpoint_url")
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return str(endpoint)
        region = client_kwargs.get("region_name") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get(
            "AWS_REGION"
        )
        return f"AWS S3 ({region})" if region else "AWS S3"

    # -- connection and the first-use check --------------------------------------
    def _connect(self) -> None:
        try:
            import s3fs
        except ImportError as exc:
            raise StorageConfigError(
                "the S3 storage needs s3fs; install it with: pip install 'functionfuse[s3]'"
            ) from exc
        root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        with self._io("opening", root):
            fs = s3fs.S3FileSystem(**self.storage_options)
        token = json.dumps([self.endpoint, self.url, self.storage_options], sort_keys=True, default=repr)
        if token not in _checked:
            # One request proves the endpoint answers, the credentials are
            # accepted, the bucket exists and the prefix may be listed.
            with self._io("opening", root):
                try:
                    fs.call_s3(
                        "list_objects_v2",
                        Bucket=self.bucket,
                        Prefix=self.prefix + "/" if self.prefix else "",
                        MaxKeys=1,
                    )
                except TypeError as exc:  # s3fs passes unknown options on to botocore's session
                    raise StorageConfigError(
                        f"the s3fs options of the S3 storage {self.url!r} were rejected ({exc}); they "
                        "must be s3fs.S3FileSystem keyword arguments (retries and timeouts go into "
                        f"{_RETRY_HINT[len('the s3fs option ') :]})"
                    ) from exc
            _checked.add(token)
        self._fs, self._root = fs, root

    def _failure(self, exc: BaseException, action: str, path: str) -> StorageError | None:
        if isinstance(exc, StorageError):
            return exc
        code = _error_code(exc)
        where = f"s3://{path}"
        endpoint = self.endpoint
        if code == "NoSuchBucket":
            return StorageConfigError(
                f"bucket {self.bucket!r} does not exist at S3 endpoint {endpoint} (while {action} {where}): "
                f"create it (for example `aws s3 mb s3://{self.bucket}`) or fix the storage path {self.url!r}"
            )
        if isinstance(exc, (FileNotFoundError, FileExistsError)):
            return None  # no such object / the object exists: meaningful to the caller
        if _no_credentials(exc):
            return StorageConfigError(
                f"no S3 credentials found for bucket {self.bucket!r} at {endpoint}: give 'key' and 'secret' "
                "in the s3fs options, a 'profile', the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment "
                "variables, or 'anon': True for a public bucket"
            )
        if code in _CREDENTIAL_CODES:
            return StorageConfigError(
                f"S3 endpoint {endpoint} rejected the credentials ({code}) while {action} {where}: give a "
                "valid 'key' and 'secret' (and 'token' for temporary credentials) in the s3fs options, or "
                "fix the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables or the 'profile'"
            )
        if code in _REGION_CODES:
            return StorageConfigError(
                f"S3 endpoint {endpoint} says bucket {self.bucket!r} is in another region ({code}: {exc}): "
                "set the bucket's region in the s3fs options, {'client_kwargs': {'region_name': ...}}"
            )
        if code in _DENIED_CODES or isinstance(exc, PermissionError):
            return StorageConfigError(
                f"S3 endpoint {endpoint} denied access ({code or exc}) while {action} {where}: the "
                f"credentials need s3:ListBucket on bucket {self.bucket!r} and s3:GetObject, s3:PutObject "
                f"and s3:DeleteObject on {self.url}/*"
            )
        if _unreachable(exc):
            return StorageError(
                f"S3 endpoint {endpoint} is unreachable while {action} {where} "
                f"({type(exc).__name__}: {exc}) after the configured retries. Check that it is running "
                f"and reachable from this machine; retries and timeouts are set with {_RETRY_HINT}"
            )
        if _s3_error(exc):
            return StorageError(
                f"S3 endpoint {endpoint} failed while {action} {where}: {type(exc).__name__}: {exc}"
            )
        return None

    def _side_protocols(self, side: str) -> dict:
        """``{S3_PROTOCOL: S3Protocol}`` for a side-data prefix (zarr arrays of dask results)."""
        return {S3_PROTOCOL: S3Protocol(self._join(*side.split("/")), self.storage_options, self.fs)}
