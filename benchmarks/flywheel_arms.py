"""B1's arms: what each one runs on the edge and in the cloud, and how accuracy is measured.

Streaming arms (1-5) run the real loop through `benchmarks.flywheel_fleet`: agents with their
arm's keep policy, the cloud's `run_round` with the arm's LightlyOne config, oracle labels
written with `Catalog.set_labels`, `retrain` (head-only on the frozen backbone, or the full small
CNN) and the release reaching every camera through its `ModelUpdater`.

Pool arms (6: scikit-activeml's UncertaintySampling, TypiClust, CoreSet) and the upper bound (7:
every frame labeled) are pure selection over every frame a camera saw: the fleet would upload
everything, so they do not stream through agents. With the frozen backbone they train the head
with the same function `retrain` ends in (`head_trainer.train_head`, same config) on the
embeddings the released model computes; with the small CNN through `head_trainer.train_bundle`.

Variants of arm 5 (`5_full_balance`, `5_full_window`, `5_full_weights`, `5_full_novelty`, `5_full_novelty_half`, `5_full_no_embedding`, `5_full_diversity`) are
not in the default run; they are how candidate default changes were measured (`--arms 1,5,5_full_balance`).

Accuracy: the released bundle on the clean test renders. For a head-only bundle on a backbone
whose test embeddings are known (every version shares the seed model's backbone.weights, by
sha256), logits are the bundle's own head weights applied to those embeddings; each bundle is
first checked against ONNX Runtime on 32 test frames, and a mismatch falls back to running the
whole test set through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cloud_selector.onnx_compose import HEAD_BIAS, HEAD_WEIGHT
from cloud_selector.rounds import RoundConfig
from edge_agent.appearance import RecentFrames
from edge_agent.bundle import load_manifest
from edge_agent.config import PolicySection
from edge_agent.policy import KeepPolicy, PolicyConfig
from edge_agent.runtime import LoadedModel, ProviderSettings
from edge_agent.scoring import FrameScores

EVAL_SETTINGS = ProviderSettings(providers=("CPUExecutionProvider",), intra_op_threads=0, warmup_runs=0)
PARITY_FRAMES = 32

# Dedup off for the arms that do not claim it: an embedding-only rule no two distinct frames meet.
NO_DEDUP = dict(duplicate_distance=0.0, duplicate_embedding_distance=1e-9)
# Roboflow's close_to_threshold sampling: top-class confidence within epsilon of threshold.
BAND_THRESHOLD, BAND_EPSILON = 0.5, 0.25


class CloseToThresholdPolicy(KeepPolicy):
    """Roboflow-style close-to-threshold sampling under the same upload budget: a frame
    qualifies when its top-class confidence is within `epsilon` of `threshold`; qualifying
    frames are kept at random at the budget's rate (Roboflow's `probability`, set so the budget
    is spent). The budget mode ranks qualifying frames first; when fewer qualify than the
    budget allows, the rest of it goes to random frames (a random_sampling strategy beside it)."""

    def __init__(self, config: PolicyConfig, threshold: float = BAND_THRESHOLD, epsilon: float = BAND_EPSILON):
        super().__init__(config)
        self.threshold, self.epsilon = threshold, epsilon

    def combined(self, scores: FrameScores) -> float:
        return 1.0 if abs((1.0 - scores.least_confidence) - self.threshold) <= self.epsilon else 0.0


def product_policy(**overrides) -> PolicyConfig:
    """The agent's [policy] defaults (edge_agent/config.py), as `edge-agent run` builds them."""
    keys = {k: v for k, v in vars(PolicySection()).items() if not k.startswith("repeat_")}
    return PolicyConfig(**{**keys, **overrides})


def product_repeat_check() -> RecentFrames:
    p = PolicySection()
    return RecentFrames(capacity=p.repeat_memory, threshold=p.repeat_distance,
                        embedding_threshold=p.repeat_embedding_distance)


EdgeFactory = Callable[[float, int], tuple[KeepPolicy, RecentFrames | None]]  # (upload fraction, seed)
CloudFactory = Callable[[int, int], RoundConfig]  # (labels per round, seed for this round)


def _random_cloud(n: int, seed: int) -> RoundConfig:
    return RoundConfig(n_samples=n, selection={"n_samples": n, "strategies": [
        {"input": {"type": "RANDOM", "random_seed": seed}, "strategy": {"type": "WEIGHTS"}}]}, **NO_DEDUP)


def _score_cloud(score: str) -> CloudFactory:
    return lambda n, seed: RoundConfig(n_samples=n, selection={"n_samples": n, "strategies": [
        {"input": {"type": "SCORES", "score": score}, "strategy": {"type": "WEIGHTS"}}]}, **NO_DEDUP)


