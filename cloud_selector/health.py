"""HTTP health endpoints for load balancers and Kubernetes probes.

    GET /healthz  200 while the process serves (liveness: restart me when this fails)
    GET /readyz   200 when the catalog and the blob store answer, 503 with the failing part
                  otherwise (readiness: send me no devices until this passes)

Each check is a callable that raises on failure; the body is a small JSON object naming every
check with "ok" or its error, so `kubectl describe` says what is wrong. The probes run on their
own port (`serve --health-address`), apart from the devices' gRPC port.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

Check = Callable[[], object]


def run_checks(checks: Mapping[str, Check]) -> tuple[bool, dict[str, str]]:
    """(all passed, name -> "ok" or the error) for the readiness body."""
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # a probe reports any failure of a dependency; it must never crash
            results[name] = f"{type(exc).__name__}: {exc}"[:300]
    return all(v == "ok" for v in results.values()), results


class HealthServer:
    def __init__(self, host: str, port: int, checks: Mapping[str, Check]):
        checks = dict(checks)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/healthz":
                    self._reply(200, {"status": "ok"})
                elif self.path == "/readyz":
                    ok, results = run_checks(checks)
                    self._reply(200 if ok else 503, {"status": "ok" if ok else "unavailable", "checks": results})
                else:
                    self._reply(404, {"status": "not found"})

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args) -> None:  # probes every few seconds: keep them quiet
                log.debug("health %s", format % args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
