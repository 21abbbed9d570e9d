"""The device's model state on disk (edge_agent.model_store) and what the agent starts on.

State is written, the store closed (dropped) and reopened, and every item checked, the way a
restart would find it. Start-up is `edge_agent.cli._load_initial_model` on real bundles.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from edge_agent.config import build_config
from edge_agent.model_store import (
    CURRENT_FILE,
    RESTARTED_DETAIL,
    STATE_FILE,
    BundleRef,
    ModelStore,
    ModelStoreError,
    Trial,
)
from edge_agent.signing import BundleVerifier, SignatureError, SigningKey, sign_bundle
from protos import flywheel_pb2 as pb
from test_updater import bundle_like, trained  # noqa: F401  (trained: a fixture, one real model per module)


def report(version: int, status: int = pb.INSTALL_STATUS_HEALTHY, detail: str = "") -> pb.InstallReport:
    return pb.InstallReport(device_id="cam", version=version, status=status, detail=detail, bytes_fetched=42,
                            health=pb.ModelHealth(frames=3, latency_p50_ms=1.5, previous_version=version - 1))


def test_every_item_survives_a_reopen(tmp_path):
    store = ModelStore(tmp_path / "models")
    store.point_current(store.bundle_dir(3))
    store.set_previous(BundleRef(2, store.bundle_dir(2)))
    store.mark_failed(5, "smoke run failed")
    store.mark_revoked(4, "accuracy dropped")
    first = store.queue_report(report(3))
    store.begin_trial(Trial(6, BundleRef(3, store.bundle_dir(3))))
    del store

    store = ModelStore(tmp_path / "models")
    assert (tmp_path / "models" / CURRENT_FILE).read_text() == "v3"
    assert store.previous == BundleRef(2, tmp_path / "models" / "v2")
    assert store.failed == {5: "smoke run failed"} and store.revoked == {4: "accuracy dropped"}
    assert store.excluded(4) == "v4 was revoked (accuracy dropped)"
    assert store.excluded(5) == "v5 failed on this device (smoke run failed)" and store.excluded(3) == ""
    assert store.trial == Trial(6, BundleRef(3, tmp_path / "models" / "v3"))
    assert store.pending_reports() == [first] and first.report.health.latency_p50_ms == 1.5

    # A failed trial: marked failed, its report queued, the previous bundle stays the kept one.
    second = store.finish_trial(report(6, pb.INSTALL_STATUS_ROLLED_BACK, "slow"), failed_reason="slow")
    store.ack_report(first.id)
    del store
    store = ModelStore(tmp_path / "models")
    assert store.trial is None and store.failed == {5: "smoke run failed", 6: "slow"}
    assert store.previous.version == 2 and store.pending_reports() == [second]

    # A healthy trial: its previous bundle becomes the kept one.
    store.begin_trial(Trial(7, BundleRef(3, store.bundle_dir(3))))
    store.finish_trial(report(7))
    assert ModelStore(tmp_path / "models").previous.version == 3


def test_state_is_replaced_atomically_and_reads_as_json(tmp_path):
    store = ModelStore(tmp_path)
    for version in range(1, 6):
        store.mark_failed(version, f"reason {version}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary file left
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["format"] == "edgeflywheel.models-state/1" and len(state["failed"]) == 5
    # A crash while writing leaves a temporary file beside an intact state.json: ignored.
    (tmp_path / f".{STATE_FILE}.tmp").write_text('{"format": "half wr')
    assert len(ModelStore(tmp_path).failed) == 5


@pytest.mark.parametrize("content", ["{not json", '{"format": "something else"}', "[]"])
def test_an_unreadable_state_file_stops_the_agent_with_what_to_do(tmp_path, content):
    (tmp_path / STATE_FILE).write_text(content)
    with pytest.raises(ModelStoreError, match=f"{STATE_FILE}.*(delete it|restore it)"):
        ModelStore(tmp_path)


def test_current_may_name_a_bundle_outside_the_models_dir(tmp_path):
    store = ModelStore(tmp_path / "models")
    (tmp_path / "configured").mkdir()
    store.point_current(tmp_path / "configured")
    assert (tmp_path / "models" / CURRENT_FILE).read_text() == str((tmp_path / "configured").resolve())
    assert store.installed_bundle() == (tmp_path / "configured").resolve()
    shutil.rmtree(tmp_path / "configured")
    assert store.installed_bundle() is None


def test_prune_keeps_the_current_and_previous_bundles_and_resumable_downloads(tmp_path):
    store = ModelStore(tmp_path)
    for name in ("v1", "v2", "v3", "v4", "staging/v2", "staging/v4", "staging/v5", "staging/v6", "notes"):
        (tmp_path / name).mkdir(parents=True)
    store.point_current(store.bundle_dir(4))
    store.set_previous(BundleRef(3, store.bundle_dir(3)))
    store.mark_failed(6, "bad hash")
    store.prune(running_version=4)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_dir())
    assert left == ["notes", "staging", "staging/v5", "v3", "v4"]


def test_the_outbox_keeps_the_newest_reports(tmp_path):
    from edge_agent.model_store import MAX_OUTBOX

    store = ModelStore(tmp_path)
    for version in range(MAX_OUTBOX + 5):
        store.queue_report(report(version + 1))
    pending = ModelStore(tmp_path).pending_reports()
    assert len(pending) == MAX_OUTBOX and pending[-1].report.version == MAX_OUTBOX + 5


# --- start-up ----------------------------------------------------------------------------------


@pytest.fixture
def device(tmp_path, trained):  # noqa: F811
    """A signing key, a configured bundle v1 and installed bundles v2, v3 under models/, all signed."""
    key = SigningKey.generate()
    models = tmp_path / "state" / "models"
    bundles = {}
    for version, where in ((1, tmp_path / "configured"), (2, models / "v2"), (3, models / "v3")):
        sign_bundle(bundle_like(trained, where, version), key)
        bundles[version] = where
    config = build_config({"device": {"id": "cam"}, "source": {"path": "x"},
                           "model": {"bundle_dir": str(bundles[1])}}, {})
    return config, models, bundles, BundleVerifier({key.key_id: key.public})


def start(device):
    from edge_agent.cli import _load_initial_model

    config, models, _, verifier = device
    return _load_initial_model(config, models, verifier)


def test_start_rolls_back_a_model_that_was_still_on_trial(device):
    _, models, bundles, _ = device
    store = ModelStore(models)
    store.set_previous(BundleRef(1, bundles[1]))
    store.begin_trial(Trial(3, BundleRef(2, bundles[2])))
    store.point_current(bundles[3])  # the agent died after the swap, before the verdict

    assert start(device).version == 2
    store = ModelStore(models)
    assert (models / CURRENT_FILE).read_text() == "v2" and store.trial is None
    assert store.failed == {3: RESTARTED_DETAIL} and not (models / "v3").exists()
    [queued] = store.pending_reports()
    assert (queued.report.version, queued.report.status, queued.report.detail) == (
        3, pb.INSTALL_STATUS_ROLLED_BACK, RESTARTED_DETAIL)
    assert queued.report.device_id == "cam" and queued.report.health.previous_version == 2
    assert start(device).version == 2  # and it stays rolled back


def test_start_never_runs_a_revoked_or_failed_version(device, caplog):
    _, models, bundles, _ = device
    store = ModelStore(models)
    store.point_current(bundles[3])
    store.set_previous(BundleRef(2, bundles[2]))
    store.mark_revoked(3, "accuracy dropped")
    with caplog.at_level(logging.WARNING, logger="edge_agent"):
        assert start(device).version == 2
    assert "v3 was revoked (accuracy dropped)" in caplog.text
    assert (models / CURRENT_FILE).read_text() == "v2"

    ModelStore(models).mark_failed(2, "too slow")
    assert start(device).version == 1  # the configured bundle
    assert store.installed_bundle() == bundles[1].resolve()


def test_start_falls_back_to_the_kept_previous_then_the_configured_bundle(device, caplog):
    _, models, bundles, _ = device
    store = ModelStore(models)
    store.point_current(bundles[3])
    store.set_previous(BundleRef(2, bundles[2]))
    assert start(device).version == 3

    (bundles[3] / "novelty_bank.npy").write_bytes(b"corrupted on disk")
    with caplog.at_level(logging.WARNING, logger="edge_agent"):
        assert start(device).version == 2
    assert "sha256 mismatch for novelty_bank.npy" in caplog.text

    (bundles[2] / "model.onnx").write_bytes(b"also corrupted")
    assert start(device).version == 1
    (bundles[1] / "manifest.sig").unlink()
    with pytest.raises(SignatureError, match="unsigned bundle"):  # nothing verifies: the agent does not start
        start(device)
