"""Ultralytics' classification dataset layout: `root/<split>/<class>/<image>`.

Ultralytics (like torchvision's ImageFolder underneath) takes the class list from the folder
names of the train split, sorted -- so a class without images simply vanishes and every later
class index shifts. `write_yolo_classify` therefore creates a folder for every class in
`classes` (when given), empty or not. Images are written as `<candidate_id>.jpg`, which is how
`read_yolo_classify` finds the candidate again: a labeler who moves a file into another class
folder has relabeled it.

Reading accepts the split layout (`train`, `val`, `test`) or, when none of those folders exists,
a flat `root/<class>/<image>` folder. Anything else is refused with its path: files outside a
class folder, folders inside one, non-image files, file stems that are not known candidates. One
candidate under two classes (say, copied instead of moved) is a conflict and refused; the same
class in two splits is fine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cloud_selector.formats.records import (
    ExportError,
    FormatError,
    ImportResult,
    QueueItem,
    RawLabel,
    RefusedRow,
    check_classes,
    check_export_label,
    validate_labels,
)

SOURCE = "yolo"
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_JPEG_MAGIC = b"\xff\xd8"


def write_yolo_classify(root: Path, items: Sequence[QueueItem], image_bytes: Callable[[str], bytes], *,
                        split: str = "train", classes: Sequence[str] = ()) -> int:
    """Write labeled `items` as `root/<split>/<label>/<candidate_id>.jpg`; returns the image count.

    `image_bytes(candidate_id)` supplies the JPEG (e.g. from the blob store), so this module needs
    no storage access. The split folder must be empty or absent: writing over an older export
    would leave images under labels they no longer have.
    """
    if split not in SPLITS:
        raise ExportError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    names = check_classes(classes) if classes else []
    unlabeled = [item.candidate_id for item in items if item.label is None]
    if unlabeled:
        raise ExportError(f"{len(unlabeled)} item(s) have no label, e.g. {', '.join(unlabeled[:5])}; "
                          "a classification folder can only hold labeled images")
    for item in items:
        if names:
            check_export_label(item, names)
        _check_component(item.label or "", "label")
        _check_component(item.candidate_id, "candidate id")
    for name in names:
        _check_component(name, "class")

    split_dir = Path(root) / split
    if split_dir.exists() and any(split_dir.iterdir()):
        raise ExportError(f"{split_dir} is not empty; export into a fresh folder")
    for name in names or sorted({item.label for item in items if item.label}):
        (split_dir / name).mkdir(parents=True, exist_ok=True)
    for item in items:
        data = image_bytes(item.candidate_id)
        if not data.startswith(_JPEG_MAGIC):
            raise ExportError(f"candidate {item.candidate_id}: image bytes are not a JPEG")
        (split_dir / str(item.label) / f"{item.candidate_id}.jpg").write_bytes(data)
    return len(items)


def read_yolo_classify(root: Path, known_ids: set[str], classes: Sequence[str], *,
                       allow_new_classes: bool = False) -> ImportResult:
    """Labels from a classification folder tree (rules in the module docstring); the refusal
    positions are paths relative to `root`."""
    root = Path(root)
    if not root.is_dir():
        raise FormatError(f"{root}: not a directory")
    rows: list[RawLabel | RefusedRow] = []
    entries = sorted(root.iterdir())
    split_dirs = [p for p in entries if p.is_dir() and p.name in SPLITS]
    if split_dirs:
        for entry in entries:
            if entry not in split_dirs:
                rows.append(RefusedRow(_where(root, entry), f"not a split folder (expected {', '.join(SPLITS)})"))
        for split_dir in split_dirs:
            rows += _read_split(root, split_dir)
    else:
        rows += _read_split(root, root)
    return validate_labels(rows, source=SOURCE, known_ids=known_ids, classes=classes,
                           allow_new_classes=allow_new_classes)


def _read_split(root: Path, split_dir: Path) -> list[RawLabel | RefusedRow]:
    rows: list[RawLabel | RefusedRow] = []
    for class_dir in sorted(split_dir.iterdir()):
        if not class_dir.is_dir():
            rows.append(RefusedRow(_where(root, class_dir), "file outside a class folder"))
            continue
        for path in sorted(class_dir.iterdir()):
            where = _where(root, path)
            if path.is_dir():
                rows.append(RefusedRow(where, "folder inside a class folder"))
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                rows.append(RefusedRow(where, f"not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})"))
            else:
                rows.append(RawLabel(where, path.stem, class_dir.name))
    return rows


def _where(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _check_component(name: str, what: str) -> None:
    """A folder or file name must stay one path component: a label like "a/b" or ".." would
    write outside its class folder."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ExportError(f"{what} {name!r} cannot be used as a file or folder name")
