"""The cloud's signing key: `keys init/show`, file modes, refusals, and publishing signs bundles
(in process through the real CLI entry point, on real files and a real SQLite catalog)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from cloud_selector.cli import main, open_services
from cloud_selector.fleet_service import assignment_for
from edge_agent.bundle import SIGNATURE_FILE, InputSpec, Manifest, write_bundle
from edge_agent.signing import (
    BundleVerifier,
    KeyFileError,
    SigningKey,
    load_private_key,
    load_public_key,
    load_trusted_keys,
    save_private_key,
    sign_bundle,
)


def cli(capsys, data_dir: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data_dir), *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def make_bundle(root: Path, version: int = 1) -> Path:
    src = root / f"src-{version}"
    src.mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"not really onnx" * 40)
    np.save(src / "bank.npy", np.eye(4, dtype=np.float32))
    manifest = Manifest(name="ext", version=version, classes=("a", "b"), input=InputSpec(width=8, height=8))
    write_bundle(root / f"bundle-{version}", manifest, {"model.onnx": src / "model.onnx",
                                                        "novelty_bank.npy": src / "bank.npy"})
    return root / f"bundle-{version}"


def test_keys_init_show_and_refusals(tmp_path, capsys):
    data = tmp_path / "cloud"
    code, _, err = cli(capsys, data, "keys", "show")
    one_line_error(code, err, "no signing key", "keys init")

    code, out, err = cli(capsys, data, "keys", "init")
    assert code == 0, err
    private, public = data / "keys" / "signing_key.pem", data / "keys" / "signing_key.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    key = load_private_key(private)
    assert key.key_id in out and load_public_key(public).public_bytes_raw() == key.public.public_bytes_raw()

    code, _, err = cli(capsys, data, "keys", "init")
    one_line_error(code, err, "already exists", "--force")
    assert load_private_key(private).key_id == key.key_id  # untouched

    code, out, err = cli(capsys, data, "keys", "show")
    assert code == 0, err
    assert f"key id: {key.key_id}" in out and key.public_pem() in out
    code, out, err = cli(capsys, data, "keys", "show", "--out", str(tmp_path / "device.pub.pem"))
    assert code == 0 and key.key_id in out, err
    assert set(load_trusted_keys([tmp_path / "device.pub.pem"])) == {key.key_id}
    code, _, err = cli(capsys, data, "keys", "show", "--out", str(tmp_path / "device.pub.pem"))
    one_line_error(code, err, "already exists")

    code, out, err = cli(capsys, data, "keys", "init", "--force")
    assert code == 0 and "REPLACED" in out, err
    assert load_private_key(private).key_id != key.key_id and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_private_key_others_can_read_is_refused_everywhere(tmp_path, capsys):
    data = tmp_path / "cloud"
    assert cli(capsys, data, "keys", "init")[0] == 0
    private = data / "keys" / "signing_key.pem"
    os.chmod(private, 0o644)
    for args in (("keys", "show"), ("models", "list")):  # the second opens the services, which load the key
        code, _, err = cli(capsys, data, *args)
        one_line_error(code, err, "group or others", "chmod 600")
    os.chmod(private, 0o600)
    assert cli(capsys, data, "models", "list")[0] == 0


def test_publish_signs_and_the_signature_travels_with_the_bundle(tmp_path, capsys, caplog):
    data = tmp_path / "cloud"
    external = make_bundle(tmp_path)
    sign_bundle(external, SigningKey.generate())  # someone else's signature: replaced by the cloud's
    before = {p.name: p.read_bytes() for p in external.iterdir()}
    code, _, err = cli(capsys, data, "models", "list")  # publishes nothing: makes no key, says nothing of one
    assert code == 0 and not (data / "keys").exists() and "key" not in err, err

    with caplog.at_level("INFO", logger="cloud_selector.keys"):
        code, out, err = cli(capsys, data, "models", "publish", str(external))
    assert code == 0, err
    assert "created the bundle signing key" in caplog.text  # first publish of an embedded data dir
    key = load_private_key(data / "keys" / "signing_key.pem")
    assert f"published ext v1 (signed by key {key.key_id})" in out
    assert {p.name: p.read_bytes() for p in external.iterdir()} == before  # the source is left as it was

    services = open_services(data)
    try:
        record = services.catalog.model(1)
        listed = {f["path"]: f for f in record["files"]}
        assert set(listed) == {"manifest.json", SIGNATURE_FILE, "model.onnx", "novelty_bank.npy"}
        assignment = assignment_for(record)  # what devices are told to fetch
        sig = next(f for f in assignment.files if f.path == SIGNATURE_FILE)
        assert sig.size == listed[SIGNATURE_FILE]["size"] > 0 and sig.sha256 == listed[SIGNATURE_FILE]["sha256"]
        assert services.registry.signing_key.key_id == key.key_id
    finally:
        services.catalog.close()

    code, out, err = cli(capsys, data, "models", "export", str(tmp_path / "exported"))
    assert code == 0, err
    assert cli(capsys, data, "keys", "show", "--out", str(tmp_path / "cloud.pub.pem"))[0] == 0
    verified = BundleVerifier(load_trusted_keys([tmp_path / "cloud.pub.pem"])).verify(tmp_path / "exported")
    assert verified.signed_by == key.key_id and verified.manifest.version == 1
    assert json.loads((tmp_path / "exported" / SIGNATURE_FILE).read_text())["key_id"] == key.key_id


def test_a_shared_catalog_gets_no_key_of_its_own(tmp_path, caplog):
    """Each replica would make a different key, so a shared catalog publishes unsigned (with a
    WARNING) until `keys init` runs and every publisher gets that key."""
    data = tmp_path / "admin"
    services = open_services(data, catalog_url=f"sqlite:///{tmp_path / 'shared.sqlite'}", env={})
    try:
        assert services.registry.signing_key is None and not (data / "keys").exists()
        with caplog.at_level("WARNING", logger="cloud_selector.registry"):
            services.registry.publish(make_bundle(tmp_path))
        assert "without a signature" in caplog.text
        assert SIGNATURE_FILE not in {f["path"] for f in services.catalog.model(1)["files"]}
    finally:
        services.catalog.close()

    shared = SigningKey.generate()
    save_private_key(tmp_path / "secret.pem", shared)
    env = {"CLOUD_SELECTOR_SIGNING_KEY": str(tmp_path / "secret.pem")}
    services = open_services(data, catalog_url=f"sqlite:///{tmp_path / 'shared.sqlite'}", env=env)
    try:
        assert services.registry.signing_key.key_id == shared.key_id
        services.registry.publish(make_bundle(tmp_path, version=2))
        verifier = BundleVerifier({shared.key_id: shared.public})
        assert verifier.verify(services.registry.local_bundle(2)).signed_by == shared.key_id
    finally:
        services.catalog.close()
    with pytest.raises(KeyFileError, match="does not exist"):
        open_services(data, env={"CLOUD_SELECTOR_SIGNING_KEY": str(tmp_path / "missing.pem")})


def test_a_key_made_by_a_concurrent_first_publish_is_used(tmp_path):
    from cloud_selector.keys import create_signing_key, init_keys

    path = tmp_path / "keys" / "signing_key.pem"
    first = init_keys(path)  # as if another process got there first
    assert create_signing_key(path).key_id == first.key_id
    assert load_private_key(path).key_id == first.key_id
