"""Label: work through the labeling queue one candidate at a time, from the keyboard (static/
label.js): 1-9 and 0 label with the catalog's first ten classes, Enter accepts the model's
prediction, S skips, R rejects, U undoes the last of these. GET /label claims the next queued
candidate for the user (`label_queue_next`: two labelers never get the same one, a reload gets
back the one held); POST /label records the answer and answers with the next candidate, as JSON
for the script or a redirect for a plain form. Labels go through Catalog.set_labels (source
"manual", the annotator is `actor(request)`), so they count toward the next retrain.

Undo uses the catalog's public moves (there is no "take back an outcome" in the catalog yet): a
skip or reject is undone by queueing the candidate again and claiming it back; a label by
rejecting it with the note "undo: ..." first (which clears the label), then the same. The
history keeps both events, honestly; `queue_progress` counts such a candidate as done today.
Only the user's own latest outcome on a candidate can be undone, and only while nothing else
happened to it since.

Reviewers see the queue's progress, read-only.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cloud_selector import dashboard_data as data
from cloud_selector.catalog import InvalidLabel, LabelEvent, UnknownCandidates
from cloud_selector.dashboard.files import candidate_uuid
from cloud_selector.dashboard.pages.candidates import MAX_REASON_CHARS, unknown_message
from cloud_selector.dashboard.web import (
    LABELER,
    BadRequest,
    Conflict,
    NotFound,
    actor,
    current_user,
    form,
    has_role,
    json_body,
    page,
    redirect,
    render,
    services,
)

KEYS = "1234567890"  # the first ten classes' keys, in class-list order
ACTIONS = ("label", "skip", "reject", "undo")
UNDOABLE = ("labeled", "skipped", "rejected")
TOP_PROBABILITIES = 5
IMAGE_SIZE = 384


def item_of(catalog, card: data.CandidateCard | None) -> dict | None:
    """What the page shows of the candidate being labeled (JSON-ready)."""
    if card is None:
        return None
    detail = data.candidate_detail(catalog, card.id, neighbours=0)
    probabilities = detail.class_probabilities[:TOP_PROBABILITIES] if detail else []
    return {"id": card.id, "image": f"/images/{card.id}?size={IMAGE_SIZE}", "state": card.state, "label": card.label,
            "device_id": card.device_id, "capture_time_ms": card.capture_time_ms, "reason": card.reason,
            "predicted_class": card.predicted_class, "predicted_prob": card.predicted_prob, "scores": card.scores,
            "tags": card.tags, "model_version": card.model_version,
            "probabilities": [{"name": p.name if p.name is not None else f"class {p.index}", "p": p.probability}
                              for p in probabilities]}


def progress_of(catalog) -> dict:
    p = data.queue_progress(catalog)
    return {"done": p.done, "remaining": p.remaining, "total": p.total, "since_ms": p.since_ms}


def label_page(request: Request) -> Response:
    catalog = services(request).catalog
    can_label = has_role(current_user(request), LABELER)
    card = data.label_queue_next(catalog, assignee=actor(request)) if can_label else None
    classes = catalog.class_list()
    return render(request, "label.html", {
        "can_label": can_label, "item": item_of(catalog, card), "progress": progress_of(catalog),
        "classes": [{"name": name, "key": KEYS[i] if i < len(KEYS) else ""} for i, name in enumerate(classes)],
    })


def _answer_fields(request: Request) -> tuple[bool, dict]:
    if request.headers.get("content-type", "").startswith("application/json"):
        body = json_body(request)
        if not isinstance(body, dict):
            raise BadRequest('send a JSON object: {"id": ..., "action": "label" | "skip" | "reject" | "undo", ...}')
        return True, body
    fields = {k: v for k, v in form(request).items() if k != "csrf_token"}
    if "action" not in fields and fields.get("label"):
        fields["action"] = "label"  # a class button of the plain form
    return False, fields


def answer(request: Request) -> Response:
    wants_json, fields = _answer_fields(request)
    action = str(fields.get("action", ""))
    if action not in ACTIONS:
        raise BadRequest(f"action: one of {', '.join(ACTIONS)} (got {action[:40]!r})")
    cid = candidate_uuid(str(fields.get("id", "")))
    if cid is None:
        raise BadRequest("id: the candidate's id (a UUID) is missing or malformed")
    catalog, who = services(request).catalog, actor(request)
    try:
        message, current = _apply(catalog, action, cid, fields, who)
    except UnknownCandidates as exc:
        raise NotFound(f"{unknown_message(exc)}: reload the page") from exc
    except InvalidLabel as exc:
        raise BadRequest(str(exc)) from exc
    if current is None:
        current = data.label_queue_next(catalog, assignee=who)
    if not wants_json:
        return redirect(request, "/label", message)
    return JSONResponse({"message": message, "done": {"id": cid, "action": action}, "item": item_of(catalog, current),
                         "progress": progress_of(catalog)})


def _apply(catalog, action: str, cid: str, fields: dict, who: str) -> tuple[str, data.CandidateCard | None]:
    """Record the answer; (the message, the candidate to show next when it is not the queue's next)."""
    short = cid[:8]
    if action == "label":
        label = str(fields.get("label", ""))
        classes = catalog.class_list()
        if label not in classes:
            raise BadRequest(f"label: one of the classes {', '.join(classes) or '(none yet)'} (got {label[:40]!r}); "
                             "a new class is added with `cloud-selector labels classes --add NAME`")
        changed = catalog.set_labels([(cid, label)], source="manual", annotator=who)
        return (f"{short} labeled {label}." if changed else f"{short} already had the label {label}."), None
    if action == "skip":
        moved = catalog.mark_skipped([cid], source="manual", annotator=who, note="skipped on the label page")
        return (f"{short} skipped." if moved else f"{short} was no longer queued: nothing to skip."), None
    if action == "reject":
        reason = str(fields.get("reason", "")).strip()[:MAX_REASON_CHARS] or "rejected on the label page"
        changed = data.reject(catalog, [cid], reason, who)
        return (f"{short} rejected ({reason})." if changed else f"{short} was rejected already."), None
    return _undo(catalog, cid, who)


def _undo(catalog, cid: str, who: str) -> tuple[str, data.CandidateCard]:
    history = catalog.label_history(cid)
    last: LabelEvent | None = history[-1] if history else None
    current = data.candidate_detail(catalog, cid, neighbours=0)
    if last is None or last.annotator != who or last.state not in UNDOABLE or current is None \
            or current.card.state != last.state:
        said = f"its last outcome is {last.state} by {last.annotator or 'someone'}" if last else "it has no outcome"
        raise Conflict(f"nothing of yours to undo on {cid[:8]}: {said}" +
                       (f", and it is {current.card.state} now" if current else ""))
    if last.state == "labeled":
        data.reject(catalog, [cid], f"undo: label {last.label!r} taken back on the label page", who)
    data.queue_for_labeling(catalog, [cid], who)
    if not catalog.claim_for_labeling(cid, who):
        raise Conflict(f"{cid[:8]} went back to the queue, but another labeler took it first")
    card = data.candidate_detail(catalog, cid, neighbours=0).card
    what = {"labeled": f"label {last.label}", "skipped": "skip", "rejected": "reject"}[last.state]
    return f"Undone: the {what} of {cid[:8]}; it is yours to label again.", card


def routes() -> list:
    return [
        page("/label", label_page, nav="Label"),
        page("/label", answer, methods=("POST",), role=LABELER),
    ]
