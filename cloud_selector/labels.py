"""Import of already-labeled image folders (`root/<label>/<image>`), e.g. a seed set.

The labeling queue (export, and import of labels in CSV, Label Studio, COCO or YOLO) lives in
`cloud_selector.label_queue`; this module only adds images that arrive with their label.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import Catalog, InvalidLabel, check_label, now_ms, pack_floats

IMPORT_DEVICE = "import"
_IMPORT_NAMESPACE = uuid.UUID("6f1d8c8e-4a43-4f2e-9d8e-2f4f1f0b7a11")


class LabelFileError(ValueError):
    """A labeled folder cannot be imported as asked; the message names the path."""


@dataclass(frozen=True)
class FolderImport:
    imported: int
    already_present: int
    unreadable: list[str]
    labeled: list[tuple[str, str]] = field(default_factory=list)  # (candidate id, label) of every image read


def import_image_folder(catalog: Catalog, blobs: BlobStore, root: Path) -> FolderImport:
    """Import `root/<label>/<image>` as labeled candidates (ids derived from content, so a
    re-import adds nothing)."""
    root = Path(root)
    if not root.is_dir():
        raise LabelFileError(f"{root}: not a directory")
    imported = present = 0
    unreadable: list[str] = []
    labeled: list[tuple[str, str]] = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    for class_dir in class_dirs:  # every folder name checked before the first image is stored
        try:
            check_label(class_dir.name)
        except InvalidLabel as exc:
            raise LabelFileError(f"{class_dir}: class folder name is not a usable label ({exc})") from exc
    for class_dir in class_dirs:
        label = class_dir.name
        for image_path in sorted(p for p in class_dir.iterdir() if p.is_file()):
            data = image_path.read_bytes()
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                unreadable.append(str(image_path))
                continue
            if not data.startswith(b"\xff\xd8"):
                data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            cid = str(uuid.uuid5(_IMPORT_NAMESPACE, hashlib.sha256(data).hexdigest() + label))
            labeled.append((cid, label))
            if catalog.has_candidate(cid):
                present += 1
                continue
            key = f"candidates/{cid[:2]}/{cid}.jpg"
            blobs.put(key, data)  # the blob first: a row never points at a missing image
            stored = catalog.insert_labeled({
                "id": cid, "device_id": IMPORT_DEVICE, "capture_time_ms": now_ms(), "received_ms": now_ms(),
                "model_version": 0, "blob_key": key, "jpeg_bytes": len(data), "width": image.shape[1],
                "height": image.shape[0], "embedding": pack_floats([]), "probabilities": pack_floats([]),
                "least_confidence": 0.0, "margin": 0.0, "entropy": 0.0, "novelty": 0.0, "combined": 0.0,
                "reason": "manual", "extra": json.dumps({"source": str(image_path.relative_to(root))}),
            }, label, source="folder")
            if stored:
                imported += 1
            else:  # another import of the same folder got there first
                present += 1
    return FolderImport(imported, present, unreadable, labeled)

