"""The cloud's bundle signing key: where it lives, making it, and loading it for the registry.

Layout, in the data directory (mode 0700):

    keys/signing_key.pem       Ed25519 private key, PEM, mode 0600; never leaves the cloud
    keys/signing_key.pub.pem   its public key: what devices list in `model.trusted_keys`

CLOUD_SELECTOR_SIGNING_KEY names another private key file instead (a mounted secret shared by
replicas); its public key is then derived from it (`cloud-selector keys show --out FILE`).

An embedded (SQLite) data directory gets its pair at its first publish (`open_services` wires
`create_signing_key` into the registry), so a demo or a single-box install signs from its first
model without a setup step. Not earlier: commands that publish nothing leave no key behind and
print nothing about one. With a shared catalog (several replicas, several admin machines) no
key is made: each machine would make its own and devices would trust only one of them, so
such a deployment runs `keys init` once and gives every publisher that key file; until then it
publishes unsigned, with a WARNING.

Signing and key files themselves are `edge_agent.signing`'s (one definition for both sides);
its errors (`KeyFileError`, a `SigningError`) are what this module raises.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from edge_agent.signing import KeyFileError, SigningKey, load_private_key, save_private_key, save_public_key

log = logging.getLogger(__name__)

KEYS_DIR = "keys"
PRIVATE_KEY_FILE = "signing_key.pem"
PUBLIC_KEY_FILE = "signing_key.pub.pem"
SIGNING_KEY_ENV = "CLOUD_SELECTOR_SIGNING_KEY"


def private_key_path(data_dir: Path, env: Mapping[str, str]) -> Path:
    """The private key file this data directory signs with."""
    return Path(env[SIGNING_KEY_ENV]) if env.get(SIGNING_KEY_ENV) else Path(data_dir) / KEYS_DIR / PRIVATE_KEY_FILE


def public_key_path(private_path: Path) -> Path:
    name = private_path.name.removesuffix(".pem")
    return private_path.with_name(f"{name}.pub.pem")


def init_keys(private_path: Path, *, force: bool = False) -> SigningKey:
    """Create a new key pair at `private_path` (0600, in a 0700 directory) and its public key
    beside it. Raises KeyFileError when a private key is already there and not `force`."""
    private_path = Path(private_path)
    if private_path.exists() and not force:
        raise KeyFileError(f"a signing key already exists at {private_path}; devices trust it, so replacing it "
                           "needs --force (and the rotation steps in edge_agent/signing.py)")
    if not private_path.parent.exists():
        try:
            private_path.parent.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise KeyFileError(f"cannot create {private_path.parent}: {exc.strerror or exc}") from exc
    key = SigningKey.generate()
    save_private_key(private_path, key, force=force)
    save_public_key(public_key_path(private_path), key.public)
    return key


def load_signing_key(private_path: Path) -> SigningKey | None:
    """The signing key, or None when there is none yet. Raises KeyFileError for a key file
    that is open to group or others, or is not an Ed25519 private key."""
    if not Path(private_path).exists():
        return None
    return load_private_key(private_path)


def open_signing_key(data_dir: Path, env: Mapping[str, str]) -> SigningKey | None:
    """The key the registry signs with, checked now (mode, kind) so a bad key file stops the
    command before any work; None when there is none yet. A key named by
    CLOUD_SELECTOR_SIGNING_KEY must exist."""
    path = private_key_path(data_dir, env)
    if env.get(SIGNING_KEY_ENV) and not path.exists():
        raise KeyFileError(f"{SIGNING_KEY_ENV} names {path}, which does not exist")
    return load_signing_key(path)


def create_signing_key(private_path: Path) -> SigningKey:
    """Make the pair for the first publish of an embedded data directory (module docstring).
    Another process publishing at the same moment may win the race: then its key is used."""
    try:
        key = init_keys(private_path)
    except KeyFileError:
        if not Path(private_path).exists():
            raise
        return load_private_key(private_path)
    log.info("created the bundle signing key %s (key id %s); devices need its public key %s in "
             "model.trusted_keys", private_path, key.key_id, public_key_path(Path(private_path)))
    return key


def describe(key: SigningKey, private_path: Path) -> str:
    """What `keys show` prints: the key id, then the public key PEM."""
    return f"key id: {key.key_id}\nprivate key: {private_path} (stays here)\n{key.public_pem()}"

