"""Device identity: enrolment, bearer tokens, and the check every RPC makes before it reads a message.

A device is enrolled with `cloud-selector devices add NAME`, which mints a random 256-bit token,
shows it once, and keeps only its sha256 in the catalog: a leaked catalog does not let anyone
impersonate a device, and a plain hash is enough because the tokens are random, not passwords.

Every call carries the metadata `x-device-id: <id>` and `authorization: Bearer <token>`. The
services hold an authenticator (injected, never looked up) and call it first:

    device_id = auth.authenticate(context)          # UNAUTHENTICATED: missing, wrong, revoked
    check_claim(context, device_id, msg.device_id)  # PERMISSION_DENIED: names another device

`AllowUnauthenticated` is the do-nothing stand-in for `cloud-selector serve
--allow-unauthenticated` (development only): it accepts every call as the anonymous device "",
and `check_claim` then trusts whatever the message says.

Exceptions (enrolment and revocation; RPCs answer with status codes instead):

    DeviceCredentialError (ValueError)      from cloud_selector.catalog
    ├── InvalidDeviceId                     the name breaks [A-Za-z0-9._-]{1,64}
    ├── DeviceExists                        from cloud_selector.catalog
    └── UnknownDevice (also LookupError)    from cloud_selector.catalog
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import grpc

from cloud_selector.catalog import Catalog, DeviceCredential, DeviceCredentialError, DeviceExists, UnknownDevice

__all__ = [
    "ANONYMOUS", "AllowUnauthenticated", "Authenticator", "DeviceAuthenticator", "DeviceCredentialError",
    "DeviceExists", "EnrolledDevice", "InvalidDeviceId", "UnknownDevice", "check_claim", "enroll_device",
    "hash_token", "revoke_device", "validate_device_id",
]

log = logging.getLogger(__name__)

DEVICE_ID_HEADER = "x-device-id"
AUTHORIZATION_HEADER = "authorization"
ANONYMOUS = ""  # the identity AllowUnauthenticated hands out
_DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Compared against when the device is unknown, so an unknown id costs the same as a wrong token.
_NO_HASH = hashlib.sha256(b"no such device").hexdigest()


class InvalidDeviceId(DeviceCredentialError):
    """A device name outside [A-Za-z0-9._-]{1,64} (it travels in metadata and file names)."""


@dataclass(frozen=True)
class EnrolledDevice:
    """What `devices add` shows once: the token exists nowhere else afterwards."""

    device_id: str
    token: str


def validate_device_id(device_id: str) -> str:
    if not _DEVICE_ID.fullmatch(device_id):
        raise InvalidDeviceId(f"device id {device_id[:80]!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
    return device_id


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def enroll_device(catalog: Catalog, device_id: str) -> EnrolledDevice:
    """Issue a device and its token; raises InvalidDeviceId or DeviceExists."""
    token = secrets.token_urlsafe(32)
    catalog.add_device_credential(validate_device_id(device_id), hash_token(token))
    return EnrolledDevice(device_id, token)


def revoke_device(catalog: Catalog, device_id: str) -> DeviceCredential:
    """Revoke from now on (new calls at once, open streams within the recheck interval);
    raises UnknownDevice. Revoking twice keeps the first revocation time."""
    return catalog.revoke_device_credential(device_id)


class Authenticator(Protocol):
    """What the services need: who is calling, and whether an open stream may go on."""

    def authenticate(self, context: grpc.ServicerContext) -> str:
        """The authenticated device id, or abort the call with UNAUTHENTICATED."""

    def still_valid(self, device_id: str) -> bool:
        """False once the device was revoked; long-lived streams ask between messages."""


class DeviceAuthenticator:
    """Bearer tokens checked against the catalog's hashes on every call.

    `authenticate` reads the catalog each time, so a revocation by another process (the CLI)
    applies to the next call. `still_valid` caches its answer for `recheck_s` seconds because
    streams ask it between every message.
    """

    def __init__(self, catalog: Catalog, *, recheck_s: float = 5.0, clock=time.monotonic):
        self._catalog = catalog
        self._recheck_s = recheck_s
        self._clock = clock
        self._checked: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def authenticate(self, context: grpc.ServicerContext) -> str:
        metadata = {key: value for key, value in (context.invocation_metadata() or ())}
        device_id = metadata.get(DEVICE_ID_HEADER, "")
        scheme, _, token = str(metadata.get(AUTHORIZATION_HEADER, "")).partition(" ")
        if not device_id or scheme.lower() != "bearer" or not token.strip():
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"missing {DEVICE_ID_HEADER} or '{AUTHORIZATION_HEADER}: Bearer <token>' metadata")
        credential = self._catalog.device_credential(device_id) if _DEVICE_ID.fullmatch(device_id) else None
        matches = hmac.compare_digest(hash_token(token.strip()), credential.token_sha256 if credential else _NO_HASH)
        if credential is None or not matches:
            log.warning("rejected call from %r: unknown device or wrong token", device_id[:64])
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown device or wrong token")
        if credential.revoked_ms is not None:
            log.warning("rejected call from revoked device %s", device_id)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"device {device_id} is revoked")
        return device_id

    def still_valid(self, device_id: str) -> bool:
        now = self._clock()
        with self._lock:
            cached = self._checked.get(device_id)
        if cached is not None and now - cached[0] < self._recheck_s:
            return cached[1]
        credential = self._catalog.device_credential(device_id)
        valid = credential is not None and credential.revoked_ms is None
        with self._lock:
            self._checked[device_id] = (now, valid)
        return valid


class AllowUnauthenticated:
    """Development stand-in: every call is the anonymous device and messages are trusted."""

    def authenticate(self, context: grpc.ServicerContext) -> str:
        return ANONYMOUS

    def still_valid(self, device_id: str) -> bool:
        return True


def check_claim(context: grpc.ServicerContext, authenticated: str, claimed: str, what: str) -> None:
    """Abort with PERMISSION_DENIED when a message names another device than the caller.

    Strict: an empty device_id in the message is "another device" too, since our agents always
    fill it. The anonymous caller of AllowUnauthenticated may claim anything.
    """
    if authenticated != ANONYMOUS and claimed != authenticated:
        log.warning("device %s sent a %s naming device %r", authenticated, what, claimed[:64])
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"{what} names device {claimed[:64]!r}, but the caller is {authenticated!r}")
