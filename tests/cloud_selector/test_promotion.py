"""The evaluation gate on the real retrain path: a model trained on shuffled labels is refused
and the channel keeps its version; a model trained on more true labels is promoted."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cloud_selector.catalog import LABELED
from cloud_selector.cli import open_services
from cloud_selector.evaluation import GatePolicy
from cloud_selector.labels import import_image_folder
from cloud_selector.promotion import HoldoutPolicy, ReleasePolicy, promote
from cloud_selector.releases import ReleaseError, Releases
from cloud_selector.retrain import retrain

CLASSES = (0, 1, 7, 9)  # T-shirt, Trouser, Sneaker, Ankle boot


def add_labeled(services, dataset, root, per_class, rng):
    for label in CLASSES:
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in rng.choice(np.flatnonzero(dataset.labels == label), per_class, replace=False):
            cv2.imwrite(str(folder / f"{index}.png"), dataset.images[index])
    return import_image_folder(services.catalog, services.blobs, root)


@pytest.fixture
def services(tmp_path):
    s = open_services(tmp_path / "cloud")
    yield s
    s.catalog.close()


def test_shuffled_labels_are_refused_and_more_true_labels_promoted(services, fashion_train, tmp_path):
    rng = np.random.default_rng(0)
    releases = Releases(services.catalog, services.registry.signer)
    gate = GatePolicy(margin=0.01, min_holdout=20)
    add_labeled(services, fashion_train, tmp_path / "round1", 25, rng)
    v1 = retrain(services.catalog, services.blobs, services.registry, name="fm", gate=gate,
                 holdout=HoldoutPolicy(fraction=0.8, min_labels=30))  # a weak v1: 5 labels a class
    holdout = releases.holdout()
    assert len(holdout) == 80 and v1.labels == 20 and v1.outcome == "promoted"
    assert v1.decision.passed and releases.channel_version() == 1
    assert v1.manifest.trainer["mode"] == "seed" and v1.manifest.trainer["arch"] == "mobilenet_v2"

    held = {cid for cid, _ in holdout}
    train = [r for r in services.catalog.candidates(states=[LABELED]) if r.id not in held]
    true_labels = [(r.id, r.label) for r in train]
    shuffled = list(rng.permutation([label for _, label in true_labels]))
    services.catalog.set_labels([(cid, label) for (cid, _), label in zip(true_labels, shuffled)])
    v2 = retrain(services.catalog, services.blobs, services.registry, gate=gate)
    assert v2.mode == "head" and v2.outcome == "refused" and not v2.decision.passed
    assert any("accuracy" in reason for reason in v2.decision.reasons), v2.decision.reasons
    assert releases.channel_version() == 1 and releases.lineage(2)["status"] == "refused"
    assert releases.holdout() == holdout  # fixed across versions
    with pytest.raises(ReleaseError, match="did not pass the evaluation gate"):
        promote(releases, 2, actor="test")

    services.catalog.set_labels(true_labels)
    add_labeled(services, fashion_train, tmp_path / "round2", 40, rng)
    v3 = retrain(services.catalog, services.blobs, services.registry, gate=gate,
                 release=ReleasePolicy(action="promote"))
    assert v3.outcome == "promoted", v3.decision.reasons
    report, current = v3.decision.candidate, v3.decision.current
    assert current.version == 1 and report.accuracy >= current.accuracy - 0.01
    assert report.holdout_digest == current.holdout_digest and report.holdout_size == 80
    assert v3.manifest.parent_version == 1 and releases.channel_version() == 3
    lineage = releases.lineage(3)
    assert lineage["trainer_mode"] == "head" and lineage["label_count"] == v3.labels
    assert lineage["evaluation"]["confusion"] and lineage["gate"]["passed"]
    assert len(releases.label_ids(3)) == v3.labels and not held & {cid for cid, _ in releases.label_ids(3)}
    print(f"gate: v1 {current.accuracy:.3f} (20 labels), v2 shuffled {v2.decision.candidate.accuracy:.3f}, "
          f"v3 {report.accuracy:.3f} ({v3.labels} labels)")
