"""One whole round in process: real gRPC server on loopback, a real agent reading a real video
file, upload -> dedup + selection -> labels -> retrain -> the agent hot-swaps the new model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cloud_selector.rounds import RoundConfig, run_round
from cloud_selector.retrain import SMALL_CNN, retrain
from cloud_selector.trainer import TrainConfig
from conftest import seed_model, wait_for, write_video
from edge_agent.agent import Agent, Heartbeat
from edge_agent.appearance import RecentFrames
from edge_agent.policy import KeepPolicy, PolicyConfig
from edge_agent.runtime import LoadedModel
from edge_agent.sources import VideoFileSource
from edge_agent.spool import Spool
from edge_agent.transport import Backoff, open_channel
from edge_agent.updater import CURRENT_FILE, ModelSlot, ModelUpdater
from edge_agent.uploader import Uploader
from flywheel_demo.streams import load_ground_truth


@pytest.mark.parametrize("embedding", ["int8", "none"])  # "none": the round embeds the JPEGs itself
def test_one_round_end_to_end(cloud, fashion_train, tmp_path: Path, embedding):
    services, port = cloud
    v1_dir = seed_model(services, fashion_train, tmp_path / "seed")
    video = write_video(fashion_train, tmp_path / "inbox" / "clip.avi", n_items=30)
    truth = load_ground_truth(video.with_suffix(".json"))

    slot = ModelSlot(LoadedModel(v1_dir))
    spool = Spool(tmp_path / "device" / "spool.sqlite")
    agent = Agent(device_id="cam-test", source=VideoFileSource(video.parent), slot=slot,
                  policy=KeepPolicy(PolicyConfig(mode="threshold", threshold=0.3, max_per_minute=1000)), spool=spool,
                  recent=RecentFrames(), embedding_encoding=embedding)
    channel = open_channel(f"127.0.0.1:{port}")
    uploader = Uploader(channel, spool, window=8, backoff=Backoff(0.05, 0.5))
    updater = ModelUpdater(channel, device_id="cam-test", models_dir=tmp_path / "device" / "models", slot=slot,
                           load_model=LoadedModel, backoff=Backoff(0.05, 0.5))
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in (uploader, updater)]
    for t in threads:
        t.start()
    try:
        agent.run(stop)
        assert agent.stats.frames_seen == len(truth)
        assert agent.stats.frames_kept > 10, agent.stats
        assert agent.stats.dropped.get("repeat", 0) > 0, "consecutive frames of one item must be suppressed"
        wait_for(lambda: spool.stats().depth == 0, 20, "the outbox to drain")
        Heartbeat(channel, agent, uploader, interval_s=1).beat()

        pool = services.catalog.candidates(states=["pooled"])
        assert len(pool) == agent.stats.frames_kept == uploader.acked
        for row in pool:  # every acked candidate is readable, with its scores and metadata
            assert services.blobs.get(row.blob_key).startswith(b"\xff\xd8")
            assert int(row.extra["frame_index"]) in truth and row.model_version == 1
            assert len(row.embedding) == (0 if embedding == "none" else slot.model.manifest.embedding_dim)
        device = services.catalog.devices()[0]
        assert device["id"] == "cam-test" and device["frames_seen"] == len(truth) and device["spool_depth"] == 0
        health = device["status"]
        assert health["inference_p99_ms"] >= health["inference_p50_ms"] > 0
        assert health["bytes_uploaded"] > 0 and health["candidates_evicted"] == 0
        assert abs(health["clock_skew_ms"]) < 5_000 and health["agent_version"]

        result = run_round(services.catalog, services.blobs, services.registry, RoundConfig(n_samples=8))
        assert 0 < len(result.selected) <= 8 and result.pool_size == len(pool)
        labels = []
        for row in services.catalog.candidates(ids=result.selected):
            label, _item = truth[int(row.extra["frame_index"])]
            labels.append((row.id, f"class{label}"))
        assert services.catalog.set_labels(labels) == len(labels)
        retrain(services.catalog, services.blobs, services.registry, config=TrainConfig(epochs=8), trainer=SMALL_CNN,
                gate=None)  # 8 labels: too few for a held-out set

        wait_for(lambda: slot.version == 2, 30, "the agent to hot-swap model v2")
        assert (tmp_path / "device" / "models" / CURRENT_FILE).read_text() == "v2"
        assert agent.process(next(VideoFileSource(video).frames(threading.Event()))).combined >= 0
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        channel.close()
        spool.close()
