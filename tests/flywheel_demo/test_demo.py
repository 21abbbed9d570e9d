"""The demo end to end on a tiny fleet: separate processes, gate, staged rollouts, model swaps,
report.json shape."""

import json
import os
import re
import signal
import subprocess
import sys
from http.client import HTTPConnection
from urllib.parse import urlencode

from conftest import DATA_DIR, ROOT


def request(host: str, port: str, method: str, path: str, *, body: str | None = None,
            headers: dict | None = None) -> tuple[int, dict, str]:
    """One request, redirects not followed: (status, lower-cased headers, body text)."""
    connection = HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


def test_tiny_demo_runs_and_reports(tmp_path, fashion_train):
    out = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "flywheel_demo.cli", "--devices", "2", "--rounds", "2", "--items", "40",
         "--select", "15", "--test-size", "1000", "--dashboard-port", "0", "--data-dir", str(DATA_DIR),
         "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = []
    try:  # the demo ends by serving its dashboard until Ctrl-C
        for line in demo.stdout:
            output.append(line)
            found = re.search(r"dashboard: (http://127\.0\.0\.1:\d+)/?\s+\(log in as 'demo' with password '([^']+)'", line)
            if found:
                break
        assert found, "".join(output)[-3000:]
        url, password = found.groups()
        host, port = url.removeprefix("http://").split(":")
        assert request(host, port, "GET", "/healthz")[0] == 200
        assert request(host, port, "GET", "/")[0] in (302, 303, 307)  # login first
        _, headers, page = request(host, port, "GET", "/login")
        token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
        # The session cookie is Secure: it goes back by hand over this plain-http loopback link.
        status, headers, body = request(host, port, "POST", "/login", body=urlencode(
            {"username": "demo", "password": password, "csrf_token": token, "next": "/"}),
            headers={"Cookie": headers["set-cookie"].split(";")[0],
                     "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 303 and headers["location"] == "/", body[:300]
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0, "".join(output)[-3000:]
    finally:
        if demo.poll() is None:
            demo.kill()
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
