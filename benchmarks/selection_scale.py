"""B4 — selection at scale: the DIVERSITY + TYPICALITY config against exact k-center greedy.

    python -m benchmarks.selection_scale [--quick] [--n N ...] [--real N] [--select K] [--out DIR]

Pools, each selected with K = 1000 picks by default:

- ``fashion-mnist``: real model embeddings, the Fashion-MNIST test split (10k images, real
  labels) embedded by the offline ImageNet MobileNetV2 at 96 px (1280-d), as the cloud's
  frozen backbone sees them. Full mode only (``--real 0`` turns it off).
- ``synthetic``: a seeded Gaussian mixture (cluster sizes from a Dirichlet so some clusters
  are rare, each with its own spread), L2-normalised float32, 128-d; the cluster id is the
  label for class balance. Sizes: 10k (quick), 10k and 100k (full); 1M only when asked for
  with ``--n 1000000`` (``--n`` takes any list of sizes and replaces the defaults).

In the same run, on the same pool:

- engine: ``cloud_selector.selection_engine.select`` with {DIVERSITY, TYPICALITY}, LightlyOne's
  documented pair; its typicality k-NN is also timed alone (``typicality_s``) to show where
  the engine's time goes;
- exact k-center greedy (Gonzalez), the baseline: first centre row 0, then always the row
  farthest from its nearest centre, with brute-force numpy distances (float32 matrix-vector
  products in row blocks) kept incrementally: the textbook exact implementation, O(N K D);
- random: a seeded uniform pick of the same size;
- a coverage reference, not timed: seeded k-means with K centroids, each replaced by its
  nearest unused pool row. k-means is the standard heuristic for mean squared distance to
  the nearest centre, so ``coverage_ratio_reference_vs_random`` indicates (it is no bound)
  how far K picks can push mean coverage past random on this pool. On the isotropic 128-d
  clusters distances concentrate: it reached 1.11 at 100k and 1.17 at 1M, below the 1.2
  target that the DIVERSITY x TYPICALITY engine is held to.

Coverage is the distance (1 - cos) from every pool sample to its nearest pick, lower = better,
as its mean and its max (the k-center objective). Ratios are > 1 when the engine covers
better: ``kcenter / engine`` ("vs exact") and ``random / engine`` ("vs random"). Time ratio
= engine seconds / k-center seconds, each the fastest of ``--repeats`` (2) alternated runs (the
machine is shared: a load spike can only slow a run down). Memory: the peak resident set above the level before
each phase, sampled every 5 ms from /proc (numpy and FAISS's C++ buffers alike), and the
process's max RSS (data generation included); 1M x 128 must fit in 24 GiB.

Headline (``<out>/selection_scale.json``), from the 100k pool (else the largest one run):
``time_ratio_vs_exact`` (target <= 0.1), ``coverage_ratio_vs_exact`` (mean coverage, target
>= 0.98), ``coverage_ratio_vs_random`` (mean, target >= 1.2), and the same two ratios on the
max coverage (``coverage_max_ratio_vs_*``), because DIVERSITY x TYPICALITY trades the worst-
covered outlier for typical samples and the two views disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cloud_selector.selection_config import parse_selection_config
from cloud_selector.selection_engine import SelectionPool, select
from cloud_selector.selection_geometry import typicality_scores, unit_vectors
from cloud_selector.selection_metrics import SetMetrics, set_metrics

CONFIG = {
    "n_samples": None,  # filled in per run
    "strategies": [
        {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}},
        {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY"}},
    ],
}
TARGET_TIME_RATIO = 0.1
TARGET_COVERAGE_VS_EXACT = 0.98
TARGET_COVERAGE_VS_RANDOM = 1.2
MEMORY_LIMIT_GIB = 24
HEADLINE_N = 100_000


@dataclass(frozen=True)
class ScaleResult:
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
    engine_peak_mib: float            # peak RSS above the level before the phase
    kcenter_peak_mib: float
    max_rss_mib: float
    stop_reason: str
    data: str = "synthetic"
    typicality_s: float = 0.0         # the engine's typicality k-NN alone (part of engine_s)
    data_s: float = 0.0               # generating or embedding the pool (not in any ratio)
    engine_s_runs: tuple[float, ...] = ()   # every timed run (engine_s / kcenter_s are the fastest)
    kcenter_s_runs: tuple[float, ...] = ()
    reference: SetMetrics | None = None          # k-means medoids (mean-coverage reference)
    coverage_mean_reference_vs_random: float = 0.0


B4Result = ScaleResult  # the name benchmarks/b4_selection.py used


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


def fashion_mnist_embeddings(n: int, data_dir: Path, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` Fashion-MNIST test images through the ImageNet MobileNetV2 backbone at 96 px
    (the head trainer's frozen backbone): (unit embeddings float32 [n, 1280], labels [n])."""
    import cv2
    import torch

    from cloud_selector import mobilenet
    from edge_agent.preprocess import preprocess
    from flywheel_demo.datasets import load_fashion_mnist

    test = load_fashion_mnist("test", data_dir)
    n = min(n, len(test.images))
    model = mobilenet.pretrained(num_classes=1).eval()
    out = np.empty((n, mobilenet.EMBEDDING_DIM), np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        with torch.inference_mode():
            for s in range(0, n, batch):
                frames = [cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) for img in test.images[s : s + batch]]
                x = torch.from_numpy(preprocess(frames, mobilenet.INPUT_SPEC))
                out[s : s + len(frames)] = model(x)[1].reshape(len(frames), -1).numpy()
    finally:
        torch.set_num_threads(threads)
    return unit_vectors(out), test.labels[:n].astype(np.int64)


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


