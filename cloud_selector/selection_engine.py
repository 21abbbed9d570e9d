"""Run a LightlyOne-style selection config over a pool: which candidates to label, and why.

Public face::

    select(config, pool: SelectionPool) -> SelectionResult
    selection_metrics(embeddings, picked_idx, labels=None, rng=0) -> SelectionMetrics
    set_metrics(embeddings, idx, labels=None) -> SetMetrics

Errors: a config that does not fit the pool (unknown metadata key, tag, score or class name)
raises ``SelectionConfigError`` with the path of the config field; a malformed pool raises
``ValueError`` naming the pool field.

How a selection runs (LightlyOne's algorithm, see docs.lightly.ai "Selection Strategy
Combination"):

1. THRESHOLD strategies filter the candidates first (a missing value never passes).
2. The other strategies are combined greedily, one sample at a time: each gives every
   remaining candidate an *objective* in [0, 1]; the candidate with the largest
   ``prod(objective ** strength)`` is picked; ties go to the lowest pool index. A strength of
   0 switches the objective off (its stopping condition still applies); a negative strength
   inverts it (``objective ** -s``: low objectives win), as LightlyOne documents.
   Objectives are floored at ``OBJECTIVE_FLOOR`` so a zero never turns the product into
   0 * inf; it only ranks its sample last (or first, under a negative strength).
3. The datapool (``already_selected``: earlier selections and labelled items) counts for
   DIVERSITY and BALANCE but is never picked again, so re-runs continue where the last
   one stopped.

Objectives, and the ``raw`` value recorded next to each in a pick's contributions:

- DIVERSITY: raw = Euclidean distance between unit-length embeddings (0..2, LightlyOne's
  unit) to the nearest selected or datapool sample; objective = raw / 2 (1 when nothing is
  selected yet, raw then None). ``stopping_condition_minimum_distance`` makes closer
  candidates ineligible, so no two selected samples are closer than it.
- TYPICALITY: raw = TypiClust's typicality, 1 / mean distance to the k nearest other pool
  samples, datapool included (paper definition: plain, not squared, Euclidean distance);
  objective = raw / the largest among the candidates. Static.
  ``stopping_condition_minimum_typicality`` applies to the objective.
- WEIGHTS: raw = the input value; objective = value / max over the candidates (min-max
  instead when some values are negative), so the product stays scale-free. Static.
- SIMILARITY: raw = distance to the nearest sample of the query tag; objective = 1 - raw/2.
- BALANCE: raw = (target - current distribution) . sample's class vector, in [-1, 1]: how
  much picking the sample moves the selection's histogram (datapool + picks) toward the
  target; objective = (1 + raw) / 2. A picked class's objective drops, a starved class's
  rises, so pure BALANCE round-robins into the target fractions.
- RANDOM input: a seeded uniform draw per pool row.

Scale (100k candidates x 1k picks, D up to 1280, 2 cores; ``ScaleLimits`` holds the
thresholds): typicality's k-NN is exact with FAISS up to ``EXACT_KNN_MAX_WORK`` multiply-adds
and approximate beyond (each row searches its own k-means cell and the nearest ones, about
``APPROX_KNN_WORK`` in all, distances exact; a missed neighbour lowers typicality a little).
DIVERSITY keeps each candidate's distance to its nearest pick and updates it per pick:
lazily when DIVERSITY is the only objective that changes (stale keys are upper bounds, exact
because those distances only shrink): below ``cell_greedy_min_candidates`` with a heap of
candidates, above it with cells (selection_cell_greedy.lazy_cell_greedy: a cell is refreshed only
when it could hold the best key, and only against picks the triangle inequality cannot rule
out); eagerly (O(N*D) per pick) when BALANCE or a negative DIVERSITY strength is in play.
Both lazy loops make the eager loop's picks. All work is float32 on unit vectors, in blocks;
nothing N x N is built.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from cloud_selector.selection_cell_greedy import lazy_cell_greedy
from cloud_selector.selection_config import (
    DEFAULT_NUM_NEAREST_NEIGHBORS,
    BalanceDistribution,
    BalanceStrategy,
    DiversityStrategy,
    EmbeddingsInput,
    MetadataInput,
    PredictionsInput,
    RandomInput,
    ScoresInput,
    SelectionConfig,
    SelectionConfigError,
    SelectionEntry,
    SimilarityStrategy,
    ThresholdOperation,
    ThresholdStrategy,
    TypicalityStrategy,
    WeightsStrategy,
)
from cloud_selector.selection_geometry import (
    APPROX_KNN_WORK,
    EXACT_KNN_MAX_WORK,
    distance_from_dots,
    knn_cell_size,
    knn_scan,
    nearest_dot,
    typicality_scores,
    unit_vectors,
)
from cloud_selector.selection_index import partition_cells
from cloud_selector.selection_records import (
    Contribution,
    PickedSample,
    SelectionPool,
    SelectionResult,
    StopReason,
)

__all__ = [
    "EXACT_KNN_MAX_WORK",
    "OBJECTIVE_FLOOR",
    "Contribution",
    "PickedSample",
    "ScaleLimits",
    "SelectionPool",
    "SelectionResult",
    "StopReason",
    "select",
    "typicality_scores",
]

OBJECTIVE_FLOOR = 1e-12
"""Objectives below this count as this in the product (and its log): a zero ranks last
without producing 0 * inf when another strategy has a negative strength."""

_LAZY_BATCH = 64        # stale heap entries refreshed together (one small matmul)


@dataclass(frozen=True)
class ScaleLimits:
    """Where ``select`` switches from exact work to work that scales (defaults suit 2 cores).

    exact_knn_max_work: typicality's k-NN is exact up to queries * N * D multiply-adds.
    approx_knn_work: beyond it, what the cell search aims to spend (see selection_geometry).
    cell_greedy_min_candidates: from this many candidates on, the pool is cut into k-means
    cells (shared with typicality) and the lazy greedy works cell by cell; below it, a heap
    of single candidates (cheaper to set up; the same picks).
    """

    exact_knn_max_work: float = EXACT_KNN_MAX_WORK
    approx_knn_work: float = APPROX_KNN_WORK
    cell_greedy_min_candidates: int = 5_000


# ---- per-strategy state -----------------------------------------------------------------


def _describe(entry: SelectionEntry) -> str:
    inp = entry.input
    if isinstance(inp, ScoresInput):
        return f"SCORES:{inp.score}"
    if isinstance(inp, MetadataInput):
        return f"METADATA:{inp.key}"
    if isinstance(inp, PredictionsInput):
        return f"PREDICTIONS:{inp.name.value}"
    if isinstance(inp, RandomInput):
        return f"RANDOM:{inp.random_seed}"
    return f"EMBEDDINGS:{inp.tag_name}" if inp.tag_name else "EMBEDDINGS"


def _scalar_input(entry: SelectionEntry, pool: SelectionPool, path: str) -> np.ndarray:
    """The numeric value per pool row (float64, NaN = missing) that WEIGHTS/THRESHOLD read."""
    inp = entry.input
    n = len(pool)
    if isinstance(inp, ScoresInput):
        if inp.score not in pool.scores:
            raise SelectionConfigError(f"{path}.input.score", f"the pool has no {inp.score!r} scores "
                                                              f"(has: {', '.join(sorted(pool.scores)) or 'none'})")
        return pool.scores[inp.score]
    if isinstance(inp, RandomInput):
        return np.random.default_rng(inp.random_seed).random(n)
    if isinstance(inp, PredictionsInput):
        if pool.predictions is None:
            raise SelectionConfigError(f"{path}.input", "the pool has no predictions")
        missing = [c for c in inp.categories if c not in pool.class_names]
        if missing:
            raise SelectionConfigError(f"{path}.input.categories",
                                       f"unknown class {missing[0]!r} (classes: {', '.join(pool.class_names)})")
        wanted = np.isin(np.arange(len(pool.class_names)), [pool.class_names.index(c) for c in inp.categories])
        return wanted[pool.predictions.argmax(axis=1)].astype(np.float64)
    values = _metadata(pool, inp.key, path)
    out = np.full(n, np.nan)
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SelectionConfigError(f"{path}.input.key",
                                       f"metadata {inp.key!r} is not numeric (row {i}: {v!r})")
        out[i] = v
    return out


def _metadata(pool: SelectionPool, key: str, path: str) -> tuple:
    if key not in pool.metadata:
        raise SelectionConfigError(f"{path}.input.key", f"metadata key {key!r} is not in the pool "
                                                        f"(has: {', '.join(sorted(pool.metadata)) or 'none'})")
    return pool.metadata[key]


def _passes(values: np.ndarray, strategy: ThresholdStrategy) -> np.ndarray:
    t = strategy.threshold
    with np.errstate(invalid="ignore"):  # NaN (missing) compares False: never passes
        return {
            ThresholdOperation.BIGGER: values > t,
            ThresholdOperation.BIGGER_EQUAL: values >= t,
            ThresholdOperation.SMALLER: values < t,
            ThresholdOperation.SMALLER_EQUAL: values <= t,
        }[strategy.operation]


def _weights_objective(values: np.ndarray) -> np.ndarray:
    """Candidates' values scaled into [0, 1]: v / max when none is negative (ratios kept, so the
    product is unchanged by the input's unit), min-max otherwise; missing -> 0."""
    known = ~np.isnan(values)
    out = np.zeros(len(values))
    if not known.any():
        return np.ones(len(values))
    lo, hi = values[known].min(), values[known].max()
    if lo >= 0:
        out[known] = values[known] / hi if hi > 0 else 1.0
    else:
        out[known] = (values[known] - lo) / (hi - lo) if hi > lo else 1.0
    return out


