"""The model updater against a real cloud on loopback: attacks refused while the device keeps
serving its model, signed revocations, files reused instead of fetched, the report outbox.

test_signing.py already covers a bundle signed by an untrusted key, an unsigned one, an old
bundle replayed under a new version number and an oversized one; they are not repeated here.
Here a `Rig` is one cloud (catalog, blobs, gRPC server, its signing key) and one device
directory; attacks are assignments crafted the way a man in the middle or a compromised cloud
host could (the assignment itself is not signed) and fed to `ModelUpdater.install`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import ROOT, free_port, seed_model, wait_for
from edge_agent.bundle import load_manifest, write_bundle
from edge_agent.health import HealthPolicy
from edge_agent.model_store import ModelStore
from edge_agent.runtime import LoadedModel
from edge_agent.signing import BundleVerifier, Revocation, SigningKey, sign_revocation
from edge_agent.transport import Backoff, open_channel
from edge_agent.updater import CURRENT_FILE, ModelSlot, ModelUpdater
from protos import flywheel_pb2 as pb

FRAME = np.full((56, 56, 3), 200, np.uint8)


def bundle_like(src: Path, out: Path, version: int, *, model: Path | None = None, bank: Path | None = None) -> Path:
    """`src`'s manifest under another version, with `src`'s files (graph, external weights, bank)
    or the model graph / novelty bank given."""
    manifest = load_manifest(src)
    files = {rel: src / rel for rel in manifest.files}
    files.update({manifest.model_file: model or files[manifest.model_file],
                  manifest.novelty_bank_file: bank or files[manifest.novelty_bank_file]})
    write_bundle(out, replace(manifest, version=version, parent_version=version - 1, files={}), files)
    return out


class RecordReports(grpc.UnaryUnaryClientInterceptor):
    """Keeps every InstallReport the device sends (the cloud's table keeps no ModelHealth)."""

    def __init__(self):
        self.sent: list[pb.InstallReport] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        if isinstance(request, pb.InstallReport):
            self.sent.append(request)
        return continuation(client_call_details, request)


@dataclass
class Rig:
    services: object
    port: int
    root: Path
    key: SigningKey
    configured: Path  # the device's model.bundle_dir: v1 as this cloud signed it
    recorder: RecordReports = field(default_factory=RecordReports)
    channels: list = field(default_factory=list)

    @property
    def models_dir(self) -> Path:
        return self.root / "device" / "models"

    @property
    def verifier(self) -> BundleVerifier:
        return BundleVerifier({self.key.key_id: self.key.public})

    @property
    def reports(self) -> list[pb.InstallReport]:
        return self.recorder.sent

    def publish(self, version: int, *, model: Path | None = None, head: float = 0.0) -> int:
        """A new version with v1's files, or another model graph, or (`head`) another small file:
        v1's novelty bank shifted by `head`, as a retrained head would change it."""
        bank = None
        if head:
            bank = self.root / f"bank-v{version}.npy"
            np.save(bank, np.load(self.configured / "novelty_bank.npy") + np.float32(head))
        self.services.registry.publish(bundle_like(self.configured, self.root / "published" / f"v{version}", version,
                                                   model=model, bank=bank))
        return version

    def assignment(self, version: int, **fields) -> pb.ModelAssignment:
        record = self.services.catalog.model(version)
        return pb.ModelAssignment(model_name=record["name"], version=version, files=[
            pb.BundleFile(path=f["path"], sha256=f["sha256"], size=f["size"]) for f in record["files"]], **fields)

    def device(self, *, address: str = "", **options) -> tuple[ModelSlot, ModelUpdater]:
        channel = grpc.intercept_channel(open_channel(address or f"127.0.0.1:{self.port}"), self.recorder)
        self.channels.append(channel)
        slot = options.pop("slot", None) or ModelSlot(LoadedModel(self.configured))
        options = {"verifier": self.verifier, "health_policy": HealthPolicy(frames=0), "load_model": LoadedModel,
                   **options}
        return slot, ModelUpdater(channel, device_id="cam-upd", models_dir=self.models_dir, slot=slot,
                                  backoff=Backoff(0.05, 0.5), **options)

    def installs(self) -> list[tuple[int, str, str]]:
        import sqlalchemy as sa

        from cloud_selector.catalog import installs

        with self.services.catalog.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                sa.select(installs.c.version, installs.c.status, installs.c.detail).order_by(installs.c.id))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_train) -> Path:
    """A real v1 bundle, trained once per module; each test's cloud publishes it as its own v1."""
    from cloud_selector.cli import open_services

    root = tmp_path_factory.mktemp("trained")
    services = open_services(root / "cloud")
    bundle = seed_model(services, fashion_train, root / "seed", per_class=2)
    services.catalog.close()
    return bundle


