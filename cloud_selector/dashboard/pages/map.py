"""The embedding map: every candidate of the newest model version as a point (PCA by default,
UMAP when umap-learn is installed), coloured by predicted class, label, state, device or any
score; hover shows the thumbnail, a lasso or box selects, and a labeler queues the selection
(POST /api/candidates/queue). The page is a shell; static/map.js fetches /api/map?color=NAME
and draws with static/scatter.js (WebGL); `&only=color` sends the colours alone (the points
the browser already has: a few MB fewer at 100k).

Cost and caching: `embedding_map` reads every embedding of the version (seconds at 100k points
of 1280 dimensions), so its columns are kept per app and method until a candidate arrives (the
key is the count and newest arrival). State and label change all day (labeling, queueing), so
they are read fresh when the map is coloured by them: one query of three short columns.
"""

from __future__ import annotations

import importlib.util
import threading

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cloud_selector import dashboard_data as data
from cloud_selector.catalog import STATES
from cloud_selector.dashboard.pages.candidates import MAX_IDS
from cloud_selector.dashboard.web import LABELER, BadRequest, current_user, has_role, page, render, services
from cloud_selector.schema import candidates

CATEGORIES = {"class": "predicted class", "label": "label", "state": "state", "device": "device"}
SCORES = {"least_confidence": "least confidence", "margin": "margin", "entropy": "entropy", "novelty": "novelty",
          "combined": "combined score", "predicted_prob": "predicted probability"}
FRESH = ("state", "label")  # read at each request, not from the cached map
UNKNOWN = {"class": "unknown", "label": "unlabeled", "state": "?", "device": "?"}

_lock = threading.Lock()  # one map computed at a time (each may take seconds and 0.5 GB at 100k)


def methods() -> list[str]:
    return ["pca", "umap"] if importlib.util.find_spec("umap") is not None else ["pca"]


def map_page(request: Request) -> Response:
    return render(request, "map.html", {"categories": CATEGORIES, "scores": SCORES, "methods": methods(),
                                        "can_queue": has_role(current_user(request), LABELER), "max_queue": MAX_IDS})


def _version_key(catalog) -> tuple:
    with catalog.engine.connect() as conn:
        return tuple(conn.execute(sa.select(sa.func.count(), sa.func.max(candidates.c.received_ms))
                                  .select_from(candidates)).one())


def cached_columns(request: Request, method: str) -> dict:
    """`embedding_map(...).to_json_columns()`, recomputed only when candidates arrived."""
    catalog, state = services(request).catalog, request.app.state
    key = (method, _version_key(catalog))
    with _lock:
        cache = getattr(state, "review_map_cache", None) or {}
        if method in cache and cache[method][0] == key:
            return cache[method][1]
        try:
            columns = data.embedding_map(catalog, method=method).to_json_columns()
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        state.review_map_cache = {**cache, method: (key, columns)}
        return columns


def _fresh(catalog, model_version: int, ids: list[str], name: str) -> list:
    """The current state or label of each point (they change faster than the map)."""
    with catalog.engine.connect() as conn:
        now = dict(conn.execute(sa.select(candidates.c.id, candidates.c[name])
                                .where(candidates.c.model_version == model_version)).all())
    return [now.get(cid) for cid in ids]


def _encode(by: str, values: list) -> dict:
    """Category codes (a small list of names and one int per point), or the numbers as they are."""
    if by in SCORES:
        present = [v for v in values if v is not None]
        return {"by": by, "kind": "number", "values": values, "min": min(present, default=0.0),
                "max": max(present, default=1.0)}
    names = [UNKNOWN[by] if v is None else str(v) for v in values]
    found = set(names)
    order = [s for s in STATES if s in found] if by == "state" else sorted(found - {UNKNOWN[by]})
    if by != "state" and UNKNOWN[by] in found:
        order.append(UNKNOWN[by])
    index = {name: i for i, name in enumerate(order)}
    return {"by": by, "kind": "category", "categories": order, "values": [index[n] for n in names]}


def api_map(request: Request) -> Response:
    by = request.query_params.get("color", "class")
    method = request.query_params.get("method", "pca")
    if by not in CATEGORIES and by not in SCORES:
        raise BadRequest(f"color: one of {', '.join([*CATEGORIES, *SCORES])} (got {by[:40]!r})")
    if method not in methods():
        hint = " (install umap-learn for umap)" if method == "umap" else ""
        raise BadRequest(f"method: one of {', '.join(methods())} (got {method[:40]!r}){hint}")
    columns = cached_columns(request, method)
    ids = columns["ids"]
    if by in FRESH:
        values = _fresh(services(request).catalog, columns["model_version"], ids, by)
    elif by in SCORES:
        values = columns["scores"][by]
    else:
        values = columns["predicted_class" if by == "class" else "device_id"]
    head = {"model_version": columns["model_version"], "method": columns["method"], "total": columns["total"],
            "count": len(ids), "color": _encode(by, values)}
    if request.query_params.get("only") == "color":  # a new colouring of the points the browser has
        return JSONResponse({**head, "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None})
    return JSONResponse({**head, "ids": ids, "x": columns["x"], "y": columns["y"]})


def routes() -> list:
    return [
        page("/map", map_page, nav="Map"),
        page("/api/map", api_map),
    ]
