"""Signed model bundles on the device: the signature format, what a verifier accepts, key files,
and the updater refusing bad bundles from a real cloud on loopback while it keeps its model.

The unit tests use bundles of arbitrary bytes (verification only reads manifest.json, the
signature and hashes); the updater and start-up tests use a real model trained once per module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cloud_selector.releases import Releases

from conftest import seed_model, wait_for
from edge_agent.bundle import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    BundleError,
    InputSpec,
    Manifest,
    check_relative_path,
    load_manifest,
    write_bundle,
)
from edge_agent.config import ConfigError, build_config
from edge_agent.signing import (
    BundleVerifier,
    KeyFileError,
    SignatureError,
    SigningKey,
    key_id,
    load_private_key,
    load_public_key,
    load_trusted_keys,
    read_signature,
    save_private_key,
    save_public_key,
    sign_bundle,
)


def make_bundle(root: Path, name: str = "bundle", version: int = 3) -> Path:
    src = root / f"{name}-src"
    src.mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"\x08\x07not really onnx\x00" * 50)
    np.save(src / "bank.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    manifest = Manifest(name="parts", version=version, classes=("bolt", "nut"), input=InputSpec(width=8, height=8),
                        metrics={"accuracy": 0.93})
    write_bundle(root / name, manifest, {"model.onnx": src / "model.onnx", "novelty_bank.npy": src / "bank.npy"})
    return root / name


def trust(*keys: SigningKey) -> dict:
    return {k.key_id: k.public for k in keys}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def signed(tmp_path, key) -> Path:
    bundle = make_bundle(tmp_path)
    sign_bundle(bundle, key)
    return bundle


# --- format and verification -----------------------------------------------------------------


def test_sign_verify_round_trip_and_documented_format(signed, key):
    envelope = json.loads((signed / SIGNATURE_FILE).read_text())
    assert envelope["format"] == "edgeflywheel.sig/1" and envelope["algorithm"] == "ed25519"
    assert envelope["key_id"] == key.key_id and len(key.key_id) == 16
    raw = key.public.public_bytes_raw()
    assert key.key_id == hashlib.sha256(raw).hexdigest()[:16]
    signature = base64.b64decode(envelope["signature"])
    key.public.verify(signature, (signed / MANIFEST_FILE).read_bytes())  # over manifest.json's exact bytes
    assert read_signature(signed).signature == signature

    verified = BundleVerifier(trust(key)).verify(signed)
    assert verified.signed_by == key.key_id and verified.manifest == load_manifest(signed)


def test_tampered_manifest_is_refused(signed, key):
    manifest = json.loads((signed / MANIFEST_FILE).read_text())
    manifest["classes"] = ["bolt", "nut", "rivet"]  # still a valid manifest, no longer the signed one
    (signed / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(SignatureError, match="does not match manifest.json"):
        BundleVerifier(trust(key)).verify(signed)


def test_whitespace_change_to_the_manifest_is_refused(signed, key):
    (signed / MANIFEST_FILE).write_bytes((signed / MANIFEST_FILE).read_bytes() + b"\n")
    with pytest.raises(SignatureError, match="does not match"):
        BundleVerifier(trust(key)).verify(signed)


def test_tampered_model_file_is_caught_through_the_signed_manifest(signed, key):
    (signed / "model.onnx").write_bytes(b"a different graph")
    with pytest.raises(BundleError, match="sha256 mismatch for model.onnx") as info:
        BundleVerifier(trust(key)).verify(signed)
    assert not isinstance(info.value, SignatureError)  # the signature is fine; the file is not


def test_signature_by_an_untrusted_key_is_refused(signed, key):
    other = SigningKey.generate()
    with pytest.raises(SignatureError, match=f"signed by key {key.key_id}, which is not a trusted key.*{other.key_id}"):
        BundleVerifier(trust(other)).verify(signed)


def test_a_forged_signature_naming_a_trusted_key_id_is_refused(tmp_path, key):
    bundle = make_bundle(tmp_path)
    attacker = SigningKey.generate()
    sign_bundle(bundle, attacker)
    envelope = json.loads((bundle / SIGNATURE_FILE).read_text())
    envelope["key_id"] = key.key_id  # the key id is a hint, never trusted on its own
    (bundle / SIGNATURE_FILE).write_text(json.dumps(envelope))
    with pytest.raises(SignatureError, match=f"signature by key {key.key_id} does not match"):
        BundleVerifier(trust(key)).verify(bundle)


def test_missing_signature_with_and_without_require(tmp_path, key):
    bundle = make_bundle(tmp_path)
    with pytest.raises(SignatureError, match="unsigned bundle .*require_signature"):
        BundleVerifier(trust(key)).verify(bundle)
    assert BundleVerifier(trust(key), require_signature=False).verify(bundle).signed_by == ""
    # No trusted keys: nothing can be checked, so nothing is required (the transitional default).
    assert not BundleVerifier().enforcing
    assert BundleVerifier().verify(bundle).signed_by == ""


def test_a_present_signature_must_verify_even_when_not_required(signed, key):
    with pytest.raises(SignatureError, match="not a trusted key"):
        BundleVerifier(trust(SigningKey.generate()), require_signature=False).verify(signed)


@pytest.mark.parametrize("content", [b"", b"not json", b'{"format": "edgeflywheel.sig/1", "algorithm": "rsa"}',
                                     b'{"format": "edgeflywheel.sig/1", "algorithm": "ed25519", "key_id": "ab", '
                                     b'"signature": "AAAA"}', b"[1, 2]", b" " * 5000])
def test_malformed_signature_file_is_refused(signed, key, content):
    (signed / SIGNATURE_FILE).write_bytes(content)
    with pytest.raises(SignatureError, match="manifest.sig"):
        BundleVerifier(trust(key)).verify(signed)


def test_two_trusted_keys_accept_bundles_from_either_during_a_rotation(tmp_path):
    old, new = SigningKey.generate(), SigningKey.generate()
    save_public_key(tmp_path / "old.pub.pem", old.public)
    save_public_key(tmp_path / "new.pub.pem", new.public)
    trusted = load_trusted_keys([tmp_path / "old.pub.pem", str(tmp_path / "new.pub.pem")])
    assert set(trusted) == {old.key_id, new.key_id}
    verifier = BundleVerifier(trusted)
    for signer in (old, new):
        bundle = make_bundle(tmp_path, f"by-{signer.key_id}")
        sign_bundle(bundle, signer)
        assert verifier.verify(bundle).signed_by == signer.key_id
    # After the rotation the old key is removed: its bundles are refused.
    with pytest.raises(SignatureError, match="not a trusted key"):
        BundleVerifier(load_trusted_keys([tmp_path / "new.pub.pem"])).verify(tmp_path / f"by-{old.key_id}")


def test_the_manifest_cannot_list_the_signature():
    with pytest.raises(BundleError, match="reserved"):
        check_relative_path(SIGNATURE_FILE)


# --- key files -------------------------------------------------------------------------------


def test_private_key_file_is_0600_and_refused_when_others_can_read_it(tmp_path, key):
    path = tmp_path / "signing_key.pem"
    save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_private_key(path).key_id == key.key_id
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file, renamed

    for mode in (0o644, 0o640, 0o604, 0o620):
        os.chmod(path, mode)
        with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*chmod 600"):
            load_private_key(path)
    os.chmod(path, 0o400)
    assert load_private_key(path).key_id == key.key_id


def test_private_key_is_not_replaced_without_force(tmp_path, key):
    path = tmp_path / "signing_key.pem"
    save_private_key(path, key)
    other = SigningKey.generate()
    with pytest.raises(KeyFileError, match="already exists.*--force"):
        save_private_key(path, other)
    assert load_private_key(path).key_id == key.key_id
    save_private_key(path, other, force=True)
    assert load_private_key(path).key_id == other.key_id and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_files_of_the_wrong_kind_are_refused(tmp_path, key):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    save_private_key(tmp_path / "private.pem", key)
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(tmp_path / "private.pem")
    with pytest.raises(KeyFileError, match="not found"):
        load_trusted_keys([tmp_path / "missing.pem"])
    (tmp_path / "ec.pub.pem").write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_public_key(tmp_path / "ec.pub.pem")
    save_public_key(tmp_path / "k.pub.pem", key.public)
    assert key_id(load_public_key(tmp_path / "k.pub.pem")) == key.key_id


def test_model_config_keys(tmp_path):
    base = {"device": {"id": "cam"}, "source": {"path": "x"}, "model": {"bundle_dir": "b"}}
    config = build_config(base, {})
    assert config.model.trusted_keys == [] and config.model.require_signature and config.model.max_bundle_mb == 200
    env = {"EDGE_AGENT_MODEL_TRUSTED_KEYS": "a.pem, b.pem", "EDGE_AGENT_MODEL_REQUIRE_SIGNATURE": "false",
           "EDGE_AGENT_MODEL_MAX_BUNDLE_MB": "50"}
    config = build_config(base, env)
    assert config.model.trusted_keys == ["a.pem", "b.pem"] and not config.model.require_signature
    assert config.model.max_bundle_mb == 50.0
    with pytest.raises(ConfigError, match="max_bundle_mb"):
        build_config({**base, "model": {"bundle_dir": "b", "max_bundle_mb": -1}}, {})
    with pytest.raises(ConfigError, match="trusted_keys"):
        build_config({**base, "model": {"bundle_dir": "b", "trusted_keys": [1]}}, {})


# --- a real cloud and a real updater ---------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, fashion_train):
    """A cloud data dir (which got its signing key on first open) with a real v1, signed."""
    from cloud_selector.cli import open_services

    root = tmp_path_factory.mktemp("signed-cloud")
    services = open_services(root / "cloud")
    v1 = seed_model(services, fashion_train, root / "seed", per_class=2)
    yield services, v1, root / "cloud"
    services.catalog.close()


def derive(v1: Path, out: Path, version: int, extra: dict[str, Path] | None = None) -> Path:
    """A bundle with v1's model under a new version (what a retrain would publish)."""
    manifest = load_manifest(v1)
    files = {**{rel: v1 / rel for rel in manifest.files}, **(extra or {})}
    write_bundle(out, replace(manifest, version=version, parent_version=version - 1, files={}), files)
    return out


