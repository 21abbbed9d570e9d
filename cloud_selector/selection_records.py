"""The records a selection reads and returns: the pool (validated once, on construction), and
each pick with the contribution of every strategy (why it was picked). The algorithm that
fills them is cloud_selector/selection_engine.py, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SelectionPool:
    """Everything a selection can read, one row per sample.

    ``already_selected`` rows are the datapool: they steer DIVERSITY and BALANCE and count
    for TYPICALITY's density and SIMILARITY's query set, but are never picked. ``tags`` are
    boolean masks (SIMILARITY's query sets). ``metadata`` values are str, int, float or None
    (missing); a NaN score is missing too (WEIGHTS ranks it lowest, THRESHOLD drops it).
    Arrays are validated and stored as numpy arrays of fixed dtypes.
    """

    ids: Sequence[str]
    embeddings: np.ndarray | None = None              # float32 [N, D]
    scores: Mapping[str, np.ndarray] = field(default_factory=dict)   # name -> float64 [N]
    predictions: np.ndarray | None = None             # float [N, C] class probabilities
    class_names: Sequence[str] = ()
    metadata: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    already_selected: np.ndarray | None = None        # bool [N]
    tags: Mapping[str, np.ndarray] = field(default_factory=dict)     # name -> bool [N]

    def __post_init__(self):
        ids = list(self.ids)
        n = len(ids)
        if not all(isinstance(i, str) for i in ids):
            raise ValueError("ids must be strings")
        if len(set(ids)) != n:
            raise ValueError("ids must be unique")
        put = lambda name, value: object.__setattr__(self, name, value)
        put("ids", tuple(ids))
        if self.embeddings is not None:
            emb = np.ascontiguousarray(self.embeddings, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != n:
                raise ValueError(f"embeddings must be [{n}, D], got shape {emb.shape}")
            if not np.isfinite(emb).all():
                raise ValueError("embeddings contain non-finite values (NaN or inf)")
            put("embeddings", emb)
        scores = {}
        for name, values in self.scores.items():
            arr = np.asarray(values, dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"scores[{name!r}] must have shape ({n},), got {arr.shape}")
            scores[str(name)] = arr
        put("scores", scores)
        if self.predictions is not None:
            pred = np.asarray(self.predictions, dtype=np.float64)
            if pred.ndim != 2 or pred.shape[0] != n:
                raise ValueError(f"predictions must be [{n}, C], got shape {pred.shape}")
            if not np.isfinite(pred).all() or (pred < 0).any():
                raise ValueError("predictions must be finite, non-negative class probabilities")
            names = tuple(str(c) for c in self.class_names) or tuple(str(c) for c in range(pred.shape[1]))
            if len(names) != pred.shape[1] or len(set(names)) != len(names):
                raise ValueError(f"class_names must be {pred.shape[1]} unique names, got {list(self.class_names)}")
            put("predictions", pred)
            put("class_names", names)
        else:
            put("class_names", tuple(str(c) for c in self.class_names))
        metadata = {}
        for key, values in self.metadata.items():
            values = list(values)
            if len(values) != n:
                raise ValueError(f"metadata[{key!r}] has {len(values)} values for {n} samples")
            for i, v in enumerate(values):
                if v is not None and not isinstance(v, (str, int, float)):
                    raise ValueError(f"metadata[{key!r}][{i}] must be str, number or None, got {v!r}")
            metadata[str(key)] = tuple(values)
        put("metadata", metadata)
        sel = np.zeros(n, bool) if self.already_selected is None else np.asarray(self.already_selected)
        if sel.shape != (n,) or sel.dtype != bool:
            raise ValueError(f"already_selected must be bool [{n}], got {sel.dtype} {sel.shape}")
        put("already_selected", sel)
        tags = {}
        for name, mask in self.tags.items():
            mask = np.asarray(mask)
            if mask.shape != (n,) or mask.dtype != bool:
                raise ValueError(f"tags[{name!r}] must be bool [{n}], got {mask.dtype} {mask.shape}")
            tags[str(name)] = mask
        put("tags", tags)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Contribution:
    """One strategy's part in a pick: ``factor = max(objective, selection_engine.OBJECTIVE_FLOOR) ** strength``.

    ``raw`` is the strategy's own quantity (distance, typicality, value, balance gain; see
    the module docstring), None where there is none (DIVERSITY before anything is selected,
    a missing metadata value).
    """

    strategy_index: int   # position in config.strategies
    strategy: str         # "DIVERSITY", ...
    input: str            # "EMBEDDINGS", "SCORES:entropy", "METADATA:device_id", ...
    raw: float | None
    objective: float
    strength: float
    factor: float


@dataclass(frozen=True)
class PickedSample:
    rank: int             # 0 = picked first
    index: int            # row in the pool
    id: str
    score: float          # product of the contributions' factors
    contributions: tuple[Contribution, ...]


class StopReason(str, Enum):
    N_SAMPLES = "n_samples"                    # picked as many as asked
    EXHAUSTED = "exhausted"                    # nothing left after THRESHOLD and earlier picks
    MINIMUM_DISTANCE = "minimum_distance"      # everything left is too close to a pick
    MINIMUM_TYPICALITY = "minimum_typicality"  # everything left is too atypical
    MAX_SUM = "max_sum"                        # the picks' WEIGHTS input reached its cap


@dataclass(frozen=True)
class SelectionResult:
    picks: tuple[PickedSample, ...]
    requested: int            # n_samples, or proportion_samples applied to n_candidates
    n_candidates: int         # pool rows not already selected
    n_after_thresholds: int   # of those, how many passed every THRESHOLD
    stop_reason: StopReason

    @property
    def indices(self) -> list[int]:
        return [p.index for p in self.picks]

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.picks]
