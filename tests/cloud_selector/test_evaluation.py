"""The evaluation gate: hand-computed metrics on small confusion matrices, a deterministic
stratified holdout, every gate rule refusing on its own, a real ONNX bundle evaluated through
ONNX Runtime, and two tiny real classifiers (k-nearest-neighbour votes in numpy on Gaussian
blobs, one trained on shuffled labels) that the gate must tell apart."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cloud_selector.evaluation import (
    EvalReport,
    GatePolicy,
    evaluate,
    evaluate_bundle,
    format_report,
    gate,
    holdout_digest,
    stratified_holdout,
)
from edge_agent.bundle import InputSpec, Manifest, write_bundle
from conftest import ROOT

ABC = ("a", "b", "c")
DIGEST = "d" * 64
WHEN = "2025-01-01T00:00:00+00:00"


def probs_for(pred: list[str], conf: list[float], classes=ABC) -> np.ndarray:
    """Rows whose top probability `conf` sits on `pred`, the rest split evenly."""
    p = np.zeros((len(pred), len(classes)))
    for row, (label, c) in enumerate(zip(pred, conf)):
        p[row] = (1.0 - c) / (len(classes) - 1)
        p[row, classes.index(label)] = c
    return p


def scored(true: list[str], pred: list[str], *, version: int = 1, digest: str = DIGEST, classes=ABC) -> EvalReport:
    return evaluate(probs_for(pred, [0.9] * len(pred), classes), true, classes, version=version,
                    holdout_digest=digest, evaluated_at=WHEN)


# --- evaluate: metrics worked out by hand ----------------------------------------------------

# true a a a a b b b c c c; predicted a a a b b b c c c b (7 of 10 right). Confidences put the
# items in four ECE bins: 0.95 -> (14/15, 1], 0.90 -> (13/15, 14/15], 0.62 -> (9/15, 10/15],
# 0.50 -> (7/15, 8/15].
TRUE = list("aaaabbbccc")
PRED = list("aaabbbcccb")
CONF = [0.95, 0.95, 0.90, 0.90, 0.62, 0.62, 0.62, 0.50, 0.50, 0.50]


@pytest.fixture
def report() -> EvalReport:
    return evaluate(probs_for(PRED, CONF), TRUE, ABC, version=4, holdout_digest=DIGEST, evaluated_at=WHEN)


def test_confusion_precision_recall_f1_by_hand(report):
    assert report.classes == ABC and report.unknown_labels == ()
    assert report.confusion == ((3, 1, 0), (0, 2, 1), (0, 1, 2))
    assert report.accuracy == pytest.approx(0.7)
    a, b, c = (report.per_class[k] for k in ABC)
    assert (a.precision, a.recall, a.f1, a.support) == pytest.approx((1.0, 0.75, 6 / 7, 4))
    assert (b.precision, b.recall, b.f1, b.support) == pytest.approx((0.5, 2 / 3, 4 / 7, 3))
    assert (c.precision, c.recall, c.f1, c.support) == pytest.approx((2 / 3, 2 / 3, 2 / 3, 3))
    assert report.macro_f1 == pytest.approx(44 / 63)  # (6/7 + 4/7 + 2/3) / 3


def test_ece_by_hand(report):
    # Bin |B|/N * |acc - conf|: 0.2*|1 - 0.95| + 0.2*|0.5 - 0.9| + 0.3*|2/3 - 0.62| + 0.3*|2/3 - 0.5|
    assert report.ece == pytest.approx(0.01 + 0.08 + 0.014 + 0.05)
    assert report.mean_confidence == pytest.approx(0.706)
    # Overall |accuracy - mean confidence| would be 0.006: bins must not cancel each other.


def test_calibrated_bin_has_zero_ece():
    r = evaluate(probs_for(list("aaab"), [0.75] * 4), list("aaaa"), ABC, version=1, holdout_digest=DIGEST)
    assert r.accuracy == 0.75 and r.ece == pytest.approx(0.0)


def test_labels_the_model_lacks_are_errors_with_their_own_row():
    r = scored(["a", "b", "z", "z"], ["a", "b", "a", "b"], classes=("a", "b"))
    assert r.classes == ("a", "b", "z") and r.unknown_labels == ("z",)
    assert r.confusion == ((1, 0, 0), (0, 1, 0), (1, 1, 0))
    assert r.accuracy == 0.5
    assert r.per_class["z"].recall == 0.0 and r.per_class["z"].support == 2
    # a: P 1/2 R 1 F1 2/3; b likewise; z: 0 -> macro (2/3 + 2/3 + 0) / 3
    assert r.macro_f1 == pytest.approx(4 / 9)


def test_macro_f1_skips_classes_neither_held_out_nor_predicted():
    r = scored(["a", "b"], ["a", "b"])  # c: no support, never predicted
    assert r.macro_f1 == 1.0 and r.per_class["c"].support == 0


def test_argmax_ties_go_to_the_earlier_class():
    r = evaluate(np.array([[0.4, 0.4, 0.2]]), ["b"], ABC, version=1, holdout_digest=DIGEST)
    assert r.confusion == ((0, 0, 0), (1, 0, 0), (0, 0, 0))  # b predicted as a
    assert r.accuracy == 0.0


def test_empty_holdout_gives_zeros():
    r = evaluate(np.zeros((0, 3)), [], ABC, version=1, holdout_digest=DIGEST)
    assert (r.holdout_size, r.accuracy, r.macro_f1, r.ece, r.mean_confidence) == (0, 0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("probs, true, classes, message", [
    (np.full((2, 2), 0.5), ["a", "b"], ABC, "shape"),
    (np.full((3, 3), 1 / 3), ["a", "b"], ABC, "shape"),
    (np.array([[2.0, -1.0, 0.5]]), ["a"], ABC, "softmax"),
    (np.array([[np.nan, 0.5, 0.5]]), ["a"], ABC, "softmax"),
    (np.full((1, 2), 0.5), ["a"], ("a", "a"), "distinct"),
])
def test_evaluate_refuses_bad_input(probs, true, classes, message):
    with pytest.raises(ValueError, match=message):
        evaluate(probs, true, classes, version=1, holdout_digest=DIGEST)


def test_report_survives_json(report):
    restored = EvalReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert restored == report
    with pytest.raises(ValueError, match="format"):
        EvalReport.from_dict({**report.to_dict(), "format": "other"})
    broken = report.to_dict()
    del broken["accuracy"]
    with pytest.raises(ValueError, match="malformed"):
        EvalReport.from_dict(broken)


# --- stratified_holdout and holdout_digest -------------------------------------------------


def dataset(sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    ids = [f"{label}-{i:03d}" for label, n in sizes.items() for i in range(n)]
    return ids, [i.split("-")[0] for i in ids]


def per_class(holdout: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in holdout:
        counts[item.split("-")[0]] = counts.get(item.split("-")[0], 0) + 1
    return counts


def test_holdout_quotas():
    # big: round(0.2 * 20) = 4; five: round(1.0) = 1, raised to 2; three: round(0.6) = 1, raised
    # to 2 (it has 3 > 2 items); two: round(0.4) = 0, not raised (2 items is not more than 2);
    # one: never all of a class, so 0; half: round(0.2 * 13 = 2.6) = 3.
    ids, labels = dataset({"big": 20, "five": 5, "three": 3, "two": 2, "one": 1, "half": 13})
    assert per_class(stratified_holdout(ids, labels)) == {"big": 4, "five": 2, "three": 2, "half": 3}
    # Halves go up: 0.5 * 5 = 2.5 -> 3 (round() gives 2), and 0.3 * 5, which is
    # 1.4999999999999998 in floating point, -> 2 (round() gives 1).
    x5 = dataset({"x": 5})
    assert per_class(stratified_holdout(*x5, fraction=0.5, min_per_class=0)) == {"x": 3}
    assert per_class(stratified_holdout(*x5, fraction=0.3, min_per_class=0)) == {"x": 2}


def test_holdout_never_takes_a_whole_class():
    # x: round(0.9 * 2) = 2 is all of it, so 1; y: round(0.9) = 1 is all of it, so 0.
    assert per_class(stratified_holdout(*dataset({"x": 2, "y": 1}), fraction=0.9)) == {"x": 1}
    # Only a class with more than min_per_class items is raised to it: 3 items, min 5 -> round(0.6).
    assert per_class(stratified_holdout(*dataset({"x": 3}), min_per_class=5)) == {"x": 1}


def test_holdout_is_deterministic_whatever_the_input_order():
    ids, labels = dataset({"a": 40, "b": 25, "c": 7})
    first = stratified_holdout(ids, labels, seed=3)
    pairs = list(zip(ids, labels))
    random.Random(1).shuffle(pairs)
    assert stratified_holdout([i for i, _ in pairs], [label for _, label in pairs], seed=3) == first
    assert first == sorted(first)
    assert stratified_holdout(ids, labels, seed=4) != first


def test_holdout_stays_put_as_labels_grow():
    ids, labels = dataset({"a": 100, "b": 30})
    old = stratified_holdout(ids, labels)
    more_ids, more_labels = ids + [f"a-new{i}" for i in range(10)], labels + ["a"] * 10
    new = stratified_holdout(more_ids, more_labels)
    assert [i for i in new if i.startswith("b")] == [i for i in old if i.startswith("b")]
    old_a = {i for i in old if i.startswith("a")}
    assert len(old_a & set(new)) >= len(old_a) - 10  # only a new item can push an old one out


def test_max_size_cuts_the_largest_classes_first():
    ids, labels = dataset({"a": 100, "b": 50, "c": 6})  # quotas 20, 10, 2
    assert per_class(stratified_holdout(ids, labels, max_size=14)) == {"a": 6, "b": 6, "c": 2}
    assert per_class(stratified_holdout(ids, labels, max_size=15)) == {"a": 7, "b": 6, "c": 2}
    assert per_class(stratified_holdout(ids, labels, max_size=100)) == {"a": 20, "b": 10, "c": 2}
    assert stratified_holdout(ids, labels, max_size=0) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 0.0}, "fraction"), ({"fraction": 1.0}, "fraction"), ({"fraction": 1.5}, "fraction"),
    ({"min_per_class": -1}, "min_per_class"), ({"max_size": -1}, "max_size"),
])
def test_holdout_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stratified_holdout(["x1", "x2"], ["x", "x"], **kwargs)


def test_holdout_refuses_mismatched_or_duplicate_ids():
    with pytest.raises(ValueError, match="2 ids but 1 labels"):
        stratified_holdout(["x1", "x2"], ["x"])
    with pytest.raises(ValueError, match="more than once"):
        stratified_holdout(["x1", "x1"], ["x", "x"])


def test_digest_ignores_order_and_sees_relabels():
    d = holdout_digest(["f1", "f2"], ["cat", "dog"])
    assert d == holdout_digest(["f2", "f1"], ["dog", "cat"])
    assert d != holdout_digest(["f1", "f2"], ["cat", "cat"])
    assert d == hashlib.sha256(b"f1\tcat\nf2\tdog\n").hexdigest()
    with pytest.raises(ValueError, match="tabs"):
        holdout_digest(["f\t1"], ["cat"])


# --- gate: each rule refusing on its own ---------------------------------------------------


def scored_n(correct: int, n: int = 40, **kwargs) -> EvalReport:
    true = ["a", "b"] * (n // 2)
    pred = true[:correct] + [{"a": "b", "b": "a"}[t] for t in true[correct:]]
    return scored(true, pred, classes=("a", "b"), **kwargs)


def test_first_version_passes_even_on_a_tiny_holdout():
    decision = gate(scored_n(1, n=4), None, GatePolicy())
    assert decision.passed and decision.current is None
    assert "first version" in decision.reasons[0]


def test_small_holdout_is_refused_saying_how_many_labels_are_needed():
    decision = gate(scored_n(12, n=12, version=2), scored_n(10, n=12), GatePolicy(min_holdout=20))
    assert not decision.passed
    assert decision.reasons == [
        "held-out set has 12 labels; the gate needs at least 20: label 8 more for the held-out set"]


def test_different_holdouts_are_refused():
    decision = gate(scored_n(40, version=2, digest="1" * 64), scored_n(30, digest="2" * 64), GatePolicy(metric="accuracy"))
    assert not decision.passed
    assert len(decision.reasons) == 1
    assert "compare on the same held-out set; re-evaluate the current model" in decision.reasons[0]


def test_accuracy_drop_beyond_margin_is_refused_and_within_margin_passes():
    current = scored_n(32, n=100)  # 0.32
    refused = gate(scored_n(30, n=100, version=2), current, GatePolicy(metric="accuracy", margin=0.01))  # 0.30 < 0.31
    assert not refused.passed
    assert refused.reasons == ["accuracy 0.300 < 0.310 needed (current 0.320 - margin 0.010)"]
    # 0.31 >= 0.32 - 0.01 exactly, though 0.32 - 0.01 is not exactly 0.31 in floating point.
    assert gate(scored_n(31, n=100, version=2), current, GatePolicy(metric="accuracy", margin=0.01)).passed


def test_critical_class_recall_drop_is_refused_even_when_accuracy_rises():
    true = ["a"] * 10 + ["b"] * 30
    current = scored(true, ["a"] * 10 + ["a"] * 10 + ["b"] * 20, classes=("a", "b"))  # acc .75, recall a 1.0
    candidate = scored(true, ["a"] * 8 + ["b"] * 2 + ["b"] * 30, version=2, classes=("a", "b"))  # .95, a 0.8
    assert gate(candidate, current, GatePolicy()).passed
    decision = gate(candidate, current, GatePolicy(critical_classes=["a"], critical_margin=0.1))
    assert not decision.passed
    assert decision.reasons == ["recall of critical class 'a' 0.800 < 0.900 needed (current 1.000 - margin 0.100)"]


def test_critical_class_missing_from_the_holdout_is_refused_by_name():
    decision = gate(scored_n(40, version=2), scored_n(40), GatePolicy(critical_classes=("c", "a")))
    assert not decision.passed
    assert decision.reasons == ["critical class 'c' has no held-out labels: label some so its recall can be checked"]


def test_every_failed_rule_is_listed():
    decision = gate(scored_n(2, n=10, version=2, digest="1" * 64), scored_n(10, n=10, digest="2" * 64),
                    GatePolicy(metric="accuracy", critical_classes=("ghost",)))
    assert not decision.passed
    assert [r.split()[0] for r in decision.reasons] == ["held-out", "v2", "accuracy", "critical"]


def test_a_pass_lists_what_was_checked():
    decision = gate(scored_n(40, version=2), scored_n(38), GatePolicy(metric="accuracy", critical_classes=("a",)))
    assert decision.passed
    assert len(decision.reasons) == 4
    assert decision.reasons[0] == "held-out set has 40 labels; the gate needs at least 20"
    assert decision.reasons[1].startswith("same held-out set as v1")
    assert decision.reasons[2] == "accuracy 1.000 >= 0.940 needed (current 0.950 - margin 0.010)"
    assert decision.reasons[3].startswith("recall of critical class 'a' 1.000 >= ")
    assert json.loads(json.dumps(decision.to_dict()))["current"]["version"] == 1


@pytest.mark.parametrize("kwargs", [{"margin": -0.1}, {"critical_margin": 2.0}, {"min_holdout": -1},
                                    {"critical_classes": "person"}])
def test_policy_refuses_impossible_values(kwargs):
    with pytest.raises(ValueError):
        GatePolicy(**kwargs)


# --- a real model against a shuffled-label one -----------------------------------------------


def train_knn(x: np.ndarray, y: np.ndarray, n_classes: int, k: int = 7):
    """k-nearest-neighbour vote; returns x -> probs (vote shares). Not a linear model on purpose:
    one trained on shuffled labels still picks some direction, which on separable blobs is
    right or wrong for every item at once; a k-NN vote on shuffled labels is at chance everywhere."""
    def predict(q: np.ndarray) -> np.ndarray:
        nearest = np.argsort(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1), axis=1, kind="stable")[:, :k]
        return np.eye(n_classes)[y[nearest]].mean(axis=1)
    return predict


def test_gate_refuses_a_shuffled_label_model_and_passes_a_real_one():
    rng = np.random.default_rng(0)
    classes = ("cat", "dog")
    x = np.vstack([rng.normal(-2.0, 1.0, (200, 2)), rng.normal(2.0, 1.0, (200, 2))])
    y = np.repeat([0, 1], 200)
    ids = [f"frame-{i:04d}" for i in range(len(y))]
    labels = [classes[k] for k in y]
    held = set(stratified_holdout(ids, labels, fraction=0.25))
    test = np.array([i in held for i in ids])
    true = [label for label, h in zip(labels, test) if h]
    digest = holdout_digest([i for i in ids if i in held], true)

    real = train_knn(x[~test], y[~test], 2)
    shuffled = train_knn(x[~test], rng.permutation(y[~test]), 2)
    good = evaluate(real(x[test]), true, classes, version=1, holdout_digest=digest)
    bad = evaluate(shuffled(x[test]), true, classes, version=2, holdout_digest=digest)
    assert good.holdout_size == 100 and good.accuracy > 0.95
    assert 0.3 < bad.accuracy < 0.7

    refused = gate(bad, good, GatePolicy(metric="accuracy", critical_classes=("cat",)))
    assert not refused.passed
    assert [r.split()[0] for r in refused.reasons] == ["accuracy", "recall"]  # cat's recall fell too
    better = evaluate(real(x[test]), true, classes, version=3, holdout_digest=digest)
    assert gate(better, bad, GatePolicy(metric="accuracy", critical_classes=("cat",))).passed


# --- evaluate_bundle: a real ONNX bundle run by ONNX Runtime ---------------------------------


def brightness_bundle(tmp_path: Path, version: int) -> Path:
    """classes (dark, bright): embedding = mean pixel m in [0, 1]; logits = m * [-20, 20] + [10, -10],
    so bright wins when m > 0.5 with p(bright) = sigmoid(40 m - 20)."""
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w1"], ["embedding"]),
             helper.make_node("MatMul", ["embedding", "w2"], ["scaled"]),
             helper.make_node("Add", ["scaled", "b"], ["logits"])]
    weights = [numpy_helper.from_array(np.full((3, 1), 1 / 3, np.float32), "w1"),
               numpy_helper.from_array(np.array([[-20.0, 20.0]], np.float32), "w2"),
               numpy_helper.from_array(np.array([10.0, -10.0], np.float32), "b")]
    graph = helper.make_graph(nodes, "brightness",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
                               helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1])],
                              initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(model, src / "model.onnx")
    np.save(src / "bank.npy", np.ones((1, 1), np.float32))
    manifest = Manifest(name="brightness", version=version, classes=("dark", "bright"),
                        input=InputSpec(width=8, height=8))
    write_bundle(tmp_path / "bundle", manifest,
                 {"model.onnx": src / "model.onnx", "novelty_bank.npy": src / "bank.npy"})
    return tmp_path / "bundle"


def test_evaluate_bundle_runs_the_model_with_onnx_runtime(tmp_path):
    bundle = brightness_bundle(tmp_path, version=3)
    levels = [30, 60, 100, 200, 230, 240]
    true = ["dark", "dark", "bright", "bright", "bright", "fog"]  # 100 is mislabeled; fog is unknown
    frames = [np.full((16, 16, 3), v, np.uint8) for v in levels]
    r = evaluate_bundle(bundle, frames, true, holdout_digest=DIGEST, batch_size=4, evaluated_at=WHEN)
    assert (r.version, r.holdout_size, r.holdout_digest) == (3, 6, DIGEST)
    assert r.classes == ("dark", "bright", "fog")
    assert r.confusion == ((2, 0, 0), (1, 2, 0), (0, 1, 0))
    assert r.accuracy == pytest.approx(4 / 6)
    m = np.array(levels) / 255.0
    p_bright = 1 / (1 + np.exp(-(40 * m - 20)))
    expected = evaluate(np.stack([1 - p_bright, p_bright], axis=1), true, ("dark", "bright"),
                        version=3, holdout_digest=DIGEST, evaluated_at=WHEN)
    assert r.ece == pytest.approx(expected.ece, abs=1e-5)
    assert r.mean_confidence == pytest.approx(expected.mean_confidence, abs=1e-5)
    with pytest.raises(ValueError, match="6 frames but 5 labels"):
        evaluate_bundle(bundle, frames, true[:5], holdout_digest=DIGEST)


# --- format_report ---------------------------------------------------------------------------


def test_format_report_shows_figures_classes_and_verdict(report):
    decision = gate(report, scored(TRUE, TRUE), GatePolicy(metric="accuracy", min_holdout=5))
    text = format_report(report, decision)
    assert "accuracy 0.700  balanced accuracy " in text
    assert "a      1.000  0.750  0.857        4" in text
    assert "\n     a    b    c\na    3    1    0\nb    0    2    1\nc    0    1    2\n" in text
    assert "gate: REFUSED against v1" in text
    assert "  - accuracy 0.700 < 0.990 needed (current 1.000 - margin 0.010)" in text


def test_format_report_abbreviates_and_numbers_colliding_names():
    r = scored(["vehicle_car", "vehicle_bus", "person_walking"], ["vehicle_car", "vehicle_car", "person_walking"],
               classes=("vehicle_car", "vehicle_bus", "person_walking"))
    text = format_report(r)
    assert "    0    1    2\n0 vehicle_car       1    0    0\n1 vehicle_bus       1    0    0\n" in text
    r2 = scored(["pedestrian", "cyclist"], ["pedestrian", "pedestrian"], classes=("pedestrian", "cyclist"))
    assert "           pede cycl\npedestrian    1    0\ncyclist       1    0" in format_report(r2)
    unknown = scored(["a", "z"], ["a", "a"], classes=("a", "b"))
    assert "* not a class of this model" in format_report(unknown)


def test_importing_the_module_loads_no_runtime():
    """The gate and the CLI compare stored reports; only evaluate_bundle needs ONNX Runtime."""
    code = ("import json, sys, cloud_selector.evaluation\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'cv2'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_balanced_accuracy_lets_a_late_class_count():
    """A class with 2 held-out images barely moves plain accuracy; with the default metric a
    model that learned it is not refused for a small loss on the old classes."""
    classes = ("a", "b", "new")
    true = ["a"] * 49 + ["b"] * 49 + ["new"] * 2
    old = np.zeros((100, 3), np.float32)
    old[:49, 0] = old[49:98, 1] = 1.0
    old[98:, 0] = 1.0  # cannot predict "new"
    learned = old.copy()
    learned[98:] = [0, 0, 1]
    learned[:5] = [0, 1, 0]  # five old-class mistakes
    current = evaluate(old, true, classes, version=1, holdout_digest=DIGEST, evaluated_at=WHEN)
    candidate = evaluate(learned, true, classes, version=2, holdout_digest=DIGEST, evaluated_at=WHEN)
    assert candidate.accuracy < current.accuracy - 0.01  # plain accuracy would refuse it
    assert not gate(candidate, current, GatePolicy(metric="accuracy")).passed
    assert candidate.balanced_accuracy > current.balanced_accuracy
    assert gate(candidate, current, GatePolicy()).passed
