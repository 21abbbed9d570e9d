"""Typed records shared by every label format, and the one validation every import goes through.

Each format module only translates its file shape into `RawLabel`s (one per row, task, image or
file, each with a position a person can find: "task 12", "line 7", "image id 3"). `validate_labels`
then applies the same rules to all of them, so a CSV and a Label Studio export of the same
labels give the same `ImportResult`, and no format can quietly apply half a file:

- the candidate id must be one of `known_ids` (ids are UUIDs; a spreadsheet that upper-cased one
  is forgiven when the lower-cased id is known);
- the label must be non-empty, printable, at most `MAX_LABEL_CHARS` characters, and one of
  `classes` -- unless `allow_new_classes`, in which case unknown labels are accepted and listed in
  `ImportResult.new_classes` so the caller can extend its label set on purpose;
- one candidate labeled more than once in one file: identical labels are accepted once (the
  last row supplies annotator and time); different labels are a conflict and every row for that
  candidate is refused, naming the others. Guessing which labeler was right would silently
  train on a coin flip; refusing sends the image back to a person.

Refusals never raise: they come back as `RefusedRow`s next to the accepted labels, and the caller
decides whether to apply the accepted part. Only a file that cannot be read as its format at all
raises `FormatError` (see the package docstring for the exception tree).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_LABEL_CHARS = 128
# How many class names a refusal reason lists before it abbreviates (a 1000-class model would
# otherwise turn every reason into a wall of text).
_CLASSES_IN_REASON = 20


class LabelFormatError(ValueError):
    """Base of this package's errors."""


class FormatError(LabelFormatError):
    """A file as a whole is not readable in the expected format; nothing was imported."""


class ExportError(LabelFormatError):
    """Queue items cannot be exported as asked (e.g. a label or prediction outside `classes`)."""


@dataclass(frozen=True)
class QueueItem:
    """One image waiting for (or carrying) a label, as the exporters need it.

    `predicted` maps class name -> probability (empty when the model gave none); exporters show
    its top class to the labeler as a suggestion. `label` is set for items already labeled, so an
    export can also carry existing labels for review.
    """

    candidate_id: str
    image_url: str
    file_name: str
    width: int
    height: int
    predicted: dict[str, float] = field(default_factory=dict)
    label: str | None = None


@dataclass(frozen=True)
class LabelRecord:
    """A validated label for one candidate; `source` names the format it came from."""

    candidate_id: str
    label: str
    source: str
    annotator: str = ""
    at: str = ""


@dataclass(frozen=True)
class RefusedRow:
    """A row that was not imported; `where` is a position a person can find in the file."""

    where: str
    reason: str
    candidate_id: str = ""  # when known, so a caller can act on the candidate (e.g. skipped)


