"""Build the gRPC server: `create_server(address, ...) -> RunningServer` (with `.port`).

Every streaming RPC holds a worker thread while open (one upload stream and one model watch
per device), so `max_workers` bounds the fleet one process can serve; size it at
2 x devices + headroom. An open upload stream also holds a reader thread of its own outside
the pool (cloud_selector/ingest.py), plus two committer threads per server: about 3 threads
per connected device in all.

Security is two independent choices:
- `auth`: who may call. `DeviceAuthenticator(catalog)` checks each call's bearer token. The
  default here is the do-nothing `AllowUnauthenticated`, so library users and tests can build a
  server in one line; `cloud-selector serve` passes a `DeviceAuthenticator` unless started with
  `--allow-unauthenticated`.
- `tls`: how the bytes travel. `ServerTls` gives TLS, and mutual TLS when it names a client CA
  (then the handshake refuses clients without a certificate that CA signed); None = plaintext,
  for loopback and for deployments that terminate TLS in front of us.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from cloud_selector.auth import AllowUnauthenticated, Authenticator
from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import Catalog
from cloud_selector.fleet_service import FleetService, ModelsService
from cloud_selector.ingest import IngestLimits, IngestService, RateLimit
from edge_agent.transport import DEFAULT_MAX_MESSAGE_BYTES  # one wire limit for both sides
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Room for a candidate's other fields next to its JPEG within one message.
_MESSAGE_OVERHEAD_BYTES = 64 * 1024


class TlsConfigError(ValueError):
    """A certificate or key file is missing, unreadable or not PEM."""


@dataclass(frozen=True)
class ServerTls:
    """PEM bytes: the server's certificate chain and key, and optionally the CA that signs
    client certificates (its presence turns on mutual TLS)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert_file: str | Path, key_file: str | Path,
                   client_ca_file: str | Path | None = None) -> "ServerTls":
        """Read and check the files (PEM, parseable, key matching the certificate), because gRPC
        would otherwise start and fail every handshake; raises TlsConfigError naming the file."""
        tls = cls(cert_chain=_read_pem(cert_file, "CERTIFICATE", "--tls-cert"),
                  private_key=_read_pem(key_file, "PRIVATE KEY", "--tls-key"),
                  client_ca=_read_pem(client_ca_file, "CERTIFICATE", "--tls-client-ca") if client_ca_file else None)
        try:
            leaf = x509.load_pem_x509_certificate(tls.cert_chain)
        except ValueError as exc:
            raise TlsConfigError(f"--tls-cert {cert_file} does not parse: {exc}") from exc
        try:
            key = serialization.load_pem_private_key(tls.private_key, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # TypeError: the key is encrypted
            raise TlsConfigError(f"--tls-key {key_file} is not an unencrypted private key: {exc}") from exc
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            raise TlsConfigError(f"--tls-key {key_file} does not belong to the certificate in {cert_file}")
        if tls.client_ca is not None:
            try:
                x509.load_pem_x509_certificates(tls.client_ca)
            except ValueError as exc:
                raise TlsConfigError(f"--tls-client-ca {client_ca_file} does not parse: {exc}") from exc
        return tls

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.cert_chain)], root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


def _read_pem(path: str | Path, kind: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data or kind.encode() not in data:
        raise TlsConfigError(f"{what} {path} is not a PEM {kind.lower()} file")
    return data


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    stop_event: threading.Event
    ingest: IngestService | None = None  # its committer thread is stopped after the server

    def stop(self, grace_s: float = 2.0) -> None:
        self.stop_event.set()  # ends Watch streams promptly
        self.server.stop(grace_s).wait()
        if self.ingest is not None:
            self.ingest.close()  # stores what is still queued (nobody is left to ack it) and joins


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Message limits, and keepalive settings that let an agent ping every 30 s, even between
    calls, without being sent GOAWAY ("too_many_pings")."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),  # 0 = never hang up on a chatty client
    ]


def create_server(address: str, *, catalog: Catalog, blobs: BlobStore, auth: Authenticator | None = None,
                  tls: ServerTls | None = None, max_workers: int = 64,
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, watch_poll_s: float = 1.0,
                  ingest_limits: IngestLimits | None = None, rate_limit: RateLimit | None = None) -> RunningServer:
    """Bind (port 0 picks a free one) and start. Raises OSError if the address cannot be bound.

    `auth=None` accepts unauthenticated calls (development and tests); production callers pass
    `DeviceAuthenticator(catalog)`. `ingest_limits` defaults to JPEGs up to the message limit
    less some room for the other fields.
    """
    if auth is None:
        auth = AllowUnauthenticated()
    if isinstance(auth, AllowUnauthenticated):
        log.warning("*** %s accepts UNAUTHENTICATED calls: anyone who reaches it can upload and impersonate any "
                    "device. Development only. ***", address)
    stop = threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=server_options(max_message_bytes),
    )
    limits = ingest_limits or IngestLimits(max_jpeg_bytes=max(1, max_message_bytes - _MESSAGE_OVERHEAD_BYTES))
    ingest = IngestService(catalog, blobs, limits, auth=auth, rate_limit=rate_limit)
    pb_grpc.add_IngestServicer_to_server(ingest, server)
    pb_grpc.add_ModelsServicer_to_server(
        ModelsService(catalog, blobs, stop=stop, poll_interval_s=watch_poll_s, auth=auth), server)
    pb_grpc.add_FleetServicer_to_server(FleetService(catalog, auth=auth), server)
    try:
        port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC server to {address}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    server.start()
    return RunningServer(server, port, stop, ingest)
