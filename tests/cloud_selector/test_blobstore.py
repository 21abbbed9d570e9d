"""The BlobStore contract, held by both the directory store and S3 (a real SeaweedFS on loopback),
plus what only S3 has: credentials, buckets, prefixes, TLS, write verification, and the
`--blob-store` spec parsing."""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
from dataclasses import replace
from typing import ClassVar

import pytest
from conftest import free_port

from cloud_selector.blobstore import BlobError, DirectoryBlobStore
from cloud_selector.s3store import (
    ENV_ACCESS_KEY,
    ENV_CA_FILE,
    ENV_ENDPOINT,
    ENV_SECRET_KEY,
    S3BlobStore,
    S3ConfigError,
    S3Settings,
    open_blob_store,
    parse_endpoint,
)

SIX_MIB = 6 * 1024 * 1024  # above minio's 5 MiB multipart threshold: proves puts stay single-part


@pytest.fixture(params=["directory", "s3"])
def store(request, tmp_path):
    if request.param == "directory":
        return DirectoryBlobStore(tmp_path / "blobs")
    return S3BlobStore.open(request.getfixturevalue("s3_bucket"))


# --- the contract, for both stores ---------------------------------------------------------


def test_put_get_round_trip(store):
    every_byte = bytes(range(256)) * 4
    store.put("candidates/cam-1/a.jpg", every_byte)
    store.put("empty", b"")
    assert store.get("candidates/cam-1/a.jpg") == every_byte
    assert store.get("empty") == b""


def test_overwrite_replaces(store):
    store.put("models/v1/model.onnx", b"first version, longer")
    store.put("models/v1/model.onnx", b"second")
    assert store.get("models/v1/model.onnx") == b"second"
    assert store.size("models/v1/model.onnx") == 6


def test_get_range_is_a_file_read(store):
    store.put("k", b"0123456789")
    assert store.get_range("k", 2, 3) == b"234"
    assert store.get_range("k", 0, 10) == b"0123456789"
    assert store.get_range("k", 7, 100) == b"789"  # short at the end
    assert store.get_range("k", 10, 5) == b""  # at the end
    assert store.get_range("k", 50, 5) == b""  # past the end
    assert store.get_range("k", 3, 0) == b""
    store.put("empty", b"")
    assert store.get_range("empty", 0, 10) == b""


def test_size_and_exists(store):
    assert not store.exists("a/b.jpg")
    store.put("a/b.jpg", b"x" * 1234)
    assert store.exists("a/b.jpg")
    assert store.size("a/b.jpg") == 1234
    assert not store.exists("a")  # a "folder" is not a blob


def test_missing_key_raises_blob_error_naming_it(store):
    for call in (lambda: store.get("no/such.jpg"), lambda: store.size("no/such.jpg"),
                 lambda: store.get_range("no/such.jpg", 0, 10), lambda: store.get_range("no/such.jpg", 0, 0)):
        with pytest.raises(BlobError, match=r"no blob 'no/such\.jpg'"):
            call()


@pytest.mark.parametrize("key", ["", "../escape", "a/../../b", "/etc/passwd", "a//b", "a/", ".hidden", "a b",
                                 "x" * 513])
def test_unsafe_keys_rejected(store, key):
    for call in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.get_range(key, 0, 1),
                 lambda: store.size(key), lambda: store.exists(key)):
        with pytest.raises(BlobError, match="invalid blob key"):
            call()


def test_six_mib_object(store):
    data = hashlib.shake_256(b"seed").digest(SIX_MIB)
    store.put("models/v2/backbone.onnx", data)
    assert store.size("models/v2/backbone.onnx") == SIX_MIB
    assert store.get("models/v2/backbone.onnx") == data
    boundary = 5 * 1024 * 1024
    assert store.get_range("models/v2/backbone.onnx", boundary - 10, 20) == data[boundary - 10:boundary + 10]


# --- S3 only -------------------------------------------------------------------------------


