"""CSV: the simplest round trip -- a spreadsheet the labeler fills in, one row per image.

Export columns: `candidate_id, image_url, predicted_label, predicted_score, label`. The label
column is pre-filled only for items that already have one; the prediction is a hint in its own
column, never in `label`, so a labeler who leaves a row alone has not confirmed the model.

Import needs a header with `candidate_id` and `label`; other columns (ours or the labeler's
notes) are ignored, in any order. Each data row is validated like every other format (see
records.py); a row with an empty label is refused as "empty label" rather than skipped, so
an unfinished sheet shows how much is left. Positions are the file's line numbers (the header
is line 1). A UTF-8 byte-order mark, which spreadsheet programs like to add, is accepted.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud_selector.formats.records import (
    FormatError,
    ImportResult,
    QueueItem,
    RawLabel,
    RefusedRow,
    check_classes,
    check_export_label,
    top_prediction,
    validate_labels,
    write_text_atomic,
)

SOURCE = "csv"
COLUMNS = ("candidate_id", "image_url", "predicted_label", "predicted_score", "label")
REQUIRED = ("candidate_id", "label")


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    """A text cell a spreadsheet will not run: a leading =, +, -, @ (formula injection) gets a
    quote, as OWASP recommends for CSV exports opened in Excel or LibreOffice."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def export_rows(items: Sequence[QueueItem], classes: Sequence[str]) -> list[dict[str, str]]:
    """One row per item, keyed by `COLUMNS`; the score has 4 decimals, empty without predictions."""
    names = check_classes(classes)
    rows = []
    for item in items:
        check_export_label(item, names)
        top = top_prediction(item.predicted, names)
        rows.append({"candidate_id": item.candidate_id, "image_url": _cell(item.image_url),
                     "predicted_label": _cell(top[0]) if top else "",
                     "predicted_score": f"{top[1]:.4f}" if top else "", "label": _cell(item.label or "")})
    return rows


def format_csv(items: Sequence[QueueItem], classes: Sequence[str]) -> str:
    """The export as CSV text (header + rows)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(export_rows(items, classes))
    return out.getvalue()


def write_csv(path: Path, items: Sequence[QueueItem], classes: Sequence[str]) -> int:
    """Write the export as a CSV file; returns the row count."""
    write_text_atomic(Path(path), format_csv(items, classes))
    return len(items)


def import_csv_text(text: str, known_ids: set[str], classes: Sequence[str], *,
                    allow_new_classes: bool = False) -> ImportResult:
    """Labels from CSV text (rules in the module docstring). A missing header column raises
    FormatError: without it no row can be read."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        header = reader.fieldnames
        if header is None or not set(REQUIRED) <= {h.strip() for h in header}:
            raise FormatError(f"the CSV header must contain {','.join(REQUIRED)} (got {header})")
        rows: list[RawLabel | RefusedRow] = []
        for row in reader:
            rows.append(_read_row(reader.line_num, row))
    except csv.Error as exc:
        raise FormatError(f"line {reader.line_num}: not readable as CSV ({exc})") from exc
    return validate_labels(rows, source=SOURCE, known_ids=known_ids, classes=classes,
                           allow_new_classes=allow_new_classes)


def read_csv(path: Path, known_ids: set[str], classes: Sequence[str], **options: Any) -> ImportResult:
    """Read a labels CSV file and validate it (options as `import_csv_text`)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise FormatError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text ({exc})") from exc
    try:
        return import_csv_text(text, known_ids, classes, **options)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from exc


def _read_row(line: int, row: dict[str | None, Any]) -> RawLabel:
    # Header names may carry stray spaces ("candidate_id, label"); a short row leaves None.
    cells = {(k or "").strip(): v for k, v in row.items() if k is not None}
    return RawLabel(f"line {line}", str(cells.get("candidate_id") or ""), str(cells.get("label") or ""))