def _product_edge(fraction: float, seed: int) -> tuple[KeepPolicy, RecentFrames]:
    """The product's edge: the default policy at this upload budget, with the repeat check."""
    return KeepPolicy(product_policy(target_fraction=fraction, seed=seed)), product_repeat_check()


def _product_cloud(n: int, seed: int) -> RoundConfig:
    """The product's cloud: dedup + rounds.default_selection."""
    return RoundConfig(n_samples=n)


def _weights_on(score: str, strength: float = 1.0) -> CloudFactory:
    """The product's default config plus WEIGHTS on one of the edge's scores."""
    return lambda n, seed: _with_strategy(n, {"input": {"type": "SCORES", "score": score},
                                              "strategy": {"type": "WEIGHTS", "strength": strength}})


def _with_strategy(n: int, entry: dict) -> RoundConfig:
    """The product's default config (rounds.default_selection) with one more strategy."""
    from cloud_selector.rounds import default_selection
    config = default_selection(n)
    config["strategies"].append(entry)
    return RoundConfig(n_samples=n, selection=config)


def _balanced_cloud(n: int, seed: int) -> RoundConfig:
    return _with_strategy(n, {"input": {"type": "PREDICTIONS", "name": "CLASS_DISTRIBUTION"},
                              "strategy": {"type": "BALANCE", "distribution": "UNIFORM", "strength": 1.0}})


@dataclass(frozen=True)
class ArmSpec:
    key: str
    title: str
    kind: str  # stream | pool | all
    edge: EdgeFactory | None = None
    cloud: CloudFactory | None = None
    strategy: str = ""  # pool arms: uncertainty | typiclust | coreset
    embedding: str | None = None  # stream arms: the agents' upload.embedding (None = the product default)

    @property
    def streams(self) -> bool:
        return self.kind == "stream"


ARMS: dict[str, ArmSpec] = {a.key: a for a in (
    ArmSpec("1_random", "random upload + random selection", "stream",
            lambda f, s: (KeepPolicy(product_policy(target_fraction=f, exploration_share=1.0, seed=s)), None),
            _random_cloud),
    ArmSpec("2_uncertainty", "edge uncertainty only (cloud: top entropy)", "stream",
            lambda f, s: (KeepPolicy(product_policy(target_fraction=f, exploration_share=0.0, novelty_weight=0.0,
                                                    seed=s)), None),
            _score_cloud("entropy")),
    ArmSpec("3_novelty", "edge novelty only (cloud: top novelty)", "stream",
            lambda f, s: (KeepPolicy(product_policy(target_fraction=f, exploration_share=0.0, uncertainty_weight=0.0,
                                                    seed=s)), None),
            _score_cloud("novelty")),
    ArmSpec("4_threshold_band", f"close to threshold (confidence {BAND_THRESHOLD} +- {BAND_EPSILON}, Roboflow-like; "
            "cloud: random)", "stream",
            lambda f, s: (CloseToThresholdPolicy(product_policy(target_fraction=f, exploration_share=0.0, seed=s)),
                          None),
            _random_cloud),
    ArmSpec("5_full", "full pipeline (product defaults: uncertainty + novelty + repeat check; dedup + "
            "rounds.default_selection)", "stream",
            _product_edge, _product_cloud),
    ArmSpec("6_skal_uncertainty", "scikit-activeml UncertaintySampling over every frame", "pool",
            strategy="uncertainty"),
    ArmSpec("6_skal_typiclust", "scikit-activeml TypiClust over every frame", "pool", strategy="typiclust"),
    ArmSpec("6_skal_coreset", "scikit-activeml CoreSet over every frame", "pool", strategy="coreset"),
    ArmSpec("7_all_labeled", "every frame labeled (upper bound)", "all"),
    # Variants for tuning (not in the default run), e.g. --arms 5_full,5_full_balance
    ArmSpec("5_full_balance", "full pipeline + BALANCE (uniform over predicted classes)", "stream",
            _product_edge, _balanced_cloud),
    ArmSpec("5_full_window", "full pipeline, edge quantile_window 500 (adapts faster after a swap)", "stream",
            lambda f, s: (KeepPolicy(product_policy(target_fraction=f, quantile_window=500, seed=s)),
                          product_repeat_check()),
            _product_cloud),
    ArmSpec("5_full_weights", "full pipeline + WEIGHTS on the edge's combined score", "stream",
            _product_edge, _weights_on("combined")),
    ArmSpec("5_full_novelty", "full pipeline + WEIGHTS on the edge's novelty score", "stream",
            _product_edge, _weights_on("novelty")),
    ArmSpec("5_full_novelty_half", "full pipeline + WEIGHTS on the edge's novelty score, strength 0.5", "stream",
            _product_edge, _weights_on("novelty", 0.5)),
    ArmSpec("5_full_no_embedding", "full pipeline, agents upload no embedding (upload.embedding = none: the "
            "cloud embeds the JPEGs)", "stream",
            _product_edge, _product_cloud, embedding="none"),
    ArmSpec("5_full_diversity", "full pipeline, cloud DIVERSITY only (k-center)", "stream",
            _product_edge,
            lambda n, s: RoundConfig(n_samples=n, selection={"n_samples": n, "strategies": [
                {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}]})),
)}
DEFAULT_ARMS = ("1_random", "2_uncertainty", "3_novelty", "4_threshold_band", "5_full", "6_skal_uncertainty",
                "6_skal_typiclust", "6_skal_coreset", "7_all_labeled")


