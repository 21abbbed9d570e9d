"""B4 — selection at scale: the DIVERSITY + TYPICALITY config against exact k-center greedy.

    python -m benchmarks.b4_selection --n 100000 --select 1000 --dim 128

Data: a seeded Gaussian mixture (cluster sizes drawn from a Dirichlet so some clusters are
rare, each cluster with its own spread), L2-normalised, float32; the cluster id is the label
for class balance. In the same run:

- engine: ``select`` with {DIVERSITY, TYPICALITY} (LightlyOne's documented pair);
- exact k-center greedy (Gonzalez): first centre row 0, then always the row farthest from
  its nearest centre; distances by brute-force numpy (float32 matrix-vector products, in
  row blocks), kept incrementally: the textbook exact implementation;
- random: a seeded uniform pick of the same size.

Coverage (distance from every sample to its nearest pick, lower is better) is reported as
ratios where > 1 means the engine covers better: ``kcenter / engine`` ("vs exact") and
``random / engine`` ("vs random"), for the mean and the max. Time ratio = engine / k-center.
Peak memory: tracemalloc's peak of Python/numpy allocations inside each phase (FAISS's C++
buffers are not traced) and the process's max RSS (everything, data generation included).

Prints one JSON line, then a short table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass

import numpy as np

from cloud_selector.selection_config import parse_selection_config
from cloud_selector.selection_engine import (
    SelectionPool,
    select,
)
from cloud_selector.selection_metrics import SetMetrics, set_metrics

CONFIG = {
    "n_samples": None,  # filled in per run
    "strategies": [
        {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}},
        {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY"}},
    ],
}


@dataclass(frozen=True)
class B4Result:
    n: int
    dim: int
    select: int
    clusters: int
    seed: int
    engine_s: float
    kcenter_s: float
    time_ratio: float                 # engine / kcenter (lower = engine faster)
    engine: SetMetrics
    kcenter: SetMetrics
    random: SetMetrics
    coverage_mean_vs_exact: float     # kcenter.coverage_mean / engine.coverage_mean
    coverage_max_vs_exact: float
    coverage_mean_vs_random: float    # random.coverage_mean / engine.coverage_mean
    coverage_max_vs_random: float
    engine_peak_traced_mib: float
    kcenter_peak_traced_mib: float
    max_rss_mib: float
    stop_reason: str


def clustered_embeddings(n: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded Gaussian mixture on the unit sphere: (embeddings float32 [n, dim], labels [n])."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    weights = rng.dirichlet(np.full(clusters, 0.7))
    labels = rng.choice(clusters, size=n, p=weights)
    spread = rng.uniform(0.15, 0.6, size=clusters).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):  # in blocks: never a second [n, dim] float64 temporary
        lab = labels[s : s + 65536]
        noise = rng.standard_normal((len(lab), dim), dtype=np.float32)
        x[s : s + len(lab)] = centres[lab] + noise * spread[lab, None]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def kcenter_greedy(x: np.ndarray, k: int, block_rows: int = 65536) -> list[int]:
    """Exact greedy k-center (cosine distance on unit rows; same order as Euclidean)."""
    n = len(x)
    nearest = np.full(n, np.inf, dtype=np.float32)
    picks = [0]
    for _ in range(min(k, n) - 1):
        centre = x[picks[-1]]
        for s in range(0, n, block_rows):
            d = 1.0 - x[s : s + block_rows] @ centre
            np.minimum(nearest[s : s + block_rows], d, out=nearest[s : s + block_rows])
        nearest[picks[-1]] = -np.inf  # a centre never comes back
        picks.append(int(np.argmax(nearest)))
    return picks


def _traced(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, elapsed, peak / 2**20


def run(n: int = 100_000, select_n: int = 1000, dim: int = 128, clusters: int = 50, seed: int = 0) -> B4Result:
    x, labels = clustered_embeddings(n, dim, clusters, seed)
    config = parse_selection_config({**CONFIG, "n_samples": select_n})
    pool = SelectionPool(ids=[str(i) for i in range(n)], embeddings=x)
    result, engine_s, engine_peak = _traced(lambda: select(config, pool))
    centres, kcenter_s, kcenter_peak = _traced(lambda: kcenter_greedy(x, select_n))
    random_idx = np.random.default_rng(seed + 1).choice(n, size=len(result.picks), replace=False)
    engine = set_metrics(x, result.indices, labels)
    kcenter = set_metrics(x, centres, labels)
    rand = set_metrics(x, random_idx, labels)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return B4Result(
        n=n, dim=dim, select=select_n, clusters=clusters, seed=seed,
        engine_s=engine_s, kcenter_s=kcenter_s, time_ratio=engine_s / kcenter_s,
        engine=engine, kcenter=kcenter, random=rand,
        coverage_mean_vs_exact=kcenter.coverage_mean / engine.coverage_mean,
        coverage_max_vs_exact=kcenter.coverage_max / engine.coverage_max,
        coverage_mean_vs_random=rand.coverage_mean / engine.coverage_mean,
        coverage_max_vs_random=rand.coverage_max / engine.coverage_max,
        engine_peak_traced_mib=engine_peak, kcenter_peak_traced_mib=kcenter_peak,
        max_rss_mib=rss, stop_reason=result.stop_reason.value,
    )


def table(r: B4Result) -> str:
    rows = [("", "engine", "k-center", "random"),
            ("time s", f"{r.engine_s:.2f}", f"{r.kcenter_s:.2f}", "-"),
            ("coverage mean", f"{r.engine.coverage_mean:.4f}", f"{r.kcenter.coverage_mean:.4f}", f"{r.random.coverage_mean:.4f}"),
            ("coverage max", f"{r.engine.coverage_max:.4f}", f"{r.kcenter.coverage_max:.4f}", f"{r.random.coverage_max:.4f}"),
            ("diversity", f"{r.engine.diversity:.4f}", f"{r.kcenter.diversity:.4f}", f"{r.random.diversity:.4f}"),
            ("class balance", f"{r.engine.class_balance:.3f}", f"{r.kcenter.class_balance:.3f}", f"{r.random.class_balance:.3f}")]
    lines = [f"B4 n={r.n} dim={r.dim} select={r.select} clusters={r.clusters} seed={r.seed}"]
    lines += [f"{a:<15}{b:>10}{c:>10}{d:>10}" for a, b, c, d in rows]
    lines.append(f"time ratio engine/k-center {r.time_ratio:.2f}; coverage vs exact mean {r.coverage_mean_vs_exact:.3f} "
                 f"max {r.coverage_max_vs_exact:.3f}; vs random mean {r.coverage_mean_vs_random:.3f} "
                 f"max {r.coverage_max_vs_random:.3f}")
    lines.append(f"peak traced MiB engine {r.engine_peak_traced_mib:.0f} k-center {r.kcenter_peak_traced_mib:.0f}; "
                 f"max RSS {r.max_rss_mib:.0f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--select", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    r = run(args.n, args.select, args.dim, args.clusters, args.seed)
    print(json.dumps({"benchmark": "B4", **asdict(r)}))
    print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
