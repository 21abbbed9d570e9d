"""`cloud-selector serve`: the gRPC service for devices, with its optional health endpoint,
dashboard, scheduled selection rounds and rollout controller, until SIGTERM/Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_selector.selection_args import add_selection_arguments, round_config

if TYPE_CHECKING:
    from cloud_selector.cli import Services

log = logging.getLogger("cloud_selector")


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the gRPC service for devices (ingest, models, fleet)",
                       description="Serve devices until SIGTERM/Ctrl-C.")
    p.add_argument("--grpc-address", default="127.0.0.1:50051", help="host:port to bind (port 0 picks a free one)")
    p.add_argument("--max-message-mb", type=float, default=8.0, help="gRPC message limit in MiB (default 8)")
    p.add_argument("--max-workers", type=int, default=64,
                   help="worker threads; each device holds two streams open (default 64)")
    p.add_argument("--watch-poll", type=float, default=1.0, help="seconds between checks for new models (default 1)")
    p.add_argument("--port-file", type=Path, help="write the bound port to this file (useful with port 0)")
    p.add_argument("--health-address", default="", metavar="HOST:PORT",
                   help="serve HTTP /healthz (liveness) and /readyz (catalog and blob store answer) here for "
                        "load balancers and Kubernetes probes (default: off)")
    p.add_argument("--dashboard-address", default="", metavar="HOST:PORT",
                   help="serve the web dashboard here (default: off; port 0 picks a free one). Users sign in with "
                        "accounts from `cloud-selector users add`; sessions are signed with "
                        "$CLOUD_SELECTOR_DASHBOARD_SECRET or DATA_DIR/keys/dashboard_secret (made on first use). "
                        "With --tls-cert/--tls-key it serves https too")
    p.add_argument("--tls-cert", help="PEM certificate chain of the server; with --tls-key serves TLS "
                                      "(default: plaintext, e.g. on loopback or behind a TLS proxy)")
    p.add_argument("--tls-key", help="PEM private key of the server")
    p.add_argument("--tls-client-ca", help="PEM CA that signs device certificates: requires mutual TLS")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="DEVELOPMENT ONLY: accept calls without a device token (by default every call needs "
                        "the token from `cloud-selector devices add`)")
    p.add_argument("--rate-limit", type=float, default=50.0, metavar="PER_S",
                   help="candidates per second per device; over it the upload stream ends with RESOURCE_EXHAUSTED "
                        "and the device retries later (default 50, 0 = no limit)")
    p.add_argument("--rate-burst", type=int, default=200, metavar="N",
                   help="candidates a device may send at once above the rate (default 200)")
    p.add_argument("--select-every-n", type=int, default=0, metavar="N",
                   help="run a selection round whenever N new candidates arrived since the last one (default 0 = "
                        "off); with several replicas one runs it (a catalog lock)")
    p.add_argument("--select-every-min", type=float, default=0.0, metavar="M",
                   help="run a selection round every M minutes when new candidates arrived (default 0 = off)")
    p.add_argument("--select-poll", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--rollout-poll", type=float, default=2.0, metavar="S",
                   help="seconds between passes of the rollout controller (default 2)")
    p.add_argument("--replica-name", default="", help="name recorded on the selection runs this process makes "
                                                      "(default host:pid)")
    add_selection_arguments(p, prefix="select-")
    p.set_defaults(func=cmd_serve)



def cmd_serve(args, s: Services) -> int:
    from cloud_selector.auth import AllowUnauthenticated, DeviceAuthenticator
    from cloud_selector.ingest import RateLimit
    from cloud_selector.releases import Releases
    from cloud_selector.rollouts import RolloutController
    from cloud_selector.scheduler import Schedule, SelectionScheduler
    from cloud_selector.server import ServerTls, TlsConfigError, create_server

    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        print("cloud-selector: error: --tls-cert and --tls-key go together (and --tls-client-ca needs both)",
              file=sys.stderr)
        return 2
    for flag, address in (("--health-address", args.health_address), ("--dashboard-address", args.dashboard_address)):
        if address and (":" not in address or not address.rpartition(":")[2].isdigit()):
            print(f"cloud-selector: error: {flag} must be HOST:PORT, got {address!r}", file=sys.stderr)
            return 2
    if args.rate_limit < 0 or args.rate_burst < 1:
        print("cloud-selector: error: --rate-limit must be >= 0 and --rate-burst >= 1", file=sys.stderr)
        return 2
    try:
        tls = ServerTls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    except TlsConfigError as exc:
        print(f"cloud-selector: error: {exc}", file=sys.stderr)
        return 2
    dashboard_secret = None
    if args.dashboard_address:  # read (or made) now: a bad secret file stops serve before anything listens
        from cloud_selector.dashboard.server import DashboardConfigError, dashboard_secret as read_secret

        try:
            dashboard_secret = read_secret(args.data_dir, os.environ)
        except DashboardConfigError as exc:
            print(f"cloud-selector: error: {exc}", file=sys.stderr)
            return 2
    schedule = Schedule(every_n=args.select_every_n, every_s=args.select_every_min * 60, poll_s=args.select_poll)
    scheduler = SelectionScheduler(s.catalog, s.blobs, s.registry, round_config(args), schedule,
                                   replica=args.replica_name or f"{socket.gethostname()}:{os.getpid()}")
    auth = AllowUnauthenticated() if args.allow_unauthenticated else DeviceAuthenticator(s.catalog)
    running = create_server(args.grpc_address, catalog=s.catalog, blobs=s.blobs, auth=auth, tls=tls,
                            max_workers=args.max_workers, max_message_bytes=int(args.max_message_mb * 1024 * 1024),
                            watch_poll_s=args.watch_poll,
                            rate_limit=RateLimit(per_s=args.rate_limit, burst=args.rate_burst))
    host = args.grpc_address.rsplit(":", 1)[0]
    print(f"cloud-selector: gRPC listening on {host}:{running.port}", flush=True)
    if args.port_file:
        args.port_file.write_text(str(running.port))
    health = None
    if args.health_address:
        from cloud_selector.health import HealthServer

        host, _, port = args.health_address.rpartition(":")
        health = HealthServer(host or "0.0.0.0", int(port), {
            "catalog": s.catalog.latest_model,
            "blob_store": lambda: s.blobs.exists("health/probe"),
        }).start()
        print(f"cloud-selector: health on http://{host or '0.0.0.0'}:{health.port}/readyz", flush=True)
    dashboard = None
    if args.dashboard_address:
        from cloud_selector.dashboard.server import DashboardConfigError

        try:
            dashboard = start_dashboard(args, s, dashboard_secret)
        except DashboardConfigError as exc:
            print(f"cloud-selector: error: {exc}", file=sys.stderr)
            if health is not None:
                health.stop()
            running.stop(grace_s=0.5)
            return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if schedule.enabled:
        threading.Thread(target=scheduler.run, args=(stop,), name="scheduler", daemon=True).start()
    controller = RolloutController(Releases(s.catalog, s.registry.signer), interval_s=args.rollout_poll)
    threading.Thread(target=controller.run, args=(stop,), name="rollouts", daemon=True).start()
    stop.wait()
    if dashboard is not None:
        dashboard.stop()
    if health is not None:
        health.stop()
    running.stop(grace_s=3.0)
    log.info("stopped")
    return 0


def start_dashboard(args, s: Services, secret: bytes):
    """The dashboard's web server in a thread (TLS with serve's --tls-cert/--tls-key when given)."""
    from cloud_selector.dashboard.server import serve_dashboard
    from cloud_selector.users import UserStore

    dashboard = serve_dashboard(s, args.dashboard_address, secret, ssl_certfile=args.tls_cert or None,
                                ssl_keyfile=args.tls_key or None)
    print(f"cloud-selector: dashboard on {dashboard.url}", flush=True)
    if not UserStore(s.catalog).list():
        print("cloud-selector: no dashboard user yet: `cloud-selector users add NAME --role admin`", flush=True)
    if not dashboard.tls and dashboard.host not in ("127.0.0.1", "localhost", "::1"):
        print("cloud-selector: the dashboard's session cookies are Secure: browsers send them over https or to "
              "localhost only, so put it behind a TLS proxy or give --tls-cert/--tls-key", flush=True)
    return dashboard
