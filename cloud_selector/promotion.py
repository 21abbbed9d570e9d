"""The evaluation gate between a trained version and the fleet.

1. The held-out set is fixed (the `holdout` table): made once, stratified, from the labeled
   candidates (`ensure_holdout`), or set by the user (`cloud-selector models holdout`); it is
   never trained on, and it changes only when someone resets it, so every version is measured
   on the same images.
2. `judge` evaluates the new version AND the version the channel runs now on that set (the
   current one again, because the set may have been reset since it was released), applies the
   `GatePolicy` (accuracy margin, per-class recall of critical classes), and stores the new
   version's report and the decision with its lineage: status `candidate` when it passed,
   `refused` when it did not.
3. `release_if_passed` then promotes it (the whole channel at once) or starts a staged rollout,
   or leaves it as a candidate for a person to release (`cloud-selector models promote`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import LABELED, Catalog
from cloud_selector.evaluation import (
    EvalReport,
    GateDecision,
    GatePolicy,
    evaluate,
    evaluate_bundle,
    gate,
    holdout_digest,
    stratified_holdout,
)
from cloud_selector.registry import Registry
from cloud_selector.releases import ReleaseError, Releases
from cloud_selector.rollouts import DEFAULT_STAGES, AbortCriteria, start_rollout
from cloud_selector.rounds import decode_jpeg

log = logging.getLogger(__name__)

RELEASE_ACTIONS = ("promote", "rollout", "none")


@dataclass(frozen=True)
class HoldoutPolicy:
    fraction: float = 0.2
    min_per_class: int = 2
    max_size: int = 2000
    min_labels: int = 30  # below this many labels no held-out set is made (every label trains)
    seed: int = 0


@dataclass(frozen=True)
class ReleasePolicy:
    action: str = "promote"  # promote | rollout | none
    channel: str = ""
    stages: tuple[int, ...] = DEFAULT_STAGES
    criteria: AbortCriteria = field(default_factory=AbortCriteria)

    def __post_init__(self):
        if self.action not in RELEASE_ACTIONS:
            raise ValueError(f"release action must be one of {RELEASE_ACTIONS}, got {self.action!r}")


def ensure_holdout(catalog: Catalog, releases: Releases, policy: HoldoutPolicy = HoldoutPolicy()) -> list[tuple[str, str]]:
    """The held-out set: made from the labeled candidates the first time there are enough, then
    fixed. One exception: a class that has labels but no held-out images (it appeared after
    the set was made) gets its stratified share once, so the gate can see a model learn it;
    the images already held out never change."""
    pairs = releases.holdout()
    labeled = [(r.id, r.label) for r in catalog.candidates(states=[LABELED])]
    if not pairs and len(labeled) < policy.min_labels:
        return []
    covered = {label for _, label in pairs}
    held = {cid for cid, _ in pairs}
    pool = [(i, label) for i, label in labeled if i not in held and label not in covered]
    counts: dict[str, int] = {}
    for _, label in pool:
        counts[label] = counts.get(label, 0) + 1
    if pairs:  # only classes with enough labels to spare a few
        pool = [(i, label) for i, label in pool if counts[label] > policy.min_per_class]
    if not pool:
        return pairs
    ids = stratified_holdout([i for i, _ in pool], [label for _, label in pool], fraction=policy.fraction,
                             min_per_class=policy.min_per_class, max_size=policy.max_size, seed=policy.seed)
    chosen = set(ids)
    added = [(i, label) for i, label in pool if i in chosen]
    if not added:
        return pairs
    releases.set_holdout(pairs + added)
    log.info("held-out set: %s %d labeled candidates (%s)", "grew by" if pairs else "made from", len(added),
             ", ".join(sorted({label for _, label in added})))
    return releases.holdout()


def _evaluate(registry: Registry, version: int, pairs: list[tuple[str, str]], frames) -> EvalReport:
    digest = holdout_digest([i for i, _ in pairs], [label for _, label in pairs])
    if not pairs:  # no held-out set yet: an empty report, which the gate refuses unless it is the first
        classes = registry.catalog.model(version)["manifest"]["classes"]
        return evaluate(np.zeros((0, len(classes)), np.float32), [], classes, version=version, holdout_digest=digest)
    return evaluate_bundle(registry.local_bundle(version), frames, [label for _, label in pairs],
                           holdout_digest=digest)


def judge(registry: Registry, releases: Releases, blobs: BlobStore, version: int, *,
          policy: GatePolicy = GatePolicy(), channel: str = "") -> GateDecision:
    """Evaluate `version` and the channel's current version on the held-out set, gate, record."""
    pairs = releases.holdout()
    rows = {r.id: r for r in registry.catalog.candidates(ids=[i for i, _ in pairs])} if pairs else {}
    pairs = [(i, label) for i, label in pairs if i in rows]
    frames = [decode_jpeg(blobs.get(rows[i].blob_key)) for i, _ in pairs]
    candidate = _evaluate(registry, version, pairs, frames)
    current_version = releases.channel_version(channel)
    current = (_evaluate(registry, current_version, pairs, frames)
               if current_version and current_version != version else None)
    decision = gate(candidate, current, policy)
    releases.record_evaluation(version, candidate.to_dict(), decision.to_dict(),
                               status="candidate" if decision.passed else "refused")
    log.info("gate for v%d against %s: %s (%s)", version, f"v{current_version}" if current else "nothing",
             "PASSED" if decision.passed else "REFUSED", "; ".join(decision.reasons))
    return decision


def release_if_passed(releases: Releases, version: int, decision: GateDecision, policy: ReleasePolicy, *,
                      actor: str) -> str:
    """Promote or start a rollout when the gate passed; returns what was done."""
    if not decision.passed or policy.action == "none":
        return "refused" if not decision.passed else "kept as candidate"
    if policy.action == "rollout":
        rollout_id = start_rollout(releases, version, channel=policy.channel, stages=policy.stages,
                                   criteria=policy.criteria, actor=actor)
        return f"rollout {rollout_id}"
    releases.release(version, channel=policy.channel, action="promote", actor=actor, detail="gate passed")
    return "promoted"


def promote(releases: Releases, version: int, *, channel: str = "", actor: str, force: bool = False) -> None:
    """A person releases a version: allowed when its gate passed, or with force (recorded)."""
    record = releases.lineage(version)
    if record is None:
        raise ReleaseError(f"no model version {version} (see `cloud-selector models list`)")
    gate_result = record.get("gate") or {}
    if not force and not gate_result.get("passed", False):
        why = "; ".join(gate_result.get("reasons", [])) or "it was never evaluated"
        raise ReleaseError(f"v{version} did not pass the evaluation gate ({why}); use --force to release it anyway")
    releases.release(version, channel=channel, action="promote" + (" (forced)" if force and not
                     gate_result.get("passed") else ""), actor=actor)
