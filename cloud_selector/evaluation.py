"""The evaluation gate: a new model version is promoted only if it is not worse than the current
one on a fixed held-out labeled set.

Four small steps, each usable alone:

1. `stratified_holdout` picks the held-out ids (per class, deterministic, stable as labels
   grow) and `holdout_digest` names that set, so two reports can prove they measured the same.
2. `evaluate` turns probabilities [N, C] and true labels into an `EvalReport` (pure numpy);
   `evaluate_bundle` gets those probabilities by running a bundle with ONNX Runtime exactly as
   a device does (same preprocessing, same graph), so the figures are the fleet's, not the
   trainer's.
   Everything else here is pure: importing this module loads neither ONNX Runtime nor OpenCV.
3. `gate` compares a candidate's report with the current model's under a `GatePolicy` and
   returns a `GateDecision` whose reasons a person can act on.
4. `format_report` renders a report (and a decision) for the CLI.

Errors: `ValueError` for impossible arguments (a bad fraction, probabilities of the wrong
shape, a malformed stored report); `edge_agent.bundle.BundleError` from `evaluate_bundle` for a
bundle that cannot be loaded or run. A refusal by the gate is not an error but a decision.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge_agent.runtime import ProviderSettings

FORMAT = "edgeflywheel.eval/1"
ECE_BINS = 15
# Slack for "not worse by more than the margin": 0.80 >= 0.81 - 0.01 must hold, although
# 0.81 - 0.01 is 0.8000000000000002 in binary floating point.
_EPS = 1e-9


def _round_half_up(x: float) -> int:
    """round() rounds halves to even (round(2.5) == 2); quotas should not depend on parity. The
    slack keeps a product like 0.3 * 5 = 1.4999999999999998 a half."""
    return int(math.floor(x + 0.5 + 1e-9))


def _rank(seed: int, item_id: str) -> str:
    return hashlib.sha256(f"{seed}\0{item_id}".encode()).hexdigest()


def _cap(quotas: dict[str, int], max_size: int) -> dict[str, int]:
    """Shrink quotas to total `max_size`, cutting the largest first (water-filling): a common
    class loses a few of many held-out items, a rare one would lose its only evidence. The
    remainder goes one each to the classes above the level, in class-name order."""
    if sum(quotas.values()) <= max_size:
        return quotas
    lo, hi = 0, max(quotas.values())  # invariant: total(lo) <= max_size < total(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if sum(min(q, mid) for q in quotas.values()) <= max_size else (lo, mid)
    capped = {c: min(q, lo) for c, q in quotas.items()}
    spare = max_size - sum(capped.values())
    for c in sorted(c for c, q in quotas.items() if q > lo)[:spare]:
        capped[c] += 1
    return capped


def stratified_holdout(ids: Sequence[str], labels: Sequence[str], *, fraction: float = 0.2,
                       min_per_class: int = 2, max_size: int | None = None, seed: int = 0) -> list[str]:
    """The held-out ids (sorted): per class round(fraction * count) (halves up), at least
    `min_per_class` for a class with more than that many items, never all of a class's items
    (training must keep some). `max_size` caps the total, cutting the largest classes first.

    Within a class the picks are the ids with the smallest sha256(seed, id), not a shuffle: the
    result does not depend on input order, and as labels grow an item leaves the holdout only
    when a new item outranks it, so the set (and what training never saw) stays mostly fixed.
    Adding labels to one class never changes another's picks.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction}")
    if min_per_class < 0 or (max_size is not None and max_size < 0):
        raise ValueError(f"min_per_class and max_size must be >= 0, got {min_per_class} and {max_size}")
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    label_of: dict[str, str] = {}
    for item_id, label in zip(map(str, ids), map(str, labels)):
        if item_id in label_of:
            raise ValueError(f"id {item_id!r} appears more than once")
        label_of[item_id] = label
    members: dict[str, list[str]] = {}
    for item_id in sorted(label_of):
        members.setdefault(label_of[item_id], []).append(item_id)
    quotas = {}
    for label, items in members.items():
        quota = _round_half_up(fraction * len(items))
        if len(items) > min_per_class:
            quota = max(quota, min_per_class)
        quotas[label] = min(quota, len(items) - 1)
    if max_size is not None:
        quotas = _cap(quotas, max_size)
    picked = [i for label, items in members.items()
              for i in sorted(items, key=lambda i: (_rank(seed, i), i))[: quotas[label]]]
    return sorted(picked)


