"""Candidates: the thumbnail grid (filters, sort, pages: one `candidate_page` call, so it stays
fast at 100k+ candidates) and what a labeler does to a selection of them: queue for labeling,
reject with a reason, tag. The actions are plain form POSTs that come back to the grid with a
message; the map queues its lasso through the JSON twin, POST /api/candidates/queue.

The filter form's fields are CandidateFilter's own names (so a link can carry any filter), except
the two dates `since` and `until` (YYYY-MM-DD, UTC days, `until` inclusive), which become
since_ms/until_ms before CandidateFilter.from_query reads the rest. A filter it refuses is shown
above an empty grid with the form as typed (status 400), never a server error.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timezone
from urllib.parse import urlencode

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cloud_selector import dashboard_data as data
from cloud_selector.catalog import InvalidLabel, UnknownCandidates
from cloud_selector.dashboard.files import candidate_uuid
from cloud_selector.dashboard.web import (
    LABELER,
    BadRequest,
    actor,
    form,
    json_body,
    page,
    redirect,
    render,
    services,
)
from cloud_selector.schema import selection_picks

MAX_IDS = 10_000  # one action; the map's lasso can hold 100k points, a labeling budget cannot
MAX_REASON_CHARS = 500
OPTIONS_TTL_S = 30.0  # the filters' drop-down values: DISTINCT over the pool, ~30 ms at 100k
DAY_MS = 86_400_000
END_OF_TIME_MS = 253_402_300_800_000  # 10000-01-01 UTC
SORT_TITLES = {"received_ms": "arrival", "capture_time_ms": "capture time", "least_confidence": "least confidence",
               "margin": "margin", "entropy": "entropy", "novelty": "novelty", "combined": "combined score",
               "predicted_prob": "predicted probability"}
RANGE_TITLES = {"least_confidence": "Least confidence", "margin": "Margin", "entropy": "Entropy",
                "novelty": "Novelty", "combined": "Combined", "predicted_prob": "Predicted prob."}
PER_PAGE_CHOICES = (30, 60, 120, 200)
DATE_KEYS = {"since": "since_ms", "until": "until_ms"}

_options_lock = threading.Lock()


# ------------------------------------------------------------------ shared with the other review pages


def candidate_ids(values: Iterable, *, limit: int = MAX_IDS) -> list[str]:
    """Canonical candidate ids (UUIDs) in the order given, without repeats; BadRequest naming
    the first value that is not one, or when there are more than `limit`."""
    ids: dict[str, None] = {}
    for value in values:
        cid = candidate_uuid(value) if isinstance(value, str) else None
        if cid is None:
            raise BadRequest(f"{str(value)[:60]!r} is not a candidate id (a UUID)")
        ids[cid] = None
    if len(ids) > limit:
        raise BadRequest(f"{len(ids):,} candidates in one action: at most {limit:,} (narrow the selection)")
    return list(ids)


def local_back(value: object, default: str = "/candidates") -> str:
    """Where an action returns to: one of the review pages, never another site."""
    text = str(value or "")
    if text.startswith(("/candidates", "/map", "/label")) and "//" not in text and "\\" not in text \
            and text.isprintable():
        return text
    return default


def unknown_message(exc: UnknownCandidates) -> str:
    return str(exc.args[0]) if exc.args else "unknown candidates"


def picks_of(catalog, ids: list[str]) -> dict[str, list[dict]]:
    """{candidate id: the selection runs that picked it, oldest first, each with its strategies'
    factors} for one page of cards (indexed by ix_selection_picks_candidate_id)."""
    if not ids:
        return {}
    out: dict[str, list[dict]] = {}
    with catalog.engine.connect() as conn:
        rows = conn.execute(sa.select(selection_picks.c.candidate_id, selection_picks.c.run_id,
                                      selection_picks.c.rank, selection_picks.c.score, selection_picks.c.contributions)
                            .where(selection_picks.c.candidate_id.in_(ids)).order_by(selection_picks.c.run_id))
        for r in rows:
            why = ", ".join(f"{c.get('strategy', '?')} {c.get('input', '')} ×{c.get('factor', 0):.3f}"
                            for c in json.loads(r.contributions or "[]"))
            out.setdefault(r.candidate_id, []).append({"run_id": r.run_id, "rank": r.rank, "score": r.score,
                                                       "why": why})
    return out


def filter_options(request: Request) -> data.FilterOptions:
    """FilterOptions, cached on the app for OPTIONS_TTL_S (a new device shows up within that)."""
    state = request.app.state
    with _options_lock:
        cached = getattr(state, "review_filter_options", None)
        if cached is not None and time.monotonic() - cached[0] < OPTIONS_TTL_S:
            return cached[1]
    options = data.filter_options(services(request).catalog)
    with _options_lock:
        state.review_filter_options = (time.monotonic(), options)
    return options


def forget_filter_options(request: Request) -> None:
    """After tagging: a new tag should appear in the tag filter at once."""
    with _options_lock:
        request.app.state.review_filter_options = None


# ------------------------------------------------------------------ the grid


def _day_ms(name: str, text: str) -> int:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}: a date like 2025-01-31 (got {text[:40]!r})") from None
    ms = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)
    if ms < 0:
        raise ValueError(f"{name}: a date from 1970-01-01 on (got {text[:40]!r})")
    return ms


def parse_query(params: Mapping[str, str]) -> tuple[data.CandidateFilter, data.PageRequest]:
    """The grid's filter and page from query parameters; ValueError naming the field."""
    values = {k: v for k, v in params.items() if k not in DATE_KEYS}
    for key, target in DATE_KEYS.items():
        text = str(params.get(key, "")).strip()
        if text:
            values[target] = str(_day_ms(key, text) + (DAY_MS if key == "until" else 0))
    filter = data.CandidateFilter.from_query(values)
    for name in DATE_KEYS.values():  # a database integer overflows far beyond any real time
        if (getattr(filter, name) or 0) >= END_OF_TIME_MS:
            raise ValueError(f"{name}: a time in ms since the epoch, before the year 10000 (got {getattr(filter, name)})")
    return filter, data.PageRequest.from_query(values)


