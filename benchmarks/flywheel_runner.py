"""Running B1's arms for one seed: the streaming arms through the real fleet and cloud, the pool
arms and the upper bound over every frame, and the training-noise check.

Each function returns per-round records (round 0 = the seed model, the same for every arm):
`labels` (all labels, the seed's included), `labels_acquired`, `accuracy`, `novel_class_accuracy`,
cumulative `frames_seen` / `frames_uploaded` / `bytes_uploaded` (wire: serialized candidates, the
embedding included) / `jpeg_bytes_uploaded`, and the round's `selection` metrics.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.flywheel_arms import ArmSpec, EVAL_SETTINGS, Evaluation, Evaluator
from benchmarks.flywheel_data import (UPLOAD_JPEG_QUALITY, BenchData, Scenario, Sizes, decode, jpeg, render_stream)
from benchmarks.flywheel_fleet import ArmFleet, Counters, MemorySource
from cloud_selector.catalog import LABELED
from cloud_selector.evaluation import GatePolicy
from cloud_selector.head_trainer import HEAD_CONFIG, train_bundle, train_head
from cloud_selector.labels import IMPORT_DEVICE, import_image_folder
from cloud_selector.promotion import ReleasePolicy
from cloud_selector.releases import Releases
from cloud_selector.retrain import TrainerChoice, retrain
from cloud_selector.rounds import decode_jpeg, run_round
from cloud_selector.selection_metrics import selection_metrics
from cloud_selector.trainer import TrainConfig
from edge_agent.bundle import load_manifest
from edge_agent.runtime import LoadedModel
from edge_agent.scoring import l2_normalize

log = logging.getLogger(__name__)


@dataclass
class SeedContext:
    data: BenchData
    sizes: Sizes
    scenario: Scenario
    model: str  # mobilenet_v2 | small_cnn
    work: Path
    seed_dir: Path  # root/<label>/<image>.jpg, imported by every streaming arm
    seed_jpegs: list[bytes]
    seed_labels: list[int]
    v1_dir: Path  # the seed model every arm starts from
    evaluator: Evaluator
    holdout_dir: Path | None = None  # --gate: the evaluation gate's fixed held-out images

    @property
    def seed_count(self) -> int:
        return len(self.seed_labels)

    @property
    def novel_label(self) -> str:
        return self.data.labels[self.scenario.novel]

    def train_config(self) -> TrainConfig | None:
        return TrainConfig(seed=self.scenario.seed) if self.model == "small_cnn" else None


def _balance(labels: list[int], n_classes: int) -> float:
    """Normalised entropy of the labels over all classes (1 = even)."""
    if not labels:
        return 0.0
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(n_classes))


def _round0(ctx: SeedContext, ev: Evaluation) -> dict:
    return {"round": 0, "labels": ctx.seed_count, "labels_acquired": 0, "accuracy": ev.accuracy,
            "novel_class_accuracy": ev.per_class.get(ctx.novel_label, 0.0), "per_class_accuracy": ev.per_class,
            "frames_seen": 0, "frames_uploaded": 0, "bytes_uploaded": 0, "jpeg_bytes_uploaded": 0,
            "model_version": 1, "selection": None}


def _pick_stats(ctx: SeedContext, picked_labels: list[int], picked_items: list[int], labeled_items: set[int]) -> dict:
    """What the labels bought: classes, evenness and how many repeated an item already labeled."""
    repeats = 0
    for item in picked_items:
        repeats += item in labeled_items
        labeled_items.add(item)
    names = ctx.data.labels
    return {"picks": len(picked_labels), "true_class_balance": _balance(picked_labels, len(names)),
            "picks_per_class": {names[c]: int(n) for c, n in enumerate(np.bincount(picked_labels, minlength=len(names)))
                                if n},
            "picks_repeating_an_item": repeats,
            "novel_class_picks": int(sum(c == ctx.scenario.novel for c in picked_labels))}


# ---------------------------------------------------------------------------------------------
# streaming arms: the real fleet and cloud


def run_stream_arm(arm: ArmSpec, ctx: SeedContext) -> tuple[list[dict], dict]:
    """The arm's records, and the final labeled set (frames, labels) for the noise check."""
    sizes, scenario, seed = ctx.sizes, ctx.scenario, ctx.scenario.seed
    fleet = ArmFleet(ctx.work / arm.key)
    catalog, blobs, registry = fleet.services.catalog, fleet.services.blobs, fleet.services.registry
    try:
        import_image_folder(catalog, blobs, ctx.seed_dir)
        registry.publish(ctx.v1_dir, release=True, actor="b1")
        if ctx.holdout_dir is not None:
            Releases(catalog).set_holdout(import_image_folder(catalog, blobs, ctx.holdout_dir).labeled)
        v1 = registry.local_bundle(1)
        records = [_round0(ctx, ctx.evaluator.bundle(v1))]
        total = Counters()
        jpeg_bytes, counted = 0, set()
        labeled_items = {int(i) for i in scenario.seed_indices}
        version = 1
        for r, streams in enumerate(scenario.rounds, 1):
            started = time.monotonic()
            cameras = {c.device_id for c in fleet.cameras}
            for s in streams:
                if s.device_id not in cameras:
                    index = int(s.device_id.split("-")[1])
                    policy, recent = arm.edge(sizes.upload_fraction, seed * 1000 + index)
                    fleet.add_camera(s.device_id, v1, policy, recent, arm.embedding)
            fleet.wait_version(version)  # a camera that just joined first takes the released model
            sources = {s.device_id: MemorySource(s.name, list(render_stream(ctx.data, s, sizes.frame_size)), s.start_ms,
                                                 source_name=s.device_id) for s in streams}
            counters = fleet.stream(sources)
            streamed = time.monotonic()
            for c in counters.values():
                total = total.plus(c)
            for row in catalog.candidates():
                if row.device_id != IMPORT_DEVICE and row.id not in counted:
                    counted.add(row.id)
                    jpeg_bytes += len(blobs.get(row.blob_key))
            selection = run_round(catalog, blobs, registry, arm.cloud(sizes.select, seed * 1000 + r))
            picked = catalog.candidates(ids=selection.selected)
            truth = [scenario.truth[(row.device_id, row.extra["source"])] for row in picked]
            frames = [int(row.extra["frame_index"]) for row in picked]
            picked_labels = [int(t[0][f]) for t, f in zip(truth, frames)]
            catalog.set_labels([(row.id, ctx.data.labels[c]) for row, c in zip(picked, picked_labels)],
                               source="manual", annotator="oracle")
            selected = time.monotonic()
            mode = "full" if ctx.model == "small_cnn" else "head"
            trained = retrain(catalog, blobs, registry, name="b1", config=ctx.train_config(),
                              trainer=TrainerChoice(mode=mode, arch=ctx.model),
                              gate=GatePolicy(margin=0.01) if ctx.holdout_dir is not None else None,
                              release=ReleasePolicy(action="promote"), actor="b1")
            version = Releases(catalog).channel_version()
            swap_s = fleet.wait_version(version)
            ev = ctx.evaluator.bundle(registry.local_bundle(version))
            m = selection.metrics
            stats = _pick_stats(ctx, picked_labels, [int(t[1][f]) for t, f in zip(truth, frames)], labeled_items)
            records.append({
                "round": r, "labels": trained.labels, "labels_acquired": trained.labels - ctx.seed_count,
                "accuracy": ev.accuracy, "novel_class_accuracy": ev.per_class.get(ctx.novel_label, 0.0),
                "per_class_accuracy": ev.per_class, "eval_method": ev.method,
                "frames_seen": total.frames_seen, "frames_uploaded": total.acked, "bytes_uploaded": total.bytes_acked,
                "jpeg_bytes_uploaded": jpeg_bytes,
                "round_frames_seen": sum(c.frames_seen for c in counters.values()),
                "round_frames_uploaded": sum(c.acked for c in counters.values()),
                "kept": total.kept, "dropped": total.dropped,
                "pool": selection.pool_size, "duplicates": selection.duplicates,
                "selection": {"diversity": m.get("picked", {}).get("diversity"),
                              "coverage": m.get("picked", {}).get("coverage_mean"),
                              "balance": m.get("picked", {}).get("class_balance"),
                              "diversity_ratio": m.get("diversity_ratio"),
                              "coverage_mean_ratio": m.get("coverage_mean_ratio"), **stats},
                "model_version": version, "devices": len(fleet.cameras),
                "train": {"outcome": trained.outcome, "epochs": trained.epochs, "seconds": round(trained.seconds, 2),
                          "final_loss": trained.metrics.get("final_loss"), "train_accuracy": trained.train_accuracy},
                "seconds": {"stream": round(streamed - started, 1), "select_label": round(selected - streamed, 1),
                            "train_push_eval": round(time.monotonic() - selected, 1), "swap": round(swap_s, 2)},
            })
            log.info("%s round %d: acc %.4f labels %d uploaded %d/%d (%.0fs)", arm.key, r, ev.accuracy,
                     trained.labels, total.acked, total.frames_seen, time.monotonic() - started)
        held = {cid for cid, _ in Releases(catalog).holdout()}
        final = [row for row in catalog.candidates(states=[LABELED]) if row.id not in held]
        labeled = {"frames": [decode_jpeg(blobs.get(row.blob_key)) for row in final],
                   "labels": [ctx.data.labels.index(row.label) for row in final]}
        return records, labeled
    finally:
        fleet.close()


