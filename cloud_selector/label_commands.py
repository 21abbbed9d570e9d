"""`cloud-selector labels ...`: the labeling queue from the command line.

    labels export OUT [--format F] [--assignee NAME] [--image-base-url URL] [--only-selected]
    labels export-queue OUT.csv          the same as `export OUT --format csv` (older name)
    labels import PATH [--format F|auto] [--allow-new-classes] [--annotator NAME]
    labels import-folder ROOT [--holdout] already-labeled images, ROOT/<label>/<image>
    labels requeue --older-than-min N    in_labeling items assigned N+ minutes ago -> selected
    labels classes [--add NAME ...]      the class list (and add to it)
    labels history CANDIDATE_ID          the candidate's state and labeling history

Exit codes: 0 done; 1 `import` refused some rows (each printed with its position and reason,
the rest applied); 2 a user mistake (bad arguments, an unreadable file, an unknown candidate),
one line on stderr and nothing changed. Wiring only: the work is in label_queue and catalog.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from cloud_selector import label_queue
from cloud_selector.catalog import InvalidLabel, UnknownCandidates, check_label
from cloud_selector.formats import LabelFormatError
from cloud_selector.labels import LabelFileError

_ERRORS = (LabelFormatError, LabelFileError, InvalidLabel, UnknownCandidates)


def add_labels_parser(sub: argparse._SubParsersAction) -> None:
    """The `labels` command and its actions, on the CLI's subcommand list."""
    p = sub.add_parser(
        "labels", help="export the labeling queue, import labels, manage classes",
        description="The labeling queue: candidates picked by `select` wait as selected; `labels export` writes "
                    "them for a labeling tool (CSV, Label Studio, COCO, YOLO folders) and marks them in_labeling "
                    "for an assignee; `labels import` reads the labels back (row by row: what is wrong is "
                    "refused with its position and reason, the rest is applied in one transaction); Label Studio "
                    "tasks the labeler skipped become skipped. Exit codes: 0 all accepted, 1 some rows refused, "
                    "2 unusable input.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    a = actions.add_parser("export", help="write the queue for labeling and mark it in_labeling",
                           description="Write the queue (selected and in_labeling candidates) to OUT and mark "
                                       "what was written in_labeling for the assignee. label-studio also writes "
                                       "OUT's labeling config beside it (<stem>.labeling-config.xml); yolo writes "
                                       "a folder sorted by the model's prediction for the labeler to correct.")
    a.add_argument("path", type=Path, metavar="OUT", help="output file (a folder for yolo)")
    a.add_argument("--format", choices=label_queue.FORMATS, default="csv", help="default csv")
    a.add_argument("--assignee", default="", metavar="NAME",
                   help="who labels this export (default: export:<OUT's name>); see `labels requeue`")
    a.add_argument("--image-base-url", default="", metavar="URL",
                   help="image URLs are URL/<blob key> (default: presigned S3 URLs valid 7 days when the blob "
                        "store is S3, else bare blob keys)")
    a.add_argument("--only-selected", action="store_true",
                   help="leave candidates already in_labeling (held by someone) out")
    a.set_defaults(func=cmd_export)

    a = actions.add_parser("export-queue", help="the same as `export OUT --format csv`")
    a.add_argument("path", type=Path, metavar="OUT.csv")
    a.set_defaults(func=cmd_export, format="csv", assignee="", image_base_url="", only_selected=False)

    a = actions.add_parser("import", help="apply labels from a file (refused rows are listed)",
                           description="Read labels from PATH and apply the accepted rows in one transaction; "
                                       "print a summary and one line per refused row. auto: .csv is csv, .json "
                                       "is a Label Studio JSON export or COCO by its content, a folder is YOLO "
                                       "(<split>/<class>/<candidate_id>.jpg).")
    a.add_argument("path", type=Path, metavar="PATH")
    a.add_argument("--format", choices=[*label_queue.FORMATS, "auto"], default="auto", help="default auto")
    a.add_argument("--allow-new-classes", action="store_true",
                   help="accept labels outside the class list and add them to it (the next training run grows "
                        "the model's head)")
    a.add_argument("--annotator", default="", metavar="NAME",
                   help="recorded in the history for rows that do not name their annotator")
    a.set_defaults(func=cmd_import)

    a = actions.add_parser("import-folder", help="add already-labeled images from ROOT/<label>/<image>")
    a.add_argument("path", type=Path, metavar="ROOT")
    a.add_argument("--holdout", action="store_true",
                   help="make these images the fixed held-out set the evaluation gate measures every model version "
                        "on (replacing the current one; they are never trained on)")
    a.set_defaults(func=cmd_import_folder)

    a = actions.add_parser("requeue", help="return stale in_labeling candidates to the queue",
                           description="Candidates assigned N or more minutes ago and still without a label go "
                                       "back to selected, for the next export to hand out again.")
    a.add_argument("--older-than-min", type=float, required=True, metavar="N")
    a.set_defaults(func=cmd_requeue)

    a = actions.add_parser("classes", help="list the class list, or add to it",
                           description="The classes labels may use: the latest model's, then the ones added "
                                       "since. A class the latest model lacks makes the next training run grow "
                                       "the model's head.")
    a.add_argument("--add", action="append", default=[], metavar="NAME", help="add a class (repeatable)")
    a.set_defaults(func=cmd_classes)

    a = actions.add_parser("history", help="a candidate's state and labeling history")
    a.add_argument("candidate_id", metavar="CANDIDATE_ID")
    a.set_defaults(func=cmd_history)


