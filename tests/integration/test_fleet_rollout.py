"""A staged rollout over a simulated fleet of 100 real updaters in one process.

The new model fails to load on 5 % of the devices, one of them in the canary. The rollout must
stop at the canary by its abort criterion, never reach a device outside the canary, and every
device it touched must end on the previous version (the healthy canary devices go back on a
signed revocation they verify with the trusted key).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import sqlalchemy as sa

from benchmarks.simfleet import SimulatedFleet
from cloud_selector.auth import DeviceAuthenticator
from cloud_selector.releases import Releases
from cloud_selector.rollouts import AbortCriteria, RolloutController, rollout, stage_order, start_rollout
from cloud_selector.schema import installs
from edge_agent.signing import BundleVerifier
from tiny_models import tiny_bundle

DEVICES = 100
CANARY_PERCENT = 10


def test_rollout_failing_on_five_percent_stops_at_the_canary_and_rolls_back(cloud_factory, tmp_path):
    cloud = cloud_factory(auth=DeviceAuthenticator, max_workers=3 * DEVICES + 16, watch_poll_s=0.2)
    services = cloud.services
    services.registry.publish(tiny_bundle(tmp_path, 1), release=True)
    key = services.registry.signing_key
    releases = Releases(services.catalog, services.registry.signer)
    faulty: set[str] = set()
    fleet = SimulatedFleet(catalog=services.catalog, address=cloud.address, root=tmp_path / "fleet",
                           first_bundle=services.registry.local_bundle(1), n=DEVICES,
                           verifier=BundleVerifier({key.key_id: key.public}),
                           faulty=lambda device, version: version == 2 and device in faulty)
    stop = threading.Event()
    try:
        fleet.start()
        fleet.wait(lambda: len(releases.watchers(seen_within_s=60)) == DEVICES, 60, "every device to watch")

        services.registry.publish(tiny_bundle(tmp_path, 2), release=False)
        rollout_id = start_rollout(releases, 2, stages=(CANARY_PERCENT, 50, 100), criteria=AbortCriteria(
            max_failure_fraction=0.05, min_devices=5, device_timeout_s=60))
        order = stage_order(rollout_id, [d.device_id for d in fleet.devices])
        canary_size = math.ceil(CANARY_PERCENT * DEVICES / 100)
        canary = set(order[:canary_size])
        rng = np.random.default_rng(7)
        faulty.update([order[3], *rng.choice(order[canary_size:], DEVICES // 20 - 1, replace=False)])
        assert len(faulty) == DEVICES // 20 and len(faulty & canary) == 1

        controller = RolloutController(releases, interval_s=0.2)
        threading.Thread(target=controller.run, args=(stop,), daemon=True).start()
        fleet.wait(lambda: rollout(services.catalog, rollout_id)["state"] != "running", 60, "the rollout to stop")

        record = rollout(services.catalog, rollout_id)
        assert record["state"] == "aborted", record
        touched = {d["device_id"] for d in record["devices"]}
        assert touched == canary and len(touched) <= canary_size
        assert record["counts"].get("failed", 0) >= 1 and "failed" in record["reason"]
        for device in fleet.devices:  # nobody outside the canary ever loaded the new version
            if device.device_id not in canary:
                assert 2 not in device.loads, device.device_id

        fleet.wait(lambda: all(v == 1 for v in fleet.versions().values()), 60, "every device back on v1")
        for device in fleet.devices:  # the healthy canary devices ran v2, then went back
            if device.device_id in canary - faulty:
                assert 2 in device.loads and device.version == 1, (device.device_id, device.loads)
        assert releases.channel_version() == 1 and releases.lineage(2)["status"] == "rolled_back"
        with services.catalog.engine.connect() as conn:
            failed = conn.execute(sa.select(installs.c.device_id, installs.c.detail).where(
                installs.c.version == 2, installs.c.status == "failed")).all()
        assert {d for d, _ in failed} == faulty & canary
        assert all("simulated fault" in detail for _, detail in failed)
    finally:
        stop.set()
        fleet.stop()
