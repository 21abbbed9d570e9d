"""SIGKILL the agent at each stage of a model update; after a restart it runs a verified model
and the update either completes or is rolled back, and the cloud hears about it.

Six real `edge-agent run` processes (one per stage, side by side against one real cloud with
enrolled devices and signed bundles) start on v1 while v2 is released, and kill themselves at
their stage through the crash-test hook EDGE_AGENT_CRASH_AT (edge_agent/updater.py). Each is
restarted without it. Then:

    download, verify, stage   the update is resumed and completes: v2, reported healthy
    swap, health              the trial is rolled back at start: v1, v2 reported rolled_back
    report                    v2 runs; its healthy report, lost with the process, is resent

and in every case the bundle CURRENT names (or the configured one) has files matching the
sha256 in a manifest whose signature verifies with the trusted key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from cloud_selector.auth import DeviceAuthenticator, enroll_device
from cloud_selector.catalog import installs
from conftest import ROOT, seed_model, wait_for, write_video
from edge_agent.bundle import load_manifest, write_bundle
from edge_agent.model_store import RESTARTED_DETAIL, ModelStore
from edge_agent.signing import BundleVerifier, load_trusted_keys
from edge_agent.updater import CRASH_ENV, STAGES
from protos import flywheel_pb2 as pb

COMPLETED, ROLLED_BACK = ("download", "verify", "stage"), ("swap", "health")


def reports(catalog, device_id: str) -> list[tuple[int, str, str]]:
    with catalog.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(installs.c.version, installs.c.status, installs.c.detail)
                                               .where(installs.c.device_id == device_id).order_by(installs.c.id))]


def running_version(catalog, device_id: str) -> int | None:
    return next((d["model_version"] for d in catalog.devices() if d["id"] == device_id), None)


def test_a_crash_at_any_stage_of_an_update_ends_on_a_verified_model(cloud_factory, fashion_train, tmp_path):
    cloud = cloud_factory(auth=DeviceAuthenticator)
    services = cloud.services
    v1 = seed_model(services, fashion_train, tmp_path / "seed", per_class=2)
    trusted = tmp_path / "cloud" / "keys" / "signing_key.pub.pem"
    verifier = BundleVerifier(load_trusted_keys([trusted]))
    # v2: the same graph and weights with another novelty bank: a small update beside the big files
    np.save(tmp_path / "bank2.npy", np.load(v1 / "novelty_bank.npy") + np.float32(0.25))
    manifest = load_manifest(v1)
    write_bundle(tmp_path / "v2", replace(manifest, version=2, parent_version=1, files={}),
                 {**{rel: v1 / rel for rel in manifest.files}, "novelty_bank.npy": tmp_path / "bank2.npy"})
    inbox = tmp_path / "inbox"
    write_video(fashion_train, inbox / "a.avi", n_items=4, seed=1)

    def config(stage: str) -> Path:
        token = enroll_device(services.catalog, f"cam-{stage}").token
        path = tmp_path / f"{stage}.toml"
        path.write_text(
            f'[device]\nid = "cam-{stage}"\ntoken = "{token}"\nstate_dir = "{tmp_path / stage}"\n'
            f'[source]\npath = "{inbox}"\nfollow = true\npoll_interval_s = 0.2\n'
            f'[model]\nbundle_dir = "{v1}"\nwarmup_runs = 0\ntrusted_keys = ["{trusted}"]\n'
            f'health_frames = 5\nhealth_timeout_s = 1.0\n'
            f'[policy]\nmode = "threshold"\nthreshold = 10.0\n'
            f'[cloud]\naddress = "{cloud.address}"\nheartbeat_interval_s = 0.3\n')
        return path

    def start(stage: str, crash: bool) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        if crash:
            env[CRASH_ENV] = stage
        return subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(configs[stage])],
                                stdout=open(tmp_path / f"{stage}.log", "a"), stderr=subprocess.STDOUT, cwd=ROOT,
                                env=env)

    def log(stage: str) -> str:
        return (tmp_path / f"{stage}.log").read_text()[-3000:]

    configs = {stage: config(stage) for stage in STAGES}
    agents = {stage: start(stage, crash=True) for stage in STAGES}
    services.registry.publish(tmp_path / "v2")  # released: every device is sent v2
    for stage, agent in agents.items():
        assert agent.wait(timeout=60) == -signal.SIGKILL, log(stage)
        assert f"{CRASH_ENV}={stage}: killing this process" in log(stage)

    # What each crash left behind is what the restart must cope with.
    store = {stage: ModelStore(tmp_path / stage / "models") for stage in STAGES}
    assert (tmp_path / "download" / "models" / "staging" / "v2").is_dir()
    assert not (tmp_path / "stage" / "models" / "v2").exists()
    for stage in ROLLED_BACK:
        assert store[stage].trial.version == 2 and store[stage].installed_bundle().name == "v2"
    assert [p.report.status for p in store["report"].pending_reports()] == [pb.INSTALL_STATUS_HEALTHY]  # never sent
    assert "healthy" not in [status for _, status, _ in reports(services.catalog, "cam-report")]

    agents = {stage: start(stage, crash=False) for stage in STAGES}
    try:
        for stage, agent in agents.items():
            device = f"cam-{stage}"
            expected = 1 if stage in ROLLED_BACK else 2
            outcome = (2, "rolled_back", RESTARTED_DETAIL) if stage in ROLLED_BACK else "healthy"

            def arrived():
                assert agent.poll() is None, log(stage)
                rows = reports(services.catalog, device)
                done = outcome in rows if isinstance(outcome, tuple) else (2, "healthy") in [r[:2] for r in rows]
                return done and running_version(services.catalog, device) == expected

            wait_for(arrived, 45, f"{device} to end on v{expected} with its report")
    finally:
        for agent in agents.values():
            agent.send_signal(signal.SIGTERM)
        for stage, agent in agents.items():
            assert agent.wait(timeout=30) == 0, log(stage)

    for stage in STAGES:
        models = tmp_path / stage / "models"
        bundle = ModelStore(models).installed_bundle() or v1
        verified = verifier.verify(bundle)  # signature by the trusted key, then every file's sha256
        assert verified.signed_by and verified.manifest.version == (1 if stage in ROLLED_BACK else 2), stage
        assert ModelStore(models).pending_reports() == [], stage
        if stage in ROLLED_BACK:
            assert ModelStore(models).failed == {2: RESTARTED_DETAIL} and not (models / "v2").exists()
