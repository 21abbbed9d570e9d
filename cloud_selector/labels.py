"""Labels in and out: the queue export, CSV import, and import of already-labeled image folders.

CSV import format (header required): `candidate_id,label`. A file with an unknown candidate id,
an empty or overlong label, or a duplicated id is refused as a whole, with the line number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import LABELED, SELECTED, Catalog, now_ms, pack_floats

MAX_LABEL_CHARS = 128
IMPORT_DEVICE = "import"
_IMPORT_NAMESPACE = uuid.UUID("6f1d8c8e-4a43-4f2e-9d8e-2f4f1f0b7a11")
QUEUE_COLUMNS = ["candidate_id", "device_id", "capture_time_ms", "predicted_index", "confidence", "reason",
                 "blob_key", "metadata"]


class LabelFileError(ValueError):
    """A labels file is malformed; the message names the line."""


@dataclass(frozen=True)
class FolderImport:
    imported: int
    already_present: int
    unreadable: list[str]


def read_labels_csv(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"candidate_id", "label"} <= set(reader.fieldnames):
                raise LabelFileError(f"{path}: header must contain candidate_id,label (got {reader.fieldnames})")
            labels, seen = [], set()
            for line, row in enumerate(reader, start=2):
                cid, label = (row["candidate_id"] or "").strip().lower(), (row["label"] or "").strip()
                if not cid or not label or len(label) > MAX_LABEL_CHARS or not label.isprintable():
                    raise LabelFileError(f"{path}:{line}: need a candidate_id and a printable label of "
                                         f"1..{MAX_LABEL_CHARS} characters")
                if cid in seen:
                    raise LabelFileError(f"{path}:{line}: candidate {cid} appears twice")
                seen.add(cid)
                labels.append((cid, label))
    except FileNotFoundError as exc:
        raise LabelFileError(f"{path}: no such file") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LabelFileError(f"{path}: not a readable CSV ({exc})") from exc
    return labels


def export_queue(catalog: Catalog, path: Path) -> int:
    """Write the labeling queue (selected, not yet labeled) as CSV; returns the row count."""
    rows = catalog.candidates(states=[SELECTED])
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(QUEUE_COLUMNS)
        for r in rows:
            probs = r.probabilities
            top = int(np.argmax(probs)) if len(probs) else -1
            writer.writerow([r.id, r.device_id, r.capture_time_ms, top, f"{probs[top]:.4f}" if top >= 0 else "",
                             r.reason, r.blob_key, json.dumps(r.extra, sort_keys=True)])
    tmp.replace(path)
    return len(rows)


def import_image_folder(catalog: Catalog, blobs: BlobStore, root: Path) -> FolderImport:
    """Import `root/<label>/<image>` as labeled candidates (ids derived from content, so a
    re-import adds nothing)."""
    root = Path(root)
    if not root.is_dir():
        raise LabelFileError(f"{root}: not a directory")
    imported = present = 0
    unreadable = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = class_dir.name
        if len(label) > MAX_LABEL_CHARS or not label.isprintable():
            raise LabelFileError(f"{class_dir}: class folder name is not a usable label")
        for image_path in sorted(p for p in class_dir.iterdir() if p.is_file()):
            data = image_path.read_bytes()
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                unreadable.append(str(image_path))
                continue
            if not data.startswith(b"\xff\xd8"):
                data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            cid = str(uuid.uuid5(_IMPORT_NAMESPACE, hashlib.sha256(data).hexdigest() + label))
            if catalog.has_candidate(cid):
                present += 1
                continue
            key = f"candidates/{cid[:2]}/{cid}.jpg"
            blobs.put(key, data)
            catalog.insert_candidate({
                "id": cid, "device_id": IMPORT_DEVICE, "capture_time_ms": now_ms(), "received_ms": now_ms(),
                "model_version": 0, "blob_key": key, "jpeg_bytes": len(data), "width": image.shape[1],
                "height": image.shape[0], "embedding": pack_floats([]), "probabilities": pack_floats([]),
                "least_confidence": 0.0, "margin": 0.0, "entropy": 0.0, "novelty": 0.0, "combined": 0.0,
                "reason": "manual", "extra": json.dumps({"source": str(image_path.relative_to(root))}),
                "state": LABELED, "label": label, "labeled_ms": now_ms(),
            })
            imported += 1
    return FolderImport(imported, present, unreadable)
