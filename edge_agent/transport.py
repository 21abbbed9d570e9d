"""gRPC plumbing shared by the uploader, the model updater and the heartbeat.

`open_channel(address, credentials=..., tls=...)` returns a channel that already carries the
device's identity on every call (a client interceptor adds `x-device-id` and
`authorization: Bearer <token>`), so the code that makes calls knows nothing about auth.
Retries of unary calls are a channel service config (gRPC's own retry machinery), not
hand-written loops; streams reconnect in their owners with `Backoff`. Keepalive pings every
30 s notice a dead link (NAT timeouts, a pulled cable) on otherwise idle streams; the server
is configured to accept them.

Errors: `TransportConfigError` (a ValueError) for credentials or TLS files that cannot be used,
raised by `open_channel` before anything connects; call failures stay `grpc.RpcError`.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024

_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "edgeflywheel.v1.Fleet"},
                    {"service": "edgeflywheel.v1.Models", "method": "ReportInstall"},
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class TransportConfigError(ValueError):
    """Device credentials or TLS files that cannot be used (missing, unreadable, incomplete)."""


@dataclass(frozen=True)
class DeviceCredentials:
    """The identity `cloud-selector devices add` issued; sent as metadata with every call."""

    device_id: str
    token: str

    def __post_init__(self) -> None:
        for name, value in (("device id", self.device_id), ("token", self.token)):
            # gRPC refuses non-printable ASCII in text metadata, and it would fail on every call.
            if not value or not value.isascii() or not value.isprintable() or value != value.strip():
                raise TransportConfigError(f"device {name} must be non-empty printable ASCII without spaces "
                                           "around it")

    @classmethod
    def from_token_file(cls, device_id: str, token_file: str | Path) -> "DeviceCredentials":
        """Read the token from a file (kept out of the config, e.g. mode 0600 or a secret mount)."""
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise TransportConfigError(f"cannot read the device token file {token_file}: {exc}") from exc
        return cls(device_id, token)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-device-id", self.device_id), ("authorization", f"Bearer {self.token}"))


@dataclass(frozen=True)
class ClientTls:
    """TLS to the cloud. `ca_file`: PEM roots to trust ("" = the system's); `cert_file` and
    `key_file` together: this device's certificate for mutual TLS; `server_name`: the name to
    verify in the server's certificate when it differs from the address (e.g. dialling an IP)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files; raises TransportConfigError naming the file that is unusable."""
        if bool(self.cert_file) != bool(self.key_file):
            raise TransportConfigError("TLS client certificate and key go together: set both cert_file and key_file")
        return grpc.ssl_channel_credentials(
            root_certificates=_read_file(self.ca_file, "CA") if self.ca_file else None,
            private_key=_read_file(self.key_file, "client key") if self.key_file else None,
            certificate_chain=_read_file(self.cert_file, "client certificate") if self.cert_file else None,
        )


def _read_file(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TransportConfigError(f"cannot read the TLS {what} file {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise TransportConfigError(f"the TLS {what} file {path} is not PEM")
    return data


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),
    grpc.ClientCallDetails,
):
    pass


class _DeviceMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                      grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the device's identity to every call, of every shape."""

    def __init__(self, credentials: DeviceCredentials):
        self._pairs = credentials.metadata()

    def _with_identity(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), *self._pairs],
                            details.credentials, details.wait_for_ready, getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_identity(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_identity(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_identity(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_identity(client_call_details), request_iterator)


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_channel(address: str, *, credentials: DeviceCredentials | None = None, tls: ClientTls | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, reconnect_max_s: float = 30.0) -> grpc.Channel:
    """A channel to the cloud: TLS when `tls` is given (else plaintext), and the device's
    identity on every call when `credentials` are given. Raises TransportConfigError for
    unusable TLS files; connecting happens lazily, on the first call.

    `reconnect_max_s` caps gRPC's own reconnect backoff (its default grows to 120 s, so a
    device would sit idle for two minutes after its link came back)."""
    options = [
        ("grpc.initial_reconnect_backoff_ms", int(min(1.0, reconnect_max_s) * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(reconnect_max_s * 1000)),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # 0 = keep pinging idle streams
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _RETRY_SERVICE_CONFIG),
    ]
    if tls is not None:
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.secure_channel(address, tls.credentials(), options=options)
    else:
        if credentials is not None and not _is_loopback(address):
            log.warning("sending the device token to %s without TLS: anyone on the path can read it", address)
        channel = grpc.insecure_channel(address, options=options)
    if credentials is not None:
        channel = grpc.intercept_channel(channel, _DeviceMetadata(credentials))
    return channel


class Backoff:
    """Exponential backoff with full jitter; `reset()` after a success."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, rng: random.Random | None = None):
        self.initial_s = initial_s
        self.max_s = max_s
        self._attempt = 0
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * (2**self._attempt))
        self._attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def wait(self, stop: threading.Event) -> None:
        stop.wait(self.next_delay())