def _form_values(params: Mapping[str, str], filter: data.CandidateFilter | None) -> dict[str, str]:
    """What the form shows: the query as typed; the dates from since_ms/until_ms when a link set them."""
    values = {k: str(v) for k, v in params.items()}
    if filter is not None:
        for key, target in DATE_KEYS.items():
            ms = getattr(filter, target)
            if ms is not None and not values.get(key):
                values[key] = datetime.fromtimestamp((ms - (1 if key == "until" else 0)) / 1000,
                                                     tz=timezone.utc).date().isoformat()
    return values


def _page_url(params: Mapping[str, str], number: int) -> str:
    query = {k: v for k, v in params.items() if v != "" and k != "page"}
    if number > 1:
        query["page"] = str(number)
    return "/candidates" + ("?" + urlencode(query) if query else "")


def grid(request: Request) -> Response:
    catalog = services(request).catalog
    params = dict(request.query_params)
    error, result, filter, paging = None, None, None, None
    try:
        filter, paging = parse_query(params)
        result = data.candidate_page(catalog, filter, sort=paging.sort, descending=paging.descending,
                                     page=paging.page, per_page=paging.per_page)
    except ValueError as exc:
        error = str(exc)
    cards = result.items if result else []
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    links = {}
    if result is not None:
        links = {"first": _page_url(params, 1), "last": _page_url(params, result.pages),
                 "prev": _page_url(params, result.page - 1) if result.has_previous else None,
                 "next": _page_url(params, result.page + 1) if result.has_next else None}
    return render(request, "candidates.html", {
        "q": _form_values(params, filter), "error": error, "result": result, "cards": cards,
        "picks": picks_of(catalog, [c.id for c in cards]), "options": filter_options(request),
        "links": links, "back": back, "sort_titles": SORT_TITLES, "range_titles": RANGE_TITLES,
        "per_page_choices": PER_PAGE_CHOICES, "default_per_page": data.DEFAULT_PER_PAGE, "no_value": data.NO_VALUE,
        "filtered": bool(filter and filter.to_query()),
        "ranges_open": any(params.get(f"{side}_{c}") for c in data.RANGE_COLUMNS for side in ("min", "max")),
    }, status_code=400 if error else 200)