def holdout_digest(ids: Sequence[str], labels: Sequence[str]) -> str:
    """sha256 of the sorted "id<TAB>label" lines, each ending in a newline: the same set gives
    the same digest in any order, and a relabeled item changes it. Tabs and newlines inside ids
    or labels would let two different sets share a digest, so they are refused."""
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    lines = [f"{i}\t{label}" for i, label in zip(map(str, ids), map(str, labels))]
    if any(line.count("\t") != 1 or "\n" in line for line in lines):
        raise ValueError("ids and labels must not contain tabs or newlines")
    return hashlib.sha256("".join(f"{line}\n" for line in sorted(lines)).encode()).hexdigest()


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int  # held-out items of this class


@dataclass(frozen=True)
class EvalReport:
    """One model version measured on one held-out set. `classes` orders `per_class` and both
    axes of `confusion` (rows: true class, columns: predicted): the model's classes, then
    `unknown_labels`, true labels the model cannot predict (see `evaluate`)."""

    version: int
    holdout_size: int
    holdout_digest: str
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    classes: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    unknown_labels: tuple[str, ...]
    ece: float  # expected calibration error, 15 equal-width confidence bins
    mean_confidence: float
    evaluated_at: str  # ISO 8601, UTC

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes present in the held-out set: every class weighs the same
        however few held-out images it has (a class that appeared late has only a few)."""
        recalls = [m.recall for m in self.per_class.values() if m.support > 0]
        return float(sum(recalls) / len(recalls)) if recalls else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(format=FORMAT, classes=list(self.classes), unknown_labels=list(self.unknown_labels),
                 confusion=[list(row) for row in self.confusion])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EvalReport:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not an eval report: format must be {FORMAT!r}")
        try:
            per_class = {str(c): ClassMetrics(float(m["precision"]), float(m["recall"]), float(m["f1"]),
                                              int(m["support"])) for c, m in d["per_class"].items()}
            return cls(version=int(d["version"]), holdout_size=int(d["holdout_size"]),
                       holdout_digest=str(d["holdout_digest"]), accuracy=float(d["accuracy"]),
                       macro_f1=float(d["macro_f1"]), per_class=per_class,
                       classes=tuple(map(str, d["classes"])),
                       confusion=tuple(tuple(int(v) for v in row) for row in d["confusion"]),
                       unknown_labels=tuple(map(str, d["unknown_labels"])), ece=float(d["ece"]),
                       mean_confidence=float(d["mean_confidence"]), evaluated_at=str(d["evaluated_at"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed eval report: {exc!r}") from exc


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def _ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over bins (i/bins, (i+1)/bins] of |bin|/N * |accuracy(bin) - mean confidence(bin)|
    (Guo et al., 2017). Unlike |accuracy - mean confidence| overall, over- and under-confident
    bins cannot cancel."""
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], confidence, side="left")
    return float(sum((which == b).mean() * abs(correct[which == b].mean() - confidence[which == b].mean())
                     for b in np.unique(which)))


