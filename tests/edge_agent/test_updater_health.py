"""The health check after a model swap: the monitor the agent feeds, the agent surviving a trial
model's inference errors, and the updater rolling back (or confirming) a new model on what the
agent saw, with a real cloud, a real agent loop and real ONNX graphs that are slow or that fail
on real frames while passing the smoke run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import wait_for
from edge_agent.agent import DROP_INFERENCE_ERROR, Agent
from edge_agent.health import HealthMonitor, HealthPolicy, HealthSummary, NullHealthMonitor, judge
from edge_agent.model_store import ModelStore
from edge_agent.policy import KeepPolicy, PolicyConfig
from edge_agent.runtime import LoadedModel
from edge_agent.sources import Frame
from edge_agent.spool import Spool
from edge_agent.updater import CURRENT_FILE, ModelSlot
from protos import flywheel_pb2 as pb
from test_updater import FRAME, bundle_like, rig, trained  # noqa: F401  (rig, trained: fixtures)

# --- the monitor -------------------------------------------------------------------------------


def test_the_monitor_summarises_each_version_and_waits_for_frames():
    monitor = HealthMonitor()
    for latency in (1.0, 2.0, 3.0, 4.0, 50.0):
        monitor.record(1, confidence=0.8, novelty=0.25, latency_ms=latency)
    s = monitor.summary(1)
    assert (s.frames, s.errors, s.latency_p50_ms) == (5, 0, 3.0)
    assert s.mean_confidence == pytest.approx(0.8) and s.mean_novelty == pytest.approx(0.25)
    assert monitor.summary(1, last=2).latency_p50_ms == 27.0 and monitor.summary(9) == HealthSummary(9)

    monitor.begin(2)

    def feed():
        for _ in range(3):
            time.sleep(0.02)
            monitor.record(2, confidence=0.5, novelty=0.5, latency_ms=7.0)

    feeder = threading.Thread(target=feed)
    feeder.start()
    started = time.monotonic()
    s = monitor.wait(2, frames=3, timeout_s=10)
    assert s.frames == 3 and s.latency_p50_ms == 7.0 and time.monotonic() - started < 5
    feeder.join()


def test_waiting_ends_at_the_first_error_at_the_timeout_or_at_stop():
    monitor = HealthMonitor()
    monitor.record_error(2, "Fail: reshape")
    assert monitor.wait(2, frames=100, timeout_s=10) == HealthSummary(2, errors=1, last_error="Fail: reshape")

    started = time.monotonic()
    assert monitor.wait(3, frames=1, timeout_s=0.2).frames == 0
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert monitor.wait(3, frames=1, timeout_s=30, stop=stop).frames == 0
    assert time.monotonic() - started < 5

    monitor.begin(2)  # a version swapped in again starts afresh
    assert monitor.summary(2).errors == 0


def test_the_monitor_is_safe_to_feed_from_many_threads():
    monitor = HealthMonitor(window=10_000)
    threads = [threading.Thread(target=lambda: [monitor.record(1, confidence=1.0, novelty=0.0, latency_ms=1.0)
                                                for _ in range(500)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert monitor.summary(1).frames == 4000


def test_the_stand_in_records_nothing_and_never_waits():
    monitor = NullHealthMonitor()
    monitor.record(1, confidence=1.0, novelty=0.0, latency_ms=1.0)
    monitor.record_error(1, "ignored")
    assert monitor.wait(1, frames=30, timeout_s=60) == HealthSummary(1) and not monitor.enabled


def test_judge():
    before = HealthSummary(1, frames=30, latency_p50_ms=2.0)
    assert judge(HealthSummary(2, frames=30, latency_p50_ms=5.9), before, 3.0) == ""
    assert "over 3x v1's 2.0 ms" in judge(HealthSummary(2, frames=30, latency_p50_ms=6.1), before, 3.0)
    assert "1 inference error(s) on v2 (boom)" in judge(HealthSummary(2, errors=1, last_error="boom"), before, 3.0)
    assert judge(HealthSummary(2, frames=30, latency_p50_ms=60.0), HealthSummary(1), 3.0) == ""  # nothing to compare


# --- models that misbehave only after the swap -------------------------------------------------


def _with_tail(src: Path, dst: Path, initializers: list, nodes: list) -> Path:
    """`src`'s graph with its logits output renamed "logits_raw" and `nodes` computing "logits"."""
    model = onnx.load(src)
    for node in model.graph.node:
        node.output[:] = ["logits_raw" if name == "logits" else name for name in node.output]
    model.graph.initializer.extend(initializers)
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    return dst