def test_s3_put_is_one_part_with_the_md5_as_etag(s3_bucket, s3_server):
    store = S3BlobStore.open(s3_bucket)
    data = hashlib.shake_256(b"big").digest(SIX_MIB)
    store.put("big.bin", data)
    stat = s3_server.client().stat_object(s3_bucket.bucket, "big.bin")
    assert stat.etag == hashlib.md5(data).hexdigest()  # a multipart ETag would end in "-2"


def test_s3_wrong_credentials_raise_blob_error(s3_bucket):
    S3BlobStore.open(s3_bucket).put("k", b"v")
    wrong = replace(s3_bucket, secret_key="not-the-secret")
    with pytest.raises(BlobError, match="refused the credentials") as raised:
        S3BlobStore.open(wrong)
    assert "not-the-secret" not in str(raised.value)
    store = S3BlobStore(wrong)
    for call in (lambda: store.get("k"), lambda: store.put("k", b"w"), lambda: store.exists("k")):
        with pytest.raises(BlobError, match="refused the credentials"):
            call()
    assert "not-the-secret" not in repr(wrong)


def test_s3_missing_bucket_is_a_clear_error_or_created_on_request(s3_bucket):
    settings = replace(s3_bucket, bucket=s3_bucket.bucket + "-new")
    with pytest.raises(BlobError, match=f"bucket '{settings.bucket}' does not exist.*create it"):
        S3BlobStore.open(settings)
    with pytest.raises(BlobError, match="does not exist"):
        S3BlobStore(settings).get("k")  # never a minio exception, even without open()
    store = S3BlobStore.open(settings, create_bucket=True)
    store.put("k", b"v")
    assert S3BlobStore.open(settings, create_bucket=True).get("k") == b"v"


def test_s3_prefix_isolates_stores_in_one_bucket(s3_bucket):
    def at(prefix: str) -> S3BlobStore:
        return S3BlobStore.open(replace(s3_bucket, prefix=prefix))

    site_a, site_b, root = at("site-a"), at("site-b/cloud"), at("")
    site_a.put("frames/1.jpg", b"A")
    site_b.put("frames/1.jpg", b"B")
    assert (site_a.get("frames/1.jpg"), site_b.get("frames/1.jpg")) == (b"A", b"B")
    assert not site_a.exists("frames/2.jpg") and not root.exists("frames/1.jpg")
    assert list(site_a.list()) == ["frames/1.jpg"]
    assert list(root.list()) == ["site-a/frames/1.jpg", "site-b/cloud/frames/1.jpg"]


def test_s3_delete_and_list(s3_bucket):
    store = S3BlobStore.open(s3_bucket)
    for key in ("c/2", "c/1", "m/1", "c10"):
        store.put(key, key.encode())
    assert list(store.list()) == ["c/1", "c/2", "c10", "m/1"]
    assert list(store.list("c/")) == ["c/1", "c/2"]
    assert list(store.list("c")) == ["c/1", "c/2", "c10"]
    store.delete("c/1")
    store.delete("c/1")  # idempotent, like S3
    assert not store.exists("c/1")
    assert list(store.list("c/")) == ["c/2"]


def test_s3_unreachable_endpoint_raises_blob_error(s3_bucket):
    settings = S3Settings(endpoint=f"127.0.0.1:{free_port()}", bucket="whatever", secure=False, retries=0,
                          access_key="a", secret_key="b")
    with pytest.raises(BlobError, match=r"failed at http://127\.0\.0\.1"):
        S3BlobStore.open(settings)


def test_s3_https_verified_against_custom_ca(s3_server, s3_bucket):
    tls = replace(s3_bucket, endpoint=s3_server.https_endpoint, secure=True, ca_file=str(s3_server.tls.ca))
    store = S3BlobStore.open(tls)
    store.put("over-tls", b"secret frame")
    assert S3BlobStore.open(s3_bucket).get("over-tls") == b"secret frame"
    untrusted = replace(tls, ca_file="", retries=0)
    with pytest.raises(BlobError, match="CERTIFICATE_VERIFY_FAILED"):
        S3BlobStore.open(untrusted)


