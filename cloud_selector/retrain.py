"""Retrain on every label in the catalog and publish the result as the next model version.

Class order is stable across versions: the previous model's classes keep their indices and
new labels are appended (sorted), so a device's class probabilities mean the same thing
before and after an update, and a class first seen mid-way simply grows the head.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import LABELED, Catalog
from cloud_selector.registry import Registry
from cloud_selector.releases import label_set_digest
from cloud_selector.rounds import decode_jpeg
from cloud_selector.trainer import TrainConfig, TrainingError, build_bundle, train_classifier
from edge_agent.bundle import InputSpec, Manifest

log = logging.getLogger(__name__)

DEFAULT_INPUT = InputSpec(width=28, height=28, color="gray", mean=(0.5,), std=(0.5,))


@dataclass(frozen=True)
class RetrainResult:
    manifest: Manifest
    labels: int
    epochs: int
    train_accuracy: float
    seconds: float


def retrain(catalog: Catalog, blobs: BlobStore, registry: Registry, *, name: str = "classifier",
            config: TrainConfig = TrainConfig(), default_input: InputSpec = DEFAULT_INPUT,
            progress: bool = False) -> RetrainResult:
    rows = catalog.candidates(states=[LABELED])
    if not rows:
        raise TrainingError("no labeled candidates yet: import labels first (`cloud-selector labels import`)")
    latest = registry.released()
    parent = latest["version"] if latest else 0
    classes = list(latest["manifest"]["classes"]) if latest else []
    classes += sorted({r.label for r in rows} - set(classes))
    spec = Manifest.from_dict(latest["manifest"]).input if latest else default_input

    frames = [decode_jpeg(blobs.get(r.blob_key)) for r in rows]
    targets = [classes.index(r.label) for r in rows]
    result = train_classifier(frames, targets, len(classes), spec, config, progress=progress)
    version = registry.next_version()
    pairs = [(r.id, r.label) for r in rows]
    with tempfile.TemporaryDirectory(prefix="retrain-") as tmp:
        bundle_dir = Path(tmp) / f"v{version}"
        build_bundle(
            bundle_dir, model=result.model, name=latest["name"] if latest else name, version=version,
            parent_version=parent, classes=classes, spec=spec, bank_frames_bgr=frames,
            label_set={"count": len(pairs), "sha256": label_set_digest(pairs)},
            metrics={"train_accuracy": result.train_accuracy, "epochs": result.epochs, "final_loss": result.final_loss},
            workdir=Path(tmp) / "work",
        )
        manifest = registry.publish(bundle_dir)
    log.info("published v%d (parent v%d): %d labels, %d classes, %d epochs, train acc %.3f, %.1fs",
             version, parent, len(rows), len(classes), result.epochs, result.train_accuracy, result.seconds)
    return RetrainResult(manifest, len(rows), result.epochs, result.train_accuracy, result.seconds)
