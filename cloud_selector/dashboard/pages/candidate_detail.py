"""One candidate: its image, class probabilities, every score, where and when it was captured,
its near-duplicates, the selection runs that picked it with each strategy's part, its label
history, and the labeler's actions. Its nearest neighbours in the pool come from a second
request (/candidates/{id}/neighbours, an HTML fragment the page's script inserts): they scan
every embedding of the model version, the one slow part (cloud_selector/dashboard_detail.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from cloud_selector import dashboard_data as data
from cloud_selector.dashboard.files import candidate_uuid
from cloud_selector.dashboard.web import NotFound, page, render, services, templates

NEIGHBOURS = 12
MAX_PROBABILITIES = 10  # bars drawn; the rest are summed in one line


def _candidate_id(request: Request) -> str:
    cid = candidate_uuid(request.path_params["candidate_id"])
    if cid is None:
        raise NotFound("no such candidate: a candidate is named by its id, a UUID (find it on the Candidates page)")
    return cid


def detail(request: Request) -> Response:
    cid = _candidate_id(request)
    found = data.candidate_detail(services(request).catalog, cid, neighbours=0)
    if found is None:
        raise NotFound(f"no candidate {cid} (it may be from another catalog; see the Candidates page)")
    shown = found.class_probabilities[:MAX_PROBABILITIES]
    rest = sum(p.probability for p in found.class_probabilities[MAX_PROBABILITIES:])
    return render(request, "candidate.html", {
        "d": found, "c": found.card, "probabilities": shown, "rest_probability": rest,
        "rest_count": len(found.class_probabilities) - len(shown), "score_names": data.SCORE_COLUMNS,
        "back": f"/candidates/{cid}",
    })


def neighbours(request: Request) -> Response:
    cid = _candidate_id(request)
    near = data.candidate_neighbours(services(request).catalog, cid, k=NEIGHBOURS)
    if near is None:
        raise NotFound(f"no candidate {cid}")
    html = templates.get_template("_review_neighbours.html").render(neighbours=near)
    return HTMLResponse(html)


def routes() -> list:
    return [
        page("/candidates/{candidate_id}", detail),
        page("/candidates/{candidate_id}/neighbours", neighbours),
    ]
