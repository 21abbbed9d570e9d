"""The demo end to end on a tiny fleet: separate processes, gate, staged rollouts, model swaps,
report.json shape."""

import json
import os
import subprocess
import sys

from conftest import DATA_DIR, ROOT


def test_tiny_demo_runs_and_reports(tmp_path, fashion_train):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "flywheel_demo.cli", "--devices", "2", "--rounds", "2", "--items", "40",
         "--select", "15", "--test-size", "1000", "--data-dir", str(DATA_DIR), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=400, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert 0 < report["initial_accuracy"] < 1
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        assert set(r) >= {"accuracy", "labels_total", "frames_seen", "frames_uploaded", "selected", "device_models"}
        assert r["frames_uploaded"] < r["frames_seen"]
        assert 0 < r["selected"] <= 15
        assert set(r["device_models"]) == {"cam-01", "cam-02"}
    # each new version passed the gate and reached every device through a staged rollout
    assert [r["outcome"].split()[0] for r in report["rounds"]] == ["rollout", "rollout"]
    assert all(0 < r["holdout_accuracy"] <= 1 for r in report["rounds"])
    assert [set(r["device_models"].values()) for r in report["rounds"]] == [{2}, {3}]
    assert report["rounds"][-1]["labels_total"] > report["seed_labels"]
    # nothing left running
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert left.stdout.strip() == ""