# ---------------------------------------------------------------------------------------------
# pool arms and the upper bound: every frame


@dataclass
class AllFrames:
    """Every frame the fleet saw, as the cloud would receive it (JPEG q90, decoded), seed first."""

    labels: np.ndarray  # dataset class per row
    items: np.ndarray  # dataset index per row
    round: np.ndarray  # 0 = seed
    jpeg_bytes: np.ndarray
    embeddings: np.ndarray | None  # through the seed model (frozen backbone: every version's)
    frames: list[np.ndarray] | None  # kept only for the small CNN, whose embeddings change


def collect_frames(ctx: SeedContext) -> AllFrames:
    model = LoadedModel(ctx.v1_dir, settings=EVAL_SETTINGS)
    head = ctx.model != "small_cnn"
    labels, items, rounds, sizes, embs, frames = [], [], [], [], [], []

    def add(jpegs: list[bytes], labs, its, r):
        decoded = [decode(b) for b in jpegs]
        labels.extend(labs), items.extend(its), rounds.extend([r] * len(jpegs)), sizes.extend(len(b) for b in jpegs)
        if head:
            embs.append(model.infer_batched(decoded, batch_size=64).embeddings)
        else:
            frames.extend(decoded)

    add(ctx.seed_jpegs, ctx.seed_labels, [int(i) for i in ctx.scenario.seed_indices], 0)
    for r, streams in enumerate(ctx.scenario.rounds, 1):
        for s in streams:
            lab, it = s.truth()
            add([jpeg(f, UPLOAD_JPEG_QUALITY) for f in render_stream(ctx.data, s, ctx.sizes.frame_size)], lab, it, r)
    return AllFrames(np.asarray(labels, np.int64), np.asarray(items, np.int64), np.asarray(rounds), np.asarray(sizes),
                     np.concatenate(embs).astype(np.float32) if head else None, None if head else frames)


