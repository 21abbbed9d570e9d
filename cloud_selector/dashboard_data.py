"""What the dashboard shows and does, as plain functions over the catalog (no web code here).

The public face of the dashboard's data layer; the pages import from here only. Everything
takes the `Catalog` first and returns frozen dataclasses:

    candidate_page(catalog, CandidateFilter.from_query(params), sort=..., page=...)  the grid
    candidate_detail(catalog, id)          card, class probabilities, neighbours, duplicates,
                                           the runs that picked it and why, label history
    candidate_neighbours(catalog, id)      the neighbours alone (the slow part: load them lazily)
    embedding_map(catalog)                 2-D PCA (or UMAP) of one model version's embeddings
    overview(catalog)                      per-day funnel, model versions, rollout, devices online
    fleet(catalog), rollout_progress(catalog)
    queue_for_labeling / reject / tag / untag, label_queue_next / queue_progress, filter_options

Speed: the grid answers from the covering index ix_candidates_dashboard (migration 0007 says
why): one COUNT, one query for the page's ids, one for their cards, one for their tags, and
never a blob, an embedding or a probability vector. On SQLite every filter term is written
`+column` (SQLite's documented way to keep a term from choosing an index): the planner then
walks or scans that narrow index instead of picking, say, the state index and reading 70k wide
rows to check their device. PostgreSQL plans with its statistics and gets the plain terms.
benchmarks/dashboard_candidates.py measures it at 100k candidates.

Errors: ValueError (a filter, sort or page that cannot be; the message names the field),
UnknownCandidates (KeyError) from the catalog for ids it lacks, InvalidLabel for a bad tag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import sqlalchemy as sa
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from cloud_selector.catalog import MAX_LABEL_CHARS, STATES, Catalog
from cloud_selector.dashboard_actions import (
    FilterOptions, QueueProgress, filter_options, label_queue_next, queue_for_labeling, queue_progress, reject, tag,
    untag,
)
from cloud_selector.dashboard_cards import SCORE_COLUMNS, CandidateCard, CandidateRef, load_cards
from cloud_selector.dashboard_detail import (
    CandidateDetail, ClassProbability, Neighbour, SelectionReason, candidate_detail, candidate_neighbours,
)
from cloud_selector.dashboard_map import EmbeddingMap, embedding_map
from cloud_selector.dashboard_stats import (
    DayStats, DeviceHealth, DeviceRollout, DeviceRow, ModelStats, Overview, RolloutProgress, fleet, overview,
    rollout_progress,
)
from cloud_selector.schema import candidate_tags, candidates

__all__ = [
    "DEFAULT_PER_PAGE", "FILTER_KEYS", "MAX_PER_PAGE", "NO_VALUE", "PAGE_KEYS", "RANGE_COLUMNS", "SCORE_COLUMNS", "SORT_KEYS",
    "CandidateCard", "CandidateDetail", "CandidateFilter", "CandidatePage", "CandidateRef", "ClassProbability",
    "DayStats", "DeviceHealth", "DeviceRollout", "DeviceRow", "EmbeddingMap", "FilterOptions", "ModelStats",
    "Neighbour", "Overview", "PageRequest", "QueueProgress", "RolloutProgress", "SelectionReason",
    "candidate_detail", "candidate_neighbours", "candidate_page", "embedding_map", "filter_options", "fleet",
    "label_queue_next", "overview", "queue_for_labeling", "queue_progress", "reject", "rollout_progress", "tag", "untag",
]

NO_VALUE = "__none__"  # as predicted_class: no prediction ("unknown"); as label: unlabeled
RANGE_COLUMNS = (*SCORE_COLUMNS, "predicted_prob")
SORT_KEYS = ("received_ms", "capture_time_ms", *RANGE_COLUMNS)
PAGE_KEYS = ("sort", "order", "page", "per_page")  # query keys PageRequest reads, CandidateFilter skips
DEFAULT_PER_PAGE = 60
MAX_PER_PAGE = 200
_TEXT_LIMITS = {"device_id": 128, "reason": 32, "predicted_class": MAX_LABEL_CHARS, "label": MAX_LABEL_CHARS,
                "tag": 64}


@dataclass(frozen=True)
class CandidateFilter:
    """Which candidates the grid lists; None = any. Text matches exactly; `since_ms` <=
    received_ms < `until_ms`; score bounds are inclusive (a bound on predicted_prob leaves out
    candidates without a prediction). Invalid values raise ValueError naming the field."""

    device_id: str | None = None
    state: str | None = None
    reason: str | None = None
    predicted_class: str | None = None  # or NO_VALUE
    label: str | None = None  # or NO_VALUE
    tag: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    min_least_confidence: float | None = None
    max_least_confidence: float | None = None
    min_margin: float | None = None
    max_margin: float | None = None
    min_entropy: float | None = None
    max_entropy: float | None = None
    min_novelty: float | None = None
    max_novelty: float | None = None
    min_combined: float | None = None
    max_combined: float | None = None
    min_predicted_prob: float | None = None
    max_predicted_prob: float | None = None

    def __post_init__(self) -> None:
        for name, limit in _TEXT_LIMITS.items():
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or len(value) > limit
                                      or not value.isprintable()):
                raise ValueError(f"{name}: 1 to {limit} printable characters (got {str(value)[:40]!r})")
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"state: one of {', '.join(STATES)} (got {self.state[:40]!r})")
        for name in ("since_ms", "until_ms"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name}: a time in ms since the epoch (got {value!r})")
        if self.since_ms is not None and self.until_ms is not None and self.since_ms >= self.until_ms:
            raise ValueError(f"since_ms: must be before until_ms ({self.since_ms} >= {self.until_ms})")
        for column in RANGE_COLUMNS:
            low, high = getattr(self, f"min_{column}"), getattr(self, f"max_{column}")
            for name, value in ((f"min_{column}", low), (f"max_{column}", high)):
                if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                          or not math.isfinite(value)):
                    raise ValueError(f"{name}: a finite number (got {value!r})")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{column}: must not exceed max_{column} ({low} > {high})")

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> CandidateFilter:
        """From a request's query parameters (strings). Empty values mean "any" (what an empty
        form field sends); PAGE_KEYS are skipped (PageRequest reads them); any other key raises
        ValueError, so a misspelt filter never silently shows everything (a page with other
        parameters of its own passes only FILTER_KEYS and PAGE_KEYS)."""
        unknown = sorted(set(params) - set(FILTER_KEYS) - set(PAGE_KEYS))
        if unknown:
            raise ValueError(f"{unknown[0]}: not a filter (filters: {', '.join(FILTER_KEYS)})")
        values: dict = {}
        for name, raw in params.items():
            text = str(raw).strip()
            if name in PAGE_KEYS or not text:
                continue
            if name in ("since_ms", "until_ms"):
                values[name] = _parse(name, text, int, "a whole number")
            elif name.startswith(("min_", "max_")):
                values[name] = _parse(name, text, float, "a number")
            else:
                values[name] = text
        return cls(**values)

    def to_query(self) -> dict[str, str]:
        """The filters that are set, as query parameters (from_query's inverse: for links)."""
        return {f.name: str(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    def conditions(self, *, planner_hints: bool = False) -> list[sa.ColumnElement[bool]]:
        """The WHERE terms. planner_hints (SQLite): every term but the received_ms range is
        written `+column`, so the planner uses ix_candidates_dashboard (module docstring)."""
        def col(name: str):
            column = candidates.c[name]
            return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type) \
                if planner_hints else column

        terms = []
        for name in ("device_id", "state", "reason", "predicted_class", "label"):
            value = getattr(self, name)
            if value == NO_VALUE and name in ("predicted_class", "label"):
                terms.append(col(name).is_(None))
            elif value is not None:
                terms.append(col(name) == value)
        if self.tag is not None:
            tagged = sa.select(candidate_tags.c.candidate_id).where(candidate_tags.c.tag == self.tag)
            terms.append(col("id").in_(tagged))
        if self.since_ms is not None:
            terms.append(candidates.c.received_ms >= self.since_ms)
        if self.until_ms is not None:
            terms.append(candidates.c.received_ms < self.until_ms)
        for column in RANGE_COLUMNS:
            low, high = getattr(self, f"min_{column}"), getattr(self, f"max_{column}")
            if low is not None:
                terms.append(col(column) >= low)
            if high is not None:
                terms.append(col(column) <= high)
        return terms


FILTER_KEYS = tuple(f.name for f in fields(CandidateFilter))  # the query keys CandidateFilter reads


def _parse(name: str, text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}: {what} (got {text[:40]!r})") from None


@dataclass(frozen=True)
class PageRequest:
    """Sort and page of the grid; `from_query` reads sort, order (asc | desc), page, per_page."""

    sort: str = "received_ms"
    descending: bool = True
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEYS:
            raise ValueError(f"sort: one of {', '.join(SORT_KEYS)} (got {str(self.sort)[:40]!r})")
        for name in ("page", "per_page"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: a whole number >= 1 (got {value!r})")

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> PageRequest:
        values: dict = {}
        if params.get("sort", "").strip():
            values["sort"] = params["sort"].strip()
        order = params.get("order", "").strip().lower()
        if order:
            if order not in ("asc", "desc"):
                raise ValueError(f"order: asc or desc (got {order[:40]!r})")
            values["descending"] = order == "desc"
        for name in ("page", "per_page"):
            text = params.get(name, "").strip()
            if text:
                values[name] = _parse(name, text, int, "a whole number >= 1")
        return cls(**values)


@dataclass(frozen=True)
class CandidatePage:
    """One page of the grid. `pages` is at least 1 (page 1 of an empty result exists); a page
    past the end has no items. `per_page` is what was applied (at most MAX_PER_PAGE)."""

    items: list[CandidateCard]
    total: int
    page: int
    per_page: int
    pages: int

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def candidate_page(catalog: Catalog, filter: CandidateFilter = CandidateFilter(), *, sort: str = "received_ms",
                   descending: bool = True, page: int = 1, per_page: int = DEFAULT_PER_PAGE) -> CandidatePage:
    """The candidates matching `filter`, sorted by `sort` (SORT_KEYS; ties broken by id in the
    same direction; candidates without predicted_prob come last either way), page `page` of
    `per_page` (capped at MAX_PER_PAGE). Raises ValueError for a bad sort or page."""
    request = PageRequest(sort=sort, descending=descending, page=page, per_page=per_page)
    per_page = min(request.per_page, MAX_PER_PAGE)
    where = filter.conditions(planner_hints=catalog.engine.dialect.name == "sqlite")
    direction = sa.desc if descending else sa.asc
    order = [direction(candidates.c[sort]), direction(candidates.c.id)]
    if sort == "predicted_prob":
        order[0] = order[0].nulls_last()
    offset = (page - 1) * per_page
    with catalog.engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(candidates).where(*where)).scalar_one()
        ids = [] if offset >= total else conn.execute(
            sa.select(candidates.c.id).where(*where).order_by(*order).limit(per_page).offset(offset)).scalars().all()
        items = load_cards(conn, ids)
    return CandidatePage(items=items, total=total, page=page, per_page=per_page,
                         pages=max(1, math.ceil(total / per_page)))
