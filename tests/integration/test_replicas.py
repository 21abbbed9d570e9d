"""Two `cloud-selector serve` replicas on one PostgreSQL and one S3 bucket serve one fleet:
an upload that reaches both is stored once, and scheduled selection runs on one replica at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys

from cloud_selector.auth import enroll_device
from cloud_selector.cli import open_services
from conftest import ROOT, make_candidate, seed_model, wait_for
from edge_agent.transport import DeviceCredentials, open_channel
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc


def upload(port: int, token: str, candidates) -> list[int]:
    channel = open_channel(f"127.0.0.1:{port}", credentials=DeviceCredentials("cam-r", token))
    with channel:
        return [ack.status for ack in pb_grpc.IngestStub(channel).Upload(iter(candidates), timeout=30)]


def test_two_replicas_store_once_and_select_one_at_a_time(pg_url, s3_bucket, s3_server, fashion_train, tmp_path):
    env = {**os.environ, "CLOUD_SELECTOR_CATALOG": pg_url, "CLOUD_SELECTOR_BLOB_STORE": f"s3://{s3_bucket.bucket}/fleet",
           "CLOUD_SELECTOR_S3_ENDPOINT": f"http://{s3_bucket.endpoint}",
           "CLOUD_SELECTOR_S3_ACCESS_KEY": s3_bucket.access_key, "CLOUD_SELECTOR_S3_SECRET_KEY": s3_bucket.secret_key}
    services = open_services(tmp_path / "admin", catalog_url=pg_url, blob_store=env["CLOUD_SELECTOR_BLOB_STORE"],
                             env=env)
    seed_model(services, fashion_train, tmp_path / "seed", per_class=2)
    token = enroll_device(services.catalog, "cam-r").token

    replicas, ports = [], []
    for name in ("a", "b"):
        port_file = tmp_path / f"{name}.port"
        replicas.append(subprocess.Popen(
            [sys.executable, "-m", "cloud_selector", "--data-dir", str(tmp_path / name), "serve",
             "--grpc-address", "127.0.0.1:0", "--port-file", str(port_file), "--replica-name", name,
             "--select-every-n", "6", "--select-n", "2", "--select-poll", "0.2"],
            cwd=ROOT, env=env, stdout=open(tmp_path / f"{name}.log", "w"), stderr=subprocess.STDOUT))
        ports.append(wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, f"replica {name}"))
    try:
        same = make_candidate("cam-r", num_classes=4, seed=1)
        statuses = upload(int(ports[0]), token, [same]) + upload(int(ports[1]), token, [same])
        assert statuses == [pb.ACK_STATUS_STORED, pb.ACK_STATUS_ALREADY_STORED]
        rows = [r for r in services.catalog.candidates() if r.device_id == "cam-r"]
        assert [r.id for r in rows] == [same.candidate_id]
        objects = [o.object_name for o in
                   s3_server.client().list_objects(s3_bucket.bucket, prefix="fleet/candidates/", recursive=True)]
        assert sum(same.candidate_id in name for name in objects) == 1
        assert len(objects) == len(services.catalog.candidates())  # the seed images and this one, once each

        # New candidates through both replicas; every 6 arrivals trigger a scheduled round.
        for batch in range(4):
            fresh = [make_candidate("cam-r", num_classes=4, seed=100 + 10 * batch + i) for i in range(6)]
            assert set(upload(int(ports[batch % 2]), token, fresh)) == {pb.ACK_STATUS_STORED}
            wait_for(lambda: len(services.catalog.selection_runs()) > batch, 60, f"scheduled round {batch + 1}")
    finally:
        for replica in replicas:
            replica.terminate()
        for replica in replicas:
            replica.wait(timeout=30)
    runs = sorted(services.catalog.selection_runs(), key=lambda r: r["started_ms"])
    assert len(runs) >= 4
    assert all(r["trigger"] == "count" and r["replica"] in ("a", "b") and r["finished_ms"] for r in runs)
    for earlier, later in zip(runs, runs[1:]):
        assert earlier["finished_ms"] <= later["started_ms"], "two scheduled rounds overlapped"
    logs = "".join((tmp_path / f"{n}.log").read_text() for n in ("a", "b"))
    assert "Traceback" not in logs
