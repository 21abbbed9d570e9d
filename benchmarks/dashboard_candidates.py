"""The dashboard's candidate grid at scale: `candidate_page` on a catalog of N candidates.

    python -m benchmarks.dashboard_candidates [--quick] [--n N] [--dim D] [--catalog URL] [--out DIR]

Fills a fresh catalog (a SQLite file in a temporary directory, or the PostgreSQL database or
schema at --catalog, which must be empty) with N candidates in bulk: 20 devices, 30 days of
arrivals, random unit embeddings of D dimensions (default 1280, MobileNetV2's), 10 classes with
10% of rows "unknown", states and scores drawn at random, 2% of rows tagged, no blobs. Then it
times typical grid requests (a first, cold call, then `--repeat` more) against a baseline taken
in the same run: a naive `SELECT * FROM candidates ORDER BY received_ms DESC LIMIT 60` (the
cheapest page a grid could show: no count, no filter, the newest rows by an index), reported as
the ratio p95 / baseline p95, next to a full `SELECT count(*)`. The dashboard's other calls
(detail, neighbours, overview, filter options, embedding map) are timed a few times for reference.

Writes `<out>/dashboard_candidates.json` with a `headline` object (`p95_ms` of the slowest
request type, `budget_ms` 300, `within_budget`) and prints that object as one JSON line, then a
table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from cloud_selector.catalog import Catalog
from cloud_selector.dashboard_data import (
    CandidateFilter, candidate_detail, candidate_neighbours, candidate_page, embedding_map, filter_options, overview,
)
from cloud_selector.schema import candidate_tags, candidates

BUDGET_MS = 300.0
DEVICES = 20
CLASSES = tuple(f"class-{i}" for i in range(10))
STATE_WEIGHTS = {"pooled": 0.70, "duplicate": 0.10, "selected": 0.04, "in_labeling": 0.02, "labeled": 0.11,
                 "skipped": 0.01, "rejected": 0.02}
DAY_MS = 86_400_000
CHUNK = 2_000


def fill(catalog: Catalog, n: int, *, dim: int, seed: int = 0, now_ms: int) -> float:
    """Insert `n` random candidates (and tags on 2% of them) in bulk; returns the seconds taken."""
    rng = np.random.default_rng(seed)
    states = np.array(list(STATE_WEIGHTS))
    weights = np.array(list(STATE_WEIGHTS.values()))
    started = time.perf_counter()
    with catalog.engine.begin() as conn:
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            emb = rng.standard_normal((m, dim)).astype("<f4")
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            probs = rng.dirichlet(np.full(len(CLASSES), 0.3), m).astype("<f4")
            top = probs.argmax(axis=1)
            received = now_ms - rng.integers(0, 30 * DAY_MS, m)
            state = rng.choice(states, m, p=weights / weights.sum())
            scores = rng.random((m, 5))
            unknown = rng.random(m) < 0.1
            rows = [{
                "id": str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | (start + i))),
                "device_id": f"cam-{int(rng.integers(DEVICES)):02d}", "capture_time_ms": int(received[i]) - 500,
                "received_ms": int(received[i]), "model_version": 1, "blob_key": f"candidates/{start + i}.jpg",
                "jpeg_bytes": int(rng.integers(8_000, 40_000)), "width": 224, "height": 224,
                "embedding": emb[i].tobytes(), "probabilities": probs[i].tobytes(),
                "least_confidence": float(scores[i, 0]), "margin": float(scores[i, 1]),
                "entropy": float(scores[i, 2]), "novelty": float(scores[i, 3]), "combined": float(scores[i, 4]),
                "reason": "novelty" if scores[i, 3] > 0.7 else "uncertainty", "extra": "{}", "state": str(state[i]),
                "label": CLASSES[int(rng.integers(len(CLASSES)))] if state[i] == "labeled" else None,
                "predicted_class": None if unknown[i] else CLASSES[int(top[i])],
                "predicted_prob": None if unknown[i] else float(probs[i, top[i]]),
            } for i in range(m)]
            conn.execute(candidates.insert(), rows)
            tagged = [{"candidate_id": r["id"], "tag": "night", "created_ms": now_ms, "actor": "bench"}
                      for r in rows[::50]]
            conn.execute(candidate_tags.insert(), tagged)
    if catalog.engine.dialect.name == "postgresql":
        with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE candidates"))  # what autovacuum does soon after a bulk load
            conn.execute(sa.text("VACUUM ANALYZE candidate_tags"))
    return time.perf_counter() - started


def requests(n: int) -> dict[str, Callable[[Catalog], object]]:
    """The grid requests timed, by name."""
    deep = max(1, n // 60 // 2)  # halfway through the newest-first list
    return {
        "first_page": lambda c: candidate_page(c, CandidateFilter()),
        "deep_page": lambda c: candidate_page(c, CandidateFilter(), page=deep),
        "device_and_state": lambda c: candidate_page(c, CandidateFilter(device_id="cam-07", state="pooled")),
        "sort_novelty": lambda c: candidate_page(c, CandidateFilter(), sort="novelty"),
        "score_range": lambda c: candidate_page(c, CandidateFilter(min_entropy=0.4, max_entropy=0.45),
                                                sort="combined"),
        "predicted_class": lambda c: candidate_page(c, CandidateFilter(predicted_class="class-3")),
        "tag": lambda c: candidate_page(c, CandidateFilter(tag="night")),
        "labeled_oldest_first": lambda c: candidate_page(c, CandidateFilter(state="labeled"), descending=False),
    }


def others(some_id: str) -> dict[str, Callable[[Catalog], object]]:
    """The dashboard's other calls, timed fewer times (not grid requests, not in the headline)."""
    return {
        "candidate_detail_without_neighbours": lambda c: candidate_detail(c, some_id, neighbours=0),
        "candidate_neighbours": lambda c: candidate_neighbours(c, some_id),
        "overview": lambda c: overview(c),
        "filter_options": lambda c: filter_options(c),
        "embedding_map": lambda c: embedding_map(c),
    }


