"""Retrain on the labels in the catalog, gate the result, and release it if it passes.

1. The labeled candidates, less the fixed held-out set (cloud_selector/promotion.py), are the
   training set.
2. The parent is the version the default channel runs. Its classes keep their indices and new
   labels are appended (sorted), so a device's class probabilities mean the same thing before
   and after an update, and a class first seen mid-way simply grows the head.
3. The trainer (cloud_selector/head_trainer.py) writes an unsigned bundle: `head` keeps the
   parent's backbone and trains a new linear head on its embeddings (seconds, and devices fetch
   only the head: the backbone's weights file is byte-identical); `full` trains the whole
   network; `external` runs the user's command. The first version is the ImageNet MobileNetV2
   backbone with a head on the seed labels, or the small CNN trained from scratch.
4. The registry signs and records it (not released), with its lineage (trainer, label ids).
5. The gate evaluates it and the released version on the held-out set; if it passes, it is
   promoted or a staged rollout starts (`ReleasePolicy`). `gate=None` skips the gate and
   releases at once: only for tools and tests that do not care.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import LABELED, Catalog
from cloud_selector.evaluation import GateDecision, GatePolicy
from cloud_selector.head_trainer import BundleReport, initial_bundle, train_bundle
from cloud_selector.promotion import HoldoutPolicy, ReleasePolicy, ensure_holdout, judge, release_if_passed
from cloud_selector.registry import Registry
from cloud_selector.releases import Releases, label_set_digest
from cloud_selector.rounds import decode_jpeg
from cloud_selector.trainer import TrainConfig, TrainingError
from edge_agent.bundle import InputSpec, Manifest

log = logging.getLogger(__name__)

DEFAULT_INPUT = InputSpec(width=28, height=28, color="gray", mean=(0.5,), std=(0.5,))
MODES = ("head", "full", "external")


@dataclass(frozen=True)
class TrainerChoice:
    mode: str = "head"  # head | full | external (versions after the first)
    arch: str = "mobilenet_v2"  # the first version's architecture: mobilenet_v2 | small_cnn
    external_command: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise TrainingError(f"trainer mode must be one of {MODES}, got {self.mode!r}")


SMALL_CNN = TrainerChoice(mode="full", arch="small_cnn")


@dataclass(frozen=True)
class RetrainResult:
    manifest: Manifest
    labels: int  # labels trained on (the held-out set excluded)
    mode: str
    seconds: float
    metrics: dict = field(default_factory=dict)
    export: BundleReport | None = None
    decision: GateDecision | None = None
    outcome: str = ""  # promoted | rollout <id> | refused | kept as candidate | released (no gate)

    @property
    def train_accuracy(self) -> float:
        return float(self.metrics.get("train_accuracy", 0.0))

    @property
    def epochs(self) -> int:
        return int(self.metrics.get("epochs", 0))


def retrain(catalog: Catalog, blobs: BlobStore, registry: Registry, *, name: str = "classifier",
            config: TrainConfig | None = None, default_input: InputSpec | None = None, progress: bool = False,
            trainer: TrainerChoice = TrainerChoice(), gate: GatePolicy | None = GatePolicy(),
            release: ReleasePolicy = ReleasePolicy(), holdout: HoldoutPolicy = HoldoutPolicy(),
            actor: str = "retrain") -> RetrainResult:
    releases = Releases(catalog, registry.signer)
    rows = catalog.candidates(states=[LABELED])
    if not rows:
        raise TrainingError("no labeled candidates yet: import labels first (`cloud-selector labels import`)")
    held_out = {cid for cid, _ in (ensure_holdout(catalog, releases, holdout) if gate else releases.holdout())}
    rows = [r for r in rows if r.id not in held_out]
    if not rows:
        raise TrainingError(f"all {len(held_out)} labels are in the held-out set; label more before training")
    parent = registry.released()
    classes = list(parent["manifest"]["classes"]) if parent else []
    classes += sorted({r.label for r in rows} - set(classes))
    frames = [decode_jpeg(blobs.get(r.blob_key)) for r in rows]
    targets = [classes.index(r.label) for r in rows]
    pairs = [(r.id, r.label) for r in rows]
    version = registry.next_version()
    common = dict(frames_bgr=frames, labels=targets, classes=classes, name=parent["name"] if parent else name,
                  version=version, label_set={"count": len(pairs), "sha256": label_set_digest(pairs)},
                  config=config, progress=progress)
    with tempfile.TemporaryDirectory(prefix="retrain-") as tmp:
        out, work = Path(tmp) / f"v{version}", Path(tmp) / "work"
        if parent is None:
            spec = default_input or (DEFAULT_INPUT if trainer.arch == "small_cnn" else None)
            trained = initial_bundle(out, arch=trainer.arch, spec=spec, workdir=work, **common)
        else:
            trained = train_bundle(out, mode=trainer.mode, parent_bundle=registry.local_bundle(parent["version"]),
                                   arch=parent["manifest"].get("trainer", {}).get("arch") or trainer.arch,
                                   parent_version=parent["version"], workdir=work,
                                   external_command=list(trainer.external_command) or None, **common)
        manifest = registry.publish(out, release=False, actor=actor)
    releases.record_lineage(version, trainer_mode=trained.mode, labels=pairs)
    decision = None
    if gate is not None:
        decision = judge(registry, releases, blobs, version, policy=gate, channel=release.channel)
        outcome = release_if_passed(releases, version, decision, release, actor=actor)
    elif release.action != "none":
        releases.release(version, channel=release.channel, action="publish", actor=actor, detail="no gate")
        outcome = "released (no gate)"
    else:
        outcome = "kept as candidate"
    log.info("v%d (parent v%d, %s): %d labels, %d classes, %.1f s: %s", version, manifest.parent_version,
             trained.mode, len(rows), len(classes), trained.seconds, outcome)
    return RetrainResult(manifest, len(rows), trained.mode, trained.seconds, dict(trained.metrics), trained.export,
                         decision, outcome)