def installs(catalog) -> dict[int, tuple[str, str]]:
    import sqlalchemy as sa

    from cloud_selector.catalog import installs as table

    with catalog.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.version, table.c.status, table.c.detail).order_by(table.c.id)).all()
    return {version: (status, detail) for version, status, detail in rows}


def test_updater_refuses_bad_bundles_and_keeps_its_model(seeded, tmp_path):
    from cloud_selector.fleet_service import assignment_for
    from cloud_selector.registry import Registry, bundle_key
    from cloud_selector.server import create_server
    from edge_agent.runtime import LoadedModel
    from edge_agent.transport import Backoff, open_channel
    from edge_agent.updater import CURRENT_FILE, ModelSlot, ModelUpdater

    services, v1, data_dir = seeded
    cloud_key = services.registry.signing_key
    assert cloud_key is not None and (data_dir / "keys" / "signing_key.pem").is_file()
    verifier = BundleVerifier(load_trusted_keys([data_dir / "keys" / "signing_key.pub.pem"]))
    assert verifier.verify(v1).signed_by == cloud_key.key_id  # the seed model went out signed

    models_dir = tmp_path / "device" / "models"
    v1_size = sum(p.stat().st_size for p in v1.iterdir())
    slot = ModelSlot(LoadedModel(v1))
    running = create_server("127.0.0.1:0", catalog=services.catalog, blobs=services.blobs, watch_poll_s=0.1)
    channel = open_channel(f"127.0.0.1:{running.port}")
    updater = ModelUpdater(channel, device_id="cam-sig", models_dir=models_dir, slot=slot, load_model=LoadedModel,
                           backoff=Backoff(0.05, 0.5), verifier=verifier, max_bundle_bytes=v1_size + 64 * 1024)
    stop = threading.Event()
    thread = threading.Thread(target=updater.run, args=(stop,), daemon=True)
    thread.start()

    def refused(version: int, reason: str) -> None:
        status, detail = wait_for(lambda: installs(services.catalog).get(version), 20, f"the report on v{version}")
        assert status == "failed" and reason in detail, detail
        assert slot.version == 1 and not (models_dir / CURRENT_FILE).exists()
        assert not (models_dir / f"v{version}").exists()

    try:
        # (a) signed by a key the device does not trust
        Registry(services.catalog, services.blobs, tmp_path / "c1", signing_key=SigningKey.generate()).publish(
            derive(v1, tmp_path / "v2", 2))
        refused(2, "which is not a trusted key")

        # (b) unsigned; a signature left in staging by an earlier attempt must not vouch for it
        unsigned = derive(v1, tmp_path / "v3", 3)
        (models_dir / "staging" / "v3").mkdir(parents=True)
        sign_bundle(unsigned, cloud_key)
        shutil.move(unsigned / SIGNATURE_FILE, models_dir / "staging" / "v3" / SIGNATURE_FILE)
        Registry(services.catalog, services.blobs, tmp_path / "c2", signing_key=None).publish(unsigned)
        refused(3, "unsigned bundle")

        # (c) an old, validly signed bundle replayed under a new version number
        old = services.catalog.model(1)
        for f in old["files"]:
            services.blobs.put(bundle_key(4, f["path"]), services.blobs.get(bundle_key(1, f["path"])))
        services.catalog.add_model(version=4, name=old["name"], parent_version=3, manifest=old["manifest"],
                                   files=old["files"])
        Releases(services.catalog).release(4)  # what a promote of a tampered row would send
        refused(4, "rollback refused: the bundle's manifest says v1")

        # (d) properly signed but over the size limit: refused before any download
        padding = tmp_path / "padding.bin"
        padding.write_bytes(os.urandom(128 * 1024))
        services.registry.publish(derive(v1, tmp_path / "v5", 5, {"padding.bin": padding}))
        refused(5, "limit (model.max_bundle_mb); not downloaded")
        assert not (models_dir / "staging" / "v5").exists()

        # a properly signed newer version is installed, its signature with it
        services.registry.publish(derive(v1, tmp_path / "v6", 6))
        wait_for(lambda: slot.version == 6, 20, "the agent to install v6")
        # reported installed, then healthy: the report follows the swap, later under load
        wait_for(lambda: installs(services.catalog).get(6, ("",))[0] == "healthy", 20, "v6 reported healthy")
        assert (models_dir / CURRENT_FILE).read_text() == "v6"
        assert verifier.verify(models_dir / "v6").signed_by == cloud_key.key_id
    finally:
        stop.set()
        thread.join(timeout=5)

    # An older assignment (a cloud may send one; Watch never does) is refused too, and reported.
    assert not updater.install(assignment_for(services.catalog.model(1)))
    assert installs(services.catalog)[1] == ("failed", "rollback refused: v1 is not newer than the running v6")
    assert slot.version == 6
    channel.close()
    running.stop(grace_s=0.5)


