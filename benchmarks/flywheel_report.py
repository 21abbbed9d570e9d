"""B1's figures from the per-round records: the headline ratios (mean and spread over seeds),
the plot and the markdown summary the README embeds."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

RANDOM, FULL, ALL = "1_random", "5_full", "7_all_labeled"
TARGETS = {  # BENCHMARKS.md, B1
    "labels_ratio_vs_random": ("<=", 0.5),
    "min_accuracy_gap_vs_random": (">=", -0.01),
    "bytes_fraction_of_all_frames": ("<=", 0.03),
    "accuracy_fraction_of_all_labeled": (">=", 0.95),
    "novel_class_gap_closed": (">=", 0.9),
}


def labels_to_reach(records: list[dict], target: float, *, key: str = "labels_acquired") -> float | None:
    """Labels (linearly interpolated between rounds) at which the curve first reaches `target`
    accuracy; None when it never does."""
    points = [(r[key], r["accuracy"]) for r in records if r["accuracy"] is not None]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if ys[0] >= target:
        return float(xs[0])
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 >= target:
            return float(x0 + (x1 - x0) * (target - y0) / (y1 - y0)) if y1 > y0 else float(x1)
    return None


def _mean(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else statistics.fmean(values)


def _mean_curve(runs: list[list[dict]]) -> list[dict]:
    """Per round, the mean over seeds of accuracy and labels (accuracy None where a round was
    not evaluated, as arm 7 skips rounds in full runs)."""
    n = min(len(r) for r in runs)
    return [{"round": i, **{k: _mean(r[i][k] for r in runs)
                            for k in ("accuracy", "labels", "labels_acquired", "bytes_uploaded",
                                      "novel_class_accuracy")}} for i in range(n)]


def _stats(values: list[float | None]) -> dict:
    """Mean and spread (sample std, min, max) over seeds, ignoring None."""
    got = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(got) if got else None, "std": statistics.stdev(got) if len(got) > 1 else 0.0,
            "min": min(got) if got else None, "max": max(got) if got else None, "per_seed": values,
            "seeds_counted": len(got)}


def _ratio_for_seed(random: list[dict], full: list[dict], seed_labels: int) -> tuple[float | None, float | None]:
    target = random[-1]["accuracy"]
    needed = labels_to_reach(full, target)
    bought = random[-1]["labels_acquired"]
    if needed is None or bought <= 0:
        return None, None
    return needed / bought, (needed + seed_labels) / (bought + seed_labels)


def headline(runs: dict[str, list[list[dict]]], *, seed_labels: int, total_jpeg_bytes: list[int],
             novel_round: int) -> dict:
    """`runs[arm][seed]` = that arm's records (round 0 first). Every ratio needs arm 1; the
    others are None when their arm was not run."""
    random, full, every = runs.get(RANDOM), runs.get(FULL), runs.get(ALL)
    out: dict = {}
    if random and full:
        pairs = [_ratio_for_seed(r, f, seed_labels) for r, f in zip(random, full)]
        out["labels_ratio_vs_random"] = _stats([p[0] for p in pairs])
        out["labels_ratio_vs_random_with_seed"] = _stats([p[1] for p in pairs])
        mean_r, mean_f = _mean_curve(random), _mean_curve(full)
        ratio = labels_to_reach(mean_f, mean_r[-1]["accuracy"])
        out["labels_ratio_vs_random"]["on_mean_curves"] = (ratio / mean_r[-1]["labels_acquired"]
                                                           if ratio is not None else None)
        gaps = [f["accuracy"] - r["accuracy"] for r, f in zip(mean_r[1:], mean_f[1:])]
        out["min_accuracy_gap_vs_random"] = _stats([min(f[i]["accuracy"] - r[i]["accuracy"] for i in range(1, len(r)))
                                                    for r, f in zip(random, full)])
        out["min_accuracy_gap_vs_random"]["on_mean_curves"] = min(gaps)
        out["min_accuracy_gap_vs_random"]["at_round"] = int(np.argmin(gaps)) + 1
        out["random_tail"] = random_tail(mean_r, mean_f)
    if full:
        out["bytes_fraction_of_all_frames"] = _stats([f[-1]["bytes_uploaded"] / t
                                                      for f, t in zip(full, total_jpeg_bytes)])
        out["bytes_fraction_of_all_frames"]["note"] = ("wire bytes arm 5 uploaded (serialized candidates: JPEG + "
                                                       "embedding + scores) / JPEG bytes of every frame")
        out["jpeg_bytes_fraction_of_all_frames"] = _stats([f[-1]["jpeg_bytes_uploaded"] / t
                                                           for f, t in zip(full, total_jpeg_bytes)])
    if full and every:
        out["accuracy_fraction_of_all_labeled"] = _stats([f[-1]["accuracy"] / e[-1]["accuracy"]
                                                          for f, e in zip(full, every)])
    if random and full and every:
        closed = []
        for r, f, e in zip(random, full, every):
            i = min(novel_round, len(r) - 1)
            gap = e[i]["novel_class_accuracy"] - r[i]["novel_class_accuracy"]
            closed.append((f[i]["novel_class_accuracy"] - r[i]["novel_class_accuracy"]) / gap if gap > 0.02 else None)
        out["novel_class_gap_closed"] = _stats(closed)
        out["novel_class_gap_closed"]["round"] = novel_round
        out["novel_class_gap_closed"]["novel_class_accuracy"] = {
            arm: statistics.fmean(x[min(novel_round, len(x) - 1)]["novel_class_accuracy"] for x in runs[arm])
            for arm in runs}
    for name, (op, target) in TARGETS.items():
        if name in out and out[name]["mean"] is not None:
            value = out[name]["mean"]
            out[name]["target"] = f"{op} {target}"
            out[name]["meets_target"] = value <= target if op == "<=" else value >= target
    return out


def random_tail(mean_r: list[dict], mean_f: list[dict]) -> dict:
    """Where random's final accuracy sits on its own curve: its last-round slope, and how much
    the labels ratio moves if that final accuracy were one point lower or higher."""
    last, prev = mean_r[-1], mean_r[-2]
    dl = last["labels_acquired"] - prev["labels_acquired"]
    slope = (last["accuracy"] - prev["accuracy"]) / dl * 100 if dl else None
    shifted = {}
    for delta in (-0.01, 0.01):
        needed = labels_to_reach(mean_f, last["accuracy"] + delta)
        shifted[f"{delta:+.2f}"] = needed / last["labels_acquired"] if needed is not None else None
    return {"final_accuracy": last["accuracy"], "last_round_gain": last["accuracy"] - prev["accuracy"],
            "accuracy_per_100_labels_last_round": slope, "labels_ratio_if_random_final_shifted": shifted}


def arm_summary(runs: dict[str, list[list[dict]]], total_jpeg_bytes: list[int]) -> dict:
    out = {}
    for arm, seeds in runs.items():
        mean = _mean_curve(seeds)
        out[arm] = {"final_accuracy": _stats([s[-1]["accuracy"] for s in seeds]),
                    "final_labels": mean[-1]["labels"],
                    "final_bytes_fraction": statistics.fmean(s[-1]["bytes_uploaded"] / t
                                                             for s, t in zip(seeds, total_jpeg_bytes)),
                    "mean_curve": mean}
        if RANDOM in runs and arm != RANDOM:
            base = _mean_curve(runs[RANDOM])
            out[arm]["min_gap_vs_random"] = min(p["accuracy"] - b["accuracy"] for p, b in zip(mean[1:], base[1:])
                                                if p["accuracy"] is not None)
            out[arm]["final_gap_vs_random"] = mean[-1]["accuracy"] - base[-1]["accuracy"]
    return out


def plot(runs: dict[str, list[list[dict]]], titles: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for arm, seeds in runs.items():
        mean = _mean_curve(seeds)
        style = {"linewidth": 2.5} if arm in (RANDOM, FULL) else {"linewidth": 1.2, "alpha": 0.85}
        style["linestyle"] = "--" if arm.startswith(("6_", "7_")) else "-"
        mean = [p for p in mean if p["accuracy"] is not None]
        acc = [p["accuracy"] for p in mean]
        if arm == ALL:  # tens of thousands of labels: a line at its final accuracy keeps the x axis readable
            axes[0].axhline(acc[-1], color="grey", linestyle=":", label=f"{arm} ({mean[-1]['labels']:.0f} labels)")
        else:
            axes[0].plot([p["labels"] for p in mean], acc, marker="o", markersize=3, label=arm, **style)
        axes[1].plot([max(p["bytes_uploaded"], 1) for p in mean[1:]], acc[1:], marker="o", markersize=3, label=arm,
                     **style)
    axes[0].set(xlabel="labels (seed included)", ylabel="test accuracy", title="accuracy vs labels (mean over seeds)")
    axes[0].legend(fontsize=8, loc="lower right")
    axes[1].set(xscale="log", xlabel="bytes uploaded (log; arms 6-7 upload every frame)", ylabel="test accuracy",
                title="accuracy vs bytes uploaded")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v, pct=False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.3f}" if pct else f"{v:.3f}"


def markdown(result: dict) -> str:
    h, cfg = result["headline"], result["config"]
    lines = [f"### B1: the flywheel against random ({cfg['dataset']}, {cfg['model']}, {cfg['seeds']} seed(s))", "",
             f"`{result['command']}` on {result['date']} ({result['wall_seconds'] / 60:.1f} min); "
             f"{cfg['devices']} cameras (one joins in round {cfg['join_round']}), {cfg['rounds']} rounds, "
             f"{cfg['items']} items per camera per round, {cfg['select']} labels per round, upload budget "
             f"{cfg['upload_fraction']:.1%} of frames, class `{cfg['novel_class']}` absent until round "
             f"{cfg['novel_round']}.", "",
             "| headline | mean | spread (std; min..max) | target | meets |", "|---|---|---|---|---|"]
    for name in ("labels_ratio_vs_random", "labels_ratio_vs_random_with_seed", "min_accuracy_gap_vs_random",
                 "bytes_fraction_of_all_frames", "jpeg_bytes_fraction_of_all_frames",
                 "accuracy_fraction_of_all_labeled", "novel_class_gap_closed"):
        s = h.get(name)
        if not s:
            continue
        spread = (f"{s['std']:.3f}; {_fmt(s['min'])}..{_fmt(s['max'])}" if s["mean"] is not None else "n/a")
        n = len(s["per_seed"])
        counted = f" ({s['seeds_counted']}/{n} seeds)" if s["seeds_counted"] < n else ""
        target = s.get("target", "")
        meets = {True: "yes", False: "**no**"}.get(s.get("meets_target"), "")
        lines.append(f"| `{name}` | {_fmt(s['mean'])}{counted} | {spread} | {target} | {meets} |")
    lines += ["", "| arm | final accuracy (mean ± std) | labels | bytes / all frames | min gap vs random |",
              "|---|---|---|---|---|"]
    for arm, s in result["arms_summary"].items():
        fa = s["final_accuracy"]
        lines.append(f"| {arm} | {fa['mean']:.4f} ± {fa['std']:.4f} | {s['final_labels']:.0f} | "
                     f"{s['final_bytes_fraction']:.4f} | {_fmt(s.get('min_gap_vs_random'), pct=True)} |")
    noise = result.get("training_noise") or {}
    if noise.get("std") is not None:
        lines += ["", f"Training noise (arm 1's final {noise['labels']} labels retrained with {noise['seeds']} seeds): "
                      f"std {noise['std']:.4f}, range {noise['range']:.4f}; 3x epochs changes accuracy by "
                      f"{noise['gain_from_3x_epochs']:+.4f}."]
    tail = h.get("random_tail")
    if tail:
        shifted = tail["labels_ratio_if_random_final_shifted"]
        lines += [f"Random's final accuracy {tail['final_accuracy']:.4f} gained {tail['last_round_gain']:+.4f} in its "
                  f"last round; the labels ratio would be {_fmt(shifted['-0.01'])} / {_fmt(shifted['+0.01'])} were "
                  "it one point lower / higher."]
    lines += ["", "![B1](flywheel.png)", ""]
    return "\n".join(lines)