# ------------------------------------------------------------------ actions (labeler)


def _selected(request: Request) -> list[str]:
    return candidate_ids(form(request).getlist("id"))


def _act(request: Request, act, what: str) -> Response:
    """Run `act(ids) -> message` on the posted ids and go back with its message (or the error)."""
    back = local_back(form(request).get("back"))
    try:
        ids = _selected(request)
        if not ids:
            return redirect(request, back, f"Select candidates first (the checkboxes), then {what}.", kind="error")
        return redirect(request, back, act(ids))
    except UnknownCandidates as exc:
        return redirect(request, back, f"Nothing changed: {unknown_message(exc)}.", kind="error")
    except (BadRequest, InvalidLabel, ValueError) as exc:
        return redirect(request, back, f"Nothing changed: {getattr(exc, 'message', exc)}.", kind="error")


def queue_message(moved: int, asked: int) -> str:
    rest = asked - moved
    tail = f"; {rest} were already queued or labeled and kept their state" if rest else ""
    return f"{moved} of {asked} queued for labeling{tail}."


def queue(request: Request) -> Response:
    catalog = services(request).catalog
    return _act(request, lambda ids: queue_message(data.queue_for_labeling(catalog, ids, actor(request)), len(ids)),
                "queue them")


def reject(request: Request) -> Response:
    reason = str(form(request).get("reason", "")).strip()[:MAX_REASON_CHARS]

    def act(ids: list[str]) -> str:
        if not reason:
            raise BadRequest("give a reason to reject (it is kept in each candidate's history)")
        changed = data.reject(services(request).catalog, ids, reason, actor(request))
        rest = len(ids) - changed
        return f"{changed} of {len(ids)} rejected ({reason})" + (f"; {rest} were rejected already." if rest else ".")

    return _act(request, act, "reject them")


def tag(request: Request) -> Response:
    name = str(form(request).get("tag", "")).strip()

    def act(ids: list[str]) -> str:
        if not name:
            raise BadRequest("type a tag name")
        added = data.tag(services(request).catalog, ids, name, actor(request))
        forget_filter_options(request)
        rest = len(ids) - added
        return f"Tagged {added} of {len(ids)} '{name}'" + (f"; {rest} had it already." if rest else ".")

    return _act(request, act, "tag them")


def api_queue(request: Request) -> Response:
    """JSON {"ids": [...]} -> {"queued", "requested", "message"} (the map's lasso)."""
    body = json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("ids"), list):
        raise BadRequest('send JSON {"ids": ["<candidate id>", ...]}')
    ids = candidate_ids(body["ids"])
    if not ids:
        raise BadRequest("select points first (lasso or box), then queue them")
    try:
        moved = data.queue_for_labeling(services(request).catalog, ids, actor(request))
    except UnknownCandidates as exc:
        raise BadRequest(f"nothing changed: {unknown_message(exc)} (reload the map)") from exc
    return JSONResponse({"queued": moved, "requested": len(ids), "message": queue_message(moved, len(ids))})


def routes() -> list:
    return [
        page("/candidates", grid, nav="Candidates"),
        page("/candidates/queue", queue, methods=("POST",), role=LABELER),
        page("/candidates/reject", reject, methods=("POST",), role=LABELER),
        page("/candidates/tag", tag, methods=("POST",), role=LABELER),
        page("/api/candidates/queue", api_queue, methods=("POST",), role=LABELER),
    ]