class _LyingS3(http.server.BaseHTTPRequestHandler):
    """Accepts every PUT and answers with a wrong ETag: a server (or proxy) that corrupted the write."""

    seen_headers: ClassVar[list[dict[str, str]]] = []

    def do_PUT(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen_headers.append(dict(self.headers))
        self.send_response(200)
        self.send_header("ETag", '"00000000000000000000000000000000"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_s3_put_refuses_a_wrong_etag():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LyingS3)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        store = S3BlobStore(S3Settings(endpoint=f"127.0.0.1:{server.server_address[1]}", bucket="bucket",
                                       access_key="a", secret_key="b", secure=False, region="us-east-1"))
        with pytest.raises(BlobError, match=r"ETag .* but the data's MD5 is"):
            store.put("k", b"payload")
    finally:
        server.shutdown()
        server.server_close()
    headers = {k.lower(): v for k, v in _LyingS3.seen_headers[-1].items()}
    assert headers["x-amz-checksum-sha256"] == base64.b64encode(hashlib.sha256(b"payload").digest()).decode()
    assert headers["x-amz-content-sha256"] == hashlib.sha256(b"payload").hexdigest()  # signed, server-checked


# --- open_blob_store -----------------------------------------------------------------------


@pytest.fixture
def s3_env(s3_server):
    return {ENV_ENDPOINT: f"http://{s3_server.endpoint}", ENV_ACCESS_KEY: s3_server.access_key,
            ENV_SECRET_KEY: s3_server.secret_key}


def test_open_blob_store_directory(tmp_path):
    store = open_blob_store(str(tmp_path / "blobs"), {})
    assert isinstance(store, DirectoryBlobStore) and store.root == tmp_path / "blobs"


def test_open_blob_store_s3_bucket_and_prefix(s3_bucket, s3_env):
    store = open_blob_store(f"s3://{s3_bucket.bucket}/fleet/eu/", s3_env)
    assert isinstance(store, S3BlobStore)
    assert (store.settings.bucket, store.settings.prefix, store.settings.secure) == (s3_bucket.bucket, "fleet/eu",
                                                                                   False)
    store.put("a.jpg", b"jpeg")
    assert S3BlobStore.open(s3_bucket).get("fleet/eu/a.jpg") == b"jpeg"
    assert open_blob_store(f"s3://{s3_bucket.bucket}", s3_env).get("fleet/eu/a.jpg") == b"jpeg"


@pytest.mark.parametrize("missing", [ENV_ENDPOINT, ENV_ACCESS_KEY, ENV_SECRET_KEY])
def test_open_blob_store_names_the_missing_variable(s3_env, missing):
    env = {k: v for k, v in s3_env.items() if k != missing}
    with pytest.raises(S3ConfigError, match=f"^{missing} is not set") as raised:
        open_blob_store("s3://some-bucket/p", env)
    assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)


@pytest.mark.parametrize("spec, message", [
    ("", "empty"), ("gs://bucket/p", "unsupported"), ("s3://", "bucket name"), ("s3://Bad_Bucket/p", "bucket name"),
    ("s3://bucket/../up", "prefix"),
])
def test_open_blob_store_rejects_bad_specs(s3_env, spec, message):
    with pytest.raises(S3ConfigError, match=message):
        open_blob_store(spec, s3_env)


def test_open_blob_store_checks_the_ca_file(s3_env, tmp_path):
    with pytest.raises(S3ConfigError, match=f"{ENV_CA_FILE}=.*no such file"):
        open_blob_store("s3://bucket", {**s3_env, ENV_CA_FILE: str(tmp_path / "nope.pem")})


@pytest.mark.parametrize("value, expected", [
    ("s3.example.com:9000", ("s3.example.com:9000", True)), ("http://127.0.0.1:8333", ("127.0.0.1:8333", False)),
    ("https://minio.internal:9000/", ("minio.internal:9000", True)),
])
def test_parse_endpoint(value, expected):
    assert parse_endpoint(value) == expected


@pytest.mark.parametrize("value", ["ftp://host:21", "http://host:1/path", "http://"])
def test_parse_endpoint_rejects(value):
    with pytest.raises(S3ConfigError, match=ENV_ENDPOINT):
        parse_endpoint(value)
