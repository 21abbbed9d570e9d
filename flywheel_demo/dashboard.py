"""After the demo: its cloud's dashboard on loopback, with a demo login, until Ctrl-C."""

from __future__ import annotations

import secrets
import signal
import threading
from pathlib import Path

from cloud_selector.cli import open_services

DEMO_USER = "demo"


def serve_until_interrupted(data_dir: Path, port: int) -> int:
    """Serve the dashboard of the demo's cloud at 127.0.0.1:`port` (0 = any free port) with an
    admin `demo` whose password is new each run; blocks until SIGINT/SIGTERM."""
    from cloud_selector.dashboard.server import dashboard_secret, serve_dashboard
    from cloud_selector.users import UserStore

    services = open_services(data_dir)
    users = UserStore(services.catalog)
    password = secrets.token_urlsafe(12)
    if users.get(DEMO_USER) is None:
        users.add(DEMO_USER, password, "admin")
    else:
        users.set_password(DEMO_USER, password)
    dashboard = serve_dashboard(services, f"127.0.0.1:{port}", dashboard_secret(data_dir, {}))
    print(f"\ndashboard: {dashboard.url}  (log in as {DEMO_USER!r} with password {password!r}); Ctrl-C to stop",
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    dashboard.stop()
    services.catalog.close()
    return 0