@pytest.fixture
def rig(cloud, trained, tmp_path) -> Rig:
    services, port = cloud
    services.registry.publish(trained)
    configured = shutil.copytree(services.registry.local_bundle(1), tmp_path / "configured")
    rig = Rig(services, port, tmp_path, services.registry.signing_key, configured)
    yield rig
    for channel in rig.channels:
        channel.close()


def serves(slot: ModelSlot, version: int) -> None:
    assert slot.version == version
    assert slot.model.infer([FRAME]).probs.shape == (1, 4)


def last_report(rig: Rig, status: int, needle: str = "") -> pb.InstallReport:
    report = rig.reports[-1]
    assert report.status == status and needle in report.detail, report
    return report


# --- attacks ---------------------------------------------------------------------------------


def _tamper(rig: Rig, version: int, path: str, data: bytes, *, announce: bool) -> pb.ModelAssignment:
    """Serve `data` as `path` of `version`; with `announce` the (unsigned) assignment lists its
    real sha256 and size, as an attacker who controls it would."""
    import hashlib

    from cloud_selector.registry import bundle_key

    rig.services.blobs.put(bundle_key(version, path), data)
    assignment = rig.assignment(version)
    if announce:
        entry = next(f for f in assignment.files if f.path == path)
        entry.sha256, entry.size = hashlib.sha256(data).hexdigest(), len(data)
    return assignment


def wrongly_signed(rig: Rig) -> tuple[pb.ModelAssignment, str]:
    """A genuine signature by the trusted key, but over another manifest (v3's)."""
    rig.publish(4, head=4.0)
    return _tamper(rig, 4, "manifest.sig", (rig.models_dir / "v3" / "manifest.sig").read_bytes(),
                   announce=True), "does not match manifest.json"


def served_bytes_differ_from_the_assignment(rig: Rig) -> tuple[pb.ModelAssignment, str]:
    rig.publish(4, head=4.0)
    return _tamper(rig, 4, "novelty_bank.npy", b"\x93NUMPY not the bank", announce=False), \
        "does not match the assignment's"


def file_differs_from_the_signed_manifest(rig: Rig) -> tuple[pb.ModelAssignment, str]:
    rig.publish(4, head=4.0)
    return _tamper(rig, 4, "novelty_bank.npy", b"\x93NUMPY not the bank", announce=True), \
        "sha256 mismatch for novelty_bank.npy"


def older_version(rig: Rig) -> tuple[pb.ModelAssignment, str]:
    return rig.assignment(2), "rollback refused: v2 is not newer than the running v3"


def _revocation(rig: Rig, revoked: int, target: int, *, key: SigningKey | None = None, assign: int = 0,
                signature: bytes | None = None, body: Revocation | None = None) -> pb.ModelAssignment:
    data, sig = sign_revocation(Revocation("test-cnn", revoked, target, "2026-01-01T00:00:00Z", "test"),
                                key or rig.key)
    if body is not None:
        data = body.to_bytes()
    return rig.assignment(assign or target, revocation=data, revocation_signature=sig if signature is None else signature)


def revocation_unsigned(rig: Rig):
    return _revocation(rig, 3, 2, signature=b""), "unsigned revocation"


def revocation_by_an_untrusted_key(rig: Rig):
    return _revocation(rig, 3, 2, key=SigningKey.generate()), "not a trusted key"


def revocation_altered_after_signing(rig: Rig):
    return _revocation(rig, 3, 2, assign=1, body=Revocation("test-cnn", 3, 1, "2026-01-01T00:00:00Z", "test")), \
        "does not match"


def revocation_of_another_version(rig: Rig):
    return _revocation(rig, 4, 2), "revokes v4, but this device runs v3"


def revocation_for_another_target(rig: Rig):
    return _revocation(rig, 3, 1, assign=2), "targets v1, but the assignment is for v2"


ATTACKS = [wrongly_signed, served_bytes_differ_from_the_assignment, file_differs_from_the_signed_manifest,
           older_version, revocation_unsigned, revocation_by_an_untrusted_key, revocation_altered_after_signing,
           revocation_of_another_version, revocation_for_another_target]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_attack_is_refused_and_the_device_keeps_serving(rig, attack):
    slot, updater = rig.device()
    for version in (2, 3):
        rig.publish(version, head=version)
        assert updater.install(rig.assignment(version))
    assignment, needle = attack(rig)

    assert not updater.install(assignment)
    last_report(rig, pb.INSTALL_STATUS_FAILED, needle)
    assert rig.installs()[-1][1:] == ("failed", rig.reports[-1].detail)  # the real cloud has it too
    serves(slot, 3)
    assert (rig.models_dir / CURRENT_FILE).read_text() == "v3"
    assert ModelStore(rig.models_dir).revoked == {}
    if assignment.version > 3:  # a bad bundle: nothing left behind, and never tried again
        assert not (rig.models_dir / f"v{assignment.version}").exists()
        assert not (rig.models_dir / "staging" / f"v{assignment.version}").exists()
        fetched = updater.bytes_fetched_total
        assert not updater.install(rig.assignment(assignment.version))
        last_report(rig, pb.INSTALL_STATUS_FAILED, f"v{assignment.version} failed on this device")
        assert updater.bytes_fetched_total == fetched  # refused without downloading


