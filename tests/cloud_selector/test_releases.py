"""Release channels, pins, revocations and staged rollouts, on a real catalog (and a real
gRPC Watch stream for what devices are sent)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from cloud_selector.cli import open_services
from cloud_selector.releases import ReleaseError, Releases
from cloud_selector.rollouts import AbortCriteria, RolloutController, health_verdict, record_report, rollout, \
    start_rollout
from edge_agent.bundle import InputSpec, Manifest, write_bundle
from edge_agent.signing import BundleVerifier, SignatureError, verify_revocation
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc


def make_bundle(root: Path, version: int) -> Path:
    src = root / f"src-{version}"
    src.mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"not really onnx" * 40 + bytes([version]))
    np.save(src / "bank.npy", np.eye(4, dtype=np.float32))
    manifest = Manifest(name="m", version=version, parent_version=version - 1, classes=("a", "b"),
                        input=InputSpec(width=8, height=8))
    write_bundle(root / f"bundle-{version}", manifest, {"model.onnx": src / "model.onnx",
                                                        "novelty_bank.npy": src / "bank.npy"})
    return root / f"bundle-{version}"


@pytest.fixture
def services(tmp_path):
    s = open_services(tmp_path / "cloud")
    yield s
    s.catalog.close()


def publish(services, tmp_path, *versions, release=False):
    for v in versions:
        services.registry.publish(make_bundle(tmp_path, v), release=release)


def test_publish_release_and_target_precedence(services, tmp_path):
    releases = Releases(services.catalog, services.registry.signer)
    publish(services, tmp_path, 1, release=True)
    publish(services, tmp_path, 2, 3)
    assert releases.channel_version() == 1
    assert releases.target_for("cam-a").version == 1
    assert releases.target_for("cam-a", "canary").version == 1  # an unknown channel follows default
    releases.release(2, channel="canary", actor="ann")
    assert releases.target_for("cam-a", "canary").version == 2 and releases.target_for("cam-a").version == 1
    releases.pin("cam-a", 3, actor="ann")
    assert releases.target_for("cam-a").version == 3 and releases.target_for("cam-b").version == 1
    assert releases.unpin("cam-a") and releases.target_for("cam-a").version == 1
    assert releases.lineage(2)["status"] == "released" and releases.lineage(2)["released_by"] == "ann"
    assert releases.lineage(3)["status"] == "candidate"
    with pytest.raises(ReleaseError, match="no model version 9"):
        releases.release(9)
    with pytest.raises(ReleaseError, match="channel name"):
        releases.release(2, channel="x" * 65)


def test_rollback_revokes_with_a_signature_devices_verify(services, tmp_path):
    releases = Releases(services.catalog, services.registry.signer)
    publish(services, tmp_path, 1, release=True)
    publish(services, tmp_path, 2, release=True)
    assert releases.rollback(actor="ann", reason="bad on night shots") == (2, 1)
    assert releases.channel_version() == 1 and releases.lineage(2)["status"] == "rolled_back"
    document, signature = releases.revocation(2, 1)
    key = services.registry.signing_key
    revocation, key_id = verify_revocation(document, signature, BundleVerifier({key.key_id: key.public}))
    assert (revocation.revoked_version, revocation.target_version, key_id) == (2, 1, key.key_id)
    assert "night shots" in revocation.reason
    with pytest.raises(SignatureError):  # altered by one byte
        verify_revocation(document.replace(b'"target_version": 1', b'"target_version": 0'), signature,
                          BundleVerifier({key.key_id: key.public}))
    with pytest.raises(ReleaseError, match="ran nothing before"):
        releases.rollback()


def report(services, device, rollout_id, version, status, health=None, detail=""):
    record_report(services.catalog, device, rollout_id=rollout_id, version=version, status=status, detail=detail,
                  health=health)


def fleet(releases, n, version=1):
    devices = [f"cam-{i:02d}" for i in range(n)]
    for d in devices:
        releases.saw(d, channel="default", version=version)
    return devices


def test_rollout_widens_in_stages_and_completes(services, tmp_path):
    releases = Releases(services.catalog, services.registry.signer)
    publish(services, tmp_path, 1, release=True)
    publish(services, tmp_path, 2)
    fleet(releases, 20)
    rollout_id = start_rollout(releases, 2, stages=(10, 50), criteria=AbortCriteria(min_devices=2))
    controller = RolloutController(releases)
    seen_sizes = []
    for _ in range(10):
        assert controller.advance(rollout_id) in ("running", "completed")
        record = rollout(services.catalog, rollout_id)
        if record["state"] == "completed":
            break
        seen_sizes.append(len(record["devices"]))
        for d in record["devices"]:
            if d["status"] == "assigned":
                assert releases.target_for(d["device_id"]).version == 2
                report(services, d["device_id"], rollout_id, 2, "installed")
                report(services, d["device_id"], rollout_id, 2, "healthy",
                       {"frames": 30, "mean_confidence": 0.8, "previous_frames": 30, "previous_mean_confidence": 0.82})
    assert seen_sizes[:3] == [2, 10, 20]  # 10 % canary, then 50 %, then the 100 % every rollout ends with
    assert releases.channel_version() == 2 and record["state"] == "completed"
    assert record["counts"] == {"healthy": 20}


def test_rollout_aborts_at_the_canary_and_sends_touched_devices_back(services, tmp_path):
    releases = Releases(services.catalog, services.registry.signer)
    publish(services, tmp_path, 1, release=True)
    publish(services, tmp_path, 2)
    devices = fleet(releases, 30)
    rollout_id = start_rollout(releases, 2, stages=(10, 50, 100),
                               criteria=AbortCriteria(max_failure_fraction=0.05, min_devices=3))
    controller = RolloutController(releases)
    controller.advance(rollout_id)
    canary = [d["device_id"] for d in rollout(services.catalog, rollout_id)["devices"]]
    assert len(canary) == 3
    report(services, canary[0], rollout_id, 2, "rolled_back", detail="inference error")
    assert controller.advance(rollout_id) == "running"  # one decided: below min_devices
    for d in canary[1:]:
        report(services, d, rollout_id, 2, "healthy")
    assert controller.advance(rollout_id) == "aborted"
    record = rollout(services.catalog, rollout_id)
    assert record["state"] == "aborted" and "1 of 3 devices failed" in record["reason"]
    assert releases.channel_version() == 1 and releases.lineage(2)["status"] == "rolled_back"
    assert all(releases.target_for(d).version == 1 for d in devices)
    assert releases.revocation(2, 1) is not None
    report(services, canary[1], rollout_id, 1, "healthy")
    assert {d["device_id"]: d["status"] for d in rollout(services.catalog, rollout_id)["devices"]}[canary[1]] == "reverted"


def test_silent_devices_time_out_and_drift_counts_as_failure(services, tmp_path):
    releases = Releases(services.catalog, services.registry.signer)
    publish(services, tmp_path, 1, release=True)
    publish(services, tmp_path, 2)
    fleet(releases, 4)
    criteria = AbortCriteria(max_failure_fraction=0.0, min_devices=1, device_timeout_s=0.05)
    rollout_id = start_rollout(releases, 2, stages=(50, 100), criteria=criteria)
    controller = RolloutController(releases)
    controller.advance(rollout_id)
    import time
    time.sleep(0.1)
    assert controller.advance(rollout_id) == "aborted"
    assert set(rollout(services.catalog, rollout_id)["counts"]) == {"timed_out"}

    drift = {"frames": 30, "previous_frames": 30, "mean_confidence": 0.4, "previous_mean_confidence": 0.9}
    assert "confidence fell by 0.50" in health_verdict(drift, AbortCriteria())
    assert health_verdict({**drift, "mean_confidence": 0.85}, AbortCriteria()) == ""
    assert "latency" in health_verdict({"frames": 5, "previous_frames": 5, "latency_p50_ms": 40,
                                        "previous_latency_p50_ms": 10}, AbortCriteria())


def test_rollout_refusals(services, tmp_path):
    releases = Releases(services.catalog, services.registry.signer)
    publish(services, tmp_path, 1, release=True)
    publish(services, tmp_path, 2)
    with pytest.raises(ReleaseError, match="newer version"):
        start_rollout(releases, 1)
    with pytest.raises(ReleaseError, match="increasing percentages"):
        start_rollout(releases, 2, stages=(50, 10))
    start_rollout(releases, 2)
    with pytest.raises(ReleaseError, match="already running"):
        start_rollout(releases, 2)


def test_watch_sends_the_target_and_a_signed_revocation_to_go_back(cloud, tmp_path):
    services, port = cloud
    releases = Releases(services.catalog, services.registry.signer)
    publish(services, tmp_path, 1, release=True)
    publish(services, tmp_path, 2, release=True)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ModelsStub(channel)
        call = stub.Watch(pb.WatchRequest(device_id="cam-a", current_version=1), timeout=10)
        first = next(call)
        assert first.version == 2 and not first.revocation
        stub.ReportInstall(pb.InstallReport(device_id="cam-a", version=2, status=pb.INSTALL_STATUS_HEALTHY))
        releases.rollback(actor="test")
        back = next(call)  # the same stream: the plan is re-read every poll interval
        assert back.version == 1 and back.revocation and back.revocation_signature
        call.cancel()
