"""Label Studio: import tasks with the model's suggestion as a prediction, and read its JSON export.

Export side. `export_tasks` writes Label Studio's task import shape -- one task per image,
`data.image` (the URL Label Studio loads) and `data.candidate_id` (so the export can name the
candidate without guessing), and, when the model gave probabilities, one prediction whose
`result` is a single `choices` region holding the top class and whose `score` is its
probability (Label Studio sorts and filters tasks by it). Task ids are not set: Label Studio
assigns them. An item that already has a label also travels as an annotation, for review.
`labeling_config` gives the matching single-choice interface.

Import side. `import_export` reads the "JSON" export (a list of tasks, each with `annotations`;
not JSON_MIN, which flattens away `was_cancelled`). Per task:
- the latest annotation that was not cancelled counts (latest by `updated_at`, else
  `created_at`, else its place in the list); older ones were superseded by the labeler or a
  reviewer;
- only cancelled annotations: the labeler pressed Skip -> refused "skipped in Label Studio", and
  the id is listed in `ImportResult.skipped_ids`;
- no annotations at all: the task was not labeled yet -> refused, so a partial export is visible;
- the annotation must hold exactly one choice from the `Choices` tag named `from_name`.
The candidate comes from `data.candidate_id`; tasks created some other way (uploaded files,
cloud storage) fall back to the image URL's file stem, also with Label Studio's 8-hex upload
prefix ("1a2b3c4d-<stem>") removed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import quoteattr

from cloud_selector.formats.records import (
    FormatError,
    ImportResult,
    QueueItem,
    RawLabel,
    RefusedRow,
    check_classes,
    check_export_label,
    read_json_file,
    top_prediction,
    validate_labels,
    write_text_atomic,
)

SOURCE = "label_studio"
SKIPPED_REASON = "skipped in Label Studio"


# ---- export -----------------------------------------------------------------------------

def labeling_config(classes: Sequence[str], *, from_name: str = "choice", to_name: str = "image") -> str:
    """The labeling interface for one required choice per image; its tag names must match the
    ones `export_tasks` and `import_export` use."""
    names = check_classes(classes)
    choices = "".join(f"<Choice value={quoteattr(name)}/>" for name in names)
    return (f"<View><Image name={quoteattr(to_name)} value=\"$image\"/>"
            f"<Choices name={quoteattr(from_name)} toName={quoteattr(to_name)} choice=\"single\" required=\"true\">"
            f"{choices}</Choices></View>")


def export_tasks(items: Sequence[QueueItem], classes: Sequence[str], *, from_name: str = "choice",
                 to_name: str = "image", model_version: str = "") -> list[dict[str, Any]]:
    """Label Studio import tasks for `items` (see the module docstring for the shape)."""
    names = check_classes(classes)
    tasks = []
    for item in items:
        check_export_label(item, names)
        task: dict[str, Any] = {"data": {"image": item.image_url, "candidate_id": item.candidate_id},
                                "predictions": []}
        top = top_prediction(item.predicted, names)
        if top is not None:
            task["predictions"].append({"model_version": model_version, "score": top[1],
                                        "result": [_choice_region(top[0], from_name, to_name)]})
        if item.label is not None:
            task["annotations"] = [{"result": [_choice_region(item.label, from_name, to_name)]}]
        tasks.append(task)
    return tasks


def write_tasks(path: Path, items: Sequence[QueueItem], classes: Sequence[str], **options: str) -> int:
    """Write the import tasks as one JSON file (what Label Studio's Import dialog takes);
    returns the task count."""
    tasks = export_tasks(items, classes, **options)
    write_text_atomic(Path(path), json.dumps(tasks, indent=2, ensure_ascii=False) + "\n")
    return len(tasks)


def _choice_region(label: str, from_name: str, to_name: str) -> dict[str, Any]:
    return {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}


# ---- import -----------------------------------------------------------------------------

def read_export(path: Path, known_ids: set[str], classes: Sequence[str], **options: Any) -> ImportResult:
    """Read a Label Studio JSON export file and validate it (options as `import_export`)."""
    return import_export(read_json_file(path), known_ids, classes, **options)


def import_export(data: list[dict[str, Any]], known_ids: set[str], classes: Sequence[str], *,
                  from_name: str | None = "choice", allow_new_classes: bool = False) -> ImportResult:
    """Labels from a parsed Label Studio JSON export (rules in the module docstring).

    `from_name=None` accepts a `choices` region from any control tag, for projects whose config
    named it differently; with several such regions that disagree the task is refused.
    """
    if not isinstance(data, list):
        raise FormatError(f"a Label Studio JSON export is a list of tasks (got {type(data).__name__})")
    if data and not any(isinstance(task, dict) and "data" in task for task in data):
        raise FormatError("no task has a 'data' field: this is not Label Studio's JSON export "
                          "(JSON_MIN and CSV exports are not supported; export as JSON)")
    rows = [_read_task(i, task, known_ids, from_name) for i, task in enumerate(data)]
    return validate_labels(rows, source=SOURCE, known_ids=known_ids, classes=classes,
                           allow_new_classes=allow_new_classes, skip_reason=SKIPPED_REASON)


def _read_task(index: int, task: Any, known_ids: set[str], from_name: str | None) -> RawLabel | RefusedRow:
    if not isinstance(task, dict):
        return RefusedRow(f"task at index {index}", "not a JSON object")
    where = f"task {task['id']}" if task.get("id") is not None else f"task at index {index}"
    data = task.get("data")
    if not isinstance(data, dict):
        return RefusedRow(where, "no 'data' object")
    cid = _candidate_id(data, known_ids)
    if not cid:
        return RefusedRow(where, "no candidate id: data.candidate_id is missing and the image URL's file name "
                                 f"is not a known candidate ({data.get('image')!r})")
    annotations = task.get("annotations") or []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        return RefusedRow(where, "'annotations' is not a list of objects", cid)
    if not annotations:
        return RefusedRow(where, "no annotation in Label Studio (not labeled yet)", cid)
    kept = [(i, a) for i, a in enumerate(annotations) if not a.get("was_cancelled")]
    if not kept:
        return RawLabel(where, cid, None)  # every annotation cancelled: the labeler skipped it
    _, latest = max(kept, key=lambda pair: (_timestamp(pair[1]), pair[0]))
    if latest.get("id") is not None:
        where = f"{where} annotation {latest['id']}"
    choices = _choices(latest.get("result"), from_name)
    if isinstance(choices, str):
        return RefusedRow(where, choices, cid)
    return RawLabel(where, cid, choices[0], _annotator(latest.get("completed_by")),
                    str(latest.get("updated_at") or latest.get("created_at") or ""))


def _choices(result: Any, from_name: str | None) -> list[str] | str:
    """The single chosen class of an annotation's result, or a refusal reason."""
    if not isinstance(result, list):
        return "annotation has no 'result' list"
    picked: list[list[Any]] = []
    for region in result:
        if not isinstance(region, dict) or region.get("type") != "choices":
            continue
        if from_name is not None and region.get("from_name") != from_name:
            continue
        value = region.get("value")
        chosen = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(chosen, list):
            return "a 'choices' region has no value.choices list"
        picked.append(chosen)
    tag = "any Choices tag" if from_name is None else f"Choices tag {from_name!r}"
    if not picked:
        return f"annotation has no choice from {tag}"
    distinct = {label for chosen in picked for label in chosen}
    if len(distinct) != 1 or not all(isinstance(label, str) for label in distinct):
        shown = ", ".join(repr(label) for label in sorted(distinct, key=str)) or "none"
        return f"{len(distinct)} choices selected from {tag} ({shown}); classification takes exactly one"
    return [distinct.pop()]


def _candidate_id(data: dict[str, Any], known_ids: set[str]) -> str:
    explicit = data.get("candidate_id")
    if isinstance(explicit, str) and explicit.strip():
        return explicit.strip()
    url = data.get("image")
    if not isinstance(url, str) or not url:
        return ""
    parts = urlsplit(url)
    path = unquote(parts.path)
    local = parse_qs(parts.query).get("d")  # Label Studio's local-files URLs: /data/local-files/?d=dir/x.jpg
    if local:
        path = local[0]
    stem = PurePosixPath(path.replace("\\", "/")).stem
    if stem in known_ids or stem.lower() in known_ids:
        return stem
    prefix, dash, rest = stem.partition("-")
    if dash and len(prefix) == 8 and all(c in "0123456789abcdef" for c in prefix) and rest.lower() in known_ids:
        return rest  # uploaded through Label Studio, which prefixes 8 random hex digits
    return ""


def _timestamp(annotation: dict[str, Any]) -> float:
    """Seconds since the epoch of the annotation's last change; -inf when absent or unreadable,
    so such annotations lose to dated ones and fall back to list order among themselves."""
    for key in ("updated_at", "created_at"):
        raw = annotation.get(key)
        if isinstance(raw, str):
            try:
                return datetime.fromisoformat(raw).timestamp()
            except ValueError:
                continue
    return float("-inf")


def _annotator(completed_by: Any) -> str:
    """Label Studio writes the annotator as a user id, or as a user object in some versions."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or "")
    return "" if completed_by is None else str(completed_by)
