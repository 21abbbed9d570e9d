"""Serve the dashboard with uvicorn in a thread of `cloud-selector serve`, and its secret key.

The secret signs session cookies. It comes from $CLOUD_SELECTOR_DASHBOARD_SECRET (replicas
behind one load balancer must share it), else from DATA_DIR/keys/dashboard_secret, made on first
use with mode 0600; a file readable by group or others is refused, like the signing key.
Changing the secret logs everyone out.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SECRET_ENV = "CLOUD_SELECTOR_DASHBOARD_SECRET"
SECRET_FILE = Path("keys") / "dashboard_secret"
MIN_SECRET_CHARS = 32


class DashboardConfigError(ValueError):
    """The dashboard cannot start as configured (the message says what to change)."""


def dashboard_secret(data_dir: Path, env: Mapping[str, str]) -> bytes:
    """The session-signing secret (module docstring)."""
    if env.get(SECRET_ENV):
        value = env[SECRET_ENV].strip()
        if len(value) < MIN_SECRET_CHARS:
            raise DashboardConfigError(f"{SECRET_ENV} must be at least {MIN_SECRET_CHARS} characters "
                                       f"(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
        return value.encode()
    path = Path(data_dir) / SECRET_FILE
    if not path.exists():
        _create_secret(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DashboardConfigError(f"{path} is readable by group or others (mode {stat.S_IMODE(mode):o}): "
                                   f"`chmod 600 {path}`, or delete it to make a new one (everyone is logged out)")
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_CHARS:
        raise DashboardConfigError(f"{path} holds fewer than {MIN_SECRET_CHARS} characters: delete it and a new "
                                   "secret is made at the next start")
    return value.encode()


def _create_secret(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first: use theirs
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    log.info("created the dashboard session secret %s", path)


class DashboardServer:
    """uvicorn serving `app` on host:port in a daemon thread; port 0 picks a free port (`.port`)."""

    def __init__(self, app, host: str, port: int, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                 log_level: str = "warning"):
        import uvicorn

        # log_config=None: uvicorn keeps its hands off the process's logging setup (the CLI's).
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=None, access_log=False,
                                lifespan="off", server_header=False, ssl_certfile=ssl_certfile,
                                ssl_keyfile=ssl_keyfile, proxy_headers=False)
        self.host = host
        self.tls = bool(ssl_certfile)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dashboard", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def start(self, timeout_s: float = 15.0) -> DashboardServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise DashboardConfigError(f"the dashboard could not listen on {self.host}:{self.port} "
                                           "(see the log above; is the port in use?)")
            if time.monotonic() > deadline:
                self.stop()
                raise DashboardConfigError(f"the dashboard did not start within {timeout_s:.0f} s")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)


def serve_dashboard(services, address: str, secret_key: bytes, *, ssl_certfile: str | None = None,
                    ssl_keyfile: str | None = None) -> DashboardServer:
    """Start the dashboard for `cloud-selector serve --dashboard-address HOST:PORT`."""
    from cloud_selector.dashboard.app import create_app

    host, _, port = address.rpartition(":")
    app = create_app(services, secret_key=secret_key, secure_cookies=True)
    return DashboardServer(app, host or "127.0.0.1", int(port), ssl_certfile=ssl_certfile,
                           ssl_keyfile=ssl_keyfile).start()