class PoolTrainer:
    """Trains a model on a subset of AllFrames and evaluates it: the head on fixed embeddings
    (frozen backbone) or a full small-CNN bundle."""

    def __init__(self, ctx: SeedContext, frames: AllFrames):
        self.ctx, self.f = ctx, frames
        self.v1_classes = load_manifest(ctx.v1_dir).classes
        self.embeddings = frames.embeddings  # current features for the strategies
        if self.embeddings is None:  # the small CNN: the seed model's, until the first retrain
            self.embeddings = LoadedModel(ctx.v1_dir, settings=EVAL_SETTINGS).infer_batched(
                frames.frames, batch_size=256).embeddings
        self._n = 0

    def classes(self, rows: np.ndarray) -> tuple[str, ...]:
        names = self.ctx.data.labels
        present = {names[c] for c in self.f.labels[rows]}
        return tuple(self.v1_classes) + tuple(sorted(present - set(self.v1_classes)))

    def fit(self, rows: np.ndarray, config: TrainConfig | None = None) -> tuple[Evaluation, dict]:
        classes = self.classes(rows)
        targets = [classes.index(self.ctx.data.labels[c]) for c in self.f.labels[rows]]
        if self.f.embeddings is not None:
            head = train_head(self.f.embeddings[rows], targets, len(classes), config or HEAD_CONFIG)
            ev = self.ctx.evaluator.head(head.weight, head.bias, classes, self.ctx.v1_dir)
            return ev, {"epochs": head.fit.epochs, "final_loss": head.fit.losses[-1], "seconds": round(head.seconds, 2)}
        self._n += 1
        with tempfile.TemporaryDirectory(prefix="b1-pool-") as tmp:
            out = Path(tmp) / "bundle"
            trained = train_bundle(out, mode="full", frames_bgr=[self.f.frames[i] for i in rows], labels=targets,
                                   classes=classes, parent_bundle=self.ctx.v1_dir, arch="small_cnn", name="b1-pool",
                                   version=2, parent_version=1, label_set={"count": len(rows)},
                                   config=config or self.ctx.train_config(), workdir=Path(tmp) / "work")
            ev = self.ctx.evaluator.bundle(out)
            model = LoadedModel(out, settings=EVAL_SETTINGS)
            self.embeddings = model.infer_batched(self.f.frames, batch_size=256).embeddings
        return ev, {"epochs": trained.metrics.get("epochs"), "final_loss": trained.metrics.get("final_loss"),
                    "seconds": round(trained.seconds, 2)}