def test_start_uses_the_newest_bundle_that_verifies(seeded, tmp_path, caplog):
    """After a key rotation the configured bundle may carry the retired key's signature while
    the installed one carries the new key's: the agent starts with what verifies."""
    from edge_agent.cli import _load_initial_model
    from edge_agent.updater import CURRENT_FILE

    _, v1, _ = seeded
    old, new = SigningKey.generate(), SigningKey.generate()
    configured = derive(v1, tmp_path / "configured", 2)
    sign_bundle(configured, old)
    models_dir = tmp_path / "state" / "models"
    sign_bundle(derive(v1, models_dir / "v3", 3), new)
    (models_dir / CURRENT_FILE).write_text("v3")
    for name, k in (("old", old), ("new", new)):
        save_public_key(tmp_path / f"{name}.pub.pem", k.public)
    config = build_config({"device": {"id": "cam"}, "source": {"path": "x"},
                           "model": {"bundle_dir": str(configured)}}, {})

    def start(*trusted: str):
        return _load_initial_model(config, models_dir, BundleVerifier(load_trusted_keys(
            [tmp_path / f"{name}.pub.pem" for name in trusted])))

    assert start("old", "new").version == 3  # mid-rotation: both verify, the newer wins
    with caplog.at_level(logging.WARNING, logger="edge_agent"):
        assert start("new").version == 3
    assert "configured" in caplog.text and "not a trusted key" in caplog.text
    assert start("old").version == 2  # the installed one is refused, the configured one runs
    with pytest.raises(SignatureError, match="not a trusted key"):  # nothing verifies: the agent does not start
        _load_initial_model(config, models_dir, BundleVerifier(trust(SigningKey.generate())))


