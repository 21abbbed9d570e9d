"""An agent killed with SIGKILL and restarted re-sends what was not acked, and the cloud stores
each candidate exactly once (at-least-once delivery + idempotent ingest)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cloud_selector.ingest import IngestService
from cloud_selector.server import create_server
from conftest import ROOT, free_port, seed_model, write_video
from protos import flywheel_pb2 as pb


def spool_rows(path: Path) -> list[tuple[str, bytes]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT candidate_id, payload FROM items WHERE state != 'dead'").fetchall()


def progress_rows(path: Path) -> list[tuple[int]]:
    """The spool's progress rows; none while the agent has not created its schema yet."""
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT last_index FROM progress").fetchall()
    except sqlite3.OperationalError:
        return []


def start_agent(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def test_killed_agent_resends_unacked_and_cloud_stores_once(cloud, fashion_train, tmp_path):
    services, _ = cloud
    bundle = seed_model(services, fashion_train, tmp_path / "seed")
    video = write_video(fashion_train, tmp_path / "inbox" / "clip.avi", n_items=25)
    port = free_port()  # nothing listens here yet: the agent must spool and keep retrying
    state = tmp_path / "device"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "cam-restart"\nstate_dir = "{state}"\n'
        f'[source]\npath = "{video.parent}"\nfollow = true\n'
        f'[model]\nbundle_dir = "{bundle}"\n'
        f'[policy]\nmode = "threshold"\nthreshold = 0.3\nmax_per_minute = 1000\n'
        f'[cloud]\naddress = "127.0.0.1:{port}"\nheartbeat_interval_s = 0.5\n'
    )
    log = tmp_path / "agent.log"

    # Run 1: score the whole video into the outbox with the cloud down, then die hard.
    agent = start_agent(config, log)
    deadline = time.monotonic() + 60
    spool_db = state / "spool.sqlite"
    while True:
        assert agent.poll() is None, log.read_text()
        done = progress_rows(spool_db)
        if done and done[0][0] >= 1 << 62:
            break
        assert time.monotonic() < deadline, "agent did not finish the video"
        time.sleep(0.1)
    os.killpg(agent.pid, signal.SIGKILL)
    agent.wait()
    spooled = spool_rows(spool_db)
    assert len(spooled) > 5

    # The cloud already stored some of them, but their acks never reached the device.
    ingest = IngestService(services.catalog, services.blobs)
    already = spooled[: len(spooled) // 3]
    for _cid, payload in already:
        assert ingest.store(pb.Candidate.FromString(payload)).status == pb.ACK_STATUS_STORED

    # Run 2: the cloud is up; the restarted agent re-sends everything left and scores nothing twice.
    running = create_server(f"127.0.0.1:{port}", catalog=services.catalog, blobs=services.blobs)
    agent = start_agent(config, log)
    try:
        deadline = time.monotonic() + 60
        while spool_rows(spool_db):
            assert agent.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "outbox did not drain"
            time.sleep(0.1)
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=20)
        running.stop(0.5)
    stored = [r for r in services.catalog.candidates() if r.device_id == "cam-restart"]
    assert sorted(r.id for r in stored) == sorted(cid for cid, _ in spooled)  # each once, none lost, none new
    for row in stored:
        assert services.blobs.get(row.blob_key)
    assert agent.returncode == 0, log.read_text()
