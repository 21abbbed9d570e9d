"""The options of one selection round and the RoundConfig they make, shared by `cloud-selector
select` and `serve`'s scheduled rounds (cloud_selector/serve_command.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud_selector.rounds import RoundConfig


def round_config(args) -> RoundConfig:
    """The selection a `select` or a scheduled round runs: --config FILE (LightlyOne's JSON
    schema) or the typicality x diversity default from the flags. Raises SelectionConfigError."""
    from cloud_selector.rounds import RoundConfig
    from cloud_selector.selection_config import SelectionConfigError

    selection = None
    if args.config:
        try:
            selection = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SelectionConfigError(str(args.config), f"not a readable JSON selection config ({exc})") from exc
    config = RoundConfig(n_samples=args.n, duplicate_distance=args.duplicate_distance,
                         duplicate_embedding_distance=args.duplicate_embedding_distance,
                         typicality_strength=args.typicality_strength, diversity_strength=args.diversity_strength,
                         num_nearest_neighbors=args.k, selection=selection)
    if config.duplicate_distance <= 0 and config.duplicate_embedding_distance <= 0:
        raise SelectionConfigError("", "--duplicate-distance and --duplicate-embedding-distance cannot both be 0")
    config.selection_config()
    return config


def add_selection_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The options of one selection round, shared by `select` and `serve`'s schedule."""
    p.add_argument(f"--{prefix}config", dest="config", type=Path, metavar="SEL.json",
                   help="a LightlyOne selection config (n_samples | proportion_samples, strategies); overrides "
                        "the typicality x diversity default below")
    p.add_argument(f"--{prefix}n", dest="n", type=int, default=50, help="how many to select (default 50)")
    p.add_argument("--duplicate-distance", type=float, default=0.2,
                   help="shift-tolerant appearance distance (RMS of standardised grey thumbnails) under which a "
                        "candidate repeats an earlier one or a selected, queued or labeled one (default 0.2; 0 = "
                        "embeddings alone decide, with --duplicate-embedding-distance)")
    p.add_argument("--duplicate-embedding-distance", type=float, default=0.0,
                   help="cosine distance between embeddings under which a candidate may repeat another (default 0: "
                        "any of its 10 nearest, confirmed by appearance)")
    p.add_argument("--typicality-strength", type=float, default=1.0)
    p.add_argument("--diversity-strength", type=float, default=1.0)
    p.add_argument("--k", type=int, default=10, help="neighbours for typicality (default 10)")
