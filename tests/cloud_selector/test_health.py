"""Health endpoints: liveness always, readiness only when the catalog and blob store answer."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from cloud_selector.health import HealthServer
from conftest import ROOT, free_port, wait_for


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def failing() -> None:
    raise ConnectionError("database is down")


def test_readiness_names_the_failing_dependency():
    server = HealthServer("127.0.0.1", 0, {"catalog": failing, "blob_store": lambda: True}).start()
    try:
        assert get(f"http://127.0.0.1:{server.port}/healthz") == (200, {"status": "ok"})
        code, body = get(f"http://127.0.0.1:{server.port}/readyz")
        assert code == 503 and body["checks"] == {"catalog": "ConnectionError: database is down", "blob_store": "ok"}
        assert get(f"http://127.0.0.1:{server.port}/other")[0] == 404
    finally:
        server.stop()


def test_serve_exposes_probes(tmp_path):
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "cloud_selector", "--data-dir", str(tmp_path / "cloud"), "serve",
                              "--grpc-address", "127.0.0.1:0", "--health-address", f"127.0.0.1:{port}"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def ready():
            assert serve.poll() is None, serve.stdout.read()
            try:
                return get(f"http://127.0.0.1:{port}/readyz")
            except OSError:
                return None

        code, body = wait_for(ready, 30, "the health endpoint")
        assert code == 200 and body["checks"] == {"catalog": "ok", "blob_store": "ok"}
    finally:
        serve.terminate()
        serve.wait(timeout=20)


@pytest.mark.parametrize("address", ["8080", "host:port", ":x"])
def test_bad_health_address_is_a_one_line_error(tmp_path, address):
    result = subprocess.run([sys.executable, "-m", "cloud_selector", "--data-dir", str(tmp_path / "c"), "serve",
                             "--health-address", address], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--health-address" in result.stderr and "Traceback" not in result.stderr
