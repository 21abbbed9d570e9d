"""Ed25519 signatures on model bundles: a device runs only models its owner's cloud published.

Hashes alone prove that a bundle's files match its manifest, not who wrote the manifest: anyone
who can answer a device's Watch/Fetch (a compromised cloud host, a man in the middle on a
plaintext link, a stray test server) could otherwise hand it any model. The cloud therefore
signs manifest.json's exact bytes with a private key that never leaves it, and devices check
the signature against public keys they were given out of band (`model.trusted_keys`). The
manifest lists the sha256 of every other file, so the signature covers the whole bundle. The
signature file's format is described in `edge_agent.bundle`'s docstring.

Key files are PEM: the private key PKCS#8 without a passphrase (the cloud signs unattended),
the public key SubjectPublicKeyInfo. A private key file that group or others may read or
write is refused rather than used: a signing key that others can read is one others may hold.
Private keys are written through a temporary file created with mode 0600, so they are never
readable by others even for a moment. A key id is the first 16 hex digits of the sha256 of the
raw 32-byte public key: short enough to compare by eye in logs and `cloud-selector keys show`.

What a device accepts (`BundleVerifier`):
- no trusted keys: any bundle, signed or not; signatures are not checked (the agent logs a
  WARNING at start). This is the transitional default, so fleets that predate signing keep
  updating;
- trusted keys and require_signature (the default): only bundles signed by one of them;
- trusted keys without require_signature: unsigned bundles pass, but a signature that is
  present must verify (a bad signature is never a reason to trust a bundle more than none).

Rotating the cloud's key without refusing a single good update, because a device trusts
several keys at once:
1. make the next key pair where nothing uses it yet:
   `cloud-selector --data-dir next-key keys init` and
   `cloud-selector --data-dir next-key keys show --out next.pub.pem`;
2. add next.pub.pem to every device's `model.trusted_keys`, next to the current key, and
   restart the agents; they now accept bundles signed by either key;
3. switch the cloud: `install -m 600 next-key/keys/signing_key.pem DATA_DIR/keys/` (and the
   .pub.pem beside it), or point CLOUD_SELECTOR_SIGNING_KEY at it; the next publish signs
   with the new key (`cloud-selector keys show` prints its id);
4. once every device runs a bundle signed by the new key, and each one's `model.bundle_dir`
   is such a bundle too (`cloud-selector models export`), remove the old public key from
   `model.trusted_keys`. An agent starts with the newest bundle that still verifies, and
   refuses to start when none does, so do not skip the first half of this step.
Should the private key leak, do steps 1-3 at once, publish a new version, and remove the old
key from devices as soon as it is installed: until then a device still accepts the old key.

Errors:

    SigningError             anything this module refuses
    ├── KeyFileError         a key file is missing, unreadable, not an Ed25519 key of the
    │                        expected kind, or (a private key) open to group or others
    └── SignatureError       a bundle's signature is missing where required, malformed, by a
                             key the device does not trust, or does not match manifest.json;
                             also a `BundleError`, so whoever refuses bad bundles refuses these

cryptography's exceptions are translated here, at this boundary.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.bundle import SIGNATURE_FILE, BundleError, Manifest, check_files, parse_manifest, read_manifest_bytes

SIGNATURE_FORMAT = "edgeflywheel.sig/1"
ALGORITHM = "ed25519"
KEY_ID_HEX = 16
_MAX_SIGNATURE_FILE = 4096  # a real one is ~200 bytes; refuse to parse anything much larger


class SigningError(Exception):
    """A key or a signature was refused (see the module docstring for the tree)."""


class KeyFileError(SigningError):
    """A key file is missing, unreadable, of the wrong kind, or (private) too open."""


class SignatureError(SigningError, BundleError):
    """A bundle's signature is missing where required, malformed, untrusted or wrong."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """A private key and what is derived from it."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(Ed25519PrivateKey.generate())

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def public_pem(self) -> str:
        return public_key_pem(self.public)