@dataclass(frozen=True)
class ImportResult:
    """Accepted labels and refused rows of one import; both are always reported together.

    `new_classes` lists labels outside `classes` that were accepted because the caller allowed
    new classes (first-seen order). `skipped_ids` lists candidates the labeler explicitly skipped
    (Label Studio's cancelled annotations); they are also in `refused`.
    """

    labels: list[LabelRecord]
    refused: list[RefusedRow]
    new_classes: list[str] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)

    @property
    def all_accepted(self) -> bool:
        return not self.refused

    def summary(self, max_refusals: int = 10) -> str:
        """One paragraph for a CLI or log: counts, then the first refusals with positions."""
        lines = [f"{len(self.labels)} label(s) accepted, {len(self.refused)} row(s) refused"]
        if self.new_classes:
            lines[0] += f", new classes: {', '.join(self.new_classes)}"
        lines += [f"  {r.where}: {r.reason}" for r in self.refused[:max_refusals]]
        if len(self.refused) > max_refusals:
            lines.append(f"  ... and {len(self.refused) - max_refusals} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class RawLabel:
    """One label as a format read it, before validation. `label=None` means the labeler skipped
    the item on purpose (as opposed to an empty label, which is a mistake)."""

    where: str
    candidate_id: str
    label: str | None
    annotator: str = ""
    at: str = ""


# ---- helpers the formats share ------------------------------------------------------------

def check_classes(classes: Sequence[str]) -> list[str]:
    """The class list as given, after checking it can name labels at all (exporters and
    importers both rely on names being unique and non-empty)."""
    names = list(classes)
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise LabelFormatError(f"class names must be non-empty strings without outer spaces (got {name!r})")
        if name in seen:
            raise LabelFormatError(f"class {name!r} appears twice in classes")
        seen.add(name)
    return names


def top_prediction(predicted: Mapping[str, float], classes: Sequence[str]) -> tuple[str, float] | None:
    """The predicted class with the highest probability, or None without predictions.

    Ties go to the class listed first in `classes`, so exports are deterministic. A prediction for
    a class outside `classes` is an ExportError: the labeling tool would offer a choice that the
    label set cannot take back.
    """
    if not predicted:
        return None
    order = {name: i for i, name in enumerate(classes)}
    stray = sorted(set(predicted) - set(order))
    if stray:
        raise ExportError(f"predictions name classes outside the label set: {', '.join(stray)}")
    best = min(predicted, key=lambda name: (-float(predicted[name]), order[name]))
    return best, float(predicted[best])


def check_export_label(item: QueueItem, classes: Sequence[str]) -> None:
    """Refuse to export an existing label that the import side would then refuse."""
    if item.label is not None and item.label not in classes:
        raise ExportError(f"candidate {item.candidate_id}: label {item.label!r} is not one of the classes")


def describe_classes(classes: Sequence[str]) -> str:
    names = list(classes)
    if not names:
        return "none"
    shown = ", ".join(names[:_CLASSES_IN_REASON])
    return shown if len(names) <= _CLASSES_IN_REASON else f"{shown}, ... ({len(names)} in all)"


def _resolve_id(raw_id: str, known_ids: set[str]) -> str | None:
    cid = raw_id.strip()
    if cid in known_ids:
        return cid
    if cid.lower() in known_ids:  # UUIDs minted lower-case; spreadsheets sometimes shout
        return cid.lower()
    return None


def validate_labels(rows: Iterable[RawLabel | RefusedRow], *, source: str, known_ids: set[str],
                    classes: Sequence[str], allow_new_classes: bool = False,
                    skip_reason: str = "skipped") -> ImportResult:
    """Apply the rules in the module docstring to every row of one file, in file order.

    `rows` may already hold `RefusedRow`s for rows the format could not even parse; they keep
    their place, so the result lists every problem of the file once, in the order of the file.
    """
    class_set = set(classes)
    refusals: list[tuple[int, RefusedRow]] = []
    # candidate id -> [(order, raw, opinion)], opinion = label, or None for "skipped"
    by_id: dict[str, list[tuple[int, RawLabel, str | None]]] = {}
    for order, raw in enumerate(rows):
        if isinstance(raw, RefusedRow):
            refusals.append((order, raw))
            continue
        if not raw.candidate_id.strip():
            refusals.append((order, RefusedRow(raw.where, "no candidate id")))
            continue
        cid = _resolve_id(raw.candidate_id, known_ids)
        if cid is None:
            refusals.append((order, RefusedRow(raw.where, f"unknown candidate id {raw.candidate_id.strip()!r}")))
            continue
        opinion = None if raw.label is None else raw.label.strip()
        if opinion is not None:
            problem = _label_problem(opinion)
            if problem:
                refusals.append((order, RefusedRow(raw.where, problem, cid)))
                continue
        by_id.setdefault(cid, []).append((order, raw, opinion))

    labels: list[tuple[int, LabelRecord]] = []
    new_classes: list[str] = []
    skipped: list[str] = []
    for cid, group in by_id.items():
        opinions = {opinion for _, _, opinion in group}
        if len(opinions) > 1:
            listing = "; ".join(f"{'skipped' if o is None else repr(o)} ({raw.where})" for _, raw, o in group)
            for order, raw, _ in group:
                refusals.append((order, RefusedRow(raw.where, f"conflicting labels for candidate {cid}: {listing}", cid)))
            continue
        opinion = opinions.pop()
        if opinion is None:
            skipped.append(cid)
            refusals += [(order, RefusedRow(raw.where, skip_reason, cid)) for order, raw, _ in group]
            continue
        if opinion not in class_set:
            if not allow_new_classes:
                reason = f"unknown label {opinion!r} (known classes: {describe_classes(classes)})"
                refusals += [(order, RefusedRow(raw.where, reason, cid)) for order, raw, _ in group]
                continue
            if opinion not in new_classes:
                new_classes.append(opinion)
        last = group[-1][1]
        labels.append((group[0][0], LabelRecord(cid, opinion, source, last.annotator, last.at)))

    labels.sort(key=lambda pair: pair[0])
    refusals.sort(key=lambda pair: pair[0])
    return ImportResult([r for _, r in labels], [r for _, r in refusals], new_classes, skipped)


def _label_problem(label: str) -> str | None:
    if not label:
        return "empty label"
    if len(label) > MAX_LABEL_CHARS:
        return f"label longer than {MAX_LABEL_CHARS} characters"
    if not label.isprintable():
        return f"label {label!r} has non-printable characters"
    return None


def read_json_file(path: Path) -> Any:
    """A JSON file's content; FormatError (nothing imported) when it is missing or not JSON.
    Exports from Windows tools often start with a BOM: utf-8-sig accepts both."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError as exc:
        raise FormatError(f"{path}: no such file") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a JSON file ({exc})") from exc


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so a reader (or a crash) never
    sees half an export."""
    path = Path(path)
    # A named sibling rather than mkstemp: mkstemp's 0600 mode would make the export unreadable
    # to the labeling tool's user; open(..., "x") honours the umask like any other file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the write or the rename failed