def resolve_arms(spec: str) -> list[ArmSpec]:
    """"all", or a comma list of keys or key prefixes ("1,5,6" -> arms 1, 5 and all three 6s)."""
    if spec in ("", "all"):
        return [ARMS[k] for k in DEFAULT_ARMS]
    chosen: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in ARMS:
            matches = [part]
        elif part.isdigit():
            matches = [k for k in DEFAULT_ARMS if k.split("_")[0] == part]
        else:
            matches = [k for k in ARMS if k.startswith(part)]
        if not matches:
            raise ValueError(f"unknown arm {part!r}; arms: {', '.join(ARMS)}")
        chosen += [m for m in matches if m not in chosen]
    if "1_random" not in chosen:
        chosen.insert(0, "1_random")  # every figure is relative to it
    return [ARMS[k] for k in chosen]


# ---------------------------------------------------------------------------------------------
# accuracy


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    per_class: dict[str, float]  # label -> recall on the test set
    method: str  # head-on-cached-embeddings | onnxruntime


class Evaluator:
    """Test accuracy of bundles and of heads, on one fixed set of clean test frames."""

    def __init__(self, frames: list[np.ndarray], labels: np.ndarray, label_names: tuple[str, ...]):
        self.frames, self.labels, self.label_names = frames, np.asarray(labels), label_names
        self._embeddings: dict[str, np.ndarray] = {}  # backbone sha256 -> test embeddings
        self.full_runs = 0

    def _score(self, logits: np.ndarray, classes: tuple[str, ...], method: str) -> Evaluation:
        predicted = np.array([self.label_names.index(classes[i]) for i in logits.argmax(axis=1)])
        correct = predicted == self.labels
        per_class = {name: float(correct[self.labels == c].mean()) for c, name in enumerate(self.label_names)
                     if (self.labels == c).any()}
        return Evaluation(float(correct.mean()), per_class, method)

    def embeddings(self, bundle_dir: Path) -> np.ndarray:
        """The test frames' embeddings through this bundle's backbone (cached per backbone)."""
        key = load_manifest(bundle_dir).trainer.get("backbone_sha256", str(bundle_dir))
        if key not in self._embeddings:
            self._embeddings[key] = LoadedModel(bundle_dir, settings=EVAL_SETTINGS).infer_batched(
                self.frames, batch_size=64).embeddings
        return self._embeddings[key]

    def bundle(self, bundle_dir: Path) -> Evaluation:
        manifest = load_manifest(bundle_dir)
        key = manifest.trainer.get("backbone_sha256")
        head = _head_weights(bundle_dir / manifest.model_file) if key in self._embeddings else None
        if head is not None:
            emb = self._embeddings[key]
            logits = emb @ head[0].T + head[1]
            check = LoadedModel(bundle_dir, settings=EVAL_SETTINGS).infer(self.frames[:PARITY_FRAMES])
            if (np.allclose(check.embeddings, emb[:PARITY_FRAMES], rtol=1e-3, atol=1e-3)
                    and (check.probs.argmax(1) == logits[:PARITY_FRAMES].argmax(1)).all()):
                return self._score(logits, manifest.classes, "head-on-cached-embeddings")
        self.full_runs += 1
        probs = LoadedModel(bundle_dir, settings=EVAL_SETTINGS).infer_batched(self.frames, batch_size=64).probs
        return self._score(probs, manifest.classes, "onnxruntime")

    def head(self, weight: np.ndarray, bias: np.ndarray, classes: tuple[str, ...], bundle_dir: Path) -> Evaluation:
        """A linear head on `bundle_dir`'s backbone (pool arms)."""
        return self._score(self.embeddings(bundle_dir) @ weight.T + bias, classes, "head-on-cached-embeddings")


def _head_weights(model_file: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The composed head's (W [C, D], b [C]) when the graph has one (onnx_compose's names)."""
    model = onnx.load(str(model_file), load_external_data=True)
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in (HEAD_WEIGHT, HEAD_BIAS)}
    if len(found) != 2:
        return None
    return found[HEAD_WEIGHT].astype(np.float64), found[HEAD_BIAS].astype(np.float64)

