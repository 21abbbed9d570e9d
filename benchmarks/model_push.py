"""B5, model push: a fleet of simulated devices takes a head-only update of MobileNetV2.

    python -m benchmarks.model_push [--quick] [--devices N] [--out DIR]

A real `cloud-selector` gRPC server on loopback (device tokens, signed bundles) and N devices in
this process, each with its own channel, models directory, ONNX Runtime session and real
`ModelUpdater` (benchmarks/simfleet.py). v1 is the ImageNet MobileNetV2 backbone (96 px) with a
head trained on a few Fashion-MNIST labels, stored as model.onnx + backbone.weights +
head.weights (cloud_selector/head_trainer.py). v2 is a head-only retrain on more labels. The
run promotes v2 and measures the time until every device has downloaded, verified (signature
and sha256), smoke-run, swapped and reported healthy, and the bytes each device fetched: files
it already held (the unchanged backbone.weights) are copied locally, not fetched.

Headline (`<out>/model_push.json`): `head_update_bytes_ratio` = mean bytes a device fetched for
the head-only update / bytes of the full ONNX model (model.onnx + every weights file), the
baseline a device without the split layout fetches (target <= 0.25); `seconds_to_full_fleet`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import sqlalchemy as sa

from benchmarks.simfleet import SimulatedFleet
from cloud_selector.auth import DeviceAuthenticator
from cloud_selector.cli import open_services
from cloud_selector.head_trainer import initial_bundle, train_bundle
from cloud_selector.releases import Releases
from cloud_selector.schema import installs
from cloud_selector.server import create_server
from edge_agent.signing import BundleVerifier
from flywheel_demo.datasets import FASHION_MNIST_DIR, load_fashion_mnist

CLASSES = (0, 1, 7, 9)
TARGET_RATIO = 0.25


def labeled_frames(dataset, per_class: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
    frames, labels = [], []
    for k, label in enumerate(CLASSES):
        for index in rng.choice(np.flatnonzero(dataset.labels == label), per_class, replace=False):
            frames.append(cv2.cvtColor(dataset.images[index], cv2.COLOR_GRAY2BGR))
            labels.append(k)
    return frames, labels


def healthy_count(catalog, version: int) -> int:
    with catalog.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count(sa.distinct(installs.c.device_id))).where(
            installs.c.version == version, installs.c.status == "healthy")).scalar_one()


def run(devices: int, work: Path, data_dir: Path) -> dict:
    rng = np.random.default_rng(0)
    train = load_fashion_mnist("train", data_dir)
    names = [train.classes[c] for c in CLASSES]
    services = open_services(work / "cloud")
    server = create_server("127.0.0.1:0", catalog=services.catalog, blobs=services.blobs,
                           auth=DeviceAuthenticator(services.catalog), max_workers=3 * devices + 16, watch_poll_s=0.2)
    try:
        frames, labels = labeled_frames(train, 10, rng)
        v1 = initial_bundle(work / "v1", frames_bgr=frames, labels=labels, classes=names, name="b5",
                            label_set={"count": len(labels)}, workdir=work / "w1")
        services.registry.publish(work / "v1", release=True)
        key = services.registry.signing_key
        fleet = SimulatedFleet(catalog=services.catalog, address=f"127.0.0.1:{server.port}", root=work / "fleet",
                               first_bundle=services.registry.local_bundle(1), n=devices,
                               verifier=BundleVerifier({key.key_id: key.public}))
        releases = Releases(services.catalog, services.registry.signer)
        try:
            fleet.start()
            fleet.wait(lambda: len(releases.watchers(seen_within_s=600)) == devices, 600, "every device to watch")
            more_frames, more_labels = labeled_frames(train, 40, rng)
            v2 = train_bundle(work / "v2", mode="head", frames_bgr=frames + more_frames, labels=labels + more_labels,
                              classes=names, parent_bundle=services.registry.local_bundle(1), name="b5", version=2,
                              parent_version=1, label_set={"count": len(labels) + len(more_labels)},
                              workdir=work / "w2")
            services.registry.publish(work / "v2", release=False)
            releases.release(2, actor="b5")
            seconds = fleet.wait(lambda: healthy_count(services.catalog, 2) == devices, 1800,
                                 "every device to report v2 healthy", poll_s=0.05)
            assert all(v == 2 for v in fleet.versions().values())
            fetched = fleet.bytes_fetched()
        finally:
            fleet.stop()
        record = services.catalog.model(2)
        sizes = {f["path"]: f["size"] for f in record["files"]}
        full_onnx = sum(n for p, n in sizes.items() if p.endswith((".onnx", ".weights")))
        mean_fetched = statistics.mean(fetched)
        return {
            "devices": devices,
            "seconds_to_full_fleet": round(seconds, 2),
            "seconds_per_device": round(seconds / devices, 3),
            "bytes_fetched_per_device": {"mean": round(mean_fetched), "min": min(fetched), "max": max(fetched)},
            "bundle_files": sizes,
            "full_onnx_bytes": full_onnx,
            "full_bundle_bytes": sum(sizes.values()),
            "head_update_bytes_ratio": round(mean_fetched / full_onnx, 4),
            "v1_seconds": round(v1.seconds, 1),
            "v2_seconds": round(v2.seconds, 1),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds)),
        }
    finally:
        server.stop(grace_s=0.5)
        services.catalog.close()


def summary(result: dict) -> str:
    h = result["headline"]
    ok = "meets" if h["head_update_bytes_ratio"] <= TARGET_RATIO else "misses"
    return (f"| B5 model push ({result['devices']} devices) | head_update_bytes_ratio | "
            f"{h['head_update_bytes_ratio']:.3f} | <= {TARGET_RATIO} ({ok}) |\n"
            f"| B5 model push ({result['devices']} devices) | seconds_to_full_fleet | {h['seconds_to_full_fleet']:.1f} "
            f"| (no target) |\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 devices (default 100)")
    parser.add_argument("--devices", type=int, default=0, help="fleet size (overrides --quick)")
    parser.add_argument("--data-dir", type=Path, default=Path(FASHION_MNIST_DIR), help="Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="where model_push.json/.md go")
    args = parser.parse_args(argv)
    devices = args.devices or (20 if args.quick else 100)
    if devices < 1:
        parser.error("--devices must be >= 1")
    with tempfile.TemporaryDirectory(prefix="b5-") as tmp:
        result = run(devices, Path(tmp), args.data_dir)
    result["headline"] = {"head_update_bytes_ratio": result["head_update_bytes_ratio"],
                          "seconds_to_full_fleet": result["seconds_to_full_fleet"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_push.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "model_push.md").write_text(summary(result))
    print(json.dumps(result["headline"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
