"""Superseded by `benchmarks/selection_scale.py` (B4 in its final form: `python -m
benchmarks.selection_scale`). Kept only as a thin alias for the imports in
tests/cloud_selector/test_selection_engine.py; delete it once that file imports
`benchmarks.selection_scale` instead. `main` keeps the old behaviour (one JSON line and a
table on stdout, no files written)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from benchmarks.selection_scale import B4Result, clustered_embeddings, kcenter_greedy, run, table

__all__ = ["B4Result", "clustered_embeddings", "kcenter_greedy", "run", "table", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="B4 on one synthetic pool (use benchmarks.selection_scale)")
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
