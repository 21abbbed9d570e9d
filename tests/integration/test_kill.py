"""kill -9 the agent at 50 random moments while it captures and uploads; nothing is lost and
nothing is stored twice.

A real `edge-agent run` process reads a camera's recording directory (new video files keep
arriving), keeps every frame (threshold 0, no caps, no repeat check: the kept set is then known
without trusting the agent) and uploads to a real gRPC server on loopback. After the kills, one
last run finishes the files and drains the outbox. Then every frame of every file must be in the
cloud exactly once: none lost, none duplicated.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from cloud_selector.auth import DeviceAuthenticator, enroll_device
from conftest import ROOT, seed_model, write_video

KILLS = 50
FILES = 10


def spool_counts(path: Path) -> tuple[int, int]:
    """(items waiting, files done) as the spool says; (0, 0) before its schema exists."""
    try:
        with sqlite3.connect(path, timeout=5) as db:
            waiting = db.execute("SELECT count(*) FROM items WHERE state != 'dead'").fetchone()[0]
            done = db.execute("SELECT count(*) FROM progress WHERE last_index >= ?", (1 << 62,)).fetchone()[0]
            return waiting, done
    except sqlite3.OperationalError:
        return 0, 0


def start_agent(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def test_kill_minus_nine_at_fifty_random_moments_loses_and_duplicates_nothing(cloud_factory, fashion_train, tmp_path):
    cloud = cloud_factory(auth=DeviceAuthenticator)  # the production path: an enrolled device, tokens checked
    services, port = cloud.services, cloud.port
    token = enroll_device(services.catalog, "cam-kill").token
    bundle = seed_model(services, fashion_train, tmp_path / "seed")
    recordings = tmp_path / "recordings"
    staged = [write_video(fashion_train, tmp_path / "staging" / f"clip{i:02d}.avi", n_items=120, seed=i)
              for i in range(FILES)]
    expected = {}
    for video in staged:
        expected[video.name] = json.loads(video.with_suffix(".json").read_text())["n_frames"]

    def publish(video: Path) -> None:  # the way a camera's recorder finishes a file
        recordings.mkdir(exist_ok=True)
        os.replace(video, recordings / video.name)
        os.replace(video.with_suffix(".json"), recordings / video.with_suffix(".json").name)

    state = tmp_path / "device"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "cam-kill"\ntoken = "{token}"\nstate_dir = "{state}"\n'
        f'[source]\npath = "{recordings}"\nfollow = true\npoll_interval_s = 0.1\n'
        f'[model]\nbundle_dir = "{bundle}"\nwarmup_runs = 0\n'
        f'[policy]\nmode = "threshold"\nthreshold = 0.0\nmax_per_minute = 0\nrepeat_distance = 0.0\n'
        f'[upload]\nwindow = 8\n'
        f'[cloud]\naddress = "127.0.0.1:{port}"\nheartbeat_interval_s = 0.5\nwatch_models = false\n'
    )
    log = tmp_path / "agent.log"
    spool_db = state / "spool.sqlite"
    rng = random.Random(2026)
    busy_kills = published = 0
    for kill in range(KILLS):
        if kill % (KILLS // FILES) == 0:  # a new recording every few kills: capture never ends
            publish(staged[kill // (KILLS // FILES)])
            published += 1
        agent = start_agent(config, log)
        time.sleep(rng.uniform(0.8, 2.5))  # start-up takes ~0.7 s: most kills land mid-work
        assert agent.poll() is None, log.read_text()[-3000:]
        waiting, done = spool_counts(spool_db)
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
        busy_kills += waiting > 0 or done < published  # uploading or capturing when killed

    # The last run finishes every file and drains the outbox.
    agent = start_agent(config, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert agent.poll() is None, log.read_text()[-3000:]
            waiting, done = spool_counts(spool_db)
            if done == FILES and waiting == 0:
                break
            assert time.monotonic() < deadline, f"not finished: {done}/{FILES} files, {waiting} waiting"
            time.sleep(0.2)
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=30)

    rows = [r for r in services.catalog.candidates() if r.device_id == "cam-kill"]
    frames = Counter((r.extra["source"], int(r.extra["frame_index"])) for r in rows)
    duplicated = {frame: n for frame, n in frames.items() if n > 1}
    missing = [(name, i) for name, n in expected.items() for i in range(n) if (name, i) not in frames]
    summary = {"kills": KILLS, "kills_mid_work": busy_kills, "frames_expected": sum(expected.values()),
               "stored": len(rows), "distinct_frames": len(frames), "duplicated": len(duplicated),
               "missing": len(missing)}
    print("kill test:", json.dumps(summary))
    (tmp_path / "kill_summary.json").write_text(json.dumps(summary))
    assert not duplicated, f"stored twice: {list(duplicated)[:5]}"
    assert not missing, f"lost: {missing[:5]}"
    assert len(rows) == sum(expected.values())
    assert busy_kills >= KILLS // 2, summary  # the kills really hit an agent at work
    for row in rows[:: max(1, len(rows) // 50)]:
        assert services.blobs.get(row.blob_key)