class _Balance:
    """The selection's class histogram (datapool + picks) against a target distribution.

    Each sample is a vector over buckets: its class probabilities (predictions), or a one-hot
    metadata category kept as a bucket code (a missing value is code -1: all zeros, neutral).
    Buckets are the classes, or for TARGET the named classes plus one "everything else"
    bucket that holds the remainder of the target.
    """

    def __init__(self, entry: SelectionEntry, pool: SelectionPool, path: str):
        strategy: BalanceStrategy = entry.strategy
        inp = entry.input
        self.dense: np.ndarray | None = None   # [N, B] for predictions
        self.codes: np.ndarray | None = None   # [N] bucket per row for metadata, -1 = missing
        if isinstance(inp, PredictionsInput):
            if pool.predictions is None:
                raise SelectionConfigError(f"{path}.input", "the pool has no predictions")
            sums = pool.predictions.sum(axis=1, keepdims=True)
            if (sums <= 0).any():
                raise ValueError(f"predictions row {int(np.flatnonzero(sums[:, 0] <= 0)[0])} sums to 0")
            names = list(pool.class_names)
            columns = pool.predictions / sums
        else:
            names, codes = self._categories(pool, inp.key, path)
        if strategy.distribution is BalanceDistribution.TARGET:
            for name in strategy.target:
                if name not in names:
                    raise SelectionConfigError(f"{path}.strategy.target.{name}",
                                               f"no sample has class {name!r} (classes: {', '.join(names)})")
            named = [names.index(c) for c in strategy.target]
            remainder = max(0.0, 1.0 - math.fsum(strategy.target.values()))
            self.target = np.array([*strategy.target.values(), remainder])
            if isinstance(inp, PredictionsInput):
                rest = [j for j in range(len(names)) if j not in named]
                self.dense = np.column_stack([columns[:, named], columns[:, rest].sum(axis=1)])
            else:
                remap = np.full(len(names), len(named), dtype=np.int64)
                remap[named] = np.arange(len(named))
                self.codes = np.where(codes >= 0, remap[codes], -1)
        else:
            if isinstance(inp, PredictionsInput):
                self.dense = columns
            else:
                self.codes = codes
            if strategy.distribution is BalanceDistribution.UNIFORM:
                self.target = np.full(len(names), 1.0 / max(1, len(names)))
            else:  # INPUT: the pool's own distribution, so the selection stays representative
                hist = self._histogram(np.ones(len(pool), bool), len(names))
                self.target = hist / hist.sum() if hist.sum() > 0 else hist
        self.counts = self._histogram(pool.already_selected, len(self.target))

    @staticmethod
    def _categories(pool: SelectionPool, key: str, path: str) -> tuple[list[str], np.ndarray]:
        """Metadata values as category names (str of the value; 3.0 reads as "3") and codes."""
        names: list[str] = []
        seen: dict[str, int] = {}
        codes = np.full(len(pool), -1, dtype=np.int64)
        for i, v in enumerate(_metadata(pool, key, path)):
            if v is None:
                continue
            if isinstance(v, float) and not v.is_integer():
                raise SelectionConfigError(f"{path}.input.key", f"metadata {key!r} is numeric "
                                                                f"(row {i}: {v!r}); BALANCE needs categories")
            name = str(int(v)) if isinstance(v, float) else str(v)
            codes[i] = seen.setdefault(name, len(names))
            if codes[i] == len(names):
                names.append(name)
        return names, codes

    def _histogram(self, rows: np.ndarray, n_buckets: int) -> np.ndarray:
        if self.dense is not None:
            return self.dense[rows].sum(axis=0)
        codes = self.codes[rows]
        return np.bincount(codes[codes >= 0], minlength=n_buckets).astype(np.float64)

    def restrict(self, cand: np.ndarray) -> None:
        """Keep the candidates' rows packed, so each step's scoring reads no other rows."""
        self.dense_c = None if self.dense is None else np.ascontiguousarray(self.dense[cand])
        self.codes_c = None if self.codes is None else self.codes[cand]

    def gain(self, positions: np.ndarray) -> np.ndarray:
        """(target - current distribution) . vector, per candidate position, in [-1, 1]."""
        total = self.counts.sum()
        direction = self.target - (self.counts / total if total > 0 else 0.0)
        if self.dense_c is not None:
            return self.dense_c[positions] @ direction
        codes = self.codes_c[positions]
        return np.where(codes >= 0, direction[codes], 0.0)

    def add(self, row: int) -> None:
        if self.dense is not None:
            self.counts = self.counts + self.dense[row]
        elif self.codes[row] >= 0:
            self.counts[self.codes[row]] += 1.0