def kmeans_medoids(x: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """K distinct rows near seeded k-means centroids (each centroid takes its nearest unused
    row): a reference for mean coverage, which k-means optimises and k-center does not."""
    import faiss

    k = min(k, len(x))
    km = faiss.Kmeans(x.shape[1], k, niter=10, seed=seed + 1, max_points_per_centroid=32,
                       min_points_per_centroid=1, verbose=False)
    km.train(x)
    _, near = faiss.knn(km.centroids, x, min(16, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
    used, picks = set(), []
    for row in near:
        j = next((int(r) for r in row if r >= 0 and int(r) not in used), None)
        if j is not None:
            used.add(j)
            picks.append(j)
    rest = (r for r in range(len(x)) if r not in used)   # only if 16 neighbours were all taken
    return picks + [next(rest) for _ in range(k - len(picks))]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set above the level at entry, sampled every `interval_s` by a thread (it
    sees what tracemalloc cannot: FAISS's and BLAS's C++ buffers; a spike shorter than the
    interval can be missed). `peak_mib` after the block."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self._base = _rss_bytes()
        self._peak = self._base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_mib = (self._peak - self._base) / 2**20


def _timed(fn):
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - t0
    return out, elapsed, mem.peak_mib


def _ratio(a: float, b: float) -> float:
    """a / b, where 0 / 0 (every sample picked: nothing left to cover) is 1."""
    return a / b if b > 0 else (1.0 if a <= 0 else float("inf"))


def run_pool(x: np.ndarray, labels: np.ndarray, select_n: int, *, data: str, clusters: int = 0, seed: int = 0,
             data_s: float = 0.0, repeats: int = 1) -> ScaleResult:
    """Engine, exact k-center and random on one pool of unit rows; the engine and k-center are
    timed `repeats` times each, alternately, and the fastest run counts."""
    n, dim = x.shape
    config = parse_selection_config({**CONFIG, "n_samples": select_n})
    pool = SelectionPool(ids=[str(i) for i in range(n)], embeddings=x)
    engine_runs, kcenter_runs, engine_peak, kcenter_peak = [], [], 0.0, 0.0
    for _ in range(max(1, repeats)):  # alternated, and the fastest of each kept: load spikes only slow runs down
        result, seconds, peak = _timed(lambda: select(config, pool))
        engine_runs.append(seconds)
        engine_peak = max(engine_peak, peak)
        centres, seconds, peak = _timed(lambda: kcenter_greedy(x, select_n))
        kcenter_runs.append(seconds)
        kcenter_peak = max(kcenter_peak, peak)
    engine_s, kcenter_s = min(engine_runs), min(kcenter_runs)
    k = next(e.strategy.num_nearest_neighbors for e in config.strategies if hasattr(e.strategy, "num_nearest_neighbors"))
    started = time.perf_counter()
    typicality_scores(x, k)  # the engine's first step, timed alone
    typicality_s = time.perf_counter() - started
    random_idx = np.random.default_rng(seed + 1).choice(n, size=len(result.picks), replace=False)
    engine = set_metrics(x, result.indices, labels)
    kcenter = set_metrics(x, centres, labels)
    rand = set_metrics(x, random_idx, labels)
    reference = set_metrics(x, kmeans_medoids(x, len(result.picks), seed), labels)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return ScaleResult(
        n=n, dim=dim, select=select_n, clusters=clusters, seed=seed,
        engine_s=engine_s, kcenter_s=kcenter_s, time_ratio=engine_s / max(kcenter_s, 1e-9),
        engine=engine, kcenter=kcenter, random=rand,
        coverage_mean_vs_exact=_ratio(kcenter.coverage_mean, engine.coverage_mean),
        coverage_max_vs_exact=_ratio(kcenter.coverage_max, engine.coverage_max),
        coverage_mean_vs_random=_ratio(rand.coverage_mean, engine.coverage_mean),
        coverage_max_vs_random=_ratio(rand.coverage_max, engine.coverage_max),
        engine_peak_mib=engine_peak, kcenter_peak_mib=kcenter_peak,
        max_rss_mib=rss, stop_reason=result.stop_reason.value, data=data,
        typicality_s=typicality_s, data_s=data_s,
        engine_s_runs=tuple(round(t, 4) for t in engine_runs), kcenter_s_runs=tuple(round(t, 4) for t in kcenter_runs),
        reference=reference, coverage_mean_reference_vs_random=_ratio(rand.coverage_mean, reference.coverage_mean),
    )


def run(n: int = 100_000, select_n: int = 1000, dim: int = 128, clusters: int = 50, seed: int = 0,
        repeats: int = 1) -> ScaleResult:
    """One synthetic pool (benchmarks/b4_selection.py's `run`)."""
    started = time.perf_counter()
    x, labels = clustered_embeddings(n, dim, clusters, seed)
    return run_pool(x, labels, select_n, data="synthetic", clusters=clusters, seed=seed,
                    data_s=time.perf_counter() - started, repeats=repeats)


def table(r: ScaleResult) -> str:
    rows = [("", "engine", "k-center", "random"),
            ("time s", f"{r.engine_s:.2f}", f"{r.kcenter_s:.2f}", "-"),
            ("coverage mean", f"{r.engine.coverage_mean:.4f}", f"{r.kcenter.coverage_mean:.4f}", f"{r.random.coverage_mean:.4f}"),
            ("coverage max", f"{r.engine.coverage_max:.4f}", f"{r.kcenter.coverage_max:.4f}", f"{r.random.coverage_max:.4f}"),
            ("diversity", f"{r.engine.diversity:.4f}", f"{r.kcenter.diversity:.4f}", f"{r.random.diversity:.4f}"),
            ("class balance", f"{r.engine.class_balance:.3f}", f"{r.kcenter.class_balance:.3f}", f"{r.random.class_balance:.3f}")]
    lines = [f"B4 {r.data} n={r.n} dim={r.dim} select={r.select} seed={r.seed}"]
    lines += [f"{a:<15}{b:>10}{c:>10}{d:>10}" for a, b, c, d in rows]
    lines.append(f"time ratio engine/k-center {r.time_ratio:.2f} (typicality k-NN {r.typicality_s:.2f} s of the "
                 f"engine's {r.engine_s:.2f}); coverage vs exact mean {r.coverage_mean_vs_exact:.3f} "
                 f"max {r.coverage_max_vs_exact:.3f}; vs random mean {r.coverage_mean_vs_random:.3f} "
                 f"max {r.coverage_max_vs_random:.3f}")
    if r.reference is not None:
        lines.append(f"mean-coverage reference (k-means medoids, not timed) vs random {r.coverage_mean_reference_vs_random:.3f}: "
                     f"coverage mean {r.reference.coverage_mean:.4f} max {r.reference.coverage_max:.4f}")
    lines.append(f"peak MiB above start: engine {r.engine_peak_mib:.0f} k-center {r.kcenter_peak_mib:.0f}; "
                 f"max RSS {r.max_rss_mib:.0f} MiB")
    return "\n".join(lines)


def headline_row(rows: list[ScaleResult]) -> ScaleResult:
    synthetic = [r for r in rows if r.data == "synthetic"]
    exact = [r for r in synthetic if r.n == HEADLINE_N]
    return exact[0] if exact else max(synthetic or rows, key=lambda r: r.n)


def headline(rows: list[ScaleResult]) -> dict:
    r = headline_row(rows)
    return {"n": r.n, "data": r.data,
            "time_ratio_vs_exact": round(r.time_ratio, 4),
            "coverage_ratio_vs_exact": round(r.coverage_mean_vs_exact, 4),
            "coverage_ratio_vs_random": round(r.coverage_mean_vs_random, 4),
            "coverage_max_ratio_vs_exact": round(r.coverage_max_vs_exact, 4),
            "coverage_max_ratio_vs_random": round(r.coverage_max_vs_random, 4),
            "coverage_ratio_reference_vs_random": round(r.coverage_mean_reference_vs_random, 4),
            "max_rss_mib": round(max(x.max_rss_mib for x in rows), 1)}


def _verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def summary(rows: list[ScaleResult]) -> str:
    h = headline(rows)
    name = f"B4 selection ({_size(h['n'])} {h['data']}, pick {headline_row(rows).select})"
    lines = [
        f"| {name} | time_ratio_vs_exact | {h['time_ratio_vs_exact']:.3f} | <= {TARGET_TIME_RATIO} "
        f"({_verdict(h['time_ratio_vs_exact'] <= TARGET_TIME_RATIO)}) |",
        f"| {name} | coverage_ratio_vs_exact (mean) | {h['coverage_ratio_vs_exact']:.3f} | >= "
        f"{TARGET_COVERAGE_VS_EXACT} ({_verdict(h['coverage_ratio_vs_exact'] >= TARGET_COVERAGE_VS_EXACT)}) |",
        f"| {name} | coverage_ratio_vs_random (mean) | {h['coverage_ratio_vs_random']:.3f} | >= "
        f"{TARGET_COVERAGE_VS_RANDOM} ({_verdict(h['coverage_ratio_vs_random'] >= TARGET_COVERAGE_VS_RANDOM)}) |",
        f"| {name} | coverage_max_ratio_vs_exact | {h['coverage_max_ratio_vs_exact']:.3f} | >= "
        f"{TARGET_COVERAGE_VS_EXACT} ({_verdict(h['coverage_max_ratio_vs_exact'] >= TARGET_COVERAGE_VS_EXACT)}) |",
        f"| {name} | coverage_max_ratio_vs_random | {h['coverage_max_ratio_vs_random']:.3f} | >= "
        f"{TARGET_COVERAGE_VS_RANDOM} ({_verdict(h['coverage_max_ratio_vs_random'] >= TARGET_COVERAGE_VS_RANDOM)}) |",
        f"| {name} | k-means reference: coverage mean vs random | {h['coverage_ratio_reference_vs_random']:.3f} | "
        "(what K picks can reach on this pool; not a target) |",
    ]
    for r in rows:
        if r is headline_row(rows):
            continue
        lines.append(f"| B4 selection ({_size(r.n)} {r.data}) | time / coverage mean / coverage max ratio vs exact | "
                     f"{r.time_ratio:.3f} / {r.coverage_mean_vs_exact:.3f} / {r.coverage_max_vs_exact:.3f} | "
                     "(see above) |")
    big = [r for r in rows if r.n >= 1_000_000]
    if big:
        rss_gib = max(r.max_rss_mib for r in rows) / 1024
        lines.append(f"| B4 selection (1M) | max RSS GiB | {rss_gib:.1f} | <= {MEMORY_LIMIT_GIB} "
                     f"({_verdict(rss_gib <= MEMORY_LIMIT_GIB)}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from flywheel_demo.datasets import FASHION_MNIST_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 10k synthetic pool only")
    parser.add_argument("--n", type=int, nargs="+", help="synthetic pool sizes (default 10000 100000; quick 10000)")
    parser.add_argument("--real", type=int, default=-1,
                        help="Fashion-MNIST test images embedded by MobileNetV2 (default 10000; quick 0; max 10000)")
    parser.add_argument("--select", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128, help="synthetic embedding dimension")
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs of the engine and of k-center, alternated; the fastest counts (default 2)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FASHION_MNIST_DIR") or FASHION_MNIST_DIR),
                        help="Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="where selection_scale.json/.md go")
    args = parser.parse_args(argv)
    sizes = args.n or ([10_000] if args.quick else [10_000, HEADLINE_N])
    real = args.real if args.real >= 0 else (0 if args.quick else 10_000)
    if min(sizes) < 2 or args.select < 1:
        parser.error("--n must be >= 2 and --select >= 1")
    rows: list[ScaleResult] = []
    if real:
        started = time.perf_counter()
        x, labels = fashion_mnist_embeddings(real, args.data_dir)
        rows.append(run_pool(x, labels, min(args.select, len(x)), data="fashion-mnist",
                             clusters=int(labels.max()) + 1, seed=args.seed, data_s=time.perf_counter() - started,
                             repeats=args.repeats))
        print(table(rows[-1]), flush=True)
        del x
    for n in sizes:
        rows.append(run(n, min(args.select, n), args.dim, args.clusters, args.seed, args.repeats))
        print(table(rows[-1]), flush=True)
    result = {"benchmark": "B4", "name": "selection_scale", "config": CONFIG["strategies"], "select": args.select,
              "quick": args.quick, "cpus": os.cpu_count(), "rows": [asdict(r) for r in rows],
              "targets": {"time_ratio_vs_exact": f"<= {TARGET_TIME_RATIO} at 100k",
                          "coverage_ratio_vs_exact": f">= {TARGET_COVERAGE_VS_EXACT}",
                          "coverage_ratio_vs_random": f">= {TARGET_COVERAGE_VS_RANDOM}",
                          "max_rss_gib_at_1M": f"<= {MEMORY_LIMIT_GIB}"},
              "headline": headline(rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selection_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "selection_scale.md").write_text(summary(rows))
    print(json.dumps({"benchmark": "B4", **result["headline"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