# --- going back on purpose ---------------------------------------------------------------------


def test_signed_revocation_goes_back_to_the_kept_bundle_and_the_revoked_version_never_returns(rig):
    slot, updater = rig.device()
    for version in (2, 3):
        rig.publish(version, head=version)
        assert updater.install(rig.assignment(version))
    fetched = updater.bytes_fetched_total

    assert updater.install(_revocation(rig, 3, 2))
    serves(slot, 2)
    assert updater.bytes_fetched_total == fetched  # v2 was kept: nothing downloaded
    assert [(r.version, r.status) for r in rig.reports[-2:]] == [(2, pb.INSTALL_STATUS_INSTALLED),
                                                                 (2, pb.INSTALL_STATUS_HEALTHY)]
    assert "v3 revoked (test)" in rig.reports[-1].detail
    assert (rig.models_dir / CURRENT_FILE).read_text() == "v2" and not (rig.models_dir / "v3").exists()
    assert ModelStore(rig.models_dir).revoked == {3: "test"}

    assert not updater.install(rig.assignment(3))  # the revoked version, offered again
    last_report(rig, pb.INSTALL_STATUS_FAILED, "v3 was revoked (test)")
    assert not updater.install(_revocation(rig, 3, 2))  # a replay of the revocation
    last_report(rig, pb.INSTALL_STATUS_FAILED, "rollback refused")
    serves(slot, 2)
    assert updater.bytes_fetched_total == fetched


def test_revocation_downloads_a_target_the_device_no_longer_keeps(rig):
    slot, updater = rig.device()
    for version in (2, 3):
        rig.publish(version, head=version)
        assert updater.install(rig.assignment(version))
    assert not (rig.models_dir / "v1").exists()  # v1 was the configured bundle, and v2 is the kept previous

    fetched = updater.bytes_fetched_total
    assert updater.install(_revocation(rig, 3, 1))
    serves(slot, 1)
    assert updater.bytes_fetched_total > fetched and rig.reports[-1].bytes_fetched > 0
    assert rig.reports[-1].status == pb.INSTALL_STATUS_HEALTHY and rig.reports[-1].version == 1
    assert rig.verifier.verify(rig.models_dir / "v1").manifest.version == 1


# --- reuse of files already held ---------------------------------------------------------------


def test_a_head_only_update_fetches_only_the_files_that_changed(rig):
    slot, updater = rig.device()
    rig.publish(2, head=0.5)  # the same graph and backbone weights (the big file), a new bank
    assignment = rig.assignment(2)
    sizes = {f.path: f.size for f in assignment.files}

    assert updater.install(assignment)
    serves(slot, 2)
    changed = sizes.pop("manifest.json") + sizes.pop("manifest.sig") + sizes.pop("novelty_bank.npy")
    assert sizes["backbone.weights"] > 10 * changed  # what a head-only update need not fetch
    assert updater.bytes_fetched_total == changed and updater.bytes_reused_total == sum(sizes.values())
    assert [r.bytes_fetched for r in rig.reports[-2:]] == [changed, changed]  # INSTALLED, HEALTHY
    assert rig.verifier.verify(rig.models_dir / "v2").signed_by == rig.key.key_id


# --- the report outbox -------------------------------------------------------------------------


def test_reports_wait_in_the_outbox_until_the_cloud_has_them(rig):
    report = pb.InstallReport(device_id="cam-upd", version=7, status=pb.INSTALL_STATUS_ROLLED_BACK, detail="queued")
    ModelStore(rig.models_dir).queue_report(report)

    _, offline = rig.device(address=f"127.0.0.1:{free_port()}")  # nothing listens there
    assert offline.flush_reports() == 0
    assert [p.report for p in ModelStore(rig.models_dir).pending_reports()] == [report]  # still there, on disk

    _, updater = rig.device()
    stop = threading.Event()
    thread = threading.Thread(target=updater.run, args=(stop,), daemon=True)
    thread.start()  # (re)connecting sends what waits
    try:
        wait_for(lambda: (7, "rolled_back", "queued") in rig.installs(), 20, "the queued report")
        assert ModelStore(rig.models_dir).pending_reports() == []
    finally:
        stop.set()
        thread.join(timeout=5)


def test_an_unknown_crash_stage_is_a_one_line_error(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nid = "cam"\nstate_dir = "{tmp_path / "state"}"\n[source]\npath = "{tmp_path}"\n'
                      f'[model]\nbundle_dir = "{tmp_path / "nowhere"}"\n')
    result = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--config", str(config)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "EDGE_AGENT_CRASH_AT": "swapp"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "EDGE_AGENT_CRASH_AT='swapp'" in lines[0] and "download, verify, stage, swap, health, report" in lines[0]