# ---- select -----------------------------------------------------------------------------


def _log_factor(objective, strength: float):
    return strength * np.log(np.maximum(objective, OBJECTIVE_FLOOR))


def _factor(objective: float, strength: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.exp(strength * math.log(max(objective, OBJECTIVE_FLOOR))))


@dataclass
class _Static:
    index: int
    entry: SelectionEntry
    raw: np.ndarray         # per candidate (NaN = none)
    objective: np.ndarray   # per candidate


def select(config: SelectionConfig, pool: SelectionPool, *, limits: ScaleLimits = ScaleLimits()) -> SelectionResult:
    """Pick samples from ``pool`` as ``config`` asks; deterministic for the same inputs.

    Raises ``SelectionConfigError`` (with the config path) when the config asks for
    something the pool lacks, ``ValueError`` for unusable data (an all-zero embedding).
    """
    candidates = np.flatnonzero(~pool.already_selected)
    requested = config.samples_for(len(candidates))
    entries = list(enumerate(config.strategies))
    paths = {i: f"strategies[{i}]" for i, _ in entries}

    # Every input is checked against the pool before any heavy work starts.
    needs_embeddings = [i for i, e in entries if isinstance(e.input, EmbeddingsInput)]
    if needs_embeddings and pool.embeddings is None:
        raise SelectionConfigError(f"{paths[needs_embeddings[0]]}.input", "the pool has no embeddings")
    for i, e in entries:
        if isinstance(e.strategy, SimilarityStrategy) and e.input.tag_name not in pool.tags:
            raise SelectionConfigError(f"{paths[i]}.input.tag_name",
                                       f"no tag {e.input.tag_name!r} in the pool (tags: {', '.join(sorted(pool.tags)) or 'none'})")
    scalars = {i: _scalar_input(e, pool, paths[i]) for i, e in entries
               if isinstance(e.strategy, (ThresholdStrategy, WeightsStrategy))}
    balances = {i: _Balance(e, pool, paths[i]) for i, e in entries if isinstance(e.strategy, BalanceStrategy)}

    # 1. THRESHOLD filters.
    keep = np.ones(len(candidates), bool)
    for i, e in entries:
        if isinstance(e.strategy, ThresholdStrategy):
            keep &= _passes(scalars[i][candidates], e.strategy)
    cand = candidates[keep]
    n_after = len(cand)

    unit = unit_vectors(pool.embeddings) if needs_embeddings else None
    cells = None  # k-means cells of the whole pool, when it is big: typicality and greedy share them
    uses_cells = any(isinstance(e.strategy, (DiversityStrategy, TypicalityStrategy)) for _, e in entries)
    if unit is not None and uses_cells and len(cand) >= limits.cell_greedy_min_candidates:
        k = max((e.strategy.num_nearest_neighbors for _, e in entries if isinstance(e.strategy, TypicalityStrategy)),
                default=DEFAULT_NUM_NEAREST_NEIGHBORS)
        cells = partition_cells(unit, knn_cell_size(knn_scan(len(cand), len(unit), unit.shape[1], k,
                                                             limits.approx_knn_work)))
    statics: list[_Static] = []
    too_atypical = np.zeros(len(cand), bool)
    for i, e in entries:
        s = e.strategy
        if isinstance(s, TypicalityStrategy):
            typ = typicality_scores(unit, s.num_nearest_neighbors, rows=cand, partition=cells,
                                    exact_max_work=limits.exact_knn_max_work, approx_work=limits.approx_knn_work)
            objective = typ / typ.max() if len(typ) else typ
            statics.append(_Static(i, e, typ, objective))
            if s.stopping_condition_minimum_typicality is not None:
                too_atypical |= objective < s.stopping_condition_minimum_typicality
        elif isinstance(s, WeightsStrategy):
            raw = scalars[i][cand]
            statics.append(_Static(i, e, raw, _weights_objective(raw)))
        elif isinstance(s, SimilarityStrategy):
            queries = np.ascontiguousarray(unit[pool.tags[e.input.tag_name]])
            if len(queries) == 0:
                raise SelectionConfigError(f"{paths[i]}.input.tag_name",
                                           f"tag {e.input.tag_name!r} holds no samples")
            dist = distance_from_dots(nearest_dot(np.ascontiguousarray(unit[cand]), queries)).astype(np.float64)
            statics.append(_Static(i, e, dist, 1.0 - dist / 2.0))

    static_log = np.zeros(len(cand))
    for st in statics:
        strength = st.entry.strategy.strength
        if strength != 0:
            static_log += _log_factor(st.objective, strength)

    diversities = [(i, e) for i, e in entries if isinstance(e.strategy, DiversityStrategy)]
    min_distance = max((e.strategy.stopping_condition_minimum_distance or 0.0 for _, e in diversities),
                       default=0.0)
    state = _GreedyState(pool, cand, unit if diversities else None, static_log, statics, diversities,
                         balances, entries, min_distance, too_atypical, requested)
    lazy = not any(e.strategy.strength != 0 for i, e in entries if i in balances) and \
        all(e.strategy.strength >= 0 for _, e in diversities)
    if lazy and cells is not None and diversities:
        reason = state.run_cells(cells.restricted(cand))
    else:
        reason = state.run_lazy() if lazy else state.run_eager()
    return SelectionResult(picks=tuple(state.picks), requested=requested, n_candidates=len(candidates),
                           n_after_thresholds=n_after, stop_reason=reason)