def _query(strategy: str, features: np.ndarray, y: np.ndarray, n: int, n_classes: int, seed: int) -> np.ndarray:
    """One scikit-activeml query of `n` rows (library defaults, except MiniBatchKMeans for
    TypiClust: its KMeans took ~1 min a query at 30k x 1280)."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from skactiveml.classifier import SklearnClassifier
    from skactiveml.pool import CoreSet, TypiClust, UncertaintySampling

    X = l2_normalize(features)
    if strategy == "uncertainty":
        clf = SklearnClassifier(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                                classes=np.arange(n_classes), missing_label=np.nan, random_state=seed)
        return UncertaintySampling(random_state=seed).query(X, y, clf=clf, batch_size=n)
    if strategy == "typiclust":
        return TypiClust(random_state=seed, cluster_algo=MiniBatchKMeans,
                         cluster_algo_dict={"n_init": 1}).query(X, y, batch_size=n)
    if strategy == "coreset":
        return CoreSet(random_state=seed).query(X, y, batch_size=n)
    raise ValueError(f"unknown pool strategy {strategy!r}")


def _pool_record(ctx: SeedContext, f: AllFrames, r: int, rows: np.ndarray, ev: Evaluation | None,
                 train: dict) -> dict:
    upto = (f.round >= 1) & (f.round <= r)
    return {"round": r, "labels": int(len(rows)), "labels_acquired": int(len(rows)) - ctx.seed_count,
            "accuracy": ev.accuracy if ev else None,
            "novel_class_accuracy": ev.per_class.get(ctx.novel_label, 0.0) if ev else None,
            "per_class_accuracy": ev.per_class if ev else None, "eval_method": ev.method if ev else None,
            "frames_seen": int(upto.sum()), "frames_uploaded": int(upto.sum()),
            "bytes_uploaded": int(f.jpeg_bytes[upto].sum()), "jpeg_bytes_uploaded": int(f.jpeg_bytes[upto].sum()),
            "train": train}


def run_pool_arms(arms: list[ArmSpec], ctx: SeedContext, frames: AllFrames,
                  all_labeled_rounds: set[int] | None = None) -> dict[str, list[dict]]:
    """`all_labeled_rounds`: where arm 7 trains (default every round); elsewhere its accuracy is None."""
    out: dict[str, list[dict]] = {}
    all_labeled_rounds = set(range(1, ctx.sizes.rounds + 1)) if all_labeled_rounds is None else all_labeled_rounds
    rounds = range(1, ctx.sizes.rounds + 1)
    n_classes = len(ctx.data.labels)
    seed_rows = np.flatnonzero(frames.round == 0)
    for arm in arms:
        trainer = PoolTrainer(ctx, frames)
        records = [_round0(ctx, ctx.evaluator.bundle(ctx.v1_dir))]
        if arm.kind == "all":
            for r in rounds:
                started = time.monotonic()
                rows = np.flatnonzero(frames.round <= r)
                if r not in all_labeled_rounds:  # minutes per retrain on tens of thousands of labels
                    records.append(_pool_record(ctx, frames, r, rows, None, {}) | {"selection": None, "skipped": True})
                    continue
                ev, train = trainer.fit(rows)
                records.append(_pool_record(ctx, frames, r, rows, ev, train) | {"selection": None})
                log.info("%s round %d: acc %.4f labels %d (%.0fs)", arm.key, r, ev.accuracy, len(rows),
                         time.monotonic() - started)
            out[arm.key] = records
            continue
        labeled = seed_rows.copy()
        labeled_items = {int(i) for i in frames.items[seed_rows]}
        for r in rounds:
            started = time.monotonic()
            visible = np.flatnonzero(frames.round <= r)
            y = np.full(len(visible), np.nan)
            position = {int(row): i for i, row in enumerate(visible)}
            for row in labeled:
                y[position[int(row)]] = frames.labels[row]
            picks = visible[_query(arm.strategy, trainer.embeddings[visible], y, ctx.sizes.select, n_classes,
                                   ctx.scenario.seed * 1000 + r)]
            pool = np.setdiff1d(visible, labeled)
            m = selection_metrics(trainer.embeddings[pool], np.searchsorted(pool, picks), frames.labels[pool], rng=0)
            stats = _pick_stats(ctx, [int(c) for c in frames.labels[picks]], [int(i) for i in frames.items[picks]],
                                labeled_items)
            labeled = np.concatenate([labeled, picks])
            ev, train = trainer.fit(labeled)
            records.append(_pool_record(ctx, frames, r, labeled, ev, train) | {"pool": int(len(pool)), "selection": {
                "diversity": m.picked.diversity, "coverage": m.picked.coverage_mean, "balance": m.picked.class_balance,
                "diversity_ratio": m.diversity_ratio, "coverage_mean_ratio": m.coverage_mean_ratio, **stats}})
            log.info("%s round %d: acc %.4f labels %d (%.0fs)", arm.key, r, ev.accuracy, len(labeled),
                     time.monotonic() - started)
        out[arm.key] = records
    return out


# ---------------------------------------------------------------------------------------------
# training noise and convergence


def training_noise(ctx: SeedContext, labeled: dict, seeds: int = 5) -> dict:
    """Retrain one labeled set (arm 1's final one) with several training seeds, and once with 3x
    the epochs: the spread is the noise floor of every accuracy difference; the long run shows
    whether the default schedule has converged."""
    frames, labels = labeled["frames"], labeled["labels"]
    if ctx.model == "small_cnn":
        return {"note": "skipped for the small CNN (minutes per retrain)"}
    model = LoadedModel(ctx.v1_dir, settings=EVAL_SETTINGS)
    emb = model.infer_batched(frames, batch_size=64).embeddings
    names = ctx.data.labels
    classes = tuple(load_manifest(ctx.v1_dir).classes)
    classes += tuple(sorted({names[c] for c in labels} - set(classes)))
    targets = [classes.index(names[c]) for c in labels]
    accs = []
    for s in range(seeds):
        head = train_head(emb, targets, len(classes), replace(HEAD_CONFIG, seed=s))
        accs.append(ctx.evaluator.head(head.weight, head.bias, classes, ctx.v1_dir).accuracy)
    long = train_head(emb, targets, len(classes), replace(HEAD_CONFIG, epochs=HEAD_CONFIG.epochs * 3))
    long_acc = ctx.evaluator.head(long.weight, long.bias, classes, ctx.v1_dir).accuracy
    return {"labels": len(labels), "seeds": seeds, "accuracies": accs, "std": float(np.std(accs, ddof=1)),
            "range": float(max(accs) - min(accs)), "epochs": HEAD_CONFIG.epochs,
            "accuracy_at_3x_epochs": long_acc, "gain_from_3x_epochs": long_acc - accs[0],
            "head_config": asdict(HEAD_CONFIG)}
