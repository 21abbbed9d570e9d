"""The agent as users run it: `edge-agent run` as a process, its Prometheus endpoint, JSON logs,
a manual keep on SIGUSR1 and a clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from cloud_selector.auth import DeviceAuthenticator, enroll_device
from conftest import ROOT, free_port, seed_model, wait_for, write_video


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_agent_process_metrics_json_logs_manual_keep_and_clean_stop(cloud_factory, fashion_train, tmp_path):
    cloud = cloud_factory(auth=DeviceAuthenticator)
    token = enroll_device(cloud.services.catalog, "cam-ops").token
    bundle = seed_model(cloud.services, fashion_train, tmp_path / "seed", per_class=2)
    inbox = tmp_path / "inbox"
    write_video(fashion_train, inbox / "a.avi", n_items=5, seed=1)
    later = write_video(fashion_train, tmp_path / "later" / "b.avi", n_items=5, seed=2)
    metrics_port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "cam-ops"\ntoken = "{token}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[source]\npath = "{inbox}"\nfollow = true\npoll_interval_s = 0.1\n'
        f'[model]\nbundle_dir = "{bundle}"\n'
        f'[policy]\nmode = "threshold"\nthreshold = 10.0\n'  # nothing is interesting enough: only manual keeps
        f'[cloud]\naddress = "{cloud.address}"\nheartbeat_interval_s = 0.5\nwatch_models = false\n'
        f'[metrics]\nport = {metrics_port}\n[log]\nformat = "json"\n'
    )
    log = tmp_path / "agent.log"
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
                             stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        def first_file_done():
            assert agent.poll() is None, log.read_text()[-2000:]
            try:
                values = scrape(metrics_port)
            except OSError:
                return None
            return values if values.get("edge_agent_frames_seen_total", 0) > 20 else None

        values = wait_for(first_file_done, 60, "frames in the metrics")
        assert values['edge_agent_frames_dropped_total{reason="below_threshold"}'] > 0
        assert values.get("edge_agent_frames_kept_total") == 0
        assert 'edge_agent_inference_latency_seconds{quantile="0.99"}' in values

        agent.send_signal(signal.SIGUSR1)  # keep the next frame, whatever its scores
        os.replace(later, inbox / later.name)
        os.replace(later.with_suffix(".json"), inbox / later.with_suffix(".json").name)
        rows = wait_for(lambda: [r for r in cloud.services.catalog.candidates() if r.device_id == "cam-ops"],
                        30, "the manual frame in the cloud")
        assert [r.reason for r in rows] == ["manual"]
        assert rows[0].extra["source"] == "b.avi"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    assert agent.returncode == 0, log.read_text()[-2000:]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any("metrics on http://127.0.0.1" in r["msg"] for r in records)
    device = next(d for d in cloud.services.catalog.devices() if d["id"] == "cam-ops")
    assert device["status"]["candidates_evicted"] == 0 and device["frames_kept"] == 1
    assert Path(tmp_path / "state" / "spool.sqlite").exists()