def evaluate(probs: np.ndarray, true: Sequence[str], classes: Sequence[str], *, version: int,
             holdout_digest: str, evaluated_at: str | None = None) -> EvalReport:
    """Score `probs` [N, C] (rows are probabilities over `classes`) against `true` labels.

    The prediction is the argmax; ties go to the earlier class in `classes`. True labels not in
    `classes` (a class added since this model was trained) are errors, because the model cannot
    predict them: each gets a confusion row after the model's classes (sorted by name) and a
    column of zeros, recall 0 and precision 0, and counts in accuracy and macro F1 like any other
    class, so a model is measured as missing what it lacks. Macro F1 averages the classes that
    occur in the holdout or the predictions (scikit-learn's default), so a class that is neither
    held out nor predicted does not drag it to zero. An empty holdout gives zeros throughout:
    the gate then refuses on size, which says more than an error here would.
    """
    classes = tuple(map(str, classes))
    true = [str(t) for t in true]
    p = np.asarray(probs, dtype=np.float64)
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct and non-empty, got {classes}")
    if p.shape != (len(true), len(classes)):
        raise ValueError(f"probs has shape {p.shape}; {len(true)} labels over {len(classes)} classes "
                         f"need ({len(true)}, {len(classes)})")
    if p.size and not (np.isfinite(p).all() and p.min() >= 0 and np.abs(p.sum(axis=1) - 1).max() < 1e-3):
        raise ValueError("probs rows must be probabilities (>= 0, summing to 1): pass softmax(logits)")
    unknown = tuple(sorted(set(true) - set(classes)))
    names = classes + unknown
    index = {c: i for i, c in enumerate(names)}
    t = np.array([index[label] for label in true], dtype=np.int64)
    pred = p.argmax(axis=1)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (t, pred), 1)
    hits, support, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    precision, recall = _divide(hits, predicted), _divide(hits, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)
    confidence, correct = p.max(axis=1), (pred == t).astype(np.float64)
    return EvalReport(
        version=int(version), holdout_size=len(true), holdout_digest=str(holdout_digest),
        accuracy=float(correct.mean()) if len(true) else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_class={c: ClassMetrics(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
                   for i, c in enumerate(names)},
        classes=names, confusion=tuple(tuple(int(v) for v in row) for row in confusion), unknown_labels=unknown,
        ece=_ece(confidence, correct) if len(true) else 0.0,
        mean_confidence=float(confidence.mean()) if len(true) else 0.0,
        evaluated_at=evaluated_at or datetime.now(timezone.utc).isoformat(timespec="seconds"))


def evaluate_bundle(bundle_dir: Path, frames_bgr: Sequence[np.ndarray], true_labels: Sequence[str], *,
                    holdout_digest: str, settings: ProviderSettings | None = None, batch_size: int = 256,
                    evaluated_at: str | None = None) -> EvalReport:
    """Run the bundle with ONNX Runtime (`LoadedModel.infer_batched`; `settings` picks the
    execution providers, CPU by default) on the held-out frames and `evaluate` the result.
    Raises BundleError for a bundle that fails verification or cannot run."""
    # Imported here so that the rest of this module stays pure: comparing stored reports (the
    # gate, the CLI) must not load ONNX Runtime and OpenCV.
    from edge_agent.runtime import LoadedModel

    if len(frames_bgr) != len(true_labels):
        raise ValueError(f"{len(frames_bgr)} frames but {len(true_labels)} labels")
    model = LoadedModel(Path(bundle_dir), settings=settings)
    probs = model.infer_batched(frames_bgr, batch_size).probs
    return evaluate(probs, true_labels, model.classes, version=model.version,
                    holdout_digest=holdout_digest, evaluated_at=evaluated_at)


@dataclass(frozen=True)
class GatePolicy:
    """When a candidate may replace the current model. Margins are absolute drops (0.01 = one
    percentage point): on a few hundred held-out frames one or two items swing accuracy by
    about that much, so a zero margin would refuse equally good models by chance."""

    margin: float = 0.01  # drop of `metric` allowed
    # balanced_accuracy (mean per-class recall; the default) or accuracy. With plain accuracy a
    # class that appeared after the held-out set was made, and so has only a few held-out images,
    # barely counts: the demo's gate refused a model that had learned a new class (test accuracy
    # up 9 points) because it lost 2 points on the old classes.
    metric: str = "balanced_accuracy"
    critical_classes: tuple[str, ...] = ()  # any sequence; stored as a tuple
    critical_margin: float = 0.02  # recall drop allowed per critical class
    min_holdout: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.critical_classes, str):
            raise ValueError(f"critical_classes must be a list of names, got the string {self.critical_classes!r}")
        object.__setattr__(self, "critical_classes", tuple(map(str, self.critical_classes)))
        if self.metric not in ("balanced_accuracy", "accuracy"):
            raise ValueError(f"metric must be balanced_accuracy or accuracy, got {self.metric!r}")
        if not (0.0 <= self.margin <= 1.0 and 0.0 <= self.critical_margin <= 1.0) or self.min_holdout < 0:
            raise ValueError("margin and critical_margin must be in [0, 1] and min_holdout >= 0")


@dataclass(frozen=True)
class GateDecision:
    """passed, and why: every failed rule when refused, every rule checked when passed."""

    passed: bool
    reasons: list[str]
    candidate: EvalReport
    current: EvalReport | None

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": list(self.reasons), "candidate": self.candidate.to_dict(),
                "current": self.current.to_dict() if self.current else None}


def _not_worse(what: str, value: float, current: float, margin: float) -> tuple[bool, str]:
    floor = current - margin
    ok = value >= floor - _EPS
    return ok, (f"{what} {value:.3f} {'>=' if ok else '<'} {floor:.3f} needed "
                f"(current {current:.3f} - margin {margin:.3f})")