def _fail(exc: BaseException) -> int:
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
    print(f"cloud-selector: error: {message}", file=sys.stderr)
    return 2


def cmd_export(args, s) -> int:
    try:
        result = label_queue.export_queue(s.catalog, s.blobs, args.format, args.path, assignee=args.assignee,
                                          only_selected=args.only_selected, image_base_url=args.image_base_url)
    except _ERRORS as exc:
        return _fail(exc)
    print(f"wrote {result.exported} queued candidate(s) to {result.path} ({result.format}); "
          f"in_labeling for {result.assignee}")
    for extra in result.extra_files:
        print(f"wrote {extra}")
    if result.left_out:
        print(f"left out {len(result.left_out)} candidate(s) without a prediction to file them under (still "
              "selected; export them as csv or label-studio)")
    if result.exported and result.url_kind == "blob-key" and args.format in ("label-studio", "coco", "csv"):
        print("note: image URLs are blob keys, which a labeling tool cannot load; pass --image-base-url")
    return 0


def cmd_import(args, s) -> int:
    try:
        fmt = label_queue.detect_format(args.path) if args.format == "auto" else args.format
        result = label_queue.read_labels(s.catalog, fmt, args.path, allow_new_classes=args.allow_new_classes)
        applied = label_queue.apply_import(s.catalog, result, fmt, annotator=args.annotator)
    except _ERRORS as exc:
        return _fail(exc)
    skipped = set(result.skipped_ids)
    refused = [r for r in result.refused if r.candidate_id not in skipped]
    line = (f"imported {args.path} ({fmt}): {len(result.labels)} label(s) accepted ({applied.labeled} changed), "
            f"{applied.skipped} skipped, {len(refused)} row(s) refused")
    if applied.new_classes:
        line += f"; new classes: {', '.join(applied.new_classes)}"
    print(line)
    for row in refused:
        print(f"refused {row.where}: {row.reason}")
    if any(row.reason.startswith("unknown label") for row in refused) and not args.allow_new_classes:
        print("(labels outside the class list are refused: add them with `labels classes --add NAME` or "
              "import with --allow-new-classes)")
    return 1 if refused else 0


def cmd_import_folder(args, s) -> int:
    from cloud_selector.labels import import_image_folder

    try:
        result = import_image_folder(s.catalog, s.blobs, args.path)
    except _ERRORS as exc:
        return _fail(exc)
    print(f"imported {result.imported} labeled images ({result.already_present} already present, "
          f"{len(result.unreadable)} unreadable)")
    if args.holdout:
        from cloud_selector.releases import Releases

        print(f"held-out set: {Releases(s.catalog).set_holdout(result.labeled)} images (fixed until replaced)")
    return 0


def cmd_requeue(args, s) -> int:
    if not args.older_than_min >= 0:  # also NaN
        print(f"cloud-selector: error: --older-than-min must be 0 or more, got {args.older_than_min:g}",
              file=sys.stderr)
        return 2
    n = s.catalog.requeue_stale(args.older_than_min * 60)
    print(f"requeued {n} candidate(s) assigned {args.older_than_min:g}+ minutes ago")
    return 0


def cmd_classes(args, s) -> int:
    try:
        for name in args.add:  # all checked before any is added: a mistake changes nothing
            check_label(name)
    except _ERRORS as exc:
        return _fail(exc)
    for name in args.add:
        print(f"added class {name}" if s.catalog.add_class(name) else f"{name} is already a class")
    latest = s.catalog.latest_model()
    in_model = set(latest["manifest"]["classes"]) if latest else set()
    counts = s.catalog.label_counts()
    print("class\tlabeled\tin_model")
    for name in s.catalog.class_list():
        print(f"{name}\t{counts.get(name, 0)}\t{'yes' if name in in_model else 'no (next training adds it)'}")
    return 0


def cmd_history(args, s) -> int:
    try:
        events = s.catalog.label_history(args.candidate_id)
    except _ERRORS as exc:
        return _fail(exc)
    row = s.catalog.candidates(ids=[args.candidate_id])[0]
    held = f", assigned to {row.assigned_to} since {_utc(row.assigned_ms)}" if row.assigned_to else ""
    print(f"{row.id}: {row.state}, label {row.label or '-'}{held}")
    if not events:
        print("no labeling history")
    for e in events:
        note = f"\t{e.note}" if e.note else ""
        print(f"{_utc(e.at_ms)}\t{e.state}\t{e.previous_label or '-'} -> {e.label or '-'}\t{e.source}\t"
              f"{e.annotator or '-'}{note}")
    return 0


def _utc(ms: int | None) -> str:
    return datetime.fromtimestamp((ms or 0) / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
