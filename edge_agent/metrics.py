"""Local observability: inference latency percentiles and an opt-in Prometheus endpoint.

    LatencyWindow      the last N inference latencies; p50/p99 for heartbeats and /metrics
    MetricSample       one typed sample (name, help, counter|gauge, value, labels)
    render_prometheus  samples -> Prometheus text exposition format 0.0.4
    agent_samples      the agent's counters (AgentSnapshot) -> samples, so names live in one place
    MetricsServer      GET /metrics and GET /healthz on a small threaded HTTP server

The endpoint is off unless the operator asks for it, and binds 127.0.0.1 by default: a
scraper on the device (node exporter textfile, a Prometheus agent, `curl`) reaches it, the
network does not. Binding 0.0.0.0 (or "::") exposes counters and the model version to anyone
who can reach the device; do that only on a network you trust or behind a firewall rule.

The prometheus client library is deliberately not a dependency: the text format is a few
lines of escaping, and the agent has to stay small on cameras.

Errors: `ValueError` for samples that would render an invalid exposition (bad name, counter
not named *_total, a family with two types, a duplicate series); `OSError` from `start()` when
the port cannot be bound. A `collect()` that raises is logged and answered with HTTP 500; the
server keeps serving.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
COUNTER, GAUGE = "counter", "gauge"

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


# ---------------------------------------------------------------- latency window


class LatencyWindow:
    """The most recent `capacity` latencies in milliseconds, for percentiles.

    A ring rather than a histogram: heartbeats report p50/p99 "over the recent frames", and a
    fixed window answers that exactly with bounded memory (8 kB at the default). The inference
    loop records while the heartbeat and HTTP threads read, hence the lock.
    """

    def __init__(self, capacity: int = 1000):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._values: deque[float] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, latency_ms: float) -> None:
        with self._lock:
            self._values.append(float(latency_ms))

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100, linear interpolation) of the window; 0.0 when empty."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
        with self._lock:
            values = np.fromiter(self._values, dtype=np.float64, count=len(self._values))
        if values.size == 0:
            return 0.0
        return float(np.percentile(values, q))


# ---------------------------------------------------------------- text format


@dataclass(frozen=True)
class MetricSample:
    """One line of the exposition. Samples sharing a name form one family (one HELP/TYPE)."""

    name: str
    help: str
    type: str  # COUNTER | GAUGE
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _check(sample: MetricSample) -> None:
    if not _NAME_RE.match(sample.name):
        raise ValueError(f"invalid metric name {sample.name!r}")
    if sample.type not in (COUNTER, GAUGE):
        raise ValueError(f"metric {sample.name}: type must be 'counter' or 'gauge', got {sample.type!r}")
    if sample.type == COUNTER:
        if not sample.name.endswith("_total"):
            raise ValueError(f"counter {sample.name} must be named *_total")
        if float(sample.value) < 0:
            raise ValueError(f"counter {sample.name} is negative ({sample.value})")
    for key in sample.labels:
        if not _LABEL_RE.match(key) or key.startswith("__"):
            raise ValueError(f"metric {sample.name}: invalid label name {key!r}")


def render_prometheus(samples: list[MetricSample]) -> str:
    """Prometheus text format 0.0.4: families in first-seen order, each with one HELP and TYPE.

    Samples of one family need not be adjacent in `samples`; the format requires them to be
    adjacent in the output, so they are grouped here.
    """
    families: dict[str, list[MetricSample]] = {}
    for sample in samples:
        _check(sample)
        family = families.setdefault(sample.name, [])
        if family and (family[0].type != sample.type or family[0].help != sample.help):
            raise ValueError(f"metric {sample.name} is declared twice with a different type or help")
        family.append(sample)
    lines: list[str] = []
    for name, family in families.items():
        lines.append(f"# HELP {name} {_escape_help(family[0].help)}")
        lines.append(f"# TYPE {name} {family[0].type}")
        seen: set[tuple[tuple[str, str], ...]] = set()
        for sample in family:
            key = tuple(sorted((k, str(v)) for k, v in sample.labels.items()))
            if key in seen:
                raise ValueError(f"metric {name} has two samples with labels {dict(key)}")
            seen.add(key)
            labels = ",".join(f'{k}="{_escape_label_value(str(v))}"' for k, v in sample.labels.items())
            lines.append(f"{name}{{{labels}}} {_format_value(sample.value)}" if labels
                         else f"{name} {_format_value(sample.value)}")
    return "\n".join(lines) + "\n" if lines else ""


# ---------------------------------------------------------------- the agent's metrics


@dataclass(frozen=True)
class AgentSnapshot:
    """The agent's counters at one moment, in plain values (the CLI fills it from the agent,
    the spool and the uploader), so the metric names below do not depend on those classes."""

    agent_version: str
    model_version: int
    frames_seen: int
    frames_kept: int
    dropped: Mapping[str, int]  # reason -> frames not kept for that reason
    candidates_acked: int
    spool_queued: int
    spool_sending: int
    spool_dead: int
    spool_pending_bytes: int
    latency_p50_ms: float
    latency_p99_ms: float
    candidates_evicted: int = 0
    bytes_uploaded: int = 0
    spool_cap_bytes: int = 0
    source_finished: bool = False


def agent_samples(s: AgentSnapshot) -> list[MetricSample]:
    """The agent's metrics, named after Prometheus conventions (base units, *_total counters)."""
    p = "edge_agent_"
    samples = [
        MetricSample(p + "info", "Agent build; the value is always 1.", GAUGE, 1, {"version": s.agent_version}),
        MetricSample(p + "model_version", "Version of the model bundle scoring frames now.", GAUGE, s.model_version),
        MetricSample(p + "frames_seen_total", "Frames scored since the agent started.", COUNTER, s.frames_seen),
        MetricSample(p + "frames_kept_total", "Frames kept for upload since the agent started.", COUNTER,
                     s.frames_kept),
    ]
    for reason in sorted(s.dropped):
        samples.append(MetricSample(p + "frames_dropped_total", "Frames not kept, by the policy's reason.", COUNTER,
                                    s.dropped[reason], {"reason": reason}))
    samples += [
        MetricSample(p + "candidates_acked_total", "Candidates the cloud acknowledged as stored.", COUNTER,
                     s.candidates_acked),
        MetricSample(p + "candidates_evicted_total", "Outbox items evicted to stay under the disk cap.", COUNTER,
                     s.candidates_evicted),
        MetricSample(p + "uploaded_bytes_total", "JPEG bytes the cloud acknowledged.", COUNTER, s.bytes_uploaded),
    ]
    for state, count in (("queued", s.spool_queued), ("sending", s.spool_sending), ("dead", s.spool_dead)):
        samples.append(MetricSample(p + "spool_items", "Outbox items by state (dead = rejected by the cloud).",
                                    GAUGE, count, {"state": state}))
    samples += [
        MetricSample(p + "spool_pending_bytes", "Bytes of outbox items not yet acknowledged.", GAUGE,
                     s.spool_pending_bytes),
        MetricSample(p + "spool_cap_bytes", "Outbox disk cap in bytes (0 = none).", GAUGE, s.spool_cap_bytes),
        MetricSample(p + "inference_latency_seconds", "Inference latency over the recent frames.", GAUGE,
                     s.latency_p50_ms / 1000.0, {"quantile": "0.5"}),
        MetricSample(p + "inference_latency_seconds", "Inference latency over the recent frames.", GAUGE,
                     s.latency_p99_ms / 1000.0, {"quantile": "0.99"}),
        MetricSample(p + "source_finished", "1 when the frame source has ended.", GAUGE, int(s.source_finished)),
    ]
    return samples