def _critical(name: str, candidate: EvalReport, current: EvalReport, margin: float) -> tuple[bool, str]:
    mine = candidate.per_class.get(name)
    if mine is None or mine.support == 0:
        return False, f"critical class {name!r} has no held-out labels: label some so its recall can be checked"
    theirs = current.per_class.get(name)
    baseline = theirs.recall if theirs is not None and theirs.support else 0.0
    return _not_worse(f"recall of critical class {name!r}", mine.recall, baseline, margin)


def gate(candidate: EvalReport, current: EvalReport | None, policy: GatePolicy = GatePolicy()) -> GateDecision:
    """May `candidate` replace `current`? Every rule is checked even after one fails, so a
    refusal lists all there is to fix."""
    if current is None:
        return GateDecision(True, [f"first version: no current model to compare with "
                                   f"(v{candidate.version} on {candidate.holdout_size} held-out labels)"],
                            candidate, None)
    n, need = candidate.holdout_size, policy.min_holdout
    same = candidate.holdout_digest == current.holdout_digest
    checks = [
        (n >= need, f"held-out set has {n} labels; the gate needs at least {need}"
                    + (f": label {need - n} more for the held-out set" if n < need else "")),
        (same, f"same held-out set as v{current.version} ({candidate.holdout_digest[:12]})" if same else
               f"v{candidate.version} was evaluated on held-out set {candidate.holdout_digest[:12]}, "
               f"v{current.version} on {current.holdout_digest[:12]}: compare on the same held-out set; "
               f"re-evaluate the current model"),
        _not_worse(policy.metric.replace("_", " "), getattr(candidate, policy.metric), getattr(current, policy.metric),
                   policy.margin),
        *(_critical(name, candidate, current, policy.critical_margin) for name in policy.critical_classes),
    ]
    failed = [text for ok, text in checks if not ok]
    return GateDecision(not failed, failed or [text for _, text in checks], candidate, current)


def _fit(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def format_report(report: EvalReport, decision: GateDecision | None = None) -> str:
    """A compact text table: headline figures, per-class P/R/F1/support, the confusion matrix
    (column names cut to the cell width; numbered when cuts would collide), the gate's verdict."""
    r = report
    name_w = min(20, max(len(c) for c in (*r.classes, "class")))
    lines = [f"model v{r.version} on {r.holdout_size} held-out labels (set {r.holdout_digest[:12]}), "
             f"evaluated {r.evaluated_at}",
             f"accuracy {r.accuracy:.3f}  balanced accuracy {r.balanced_accuracy:.3f}  macro F1 {r.macro_f1:.3f}  "
             f"ECE {r.ece:.3f}  "
             f"mean confidence {r.mean_confidence:.3f}", "",
             f"{'class':<{name_w}}  {'P':>5}  {'R':>5}  {'F1':>5}  {'support':>7}"]
    for c in r.classes:
        m = r.per_class[c]
        lines.append(f"{_fit(c, name_w):<{name_w}}  {m.precision:5.3f}  {m.recall:5.3f}  {m.f1:5.3f}  "
                     f"{m.support:7d}" + ("  *" if c in r.unknown_labels else ""))
    if r.unknown_labels:
        lines.append("* not a class of this model: every such item counts as an error")
    cell = max(4, *(len(str(v)) for row in r.confusion for v in row))
    heads = [c[:cell] for c in r.classes]
    rows = list(r.classes)
    if len(set(heads)) < len(heads):
        heads, rows = [str(i) for i in range(len(r.classes))], [f"{i} {c}" for i, c in enumerate(r.classes)]
    row_w = min(24, max(len(x) for x in rows))
    lines += ["", "confusion (rows: true, columns: predicted)",
              " " * row_w + "".join(f" {h:>{cell}}" for h in heads)]
    lines += [f"{_fit(label, row_w):<{row_w}}" + "".join(f" {v:>{cell}d}" for v in row)
              for label, row in zip(rows, r.confusion)]
    if decision is not None:
        against = f" against v{decision.current.version}" if decision.current else ""
        lines += ["", f"gate: {'PASSED' if decision.passed else 'REFUSED'}{against}"]
        lines += [f"  - {reason}" for reason in decision.reasons]
    return "\n".join(lines)