# ------------------------------------------------------------------ key files


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} {path} not found") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def check_private_key_mode(path: Path) -> None:
    """Refuse a private key file that group or others may read or write."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError as exc:
        raise KeyFileError(f"private key {path} not found") from exc
    if mode & 0o077:
        raise KeyFileError(f"private key {path} is accessible by group or others (mode {mode:04o}); "
                           f"refusing to use it: run `chmod 600 {path}`")


def load_private_key(path: Path) -> SigningKey:
    path = Path(path)
    check_private_key_mode(path)
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return SigningKey(key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    path = Path(path)
    data = _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_trusted_keys(paths: Iterable[str | Path]) -> dict[str, Ed25519PublicKey]:
    """key id -> public key for every file in `paths` (the same key twice is harmless)."""
    return {key_id(key): key for key in (load_public_key(Path(p)) for p in paths)}


def _write_new(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Write `data` to `path` through a temporary file created with `mode`, then rename (or,
    without `replace`, link, which fails when `path` exists even if it appeared a moment ago):
    the file never exists with wider permissions or half written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widened
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} already exists") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def save_private_key(path: Path, key: SigningKey, *, force: bool = False) -> None:
    """Write `key` as PEM with mode 0600; an existing file is replaced only with `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise KeyFileError(f"{path} already exists; refusing to replace a signing key (devices trust the old one) "
                           "without --force")
    data = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    _write_new(path, data, 0o600, replace=force)


def save_public_key(path: Path, public_key: Ed25519PublicKey) -> None:
    _write_new(Path(path), public_key_pem(public_key).encode("ascii"), 0o644)


# ------------------------------------------------------------------ signatures


@dataclass(frozen=True)
class Signature:
    key_id: str
    signature: bytes  # 64 bytes

    def to_bytes(self) -> bytes:
        return (json.dumps({"format": SIGNATURE_FORMAT, "algorithm": ALGORITHM, "key_id": self.key_id,
                            "signature": base64.b64encode(self.signature).decode("ascii")}, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Signature":
        if len(data) > _MAX_SIGNATURE_FILE:
            raise SignatureError(f"{SIGNATURE_FILE} is {len(data)} bytes, not a signature")
        try:
            d = json.loads(data)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            if d.get("format") != SIGNATURE_FORMAT or d.get("algorithm") != ALGORITHM:
                raise ValueError(f"format {d.get('format')!r} / algorithm {d.get('algorithm')!r}, expected "
                                 f"{SIGNATURE_FORMAT!r} / {ALGORITHM!r}")
            kid, sig = d.get("key_id"), base64.b64decode(str(d.get("signature")), validate=True)
            if not isinstance(kid, str) or len(kid) != KEY_ID_HEX or len(sig) != 64:
                raise ValueError("needs a 16-hex key_id and a 64-byte signature")
        except (UnicodeDecodeError, json.JSONDecodeError, binascii.Error, ValueError) as exc:
            raise SignatureError(f"malformed {SIGNATURE_FILE}: {exc}") from exc
        return cls(kid, sig)


def sign_manifest(manifest_bytes: bytes, key: SigningKey) -> Signature:
    return Signature(key.key_id, key.private.sign(manifest_bytes))


def sign_bundle(bundle_dir: Path, key: SigningKey) -> Signature:
    """Sign the bundle's manifest.json and write manifest.sig beside it (replacing one)."""
    bundle_dir = Path(bundle_dir)
    signature = sign_manifest(read_manifest_bytes(bundle_dir), key)
    tmp = bundle_dir / (SIGNATURE_FILE + ".tmp")
    tmp.write_bytes(signature.to_bytes())
    os.replace(tmp, bundle_dir / SIGNATURE_FILE)
    return signature


def read_signature(bundle_dir: Path) -> Signature | None:
    """The bundle's signature, or None when it has no manifest.sig."""
    path = Path(bundle_dir) / SIGNATURE_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SIGNATURE_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SignatureError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return Signature.from_bytes(data)


def verify_manifest(manifest_bytes: bytes, signature: Signature, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """Check `signature` over `manifest_bytes` with the trusted key it names; returns the key id."""
    key = trusted.get(signature.key_id)
    if key is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise SignatureError(f"signed by key {signature.key_id}, which is not a trusted key (model.trusted_keys: "
                             f"{known})")
    try:
        key.verify(signature.signature, manifest_bytes)
    except InvalidSignature as exc:
        raise SignatureError(f"signature by key {signature.key_id} does not match manifest.json "
                             "(the manifest was altered or the signature forged)") from exc
    return signature.key_id


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    signed_by: str  # the key id whose signature was checked; "" when none was


@dataclass(frozen=True)
class BundleVerifier:
    """What this device accepts (module docstring). `BundleVerifier()` trusts no key and so
    accepts what it accepted before signing existed: the stand-in when signing is off."""

    trusted: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    require_signature: bool = True

    @property
    def enforcing(self) -> bool:
        """Whether an unsigned bundle is refused."""
        return self.require_signature and bool(self.trusted)

    def verify(self, bundle_dir: Path) -> VerifiedBundle:
        """Signature (when keys are trusted), then manifest, then every file's sha256, all from
        one read of manifest.json. Raises SignatureError or BundleError."""
        bundle_dir = Path(bundle_dir)
        manifest_bytes = read_manifest_bytes(bundle_dir)
        signed_by = ""
        if self.trusted:
            try:
                signature = read_signature(bundle_dir)
                if signature is not None:
                    signed_by = verify_manifest(manifest_bytes, signature, self.trusted)
                elif self.require_signature:
                    raise SignatureError(f"unsigned bundle (no {SIGNATURE_FILE}) and model.require_signature is on")
            except SignatureError as exc:
                raise SignatureError(f"bundle {bundle_dir}: {exc}") from exc
        manifest = parse_manifest(manifest_bytes, bundle_dir / "manifest.json")
        check_files(bundle_dir, manifest)
        return VerifiedBundle(manifest, signed_by)


# ------------------------------------------------------------------ revocations
#
# A device never installs a version older than the one it runs, so a replayed old bundle, even
# a validly signed one, cannot take it back (a rollback attack). Going back on purpose (the
# cloud aborting a rollout, or `cloud-selector models rollback`) therefore needs a statement
# signed by a trusted key: "version R is revoked; run T instead". The revocation is a small
# JSON document, signed like manifest.json (its exact bytes, the same Signature format), sent
# in the ModelAssignment for T. A device accepts it only when it verifies, revokes the very
# version the device runs, and targets the assignment's version; it then remembers R as
# revoked, so R (or a replay of this revocation) can never be installed again.

REVOCATION_FORMAT = "edgeflywheel.revocation/1"
_MAX_REVOCATION_BYTES = 4096


@dataclass(frozen=True)
class Revocation:
    model_name: str
    revoked_version: int
    target_version: int
    issued_at: str  # ISO 8601, informational
    reason: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps({"format": REVOCATION_FORMAT, "model_name": self.model_name,
                           "revoked_version": self.revoked_version, "target_version": self.target_version,
                           "issued_at": self.issued_at, "reason": self.reason[:500]}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Revocation":
        if len(data) > _MAX_REVOCATION_BYTES:
            raise SignatureError(f"revocation is {len(data)} bytes, over {_MAX_REVOCATION_BYTES}")
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("format") != REVOCATION_FORMAT:
                raise ValueError(f"format must be {REVOCATION_FORMAT!r}")
            revoked, target = d.get("revoked_version"), d.get("target_version")
            if type(revoked) is not int or type(target) is not int or not (0 < target < revoked):
                raise ValueError("needs integer versions with 0 < target_version < revoked_version")
            return cls(str(d.get("model_name", "")), revoked, target, str(d.get("issued_at", "")),
                       str(d.get("reason", "")))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise SignatureError(f"malformed revocation: {exc}") from exc


def sign_revocation(revocation: Revocation, key: SigningKey) -> tuple[bytes, bytes]:
    """(revocation bytes, signature bytes) as they travel in a ModelAssignment."""
    data = revocation.to_bytes()
    return data, sign_manifest(data, key).to_bytes()


def verify_revocation(data: bytes, signature: bytes, verifier: BundleVerifier) -> tuple[Revocation, str]:
    """Parse a revocation and check its signature the way `verifier` checks bundles: with
    trusted keys a valid signature is required (whatever require_signature says: going back
    is never allowed on less than a signature); with none (the transitional default) it is
    accepted unchecked. Returns (revocation, key id or ""). Raises SignatureError."""
    revocation = Revocation.from_bytes(data)
    if not verifier.trusted:
        return revocation, ""
    if not signature:
        raise SignatureError("unsigned revocation, and this device trusts signing keys")
    return revocation, verify_manifest(data, Signature.from_bytes(signature), verifier.trusted)