def naive_first_page(catalog: Catalog) -> list:
    with catalog.engine.connect() as conn:
        return conn.execute(sa.select(candidates).order_by(candidates.c.received_ms.desc()).limit(60)).all()


def count_all(catalog: Catalog) -> int:
    with catalog.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(candidates)).scalar_one()


def timed(call: Callable[[], object], repeat: int) -> tuple[float, list[float]]:
    """(the first call's ms: cold caches, unprepared plans; then `repeat` more calls' ms)."""
    out = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out[0], out[1:]


def figures(first: float, times: list[float]) -> dict:
    return {"first_ms": round(first, 2), "p50_ms": round(percentile(times, 50), 2),
            "p95_ms": round(percentile(times, 95), 2)}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(url: str, n: int, dim: int, repeat: int) -> dict:
    catalog = Catalog.open(url)
    try:
        with catalog.engine.connect() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(candidates)).scalar_one():
                raise SystemExit(f"{url}: the catalog is not empty; give a fresh database or schema")
        stamp = int(time.time() * 1000)
        fill_s = fill(catalog, n, dim=dim, now_ms=stamp)
        baseline = figures(*timed(lambda: naive_first_page(catalog), repeat))
        counting = figures(*timed(lambda: count_all(catalog), repeat))
        results = {}
        for name, request in requests(n).items():
            results[name] = figures(*timed(lambda: request(catalog), repeat))
            results[name]["ratio_p95_to_baseline"] = round(results[name]["p95_ms"] / baseline["p95_ms"], 2)
        some_id = candidate_page(catalog, CandidateFilter(), per_page=1).items[0].id
        other = {name: figures(*timed(lambda: call(catalog), max(2, repeat // 10)))
                 for name, call in others(some_id).items()}
    finally:
        catalog.close()
    worst = max(results, key=lambda k: results[k]["p95_ms"])
    return {
        "benchmark": "dashboard_candidates", "backend": sa.make_url(url).get_backend_name(), "n": n, "dim": dim,
        "repeat": repeat, "fill_s": round(fill_s, 1),
        "baseline": {"query": "SELECT * FROM candidates ORDER BY received_ms DESC LIMIT 60", **baseline},
        "count_all": {"query": "SELECT count(*) FROM candidates", **counting},
        "requests": results,
        "other_calls": other,
        "headline": {"p95_ms": results[worst]["p95_ms"], "worst_request": worst, "budget_ms": BUDGET_MS,
                     "within_budget": results[worst]["p95_ms"] <= BUDGET_MS, "n": n,
                     "backend": sa.make_url(url).get_backend_name()},
    }


def table(result: dict) -> str:
    lines = [f"{result['backend']}, {result['n']} candidates, {result['dim']}-d embeddings "
             f"(filled in {result['fill_s']} s); baseline p95 {result['baseline']['p95_ms']} ms, "
             f"count(*) p95 {result['count_all']['p95_ms']} ms",
             f"{'request':<36} {'first ms':>9} {'p50 ms':>9} {'p95 ms':>9} {'x baseline':>11}"]
    for name, r in {**result["requests"], **result["other_calls"]}.items():
        ratio = f"{r['ratio_p95_to_baseline']:>11.2f}" if "ratio_p95_to_baseline" in r else ""
        lines.append(f"{name:<36} {r['first_ms']:>9.1f} {r['p50_ms']:>9.1f} {r['p95_ms']:>9.1f} {ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k candidates (default 100k)")
    parser.add_argument("--n", type=int, default=0, help="candidates (overrides --quick)")
    parser.add_argument("--dim", type=int, default=1280, help="embedding dimensions")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per request type")
    parser.add_argument("--catalog", default="", help="an empty catalog URL (default: a temporary SQLite file)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="where dashboard_candidates.json goes")
    args = parser.parse_args(argv)
    n = args.n or (20_000 if args.quick else 100_000)
    if n < 60 or args.dim < 1 or args.repeat < 1:
        parser.error("--n must be >= 60, --dim and --repeat >= 1")
    with tempfile.TemporaryDirectory(prefix="dash-bench-") as tmp:
        result = run(args.catalog or f"sqlite:///{tmp}/catalog.sqlite", n, args.dim, args.repeat)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dashboard_candidates.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["headline"]), flush=True)
    print(table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