# ---------------------------------------------------------------- HTTP endpoint


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck scraper must not keep the agent from exiting


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """GET /metrics (Prometheus text) and GET /healthz ("ok") on `address:port`.

    `port=0` binds a free port (tests); read the bound one from `.port` after `start()`.
    `collect` runs on the HTTP thread for every scrape, so it must only read counters.
    `health`, when given, decides /healthz: False answers 503, so a container HEALTHCHECK or
    a watchdog can see a stalled frame loop and not just a live HTTP thread.
    """

    def __init__(self, address: str, port: int, collect: Callable[[], list[MetricSample]],
                 health: Callable[[], bool] | None = None):
        self.address = address
        self.requested_port = port
        self._collect = collect
        self._health = health
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.collect_errors = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MetricsServer is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a daemon thread; OSError when the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("MetricsServer is already started")
        server_class = _Server6 if ":" in self.address else _Server
        self._server = server_class((self.address, self.requested_port), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.address, self.port)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _render(self) -> bytes:
        return render_prometheus(self._collect()).encode("utf-8")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "edge-agent-metrics"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = urlsplit(self.path).path
                if path == "/metrics":
                    try:
                        body = owner._render()
                    except Exception:  # top of the request loop: one bad scrape must not end the endpoint
                        owner.collect_errors += 1
                        log.exception("collecting metrics failed")
                        self._reply(500, b"collecting metrics failed; see the agent log\n", "text/plain; charset=utf-8")
                        return
                    self._reply(200, body, CONTENT_TYPE)
                elif path == "/healthz":
                    try:
                        healthy = owner._health is None or owner._health()
                    except Exception:  # top of the request loop, as above
                        log.exception("health check failed")
                        self._reply(500, b"health check failed; see the agent log\n", "text/plain; charset=utf-8")
                        return
                    if healthy:
                        self._reply(200, b"ok\n", "text/plain; charset=utf-8")
                    else:
                        self._reply(503, b"unhealthy\n", "text/plain; charset=utf-8")
                else:
                    self._reply(404, b"not found; try /metrics or /healthz\n", "text/plain; charset=utf-8")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
                # http.server writes every request to stderr; scrapes every 15 s would flood the journal.
                log.debug("metrics http: " + format, *args)

        return Handler
