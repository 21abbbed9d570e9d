"""Blobs in an S3 bucket (MinIO, SeaweedFS, AWS) behind the `BlobStore` interface.

`S3BlobStore` speaks S3 through the `minio` client; `open_blob_store` turns the `--blob-store`
spec (a directory or `s3://bucket/prefix`) plus the environment into a store. Secrets come from
the environment only, never from flags, so they stay out of `ps` and shell history.

Errors, drawn once:

    ValueError
      └── S3ConfigError   a bad spec, setting or environment variable; raised before any I/O
    BlobError             (cloud_selector.blobstore) every failed store operation: a missing key
                          or bucket, refused credentials, an unreachable or failing endpoint, a
                          write whose checksum did not come back right

minio's and urllib3's exceptions never leave this module: `_s3_errors` is the one place they
are translated, with the original chained as `__cause__`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE

from cloud_selector.blobstore import BlobError, BlobStore, ConcurrentCalls, DirectoryBlobStore, check_key

ENV_ENDPOINT = "CLOUD_SELECTOR_S3_ENDPOINT"
ENV_ACCESS_KEY = "CLOUD_SELECTOR_S3_ACCESS_KEY"
ENV_SECRET_KEY = "CLOUD_SELECTOR_S3_SECRET_KEY"
ENV_REGION = "CLOUD_SELECTOR_S3_REGION"
ENV_CA_FILE = "CLOUD_SELECTOR_S3_CA_FILE"

# S3's rule for bucket names (the subset every implementation accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Server-side encryption modes under which the ETag is not the MD5 of the data.
_OPAQUE_ETAG_SSE = {"aws:kms", "aws:kms:dsse"}
# PUTs in flight at once for `put_many`; below the connection pool's size (`_http_client`), so
# a batch does not open and throw away extra connections.
_PUT_THREADS = 8


class S3ConfigError(ValueError):
    """The S3 settings, `--blob-store` spec or environment are wrong; the message is one line."""


@dataclass(frozen=True)
class S3Settings:
    """Where the store lives and how to reach it.

    `endpoint` is host[:port] without a scheme; `secure` picks HTTPS (verified against
    `ca_file` when given, else the system's trust store). `prefix` is a folder inside the
    bucket so several stores can share one. `timeout_s` bounds each read and `retries`
    covers refused connections and 5xx answers (with backoff): a service would rather wait a
    second than drop an upload, but should not hang on a dead endpoint.
    """

    endpoint: str
    bucket: str
    prefix: str = ""
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    secure: bool = True
    region: str = ""
    ca_file: str = ""
    timeout_s: float = 30.0
    retries: int = 3

    def __post_init__(self) -> None:
        if not self.endpoint or "/" in self.endpoint or "@" in self.endpoint:
            raise S3ConfigError(f"S3 endpoint must be host[:port] without scheme or path, got {self.endpoint!r}")
        if not _BUCKET.match(self.bucket) or ".." in self.bucket:
            raise S3ConfigError(f"invalid S3 bucket name {self.bucket!r} (3-63 of a-z 0-9 . -)")
        if self.prefix:
            try:
                check_key(self.prefix)
            except BlobError as exc:
                raise S3ConfigError(f"invalid S3 prefix {self.prefix!r} (like a blob key: a/b-c, no leading "
                                    "or trailing slash)") from exc
        if bool(self.access_key) != bool(self.secret_key):
            raise S3ConfigError("S3 access key and secret key go together: give both or neither")
        if self.ca_file and not self.secure:
            raise S3ConfigError(f"S3 CA file {self.ca_file!r} given for a plain-HTTP endpoint")
        if self.timeout_s <= 0 or self.retries < 0:
            raise S3ConfigError("S3 timeout_s must be > 0 and retries >= 0")


class _MissingKey(BlobError):
    """NoSuchKey: `exists` turns it into False."""


class _RangeNotSatisfiable(BlobError):
    """InvalidRange (offset at or past the end): `get_range` turns it into b""."""


class _BucketAlreadyOwned(BlobError):
    """Another opener created the bucket first: fine for `open(create_bucket=True)`."""


class S3BlobStore:
    """Blobs as objects `<prefix>/<key>` in one bucket.

    Keys pass `check_key`, like `DirectoryBlobStore`. Every put is a single-part PUT carrying
    the SHA-256 of the data (x-amz-checksum-sha256, which the server verifies before storing)
    and its returned ETag is compared with the MD5 we computed, so a corrupted write raises
    instead of being acknowledged. An acknowledged S3 PUT is durable, which is what
    `BlobStore.put` promises. Constructing does no I/O; `open` also checks the bucket.
    """

    def __init__(self, settings: S3Settings):
        self.settings = settings
        self._root = f"{settings.prefix}/" if settings.prefix else ""
        self._client = Minio(settings.endpoint, access_key=settings.access_key or None,
                             secret_key=settings.secret_key or None, secure=settings.secure,
                             region=settings.region or None, http_client=_http_client(settings))
        self._calls = ConcurrentCalls(_PUT_THREADS, "s3-put")

    @classmethod
    def open(cls, settings: S3Settings, *, create_bucket: bool = False) -> S3BlobStore:
        """A store whose bucket exists (created when `create_bucket`); also proves the credentials work."""
        store = cls(settings)
        with store._s3_errors("check bucket"):
            exists = store._client.bucket_exists(settings.bucket)
        if exists:
            return store
        if not create_bucket:
            raise BlobError(f"S3 bucket {settings.bucket!r} does not exist at {store._where()}: create it "
                            f"(e.g. `mc mb ALIAS/{settings.bucket}`) or let the service create it")
        try:
            with store._s3_errors("create bucket"):
                store._client.make_bucket(settings.bucket, location=settings.region or None)
        except _BucketAlreadyOwned:
            pass
        return store

    def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        if len(data) > MAX_PART_SIZE:
            raise BlobError(f"blob {key!r} is {len(data)} bytes; S3BlobStore writes at most 5 GiB in one PUT")
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        sha256 = base64.b64encode(hashlib.sha256(data).digest()).decode()
        with self._s3_errors("put", key):
            # part_size = the whole object: one PUT (minio would split above 5 MiB), so the
            # checksum header applies to the object and the ETag is the plain MD5.
            result = self._client.put_object(
                self.settings.bucket, name, io.BytesIO(data), len(data),
                metadata={"x-amz-checksum-sha256": sha256}, part_size=max(len(data), MIN_PART_SIZE))
        headers = result.http_headers
        echoed = headers.get("x-amz-checksum-sha256")
        if echoed is not None and echoed != sha256:
            raise BlobError(f"S3 stored {key!r} with SHA-256 {echoed} but the data's is {sha256}")
        if headers.get("x-amz-server-side-encryption") in _OPAQUE_ETAG_SSE:
            return  # ETag is not an MD5 under SSE-KMS; the server already checked the SHA-256
        etag = (result.etag or "").lower()
        if etag != md5:
            raise BlobError(f"S3 stored {key!r} with ETag {result.etag!r} but the data's MD5 is {md5}")

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """`put` every (key, data), several PUTs at once (each checked as in `put`); returns once
        all returned, i.e. all are durable. Raises the first failure (BlobError) only after every
        PUT has finished, so none is still running when the caller gives up on the batch."""
        for key, _ in items:
            check_key(key)
        self._calls.run(lambda item: self.put(*item), items)

    def get(self, key: str) -> bytes:
        name = self._name(key)
        with self._s3_errors("get", key):
            response = self._client.get_object(self.settings.bucket, name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`: short at the end, b"" past it (as a file read)."""
        name = self._name(key)
        if offset < 0 or length < 0:
            raise ValueError(f"get_range needs offset >= 0 and length >= 0, got {offset}, {length}")
        if length == 0:
            self.size(key)  # still an error when the key is missing, as for a directory
            return b""
        try:
            with self._s3_errors("get", key):
                response = self._client.get_object(self.settings.bucket, name, offset=offset, length=length)
                try:
                    return response.read()
                finally:
                    response.close()
                    response.release_conn()
        except _RangeNotSatisfiable:
            return b""

    def size(self, key: str) -> int:
        name = self._name(key)
        with self._s3_errors("stat", key):
            return int(self._client.stat_object(self.settings.bucket, name).size or 0)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except _MissingKey:
            return False
        return True

    def delete(self, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error (S3's semantics, and retry-safe)."""
        name = self._name(key)
        with self._s3_errors("delete", key):
            self._client.remove_object(self.settings.bucket, name)

    def presigned_url(self, key: str, expires_s: int) -> str:
        """A URL that lets whoever holds it GET `key` for `expires_s` seconds (S3 allows at most
        7 days) without credentials: how a labeling tool loads images from a private bucket.
        Signing is local; minio asks the server for the bucket's region once when none is set."""
        with self._s3_errors("presign", key):
            return self._client.presigned_get_object(self.settings.bucket, self._name(key),
                                                     expires=timedelta(seconds=expires_s))

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix` (a plain string prefix, e.g. "candidates/"), in byte order.

        Lazy: S3 pages through 1000 keys a request, so walking a large store streams.
        """
        if prefix:
            check_key(prefix.rstrip("/"))
        with self._s3_errors("list"):
            for obj in self._client.list_objects(self.settings.bucket, prefix=self._root + prefix, recursive=True):
                name = obj.object_name or ""
                if not name.endswith("/"):  # folder markers some tools create
                    yield name[len(self._root):]

    def _name(self, key: str) -> str:
        return self._root + check_key(key)

    def _where(self) -> str:
        scheme = "https" if self.settings.secure else "http"
        return f"{scheme}://{self.settings.endpoint}"

    @contextmanager
    def _s3_errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """The translation boundary: minio/urllib3 errors in, `BlobError` (with __cause__) out."""
        bucket = self.settings.bucket
        try:
            yield
        except S3Error as exc:
            code = exc.code or ""
            if code == "NoSuchKey" and key is not None:
                raise _MissingKey(f"no blob {key!r}") from exc
            if code == "InvalidRange":
                raise _RangeNotSatisfiable(f"range past the end of blob {key!r}") from exc
            if code == "BucketAlreadyOwnedByYou":
                raise _BucketAlreadyOwned(f"S3 bucket {bucket!r} already exists") from exc
            if code == "NoSuchBucket":
                raise BlobError(f"S3 bucket {bucket!r} does not exist at {self._where()}: create it") from exc
            if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                        "ExpiredToken"}:
                raise BlobError(f"S3 at {self._where()} refused the credentials for bucket {bucket!r} "
                                f"({code}) during {action}: check the access key and secret key") from exc
            raise BlobError(f"S3 {action} {_what(bucket, key)} failed at {self._where()}: "
                            f"{code}: {exc.message}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise BlobError(f"S3 {action} {_what(bucket, key)} failed at {self._where()}: {exc}") from exc


def _what(bucket: str, key: str | None) -> str:
    return f"of blob {key!r} in bucket {bucket!r}" if key is not None else f"on bucket {bucket!r}"


def _http_client(settings: S3Settings) -> urllib3.PoolManager:
    """Connection pool with a service's timeouts and retries, and the custom CA if any.

    minio's own default waits 5 minutes to connect; a dead endpoint should fail in seconds.
    Retries cover idempotent methods only (GET/HEAD/PUT/DELETE: every call here); after the
    last 5xx the answer is handed to minio (raise_on_status=False) so its S3 error code reaches
    the message instead of a bare "max retries".
    """
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(5.0, settings.timeout_s), read=settings.timeout_s),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=settings.ca_file or None,
        retries=urllib3.Retry(total=settings.retries, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504),
                              raise_on_status=False),
    )


def parse_endpoint(value: str) -> tuple[str, bool]:
    """`host:port` (HTTPS) or `http(s)://host:port` -> (host:port, secure)."""
    if "://" not in value:
        return value, True
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise S3ConfigError(f"{ENV_ENDPOINT} must be host:port or http(s)://host:port, got {value!r}")
    return parts.netloc, parts.scheme == "https"


def s3_settings_from_env(bucket: str, prefix: str, env: Mapping[str, str]) -> S3Settings:
    """S3Settings for `bucket`/`prefix` with endpoint, credentials and TLS from CLOUD_SELECTOR_S3_*."""
    endpoint = env.get(ENV_ENDPOINT, "").strip()
    if not endpoint:
        raise S3ConfigError(f"{ENV_ENDPOINT} is not set: an s3:// blob store needs the S3 endpoint (host:port or URL)")
    for name in (ENV_ACCESS_KEY, ENV_SECRET_KEY):
        if not env.get(name):
            raise S3ConfigError(f"{name} is not set: an s3:// blob store needs S3 credentials from the environment")
    ca_file = env.get(ENV_CA_FILE, "")
    if ca_file and not Path(ca_file).is_file():
        raise S3ConfigError(f"{ENV_CA_FILE}={ca_file!r}: no such file")
    host, secure = parse_endpoint(endpoint)
    return S3Settings(endpoint=host, bucket=bucket, prefix=prefix, access_key=env[ENV_ACCESS_KEY],
                      secret_key=env[ENV_SECRET_KEY], secure=secure, region=env.get(ENV_REGION, ""),
                      ca_file=ca_file)


def open_blob_store(spec: str, env: Mapping[str, str], *, create_bucket: bool = False) -> BlobStore:
    """The store `--blob-store` names: a directory path, or `s3://bucket[/prefix]` (see module doc)."""
    if not spec:
        raise S3ConfigError("blob store spec is empty: give a directory or s3://bucket/prefix")
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", spec)
    if not scheme:
        return DirectoryBlobStore(Path(spec))
    if scheme.group(1).lower() != "s3":
        raise S3ConfigError(f"unsupported blob store {spec!r}: give a directory or s3://bucket/prefix")
    bucket, _, prefix = spec[len("s3://"):].partition("/")
    settings = s3_settings_from_env(bucket, prefix.strip("/"), env)
    return S3BlobStore.open(settings, create_bucket=create_bucket)