def slow_graph(src: Path, dst: Path) -> Path:
    """The same outputs after a heavy branch (the input upscaled 8x through five 3x3
    convolutions) whose result is multiplied by zero: ~100x the latency, same scores."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([1, 1, 8, 8], np.float32), "slow_scales"),
             numpy_helper.from_array(rng.standard_normal((16, 1, 3, 3)).astype(np.float32), "slow_w1"),
             numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "slow_w2"),
             numpy_helper.from_array(np.zeros((1,), np.float32), "slow_zero")]
    nodes = [helper.make_node("Resize", ["input", "", "slow_scales"], ["slow_c0"], mode="nearest"),
             helper.make_node("Conv", ["slow_c0", "slow_w1"], ["slow_c1"], pads=[1, 1, 1, 1])]
    nodes += [helper.make_node("Conv", [f"slow_c{i}", "slow_w2"], [f"slow_c{i + 1}"], pads=[1, 1, 1, 1])
              for i in range(1, 5)]
    nodes += [helper.make_node("ReduceMean", ["slow_c5"], ["slow_mean"], axes=[1, 2, 3], keepdims=1),
              helper.make_node("Flatten", ["slow_mean"], ["slow_flat"]),
              helper.make_node("Mul", ["slow_flat", "slow_zero"], ["slow_nothing"]),
              helper.make_node("Add", ["logits_raw", "slow_nothing"], ["logits"])]
    return _with_tail(src, dst, inits, nodes)


def failing_graph(src: Path, dst: Path, n_classes: int = 4) -> Path:
    """Runs on the blank smoke-run frame (every input value -1 after normalisation) but fails on
    any frame with a bright pixel: the logits are reshaped to [-1, C + 1] then."""
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "fail_minus1"),
             numpy_helper.from_array(np.array([n_classes], np.int64), "fail_c"),
             numpy_helper.from_array(np.array(-0.5, np.float32), "fail_level"),
             numpy_helper.from_array(np.array([0], np.int64), "fail_axes")]
    nodes = [helper.make_node("ReduceMax", ["input"], ["fail_max"], keepdims=0),
             helper.make_node("Greater", ["fail_max", "fail_level"], ["fail_bright"]),
             helper.make_node("Cast", ["fail_bright"], ["fail_flag"], to=TensorProto.INT64),
             helper.make_node("Unsqueeze", ["fail_flag", "fail_axes"], ["fail_flag1"]),
             helper.make_node("Add", ["fail_c", "fail_flag1"], ["fail_width"]),
             helper.make_node("Concat", ["fail_minus1", "fail_width"], ["fail_shape"], axis=0),
             helper.make_node("Reshape", ["logits_raw", "fail_shape"], ["logits"])]
    return _with_tail(src, dst, inits, nodes)


class LoopingSource:
    """A live FrameSource showing one bright frame over and over, as a camera on a still scene."""

    live = True

    def frames(self, stop: threading.Event, resume=None) -> Iterator[Frame]:
        index = 0
        while not stop.is_set():
            yield Frame(image=FRAME, source="loop", index=index, capture_time_ms=1_700_000_000_000 + index * 100)
            index += 1
            time.sleep(0.002)


def make_agent(slot: ModelSlot, monitor: HealthMonitor, tmp_path: Path) -> Agent:
    return Agent(device_id="cam-upd", source=LoopingSource(), slot=slot, health=monitor,
                 policy=KeepPolicy(PolicyConfig(mode="threshold", threshold=10.0)), spool=Spool(tmp_path / "spool.db"))


def test_an_inference_error_on_a_trial_model_is_recorded_and_the_loop_goes_on(trained, tmp_path):  # noqa: F811
    good = LoadedModel(trained)
    bad = LoadedModel(bundle_like(trained, tmp_path / "bad", 2,
                                  model=failing_graph(trained / "model.onnx", tmp_path / "bad.onnx")))
    monitor = HealthMonitor()
    slot = ModelSlot(good)
    agent = make_agent(slot, monitor, tmp_path)
    frame = Frame(image=FRAME, source="loop", index=0, capture_time_ms=1)
    agent.process(frame)
    assert monitor.summary(1).frames == 1
    assert monitor.summary(1).mean_confidence == pytest.approx(float(good.infer([FRAME]).probs.max()))

    slot.swap(bad, trial=True)
    assert agent.process(frame).reason == DROP_INFERENCE_ERROR
    assert monitor.summary(2).errors == 1 and "Reshape" in monitor.summary(2).last_error
    assert agent.stats.dropped[DROP_INFERENCE_ERROR] == 1 and agent.stats.frames_seen == 2

    slot.confirm()  # a model that is no longer on trial: its errors are the device's problem, raised
    with pytest.raises(Exception, match="Reshape"):
        agent.process(frame)
    agent.spool.close()


# --- the updater's verdict ---------------------------------------------------------------------


@pytest.fixture
def watched(rig, tmp_path):  # noqa: F811
    """A device whose agent loop scores frames on v1 (and on whatever is swapped in)."""
    monitor = HealthMonitor()
    slot = ModelSlot(LoadedModel(rig.configured))
    agent = make_agent(slot, monitor, tmp_path)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: monitor.summary(1).frames >= 20, 20, "frames on v1")
    yield slot, monitor, agent
    stop.set()
    thread.join(timeout=5)
    agent.spool.close()


def rolled_back(rig, slot, updater, version: int, needle: str) -> pb.ModelHealth:
    assert not updater.install(rig.assignment(version))
    report = rig.reports[-1]
    assert (report.version, report.status) == (version, pb.INSTALL_STATUS_ROLLED_BACK) and needle in report.detail
    assert rig.reports[-2].status == pb.INSTALL_STATUS_INSTALLED  # it did run
    assert ("rolled_back" in [status for v, status, _ in rig.installs() if v == version])
    assert slot.version == 1 and slot.model.infer([FRAME]).probs.shape == (1, 4)
    store = ModelStore(rig.models_dir)
    assert store.installed_bundle() == rig.configured.resolve() and version in store.failed
    assert not (rig.models_dir / f"v{version}").exists()
    health = report.health
    assert health.previous_version == 1 and health.previous_frames >= 10
    return health


def test_a_model_much_slower_than_the_previous_one_is_rolled_back(rig, watched, tmp_path):
    slot, monitor, _ = watched
    rig.publish(2, model=slow_graph(rig.configured / "model.onnx", tmp_path / "slow.onnx"))
    _, updater = rig.device(slot=slot, health=monitor, health_policy=HealthPolicy(frames=10, timeout_s=20))
    health = rolled_back(rig, slot, updater, 2, "median inference latency")
    assert health.frames == 10 and health.errors == 0
    assert health.latency_p50_ms > 3 * health.previous_latency_p50_ms > 0
    assert health.mean_confidence == pytest.approx(health.previous_mean_confidence, abs=1e-4)  # same scores
    assert not updater.install(rig.assignment(2))  # never tried again
    assert "v2 failed on this device" in rig.reports[-1].detail


def test_a_model_whose_inference_fails_is_rolled_back_and_the_agent_goes_on(rig, watched, tmp_path):
    slot, monitor, agent = watched
    rig.publish(2, model=failing_graph(rig.configured / "model.onnx", tmp_path / "fail.onnx"))
    _, updater = rig.device(slot=slot, health=monitor, health_policy=HealthPolicy(frames=10, timeout_s=20))
    health = rolled_back(rig, slot, updater, 2, "inference error(s) on v2")
    assert health.errors >= 1
    seen = agent.stats.frames_seen
    wait_for(lambda: agent.stats.frames_seen > seen + 5, 10, "the agent loop to go on")


def test_a_good_model_is_reported_healthy_with_what_was_seen(rig, watched):
    slot, monitor, _ = watched
    rig.publish(2, head=0.5)
    _, updater = rig.device(slot=slot, health=monitor, health_policy=HealthPolicy(frames=30, timeout_s=20))
    assert updater.install(rig.assignment(2, health_frames=12))  # the assignment's number wins
    report = rig.reports[-1]
    assert (report.version, report.status) == (2, pb.INSTALL_STATUS_HEALTHY)
    assert report.health.frames == 12 and report.health.errors == 0 and report.health.previous_frames == 12
    assert "12 frames, no inference errors" in report.detail
    assert slot.version == 2 and not slot.on_trial(slot.model)
    assert (rig.models_dir / CURRENT_FILE).read_text() == "v2"
    store = ModelStore(rig.models_dir)
    assert store.trial is None and store.previous.version == 1 and store.pending_reports() == []


def test_without_frames_the_model_is_healthy_and_the_report_says_so(rig):
    monitor = HealthMonitor()  # nothing feeds it: a camera that shows nothing
    rig.publish(2, head=0.5)
    slot, updater = rig.device(health=monitor, health_policy=HealthPolicy(frames=5, timeout_s=0.3))
    assert updater.install(rig.assignment(2))
    report = rig.reports[-1]
    assert report.status == pb.INSTALL_STATUS_HEALTHY and report.health.frames == 0
    assert "no frames within 0.3 s" in report.detail and slot.version == 2


def test_health_config_keys():
    from edge_agent.config import ConfigError, build_config

    base = {"device": {"id": "cam"}, "source": {"path": "x"}, "model": {"bundle_dir": "b"}}
    model = build_config(base, {}).model
    assert (model.health_frames, model.health_timeout_s, model.max_latency_ratio) == (30, 60.0, 3.0)
    model = build_config(base, {"EDGE_AGENT_MODEL_HEALTH_FRAMES": "0", "EDGE_AGENT_MODEL_MAX_LATENCY_RATIO": "5"}).model
    assert model.health_frames == 0 and model.max_latency_ratio == 5.0
    for bad, needle in (({"health_frames": -1}, "health_frames must be >= 0"),
                        ({"health_timeout_s": 0}, "health_timeout_s > 0"),
                        ({"max_latency_ratio": 0.5}, "max_latency_ratio must be >= 1.0"),
                        ({"health_frames": 2.5}, "health_frames: expected int")):
        with pytest.raises(ConfigError, match=needle):
            build_config({**base, "model": {"bundle_dir": "b", **bad}}, {})
