"""The labeling queue between the catalog and the label formats.

    export: catalog (selected [+ in_labeling]) -> QueueItems -> csv | label-studio | coco | yolo
            -> the exported candidates become in_labeling, assigned to the labeler (or the export)
    import: csv | label-studio | coco | yolo -> ImportResult -> catalog (accepted rows only)

Every imported row is validated (known candidate, known class, no conflicting duplicates) by
`cloud_selector.formats`; the accepted labels, their history events and any new classes are
applied in one transaction, Label Studio's skipped tasks move to `skipped`, and the refused rows
come back with their position and reason, so a partly wrong file labels what it can and says
exactly what it did not. Refused rows leave their candidates as they were (still in_labeling,
so `Catalog.requeue_stale` eventually hands them out again).

Classes are the catalog's class list (`Catalog.class_list`): imports refuse other labels unless
`allow_new_classes`, which adds them; the next training run then grows the model's head.

Predictions shown to the labeler are the device's probabilities named by the classes of the
model version that produced them, and only when that model is in the catalog and its class
count matches; anything else exports without a suggestion rather than with a wrong one.

Image URLs, first that applies: `image_base_url` + "/" + blob key (a web server or CDN in front
of the store); a presigned GET URL when the blob store can make one (S3); else the bare blob
key, which a labeling tool cannot load by itself (the CLI says so).

YOLO exports are folders sorted by the model's prediction, for the labeler to move misfiled
images between class folders: importing the folder confirms whatever folder an image is in, so
the labeler must look at every folder. Items without a prediction cannot be filed and are left
out of a YOLO export (still selected; export them in another format).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import QUEUED, SELECTED, CandidateRow, Catalog, LabelsApplied, NewLabel
from cloud_selector.formats import FormatError, ImportResult, QueueItem, coco, csv_rows, label_studio, yolo
from cloud_selector.formats.records import top_prediction, write_text_atomic

__all__ = [
    "FORMATS", "PRESIGNED_URL_EXPIRES_S", "ExportResult", "apply_import", "detect_format", "export_queue",
    "image_urls", "import_labels", "queue_items", "read_labels",
]

FORMATS = ("csv", "label-studio", "coco", "yolo")
# S3's longest presigned lifetime: an export may sit in a labeling tool for days.
PRESIGNED_URL_EXPIRES_S = 7 * 24 * 3600

ImageUrl = Callable[[CandidateRow], str]


@dataclass(frozen=True)
class ExportResult:
    """One export: what was written where, who holds the exported candidates now, and what was
    left out (YOLO: items without a prediction) with why."""

    path: Path
    format: str
    candidate_ids: tuple[str, ...]  # exported and now in_labeling
    assignee: str
    url_kind: str  # "base-url" | "presigned" | "blob-key"
    left_out: tuple[str, ...] = ()
    extra_files: tuple[Path, ...] = ()  # Label Studio: the labeling config beside the tasks

    @property
    def exported(self) -> int:
        return len(self.candidate_ids)


def image_urls(blobs: BlobStore, base_url: str = "", *,
               expires_s: int = PRESIGNED_URL_EXPIRES_S) -> tuple[ImageUrl, str]:
    """The image URL of a candidate (rules in the module docstring) and which rule applied."""
    if base_url:
        root = base_url.rstrip("/")
        return (lambda row: f"{root}/{row.blob_key}"), "base-url"
    presign = getattr(blobs, "presigned_url", None)
    if callable(presign):
        return (lambda row: presign(row.blob_key, expires_s)), "presigned"
    return (lambda row: row.blob_key), "blob-key"


def queue_items(catalog: Catalog, classes: Sequence[str], image_url: ImageUrl, *,
                states: Sequence[str] = QUEUED) -> list[tuple[CandidateRow, QueueItem]]:
    """The queued candidates (oldest capture first) with their queue items."""
    class_set = set(classes)
    model_classes: dict[int, list[str] | None] = {}
    pairs = []
    for row in catalog.candidates(states=states):
        if row.model_version not in model_classes:
            model = catalog.model(row.model_version)
            model_classes[row.model_version] = list(model["manifest"]["classes"]) if model else None
        names = model_classes[row.model_version]
        predicted = {}
        if names and len(names) == len(row.probabilities):
            predicted = {c: float(p) for c, p in zip(names, row.probabilities) if c in class_set}
        pairs.append((row, QueueItem(candidate_id=row.id, image_url=image_url(row), file_name=f"{row.id}.jpg",
                                     width=row.width, height=row.height, predicted=predicted)))
    return pairs


def export_queue(catalog: Catalog, blobs: BlobStore, fmt: str, out: Path, *, assignee: str = "",
                 only_selected: bool = False, image_base_url: str = "") -> ExportResult:
    """Write the queue in `fmt` to `out` (a file; a folder for yolo), then mark what was written
    in_labeling for `assignee` (default "export:<out's name>").

    The queue is selected + in_labeling (an export hands out again what an earlier one did,
    to the new assignee); `only_selected` leaves items someone already holds alone. Marking
    happens after the file is complete, so a failed write assigns nothing; a candidate
    labeled between the two keeps its label."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    classes = catalog.class_list()
    image_url, url_kind = image_urls(blobs, image_base_url)
    pairs = queue_items(catalog, classes, image_url, states=[SELECTED] if only_selected else QUEUED)
    items = [item for _, item in pairs]
    left_out: list[str] = []
    extra: list[Path] = []
    if fmt == "csv":
        csv_rows.write_csv(out, items, classes)
    elif fmt == "label-studio":
        label_studio.write_tasks(out, items, classes)
        config = out.with_name(f"{out.stem}.labeling-config.xml")
        write_text_atomic(config, label_studio.labeling_config(classes) + "\n")
        extra.append(config)
    elif fmt == "coco":
        coco.write_coco(out, items, classes)
    else:
        filed = []
        for item in items:
            top = top_prediction(item.predicted, classes)
            if top is None:
                left_out.append(item.candidate_id)
            else:
                filed.append(replace(item, label=top[0]))
        keys = {row.id: row.blob_key for row, _ in pairs}
        yolo.write_yolo_classify(out, filed, lambda cid: blobs.get(keys[cid]), classes=classes)
        items = filed
    exported = tuple(item.candidate_id for item in items)
    holder = assignee or f"export:{out.name}"
    catalog.mark_in_labeling(exported, holder)
    return ExportResult(out, fmt, exported, holder, url_kind, tuple(left_out), tuple(extra))


