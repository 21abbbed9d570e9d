"""Labeling-queue export and label import for image classification (one label per image).

Four formats, one module each, all speaking the typed records in `records`:

    label_studio  export_tasks / labeling_config / write_tasks    import_export / read_export
    coco          export_coco / write_coco                        import_coco / read_coco
    yolo          write_yolo_classify                             read_yolo_classify
    csv_rows      export_rows / format_csv / write_csv            import_csv_text / read_csv

Exporters take `QueueItem`s; importers return an `ImportResult`: the validated `LabelRecord`s and
a `RefusedRow` (position + reason) for every row that was not accepted. Every importer runs the
same `validate_labels`, so the rules (known candidate, known class, conflicting duplicates
refused) are the same whatever the file. Only `read_*`/`write_*` functions touch files; nothing
here reads the catalog -- the caller passes `known_ids` and `classes` in and applies the result.

Errors:

    LabelFormatError (ValueError)   bad arguments, e.g. duplicate class names
    ├── FormatError                 a file is not readable as its format at all; nothing imported
    └── ExportError                 items cannot be exported as asked (label outside classes, ...)

A problem with one row is never an exception: it is a RefusedRow.
"""

from cloud_selector.formats.records import (
    MAX_LABEL_CHARS,
    ExportError,
    FormatError,
    ImportResult,
    LabelFormatError,
    LabelRecord,
    QueueItem,
    RefusedRow,
)

__all__ = [
    "MAX_LABEL_CHARS",
    "ExportError",
    "FormatError",
    "ImportResult",
    "LabelFormatError",
    "LabelRecord",
    "QueueItem",
    "RefusedRow",
]