class _GreedyState:
    """The greedy loop's state: candidates (positions into ``cand``), their nearest-pick
    distances, the balance histograms and the picks so far."""

    def __init__(self, pool, cand, unit, static_log, statics, diversities, balances, entries,
                 min_distance, too_atypical, requested):
        self.pool, self.cand, self.static_log = pool, cand, static_log
        self.statics, self.diversities, self.balances = statics, diversities, balances
        self.entries, self.requested = entries, requested
        self.min_distance = min_distance
        self.alive = ~too_atypical                 # not picked, not too atypical
        self.too_atypical = too_atypical
        self.picked = np.zeros(len(cand), bool)
        for balance in balances.values():
            balance.restrict(cand)
        self.picks: list[PickedSample] = []
        self.max_sums = [(i, e.strategy.stopping_condition_max_sum, 0.0) for i, e in entries
                         if isinstance(e.strategy, WeightsStrategy) and e.strategy.stopping_condition_max_sum is not None]
        self.static_by_index = {st.index: st for st in statics}
        self.vecs = None
        if unit is not None:
            # Candidates' vectors packed once (contiguous), and their distance to the datapool.
            self.vecs = unit if len(cand) == len(unit) else np.ascontiguousarray(unit[cand])
            anchors = np.ascontiguousarray(unit[pool.already_selected])
            self.dist = (distance_from_dots(nearest_dot(self.vecs, anchors)) if len(anchors) and len(cand)
                         else np.full(len(cand), np.inf, dtype=np.float32))
            self.pick_vecs = np.empty((max(0, min(requested, len(cand))), unit.shape[1]), np.float32)

    # -- scoring --------------------------------------------------------------------------

    def _diversity_objective(self, dist):
        return np.where(np.isinf(dist), 1.0, np.minimum(dist, 2.0) / 2.0)

    def _dynamic_log(self, positions: np.ndarray) -> np.ndarray:
        out = np.zeros(len(positions))
        if self.diversities:
            objective = self._diversity_objective(self.dist[positions].astype(np.float64))
            for _, e in self.diversities:
                if e.strategy.strength != 0:
                    out += _log_factor(objective, e.strategy.strength)
        for i, balance in self.balances.items():
            strength = self.entries[i][1].strategy.strength
            if strength != 0:
                out += _log_factor((1.0 + balance.gain(positions)) / 2.0, strength)
        return out

    # -- picking --------------------------------------------------------------------------

    def _pick(self, j: int) -> bool:
        """Record position ``j`` as the next pick; returns False when a max-sum cap is hit."""
        row = int(self.cand[j])
        contributions = []
        for i, e in self.entries:
            s = e.strategy
            if isinstance(s, ThresholdStrategy):
                continue
            if isinstance(s, DiversityStrategy):
                d = float(self.dist[j])
                raw, objective = (None if math.isinf(d) else d), float(self._diversity_objective(np.float64(d)))
            elif isinstance(s, BalanceStrategy):
                raw = float(self.balances[i].gain(np.array([j]))[0])
                objective = (1.0 + raw) / 2.0
            else:
                st = self.static_by_index[i]
                raw = None if np.isnan(st.raw[j]) else float(st.raw[j])
                objective = float(st.objective[j])
            contributions.append(Contribution(i, s.type.value, _describe(e), raw, objective, s.strength,
                                              _factor(objective, s.strength)))
        score = math.prod(c.factor for c in contributions)
        self.picks.append(PickedSample(len(self.picks), row, self.pool.ids[row], score, tuple(contributions)))
        self.alive[j] = False
        self.picked[j] = True
        for balance in self.balances.values():
            balance.add(row)
        if self.vecs is not None:
            self.pick_vecs[len(self.picks) - 1] = self.vecs[j]
        capped = False
        for k, (i, cap, total) in enumerate(self.max_sums):
            value = self.static_by_index[i].raw[j]
            total += 0.0 if np.isnan(value) else float(value)
            self.max_sums[k] = (i, cap, total)
            capped |= total >= cap
        return not capped

    def _stop_reason(self) -> StopReason:
        """Why no candidate is eligible: one not picked and typical enough can only have been
        ruled out by the minimum distance."""
        if (~self.picked & ~self.too_atypical).any():
            return StopReason.MINIMUM_DISTANCE
        if self.too_atypical.any():
            return StopReason.MINIMUM_TYPICALITY
        return StopReason.EXHAUSTED

    def run_eager(self) -> StopReason:
        """Every step rescores every candidate: needed when an objective can grow again
        (BALANCE, or DIVERSITY under a negative strength)."""
        everyone = np.arange(len(self.cand))
        while len(self.picks) < self.requested:
            eligible = self.alive.copy()
            if self.vecs is not None and self.min_distance > 0:
                eligible &= self.dist >= self.min_distance
            if not eligible.any():
                return self._stop_reason()
            key = np.where(eligible, self.static_log + self._dynamic_log(everyone), -np.inf)
            j = int(np.argmax(key))
            if not self._pick(j):
                return StopReason.MAX_SUM
            if self.vecs is not None:
                np.minimum(self.dist, distance_from_dots(self.vecs @ self.vecs[j]), out=self.dist)
        return StopReason.N_SAMPLES

    def run_cells(self, cells) -> StopReason:
        """The lazy loop, cell by cell (``cells`` over candidate positions); same picks."""
        if self.min_distance > 0:
            self.alive &= self.dist >= self.min_distance
        outcome = lazy_cell_greedy(self.vecs, cells, self.dist, self.alive,
                                   lambda pos: self.static_log[pos] + self._dynamic_log(pos),
                                   self._pick, self.requested, self.min_distance)
        if outcome == "n_samples":
            return StopReason.N_SAMPLES
        return StopReason.MAX_SUM if outcome == "max_sum" else self._stop_reason()

    def run_lazy(self) -> StopReason:
        """Lazy greedy: every stored key is an upper bound (distances to picks only shrink,
        nothing else moves), so only keys at the top of the heap are refreshed against the
        picks made since their last refresh, a batch at a time; a fresh top is exactly the
        eager argmax, ties to the lowest index because the heap orders by (-key, position).
        Refreshing a few keys that were not needed yet costs a little and changes nothing."""
        positions = np.flatnonzero(self.alive)
        if self.vecs is not None and self.min_distance > 0:
            positions = positions[self.dist[positions] >= self.min_distance]
        keys = self.static_log[positions] + self._dynamic_log(positions)
        heap = list(zip((-keys).tolist(), positions.tolist()))
        heapq.heapify(heap)
        fresh_at = np.zeros(len(self.cand), np.int64)  # picks each stored distance accounts for
        while len(self.picks) < self.requested:
            made = len(self.picks)
            if not heap:
                return self._stop_reason()
            if fresh_at[heap[0][1]] == made:
                if not self._pick(heapq.heappop(heap)[1]):
                    return StopReason.MAX_SUM
                continue
            stale, held = [], []
            while heap and len(stale) < _LAZY_BATCH:
                item = heapq.heappop(heap)
                if fresh_at[item[1]] == made:
                    held.append(item)
                else:
                    stale.append(item[1])
            for item in held:
                heapq.heappush(heap, item)
            batch = np.array(stale, dtype=np.int64)
            if self.vecs is not None:
                # Picks a candidate has already seen are harmless to see again (min is idempotent).
                since = self.pick_vecs[int(fresh_at[batch].min()):made]
                newest = distance_from_dots(self.vecs[batch] @ since.T).min(axis=1)
                self.dist[batch] = np.minimum(self.dist[batch], newest)
                batch = batch[self.dist[batch] >= self.min_distance]  # too close: gone for good
            fresh_at[batch] = made
            keys = self.static_log[batch] + self._dynamic_log(batch)
            for item in zip((-keys).tolist(), batch.tolist()):
                heapq.heappush(heap, item)
        return StopReason.N_SAMPLES
