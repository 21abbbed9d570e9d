"""The embedding map: every candidate of one model version as a point in 2-D (import from
`cloud_selector.dashboard_data`, the public face).

PCA, deterministic: the two principal axes are fitted on the centred embeddings of at most
FIT_SAMPLE points (a seeded sample: more points move the axes by less than a pixel) by a seeded
randomized SVD (`principal_axes`; numpy's full SVD is O(n d^2), tens of seconds at 1280
dimensions), every point is projected on them, and each axis' sign is fixed so that its
largest loading is positive (SVD may return either sign). UMAP only when the `umap` package
(umap-learn) imports; it is not a dependency. Above `max_points` candidates, a seeded uniform
sample is drawn (sorted ids, so the same catalog and seed give the same points).

Cost: the embeddings of the drawn points are read from the catalog (4 bytes x dimensions each:
512 MB for 100k points at 1280 dimensions) into one float32 matrix. The web layer should cache
the result (or its `to_json_columns()`) per model version and candidate count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from cloud_selector.catalog import Catalog
from cloud_selector.dashboard_cards import SCORE_COLUMNS, chunks
from cloud_selector.schema import candidates

METHODS = ("pca", "umap")
FIT_SAMPLE = 20_000
OVERSAMPLE = 10
POWER_ITERATIONS = 8
_COLOUR_COLUMNS = (*SCORE_COLUMNS, "predicted_prob")
_ROW_COLUMNS = (candidates.c.id, candidates.c.embedding, candidates.c.state, candidates.c.device_id,
                candidates.c.predicted_class, candidates.c.label, *(candidates.c[n] for n in _COLOUR_COLUMNS))


@dataclass(frozen=True, eq=False)
class EmbeddingMap:
    """Points of one model version: `x`, `y` in [0, 1] (float32), and per point what the map can
    be coloured by. `scores` holds float32 arrays per score column and predicted_prob (NaN where
    unknown)."""

    model_version: int  # 0 when the catalog has no embeddings yet (and the map is empty)
    method: str
    total: int  # the version's candidates, before sampling (the points are those with an embedding)
    ids: list[str]
    x: np.ndarray
    y: np.ndarray
    state: list[str]
    device_id: list[str]
    predicted_class: list[str | None]
    label: list[str | None]
    scores: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def to_json_columns(self) -> dict:
        """A compact columnar dict for the browser: one list per column, floats rounded to 4
        decimals, None for unknown values (JSON has no NaN)."""
        return {"model_version": self.model_version, "method": self.method, "total": self.total,
                "ids": self.ids, "x": _rounded(self.x), "y": _rounded(self.y), "state": self.state,
                "device_id": self.device_id, "predicted_class": self.predicted_class, "label": self.label,
                "scores": {name: _rounded(values) for name, values in self.scores.items()}}


def embedding_map(catalog: Catalog, *, model_version: int | None = None, max_points: int = 100_000,
                  method: str = "pca", seed: int = 0) -> EmbeddingMap:
    """The map of `model_version` (default: the newest version that has candidates with
    embeddings). Raises ValueError for an unknown method, umap without the package, or
    max_points < 1."""
    if method not in METHODS:
        raise ValueError(f"method: one of {', '.join(METHODS)} (got {method!r})")
    if method == "umap":
        try:
            import umap  # noqa: F401  (optional: umap-learn)
        except ImportError:
            raise ValueError("method 'umap' needs the umap-learn package (pip install umap-learn); "
                             "use method 'pca'") from None
    if max_points < 1:
        raise ValueError(f"max_points: at least 1 (got {max_points})")
    rng = np.random.default_rng(seed)
    with catalog.engine.connect() as conn:
        if model_version is None:
            model_version = conn.execute(sa.select(sa.func.max(candidates.c.model_version))
                                         .where(candidates.c.model_version > 0)).scalar() or 0
        ids = conn.execute(sa.select(candidates.c.id).where(candidates.c.model_version == model_version)
                           .order_by(candidates.c.id)).scalars().all()
        total = len(ids)
        if total > max_points:
            ids = [ids[i] for i in np.sort(rng.choice(total, max_points, replace=False))]
        points = _read(conn, ids)
    matrix = points.pop("matrix")
    coords = _umap(matrix, seed) if method == "umap" else _pca(matrix, rng)
    scores = {name: np.array([math.nan if v is None else v for v in points.pop(name)], np.float32)
              for name in _COLOUR_COLUMNS}
    return EmbeddingMap(model_version=model_version, method=method, total=total, x=_unit(coords[:, 0]),
                        y=_unit(coords[:, 1]), scores=scores, **points)


def _read(conn: sa.Connection, ids: list[str]) -> dict:
    """The points of `ids` (sorted): their embeddings as one float32 matrix, filled chunk by
    chunk (the rows' bytes are never all held at once), and a list per other column. A version's
    embeddings share one length (ingest checks it against the manifest); rows with another
    length, or none (imported images), are left out."""
    columns: dict[str, list] = {name: [] for name in ("ids", "state", "device_id", "predicted_class", "label",
                                                       *_COLOUR_COLUMNS)}
    matrix = np.zeros((0, 0), np.float32)
    width, n = 0, 0
    for part in chunks(ids):
        for r in conn.execute(sa.select(*_ROW_COLUMNS).where(candidates.c.id.in_(part)).order_by(candidates.c.id)):
            if not width and r.embedding:
                width = len(r.embedding)
                matrix = np.empty((len(ids), width // 4), np.float32)
            if not r.embedding or len(r.embedding) != width:
                continue
            matrix[n] = np.frombuffer(r.embedding, dtype="<f4")
            n += 1
            columns["ids"].append(r.id)
            for name in list(columns)[1:]:
                columns[name].append(getattr(r, name))
    return {"matrix": matrix[:n], **columns}


def _pca(matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, dim = matrix.shape
    if n < 2 or dim == 0:
        return np.zeros((n, 2), np.float32)
    fit = matrix if n <= FIT_SAMPLE else matrix[np.sort(rng.choice(n, FIT_SAMPLE, replace=False))]
    mean = fit.mean(axis=0, dtype=np.float64).astype(np.float32)
    axes = principal_axes(fit - mean, 2, rng)
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    coords = matrix @ axes.T - mean @ axes.T
    return coords if coords.shape[1] == 2 else np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))


def principal_axes(centred: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The top-k right singular vectors of `centred` (rows: its principal axes), by randomized
    SVD (Halko, Martinsson & Tropp 2011: a seeded Gaussian sketch of k + OVERSAMPLE columns,
    POWER_ITERATIONS re-orthonormalised power steps, then numpy's SVD of the small projection).
    A full SVD of 20k x 1280 takes tens of seconds; this takes a few matrix products. Exact
    when the data's rank is below the sketch's width; on a nearly flat spectrum (the worst case)
    the two axes found keep ~97% of the variance exact PCA's keep, on decaying spectra ~100%."""
    width = k + OVERSAMPLE
    if min(centred.shape) <= width:
        return np.linalg.svd(centred, full_matrices=False)[2][:k].astype(np.float32)
    sketch = centred @ rng.standard_normal((centred.shape[1], width)).astype(np.float32)
    for _ in range(POWER_ITERATIONS):
        sketch = centred @ (centred.T @ np.linalg.qr(sketch)[0])
    basis = np.linalg.qr(sketch)[0]
    return np.linalg.svd(basis.T @ centred, full_matrices=False)[2][:k].astype(np.float32)


def _umap(matrix: np.ndarray, seed: int) -> np.ndarray:
    import umap

    if len(matrix) < 3:
        return np.zeros((len(matrix), 2), np.float32)
    return umap.UMAP(n_components=2, random_state=seed).fit_transform(matrix).astype(np.float32)


def _unit(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1]; a constant axis sits at 0.5."""
    values = values.astype(np.float32)
    if not len(values):
        return values
    low, high = float(values.min()), float(values.max())
    return np.full_like(values, 0.5) if high <= low else ((values - low) / (high - low)).astype(np.float32)


def _rounded(values: np.ndarray) -> list:
    return [None if math.isnan(v) else v for v in np.round(values.astype(np.float64), 4).tolist()]