def test_agent_refuses_to_start_without_a_verified_bundle(tmp_path, key):
    """User mistakes at start are one-line errors with exit code 2: a trusted key file that is
    not there, and an unsigned model.bundle_dir where signatures are required."""
    import subprocess
    import sys

    from conftest import ROOT

    bundle = make_bundle(tmp_path)
    save_public_key(tmp_path / "cloud.pub.pem", key.public)
    for trusted, needle in (("missing.pub.pem", "public key"), ("cloud.pub.pem", "unsigned bundle")):
        config = tmp_path / "agent.toml"
        config.write_text(f'[device]\nid = "cam"\nstate_dir = "{tmp_path / "state"}"\n[source]\npath = "{tmp_path}"\n'
                          f'[model]\nbundle_dir = "{bundle}"\ntrusted_keys = ["{tmp_path / trusted}"]\n')
        result = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--config", str(config)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr


# --- edge-agent doctor -----------------------------------------------------------------------


def test_doctor_signature_check(tmp_path, key, signed):
    from edge_agent.doctor import check_signature

    assert check_signature(signed, BundleVerifier(trust(key))).ok
    untrusted = check_signature(signed, BundleVerifier(trust(SigningKey.generate())))
    assert not untrusted.ok and "trusted_keys" in untrusted.hint
    no_keys = check_signature(signed, BundleVerifier())
    assert not no_keys.ok and "accepted unsigned" in no_keys.detail and "keys show" in no_keys.hint
    unsigned = check_signature(make_bundle(tmp_path, "plain"), BundleVerifier(trust(key), require_signature=False))
    assert not unsigned.ok and "unsigned" in unsigned.detail
