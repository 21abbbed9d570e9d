"""B4, end to end: one selection round over N stored candidates (catalog + blob store + model).

    python -m benchmarks.b4_round --n 100000 --select 1000 --data-dir /usr/share/datasets/fashion-mnist

Stores N real Fashion-MNIST frames as candidates (JPEGs in a directory blob store, rows with the
current model's embeddings and scores in SQLite, as devices running that model would send them),
then times `run_round` with the default typicality x diversity config: decoding, appearance
signatures, FAISS near-duplicate search, the selection engine and recording the run. Prints one
JSON line with the timings, the run's metrics against random picks, and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from cloud_selector.catalog import now_ms, pack_floats
from cloud_selector.cli import open_services
from cloud_selector.labels import import_image_folder
from cloud_selector.retrain import SMALL_CNN, retrain
from cloud_selector.rounds import RoundConfig, run_round
from cloud_selector.trainer import TrainConfig
from edge_agent.runtime import LoadedModel
from edge_agent.scoring import entropy, least_confidence, margin
from flywheel_demo.datasets import FASHION_MNIST_DIR, load_fashion_mnist
from flywheel_demo.streams import render_clean


def store_candidates(services, model: LoadedModel, images: np.ndarray, batch: int = 2048) -> None:
    for start in range(0, len(images), batch):
        frames = [render_clean(img, 56) for img in images[start:start + batch]]
        inference = model.infer_batched(frames)
        for frame, probs, emb in zip(frames, inference.probs, inference.embeddings):
            cid = str(uuid.uuid4())
            key = f"candidates/{cid[:2]}/{cid}.jpg"
            services.blobs.put(key, cv2.imencode(".jpg", frame)[1].tobytes())
            services.catalog.insert_candidate({
                "id": cid, "device_id": f"cam-{start // batch % 8}", "capture_time_ms": now_ms(),
                "received_ms": now_ms(), "model_version": model.version, "blob_key": key, "jpeg_bytes": 0,
                "width": 56, "height": 56, "embedding": pack_floats(emb), "probabilities": pack_floats(probs),
                "least_confidence": float(least_confidence(probs)), "margin": float(margin(probs)),
                "entropy": float(entropy(probs)), "novelty": 0.0, "combined": float(entropy(probs)),
                "reason": "uncertainty", "extra": "{}",
            })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="stored candidates (default 100000)")
    parser.add_argument("--select", type=int, default=1000, help="picks (default 1000)")
    parser.add_argument("--data-dir", type=Path, default=Path(FASHION_MNIST_DIR), help="Fashion-MNIST IDX files")
    parser.add_argument("--work-dir", type=Path, help="where the catalog and blobs go (default: a temp dir)")
    args = parser.parse_args(argv)
    train = load_fashion_mnist("train", args.data_dir)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="b4-round-"))
    services = open_services(work / "cloud")
    seed = work / "seed"
    rng = np.random.default_rng(0)
    for label, name in enumerate(train.classes):
        folder = seed / name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for i in rng.choice(np.flatnonzero(train.labels == label), 10, replace=False):
            cv2.imwrite(str(folder / f"{i}.png"), render_clean(train.images[i], 56))
    import_image_folder(services.catalog, services.blobs, seed)
    v1 = retrain(services.catalog, services.blobs, services.registry, name="b4", config=TrainConfig(seed=0),
                 trainer=SMALL_CNN)
    model = LoadedModel(services.registry.local_bundle(v1.manifest.version))
    images = train.images[rng.choice(len(train.images), min(args.n, len(train.images)), replace=False)]
    if args.n > len(images):  # beyond the 60k training images: repeat them, jittered by the renderer
        images = np.concatenate([images] * (args.n // len(images) + 1))[:args.n]
    started = time.perf_counter()
    store_candidates(services, model, images)
    stored_s = time.perf_counter() - started
    started = time.perf_counter()
    result = run_round(services.catalog, services.blobs, services.registry, RoundConfig(n_samples=args.select))
    round_s = time.perf_counter() - started
    report = {"benchmark": "B4-round", "candidates": args.n, "select": args.select, "store_s": round(stored_s, 1),
              "round_s": round(round_s, 1), "selected": len(result.selected), "duplicates": result.duplicates,
              "coverage_mean_ratio_vs_random": round(result.metrics.get("coverage_mean_ratio", 0.0), 3),
              "coverage_max_ratio_vs_random": round(result.metrics.get("coverage_max_ratio", 0.0), 3),
              "diversity_ratio_vs_random": round(result.metrics.get("diversity_ratio", 0.0), 3),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
