"""COCO JSON for image classification: image-level annotations, one category per image.

COCO was drawn for detection, so an annotation normally carries `bbox`, `area`, `iscrowd` and
`segmentation`. A classification label belongs to the whole image, so our annotations carry only
`id`, `image_id` and `category_id`; tools that need a box can take the full image
(0, 0, width, height). Each image also carries `candidate_id` (an extra field COCO readers
ignore) and `coco_url` (COCO's own field for where the image can be fetched). Unlabeled items are
exported as images without annotations; model predictions are not exported at all (COCO has no
agreed place for them, and a labeler must not mistake them for labels).

Ids are 1-based (COCO's convention; some tools treat category 0 as background), categories follow
the order of `classes`, images the order of the items.

Import: an image's candidate is its `candidate_id` field, else its `file_name` stem. An image's
label is the one category among its annotations (boxes, if any, are ignored); two or more
different categories on one image are refused -- this is classification. Annotations pointing at
unknown images or categories are refused with their annotation id. An image without annotations
is refused as "not labeled yet", so a partly labeled file is visible as such.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from cloud_selector.formats.records import (
    FormatError,
    ImportResult,
    QueueItem,
    RawLabel,
    RefusedRow,
    check_classes,
    check_export_label,
    read_json_file,
    validate_labels,
    write_text_atomic,
)

SOURCE = "coco"


def export_coco(items: Sequence[QueueItem], classes: Sequence[str], *,
                info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A COCO document for `items` (shape in the module docstring). `info` is merged into the
    default info block; nothing time-dependent is added, so the same queue exports the same bytes."""
    names = check_classes(classes)
    category_id = {name: i for i, name in enumerate(names, start=1)}
    images, annotations = [], []
    for image_id, item in enumerate(items, start=1):
        check_export_label(item, names)
        images.append({"id": image_id, "file_name": item.file_name, "width": int(item.width),
                       "height": int(item.height), "coco_url": item.image_url, "candidate_id": item.candidate_id})
        if item.label is not None:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category_id[item.label]})
    return {
        "info": {"description": "edgeflywheel labeling queue", "version": "1.0", "task": "classification",
                 **(info or {})},
        "images": images,
        "categories": [{"id": cid, "name": name} for name, cid in category_id.items()],
        "annotations": annotations,
    }


def write_coco(path: Path, items: Sequence[QueueItem], classes: Sequence[str], **options: Any) -> int:
    """Write `export_coco(...)` as a JSON file; returns the image count."""
    doc = export_coco(items, classes, **options)
    write_text_atomic(Path(path), json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return len(doc["images"])


def read_coco(path: Path, known_ids: set[str], classes: Sequence[str], **options: Any) -> ImportResult:
    """Read a COCO JSON file and validate its labels (options as `import_coco`)."""
    return import_coco(read_json_file(path), known_ids, classes, **options)


def import_coco(doc: dict[str, Any], known_ids: set[str], classes: Sequence[str], *,
                allow_new_classes: bool = False) -> ImportResult:
    """Labels from a parsed COCO document (rules in the module docstring).

    A document whose image or category ids are missing or repeated raises FormatError: which
    image an annotation means would be a guess, so none of it is imported.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise FormatError("a COCO document is an object with an 'images' list")
    categories = _index(doc.get("categories") or [], "categories")
    images = _index(doc["images"], "images")
    annotations = doc.get("annotations") or []
    if not isinstance(annotations, list):
        raise FormatError("COCO 'annotations' must be a list")
    category_name = {cid: str(c.get("name", "")).strip() for cid, c in categories.items()}

    rows: list[RawLabel | RefusedRow] = []
    labels_of: dict[int, list[str]] = {image_id: [] for image_id in images}
    for index, ann in enumerate(annotations):
        where = f"annotation id {ann['id']}" if isinstance(ann, dict) and "id" in ann else f"annotation at index {index}"
        if not isinstance(ann, dict):
            rows.append(RefusedRow(where, "not a JSON object"))
        elif not _is_id(ann.get("image_id")) or ann["image_id"] not in images:
            rows.append(RefusedRow(where, f"image_id {ann.get('image_id')!r} is not in images"))
        elif not _is_id(ann.get("category_id")) or ann["category_id"] not in categories:
            rows.append(RefusedRow(where, f"category_id {ann.get('category_id')!r} is not in categories"))
        else:
            labels_of[ann["image_id"]].append(category_name[ann["category_id"]])

    for image_id, image in images.items():
        where = f"image id {image_id}"
        cid = _candidate_id(image)
        found = list(dict.fromkeys(labels_of[image_id]))  # distinct, first-seen order
        if not found:
            rows.append(RefusedRow(where, "no annotation (not labeled yet)", cid))
        elif len(found) > 1:
            rows.append(RefusedRow(where, f"{len(found)} different categories ({', '.join(found)}); "
                                          "classification takes one label per image", cid))
        else:
            rows.append(RawLabel(where, cid, found[0]))
    return validate_labels(rows, source=SOURCE, known_ids=known_ids, classes=classes,
                           allow_new_classes=allow_new_classes)


def _index(entries: Any, what: str) -> dict[int, dict[str, Any]]:
    if not isinstance(entries, list):
        raise FormatError(f"COCO {what!r} must be a list")
    by_id: dict[int, dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        if not _is_id(entry_id):
            raise FormatError(f"COCO {what}[{index}] has no integer 'id'")
        if entry_id in by_id:
            raise FormatError(f"COCO {what} id {entry_id} appears twice")
        by_id[entry_id] = entry
    return by_id


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _candidate_id(image: dict[str, Any]) -> str:
    explicit = image.get("candidate_id")
    if isinstance(explicit, str) and explicit.strip():
        return explicit.strip()
    file_name = image.get("file_name")
    return PurePosixPath(file_name.replace("\\", "/")).stem if isinstance(file_name, str) else ""