def detect_format(path: Path) -> str:
    """The format of a labels file by its shape: a folder is yolo, .csv is csv, .json is a Label
    Studio export (a list of tasks) or COCO (an object with "images"). Raises FormatError."""
    path = Path(path)
    if path.is_dir():
        return "yolo"
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix != ".json":
        raise FormatError(f"{path}: cannot tell the format from the name (expected .csv, .json or a folder); "
                          f"pass --format {{{','.join(FORMATS)}}}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a JSON file ({exc})") from exc
    if isinstance(doc, list):
        return "label-studio"
    if isinstance(doc, dict) and "images" in doc:
        return "coco"
    raise FormatError(f"{path}: JSON that is neither a Label Studio export (a list of tasks) nor COCO "
                      "(an object with \"images\")")


def read_labels(catalog: Catalog, fmt: str, path: Path, *, allow_new_classes: bool = False) -> ImportResult:
    """Validate a labels file against the catalog without changing anything."""
    known = catalog.candidate_ids()
    classes = catalog.class_list()
    options = {"allow_new_classes": allow_new_classes}
    if fmt == "csv":
        return csv_rows.read_csv(path, known, classes, **options)
    if fmt == "label-studio":
        return label_studio.read_export(path, known, classes, **options)
    if fmt == "coco":
        return coco.read_coco(path, known, classes, **options)
    if fmt == "yolo":
        return yolo.read_yolo_classify(path, known, classes, **options)
    raise FormatError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def apply_import(catalog: Catalog, result: ImportResult, fmt: str, *, annotator: str = "") -> LabelsApplied:
    """Apply a validated import in one transaction: accepted labels with history (a row's own
    annotator, e.g. Label Studio's completed_by, else `annotator`), new classes, skips."""
    return catalog.apply_labels([NewLabel(r.candidate_id, r.label, r.annotator) for r in result.labels],
                                source=fmt, annotator=annotator, skipped=result.skipped_ids,
                                skip_note=label_studio.SKIPPED_REASON if fmt == "label-studio" else "skipped")


def import_labels(catalog: Catalog, fmt: str, path: Path, *, allow_new_classes: bool = False,
                  annotator: str = "") -> ImportResult:
    """Validate, then apply the accepted part (`apply_import`); the result lists the rest."""
    result = read_labels(catalog, fmt, path, allow_new_classes=allow_new_classes)
    apply_import(catalog, result, fmt, annotator=annotator)
    return result
