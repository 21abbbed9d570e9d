"""Metrics and logs: latency percentiles, the Prometheus text format, a real HTTP endpoint on
127.0.0.1:0 fetched with urllib, and the JSON log formatter."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge_agent.logs import TEXT_FORMAT, JsonFormatter, setup_logging
from edge_agent.metrics import (
    CONTENT_TYPE,
    AgentSnapshot,
    LatencyWindow,
    MetricSample,
    MetricsServer,
    agent_samples,
    render_prometheus,
)

# ---------------------------------------------------------------- LatencyWindow


def test_latency_window_empty_is_zero():
    window = LatencyWindow()
    assert window.percentile(50) == 0.0
    assert window.percentile(99) == 0.0
    assert len(window) == 0


def test_latency_window_percentiles_interpolate():
    window = LatencyWindow(capacity=1000)
    for ms in range(1, 101):  # 1..100 ms
        window.record(ms)
    # linear interpolation between closest ranks: rank (n-1)*q/100
    assert window.percentile(50) == pytest.approx(50.5)
    assert window.percentile(99) == pytest.approx(99.01)
    assert window.percentile(0) == 1.0
    assert window.percentile(100) == 100.0


def test_latency_window_keeps_only_the_most_recent():
    window = LatencyWindow(capacity=10)
    for ms in range(100):
        window.record(1000.0 if ms < 90 else 5.0)  # the old slow frames fall out of the ring
    assert len(window) == 10
    assert window.percentile(99) == 5.0


def test_latency_window_rejects_bad_arguments():
    with pytest.raises(ValueError):
        LatencyWindow(capacity=0)
    with pytest.raises(ValueError):
        LatencyWindow().percentile(101)


def test_latency_window_concurrent_record_and_read():
    window = LatencyWindow(capacity=500)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader():
        while not stop.is_set():
            try:
                assert 0.0 <= window.percentile(99) <= 3.0
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)
                return

    def writer(value: float):
        for _ in range(5000):
            window.record(value)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(v,)) for v in (1.0, 2.0, 3.0)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert len(window) == 500


# ---------------------------------------------------------------- text format


def test_render_groups_families_with_one_help_and_type():
    text = render_prometheus([
        MetricSample("edge_agent_frames_dropped_total", "Frames not kept.", "counter", 3, {"reason": "budget"}),
        MetricSample("edge_agent_model_version", "Model version.", "gauge", 7),
        MetricSample("edge_agent_frames_dropped_total", "Frames not kept.", "counter", 5, {"reason": "threshold"}),
    ])
    assert text == (
        "# HELP edge_agent_frames_dropped_total Frames not kept.\n"
        "# TYPE edge_agent_frames_dropped_total counter\n"
        'edge_agent_frames_dropped_total{reason="budget"} 3\n'
        'edge_agent_frames_dropped_total{reason="threshold"} 5\n'
        "# HELP edge_agent_model_version Model version.\n"
        "# TYPE edge_agent_model_version gauge\n"
        "edge_agent_model_version 7\n"
    )


def test_render_escapes_label_values_and_help():
    text = render_prometheus([
        MetricSample("x", "line one\nback\\slash", "gauge", 1.5, {"path": 'C:\\cam "1"\nnext', "b": "2"}),
    ])
    lines = text.splitlines()
    assert lines[0] == "# HELP x line one\\nback\\\\slash"
    assert lines[2] == 'x{path="C:\\\\cam \\"1\\"\\nnext",b="2"} 1.5'
    assert len(lines) == 3  # the newline inside the label did not split the sample


def test_render_special_values_and_empty():
    text = render_prometheus([
        MetricSample("g", "h", "gauge", float("nan"), {"k": "nan"}),
        MetricSample("g", "h", "gauge", float("inf"), {"k": "pinf"}),
        MetricSample("g", "h", "gauge", float("-inf"), {"k": "ninf"}),
        MetricSample("g", "h", "gauge", 0.25, {"k": "f"}),
    ])
    assert [line.rsplit(" ", 1)[1] for line in text.splitlines()[2:]] == ["NaN", "+Inf", "-Inf", "0.25"]
    assert render_prometheus([]) == ""


@pytest.mark.parametrize("sample, message", [
    (MetricSample("1bad", "h", "gauge", 1), "invalid metric name"),
    (MetricSample("has-dash", "h", "gauge", 1), "invalid metric name"),
    (MetricSample("frames_seen", "h", "counter", 1), "_total"),
    (MetricSample("frames_total", "h", "counter", -1), "negative"),
    (MetricSample("x", "h", "histogram", 1), "type"),
    (MetricSample("x", "h", "gauge", 1, {"bad-label": "v"}), "label name"),
    (MetricSample("x", "h", "gauge", 1, {"__reserved": "v"}), "label name"),
])
def test_render_rejects_invalid_samples(sample, message):
    with pytest.raises(ValueError, match=message):
        render_prometheus([sample])


def test_render_rejects_conflicting_families_and_duplicate_series():
    with pytest.raises(ValueError, match="declared twice"):
        render_prometheus([MetricSample("x", "h", "gauge", 1, {"a": "1"}), MetricSample("x", "h2", "gauge", 1)])
    with pytest.raises(ValueError, match="two samples"):
        render_prometheus([MetricSample("x", "h", "gauge", 1, {"a": "1"}), MetricSample("x", "h", "gauge", 2, {"a": "1"})])


def snapshot(**overrides) -> AgentSnapshot:
    fields = dict(agent_version="0.1.0", model_version=3, frames_seen=1200, frames_kept=60,
                  dropped={"threshold": 1100, "budget": 40}, candidates_acked=55, spool_queued=4, spool_sending=1,
                  spool_dead=2, spool_pending_bytes=123_456, latency_p50_ms=4.0, latency_p99_ms=12.5,
                  candidates_evicted=1, bytes_uploaded=9_000_000, spool_cap_bytes=1 << 30, source_finished=False)
    fields.update(overrides)
    return AgentSnapshot(**fields)


def test_agent_samples_render_to_a_valid_exposition():
    text = render_prometheus(agent_samples(snapshot()))
    sample_re = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? \S+$')
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:]
            assert name not in families
            families.add(name)
            assert kind in ("counter", "gauge") and (kind == "gauge" or name.endswith("_total"))
        elif not line.startswith("# HELP "):
            assert sample_re.match(line), line
    assert 'edge_agent_frames_dropped_total{reason="budget"} 40' in text
    assert 'edge_agent_spool_items{state="dead"} 2' in text
    assert 'edge_agent_inference_latency_seconds{quantile="0.99"} 0.0125' in text
    assert "edge_agent_model_version 3" in text


# ---------------------------------------------------------------- HTTP endpoint


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def served():
    """A MetricsServer on 127.0.0.1:0 whose collect() can be switched to fail."""
    state = {"fail": False, "calls": 0}

    def collect() -> list[MetricSample]:
        state["calls"] += 1
        if state["fail"]:
            raise RuntimeError("counter source broke")
        return agent_samples(snapshot(frames_seen=state["calls"]))

    server = MetricsServer("127.0.0.1", 0, collect)
    server.start()
    yield server, state
    server.stop()


def test_metrics_endpoint_serves_prometheus_text(served):
    server, _ = served
    assert server.port > 0
    status, content_type, body = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert body == render_prometheus(agent_samples(snapshot(frames_seen=1)))
    # collect() runs per scrape: the counter moves
    assert "edge_agent_frames_seen_total 2" in get(f"http://127.0.0.1:{server.port}/metrics?x=1")[2]


def test_healthz_and_unknown_paths(served):
    server, state = served
    assert get(f"http://127.0.0.1:{server.port}/healthz")[0::2] == (200, "ok\n")
    assert get(f"http://127.0.0.1:{server.port}/nope")[0] == 404
    assert get(f"http://127.0.0.1:{server.port}/")[0] == 404
    assert state["calls"] == 0  # neither touched the counters


def test_failing_collect_gives_500_and_the_server_lives_on(served, caplog):
    server, state = served
    state["fail"] = True
    with caplog.at_level(logging.ERROR, logger="edge_agent.metrics"):
        status, _, body = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 500 and "failed" in body
    assert server.collect_errors == 1
    assert any("collecting metrics failed" in r.getMessage() and r.exc_info for r in caplog.records)
    state["fail"] = False
    assert get(f"http://127.0.0.1:{server.port}/metrics")[0] == 200
    assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200


def test_stop_releases_the_port_and_start_twice_is_refused():
    server = MetricsServer("127.0.0.1", 0, lambda: [])
    with pytest.raises(RuntimeError):
        server.port  # noqa: B018 (not started: no port yet)
    with server:
        port = server.port
        assert get(f"http://127.0.0.1:{port}/metrics")[0::2] == (200, "")
        with pytest.raises(RuntimeError):
            server.start()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    # the same port can be bound again once stopped
    with MetricsServer("127.0.0.1", port, lambda: []) as again:
        assert get(f"http://127.0.0.1:{again.port}/healthz")[0] == 200


def test_port_in_use_raises_oserror():
    with MetricsServer("127.0.0.1", 0, lambda: []) as first:
        with pytest.raises(OSError):
            MetricsServer("127.0.0.1", first.port, lambda: []).start()


def test_healthz_follows_the_health_callback():
    state = {"healthy": True}

    def health() -> bool:
        if state["healthy"] is None:
            raise RuntimeError("health source broke")
        return state["healthy"]

    with MetricsServer("127.0.0.1", 0, lambda: [], health=health) as server:
        url = f"http://127.0.0.1:{server.port}/healthz"
        assert get(url)[0::2] == (200, "ok\n")
        state["healthy"] = False
        assert get(url)[0::2] == (503, "unhealthy\n")
        state["healthy"] = None
        assert get(url)[0] == 500
        state["healthy"] = True
        assert get(url)[0] == 200


def test_metrics_content_type_constant():
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


# ---------------------------------------------------------------- logs


@pytest.fixture
def root_logger():
    """Restore the root logger's handlers and level after a test that configures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_json_logs_one_object_per_line_with_extras_and_exc(root_logger):
    stream = io.StringIO()
    setup_logging("info", "json", stream=stream)
    log = logging.getLogger("edge_agent.test")
    before = datetime.now(timezone.utc)
    log.debug("not shown")
    log.info("kept %d of %d", 3, 10, extra={"device_id": "cam-1", "model_version": 4, "path": Path("/x")})
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.exception("frame failed", extra={"level": "spoofed"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "kept 3 of 10"
    assert first["level"] == "INFO" and first["logger"] == "edge_agent.test"
    assert first["device_id"] == "cam-1" and first["model_version"] == 4 and first["path"] == "/x"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    ts = datetime.strptime(first["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert before - timedelta(seconds=1) <= ts <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert "exc" not in first and "args" not in first and "msecs" not in first
    assert second["level"] == "ERROR"  # an extra cannot overwrite the fixed keys
    assert second["exc"].startswith("Traceback") and "ValueError: bad frame" in second["exc"]


def test_text_logs_keep_todays_format(root_logger):
    stream = io.StringIO()
    setup_logging("WARNING", "text", stream=stream)
    logging.getLogger("edge_agent.x").info("hidden")
    logging.getLogger("edge_agent.x").warning("spool at %d%%", 90)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING edge_agent\.x: spool at 90%\n", stream.getvalue())
    assert TEXT_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"


def test_setup_logging_twice_replaces_its_own_handler_only(root_logger):
    foreign = logging.NullHandler()
    root_logger.addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", "text", stream=first)
    setup_logging("INFO", "json", stream=second)
    logging.getLogger("edge_agent.y").info("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["msg"] == "once"
    assert foreign in root_logger.handlers
    root_logger.removeHandler(foreign)


def test_setup_logging_rejects_bad_format_and_level(root_logger):
    with pytest.raises(ValueError, match="format"):
        setup_logging("INFO", "yaml")
    with pytest.raises(ValueError, match="level"):
        setup_logging("LOUD", "text")


def test_json_formatter_alone():
    record = logging.LogRecord("n", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    assert json.loads(JsonFormatter().format(record))["msg"] == "a b"
