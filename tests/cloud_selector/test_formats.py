"""Label formats: known-answer exports, round trips through a simulated labeler, and refusals.

The Label Studio export below is written by hand in the shape Label Studio's "JSON" export
produces (task `id`, `data`, `annotations[]` with `result[].value.choices`, `was_cancelled`,
`completed_by`, timestamps, `predictions`), so the import is tested against the real format,
not against our own exporter's idea of it.
"""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest

from cloud_selector.formats import (
    ExportError,
    FormatError,
    ImportResult,
    LabelFormatError,
    LabelRecord,
    QueueItem,
    RefusedRow,
    coco,
    csv_rows,
    label_studio,
    yolo,
)
from cloud_selector.formats.records import RawLabel, validate_labels

CLASSES = ["cat", "dog", "bird"]
NS = uuid.UUID("12345678-1234-5678-1234-567812345678")
IDS = [str(uuid.uuid5(NS, str(i))) for i in range(6)]
A, B, C, D, E, F = IDS
KNOWN = set(IDS)


def item(cid: str, predicted: dict[str, float] | None = None, label: str | None = None) -> QueueItem:
    return QueueItem(cid, f"https://blobs.example/candidates/{cid[:2]}/{cid}.jpg", f"{cid}.jpg", 96, 64,
                     predicted or {}, label)


QUEUE = [
    item(A, {"cat": 0.7, "dog": 0.2, "bird": 0.1}),
    item(B, {"cat": 0.1, "dog": 0.8, "bird": 0.1}),
    item(C, {}),  # no prediction (e.g. an imported image)
    item(D, {"cat": 0.4, "dog": 0.4, "bird": 0.2}),  # a tie: goes to the class listed first
]
TRUTH = {A: "dog", B: "dog", C: "bird", D: "cat"}  # what our simulated labeler decides


def labels_of(result: ImportResult) -> dict[str, str]:
    return {r.candidate_id: r.label for r in result.labels}


def refusals(result: ImportResult) -> list[tuple[str, str]]:
    return [(r.where, r.reason) for r in result.refused]


# ---- shared validation ------------------------------------------------------------------

def test_validation_rules_apply_to_every_row():
    rows = [
        RawLabel("line 2", A, "cat"),
        RawLabel("line 3", A, " cat "),  # identical after trimming: accepted once
        RawLabel("line 4", B, "cat"),
        RawLabel("line 5", B, "dog"),  # conflicts with line 4: both refused
        RawLabel("line 6", C.upper(), "bird"),  # an upper-cased UUID still finds its candidate
        RawLabel("line 7", "not-a-candidate", "cat"),
        RawLabel("line 8", D, ""),
        RawLabel("line 9", E, "horse"),
        RawLabel("line 10", "", "cat"),
        RefusedRow("line 11", "the format's own refusal keeps its place"),
        RawLabel("line 12", F, "x" * 129),
    ]
    result = validate_labels(rows, source="t", known_ids=KNOWN, classes=CLASSES)
    assert result.labels == [LabelRecord(A, "cat", "t"), LabelRecord(C, "bird", "t")]
    conflict = f"conflicting labels for candidate {B}: 'cat' (line 4); 'dog' (line 5)"
    assert refusals(result) == [
        ("line 4", conflict),
        ("line 5", conflict),
        ("line 7", "unknown candidate id 'not-a-candidate'"),
        ("line 8", "empty label"),
        ("line 9", "unknown label 'horse' (known classes: cat, dog, bird)"),
        ("line 10", "no candidate id"),
        ("line 11", "the format's own refusal keeps its place"),
        ("line 12", "label longer than 128 characters"),
    ]
    assert not result.all_accepted
    assert result.summary(max_refusals=1).splitlines() == [
        "2 label(s) accepted, 8 row(s) refused", f"  line 4: {conflict}", "  ... and 7 more"]


def test_new_classes_are_accepted_only_when_allowed():
    rows = [RawLabel("a", A, "horse"), RawLabel("b", B, "cat"), RawLabel("c", C, "horse"), RawLabel("d", D, "zebra")]
    result = validate_labels(rows, source="t", known_ids=KNOWN, classes=CLASSES, allow_new_classes=True)
    assert labels_of(result) == {A: "horse", B: "cat", C: "horse", D: "zebra"}
    assert result.new_classes == ["horse", "zebra"] and result.all_accepted


def test_class_list_itself_is_checked():
    with pytest.raises(LabelFormatError, match="appears twice"):
        label_studio.labeling_config(["cat", "cat"])
    with pytest.raises(LabelFormatError, match="non-empty"):
        coco.export_coco([], ["cat", ""])


# ---- Label Studio -----------------------------------------------------------------------

def test_labeling_config_known_answer():
    assert label_studio.labeling_config(["cat", 'say "a&b"']) == (
        '<View><Image name="image" value="$image"/>'
        '<Choices name="choice" toName="image" choice="single" required="true">'
        '<Choice value="cat"/><Choice value=\'say "a&amp;b"\'/></Choices></View>')


def test_export_tasks_known_answer():
    tasks = label_studio.export_tasks(QUEUE[:4] + [item(E, {"bird": 0.9, "cat": 0.1}, label="bird")], CLASSES,
                                      model_version="v7")
    assert tasks[0] == {
        "data": {"image": QUEUE[0].image_url, "candidate_id": A},
        "predictions": [{"model_version": "v7", "score": 0.7, "result": [
            {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]}],
    }
    assert "id" not in tasks[0]  # Label Studio assigns task ids
    assert tasks[2] == {"data": {"image": QUEUE[2].image_url, "candidate_id": C}, "predictions": []}
    assert tasks[3]["predictions"][0]["result"][0]["value"] == {"choices": ["cat"]}  # tie -> first class
    assert tasks[4]["annotations"] == [{"result": [
        {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["bird"]}}]}]
    json.dumps(tasks)  # plain JSON all the way down


def test_export_refuses_predictions_or_labels_outside_the_classes():
    with pytest.raises(ExportError, match="horse"):
        label_studio.export_tasks([item(A, {"horse": 1.0})], CLASSES)
    with pytest.raises(ExportError, match="not one of the classes"):
        label_studio.export_tasks([item(A, label="horse")], CLASSES)


def label_studio_does_its_job(tasks: list[dict], truth: dict[str, str]) -> list[dict]:
    """What Label Studio hands back after a labeler worked through the imported tasks."""
    exported = []
    for task_id, task in enumerate(tasks, start=1):
        label = truth[task["data"]["candidate_id"]]
        exported.append({
            "id": task_id, "data": task["data"], "predictions": task["predictions"], "project": 3,
            "annotations": [{
                "id": 100 + task_id, "completed_by": 1, "was_cancelled": False, "ground_truth": False,
                "created_at": "2024-05-01T10:00:00.000000Z", "updated_at": "2024-05-01T10:00:00.000000Z",
                "lead_time": 2.5, "task": task_id, "result_count": 0,
                "result": [{"id": "r1", "from_name": "choice", "to_name": "image", "type": "choices",
                            "origin": "manual", "value": {"choices": [label]}}],
            }],
        })
    return exported


def test_label_studio_round_trip(tmp_path):
    tasks_path = tmp_path / "tasks.json"
    assert label_studio.write_tasks(tasks_path, QUEUE, CLASSES, model_version="v7") == 4
    tasks = json.loads(tasks_path.read_text())
    export_path = tmp_path / "export.json"
    export_path.write_text(json.dumps(label_studio_does_its_job(tasks, TRUTH)))
    result = label_studio.read_export(export_path, KNOWN, CLASSES)
    assert labels_of(result) == TRUTH and result.all_accepted
    assert {(r.source, r.annotator, r.at) for r in result.labels} == {
        ("label_studio", "1", "2024-05-01T10:00:00.000000Z")}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


HANDWRITTEN_EXPORT = """[
  {"id": 11, "data": {"image": "https://blobs.example/candidates/%(A2)s/%(A)s.jpg", "candidate_id": "%(A)s"},
   "annotations": [{"id": 1001, "completed_by": 4, "was_cancelled": false, "ground_truth": false,
     "created_at": "2024-05-01T09:00:00.123456Z", "updated_at": "2024-05-01T09:00:00.123456Z",
     "lead_time": 3.1, "task": 11, "project": 3, "prediction": {}, "result_count": 0,
     "result": [{"id": "Xq1", "from_name": "choice", "to_name": "image", "type": "choices",
                 "origin": "manual", "value": {"choices": ["cat"]}}]}],
   "predictions": [{"id": 7, "model_version": "v7", "score": 0.7, "result": [{"from_name": "choice",
     "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]}],
   "drafts": [], "meta": {}, "inner_id": 1, "total_annotations": 1, "cancelled_annotations": 0},
  {"id": 12, "data": {"image": "https://blobs.example/candidates/%(B2)s/%(B)s.jpg", "candidate_id": "%(B)s"},
   "annotations": [
     {"id": 1003, "completed_by": {"id": 5, "email": "rev@example.com", "first_name": "", "last_name": ""},
      "was_cancelled": false, "created_at": "2024-05-02T08:00:00Z", "updated_at": "2024-05-02T08:30:00Z",
      "task": 12, "result": [{"id": "Xq3", "from_name": "choice", "to_name": "image", "type": "choices",
                              "value": {"choices": ["bird"]}}]},
     {"id": 1002, "completed_by": 4, "was_cancelled": false, "created_at": "2024-05-01T09:05:00Z",
      "updated_at": "2024-05-01T09:05:00Z", "task": 12,
      "result": [{"id": "Xq2", "from_name": "choice", "to_name": "image", "type": "choices",
                  "value": {"choices": ["dog"]}}]}],
   "predictions": []},
  {"id": 13, "data": {"image": "https://blobs.example/candidates/%(C2)s/%(C)s.jpg", "candidate_id": "%(C)s"},
   "annotations": [{"id": 1004, "completed_by": 4, "was_cancelled": true, "result": [],
                    "created_at": "2024-05-01T09:06:00Z", "updated_at": "2024-05-01T09:06:00Z", "task": 13}],
   "predictions": []},
  {"id": 14, "data": {"image": "/data/upload/3/1a2b3c4d-%(D)s.jpg"},
   "annotations": [
     {"id": 1005, "completed_by": 4, "was_cancelled": false, "created_at": "2024-05-01T09:07:00Z",
      "updated_at": "2024-05-01T09:07:00Z", "task": 14,
      "result": [{"id": "Xq5", "from_name": "choice", "to_name": "image", "type": "choices",
                  "value": {"choices": ["dog"]}}]},
     {"id": 1006, "completed_by": 6, "was_cancelled": true, "created_at": "2024-05-03T09:00:00Z",
      "updated_at": "2024-05-03T09:00:00Z", "task": 14, "result": []}],
   "predictions": []},
  {"id": 15, "data": {"image": "https://blobs.example/candidates/%(E2)s/%(E)s.jpg", "candidate_id": "%(E)s"},
   "annotations": [], "predictions": []},
  {"id": 16, "data": {"image": "/data/local-files/?d=queue/%(F)s.jpg"},
   "annotations": [{"id": 1007, "completed_by": 4, "was_cancelled": false, "task": 16,
     "created_at": "2024-05-01T09:08:00Z", "updated_at": "2024-05-01T09:08:00Z",
     "result": [{"id": "Xq7", "from_name": "choice", "to_name": "image", "type": "choices",
                 "value": {"choices": ["cat", "dog"]}}]}],
   "predictions": []},
  {"id": 17, "data": {"image": "https://elsewhere.example/photo.jpg"},
   "annotations": [{"id": 1008, "completed_by": 4, "was_cancelled": false, "task": 17,
     "result": [{"id": "Xq8", "from_name": "choice", "to_name": "image", "type": "choices",
                 "value": {"choices": ["cat"]}}]}],
   "predictions": []}
]"""


def handwritten_export() -> list[dict]:
    return json.loads(HANDWRITTEN_EXPORT % {"A": A, "A2": A[:2], "B": B, "B2": B[:2], "C": C, "C2": C[:2],
                                            "D": D, "E": E, "E2": E[:2], "F": F})


def test_label_studio_export_written_by_hand():
    result = label_studio.import_export(handwritten_export(), KNOWN, CLASSES)
    assert result.labels == [
        LabelRecord(A, "cat", "label_studio", "4", "2024-05-01T09:00:00.123456Z"),
        # two annotations: the later one (a reviewer's, listed first) wins
        LabelRecord(B, "bird", "label_studio", "rev@example.com", "2024-05-02T08:30:00Z"),
        # an older submitted annotation stands when a newer one was cancelled; id from the upload name
        LabelRecord(D, "dog", "label_studio", "4", "2024-05-01T09:07:00Z"),
    ]
    assert refusals(result) == [
        ("task 13", "skipped in Label Studio"),
        ("task 15", "no annotation in Label Studio (not labeled yet)"),
        ("task 16 annotation 1007",
         "2 choices selected from Choices tag 'choice' ('cat', 'dog'); classification takes exactly one"),
        ("task 17", ("no candidate id: data.candidate_id is missing and the image URL's file name is not a "
                     "known candidate ('https://elsewhere.example/photo.jpg')")),
    ]
    assert result.skipped_ids == [C]
    assert [r.candidate_id for r in result.refused] == [C, E, F, ""]


def test_label_studio_refusals_for_classes_tags_and_duplicates():
    tasks = handwritten_export()[:2]
    tasks[0]["annotations"][0]["result"][0]["value"]["choices"] = ["Cat"]
    tasks[1]["annotations"][0]["result"][0]["from_name"] = "other_tag"  # newest has no 'choice' region
    result = label_studio.import_export(tasks, KNOWN, CLASSES)
    assert refusals(result) == [
        ("task 11 annotation 1001", "unknown label 'Cat' (known classes: cat, dog, bird)"),
        ("task 12 annotation 1003", "annotation has no choice from Choices tag 'choice'"),
    ]
    loose = label_studio.import_export(tasks, KNOWN, CLASSES, from_name=None, allow_new_classes=True)
    assert labels_of(loose) == {A: "Cat", B: "bird"} and loose.new_classes == ["Cat"]

    # the same candidate in two tasks: agreeing labels are one label, disagreeing ones are refused
    twice = handwritten_export()[:1] * 2
    assert labels_of(label_studio.import_export(twice, KNOWN, CLASSES)) == {A: "cat"}
    twice[1] = json.loads(json.dumps(twice[1]))
    twice[1]["id"] = 99
    twice[1]["annotations"][0]["result"][0]["value"]["choices"] = ["dog"]
    result = label_studio.import_export(twice, KNOWN, CLASSES)
    assert result.labels == [] and len(result.refused) == 2
    assert result.refused[1].reason == (f"conflicting labels for candidate {A}: "
                                        "'cat' (task 11 annotation 1001); 'dog' (task 99 annotation 1001)")
    # skipped in one task and labeled in another is a conflict too, not a silent label
    twice[1]["annotations"][0]["was_cancelled"] = True
    result = label_studio.import_export(twice, KNOWN, CLASSES)
    assert result.labels == [] and result.skipped_ids == []
    assert result.refused[0].reason.endswith("'cat' (task 11 annotation 1001); skipped (task 99)")


def test_label_studio_unreadable_files_raise(tmp_path):
    with pytest.raises(FormatError, match="JSON_MIN"):
        label_studio.import_export([{"id": 1, "image": "x.jpg", "choice": "cat"}], KNOWN, CLASSES)
    with pytest.raises(FormatError, match="list of tasks"):
        label_studio.import_export({"tasks": []}, KNOWN, CLASSES)
    bad = tmp_path / "export.json"
    bad.write_text("[{")
    with pytest.raises(FormatError, match="not a JSON file"):
        label_studio.read_export(bad, KNOWN, CLASSES)
    with pytest.raises(FormatError, match="no such file"):
        label_studio.read_export(tmp_path / "missing.json", KNOWN, CLASSES)


# ---- COCO -------------------------------------------------------------------------------

def test_coco_export_known_answer():
    doc = coco.export_coco([item(A, {"cat": 0.9}), item(B, label="dog")], CLASSES, info={"year": 2024})
    assert doc == {
        "info": {"description": "edgeflywheel labeling queue", "version": "1.0", "task": "classification",
                 "year": 2024},
        "images": [
            {"id": 1, "file_name": f"{A}.jpg", "width": 96, "height": 64, "coco_url": item(A).image_url,
             "candidate_id": A},
            {"id": 2, "file_name": f"{B}.jpg", "width": 96, "height": 64, "coco_url": item(B).image_url,
             "candidate_id": B},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 2}],  # image level: no bbox
    }
    assert "predictions" not in json.dumps(doc) and "0.9" not in json.dumps(doc)


def test_coco_round_trip(tmp_path):
    path = tmp_path / "queue.json"
    assert coco.write_coco(path, QUEUE, CLASSES) == 4
    doc = json.loads(path.read_text())
    assert doc["annotations"] == []  # an unlabeled queue exports images only
    category = {c["name"]: c["id"] for c in doc["categories"]}
    for image in doc["images"]:  # the labeler's tool adds one annotation per image
        doc["annotations"].append({"id": 500 + image["id"], "image_id": image["id"], "iscrowd": 0,
                                   "category_id": category[TRUTH[image["candidate_id"]]]})
    path.write_text(json.dumps(doc))
    result = coco.read_coco(path, KNOWN, CLASSES)
    assert labels_of(result) == TRUTH and result.all_accepted
    assert {r.source for r in result.labels} == {"coco"}


def test_coco_refusals():
    doc = {
        "images": [
            {"id": 1, "file_name": f"{A}.jpg", "width": 96, "height": 64, "candidate_id": A},
            {"id": 2, "file_name": f"frames/{B}.jpg", "width": 96, "height": 64},  # id from the file stem
            {"id": 3, "file_name": f"{C}.jpg", "width": 96, "height": 64, "candidate_id": C},
            {"id": 4, "file_name": f"{D}.jpg", "width": 96, "height": 64, "candidate_id": D},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10]},  # same class twice: fine
            {"id": 3, "image_id": 2, "category_id": 2},
            {"id": 4, "image_id": 3, "category_id": 1},
            {"id": 5, "image_id": 3, "category_id": 2},  # conflicting image
            {"id": 6, "image_id": 9, "category_id": 1},
            {"id": 7, "image_id": 1, "category_id": 8},
        ],
    }
    result = coco.import_coco(doc, KNOWN, CLASSES)
    assert labels_of(result) == {A: "cat", B: "dog"}
    assert refusals(result) == [
        ("annotation id 6", "image_id 9 is not in images"),
        ("annotation id 7", "category_id 8 is not in categories"),
        ("image id 3", "2 different categories (cat, dog); classification takes one label per image"),
        ("image id 4", "no annotation (not labeled yet)"),
    ]
    assert [r.candidate_id for r in result.refused] == ["", "", C, D]


def test_coco_unreadable_documents_raise():
    with pytest.raises(FormatError, match="'images' list"):
        coco.import_coco({"annotations": []}, KNOWN, CLASSES)
    with pytest.raises(FormatError, match="images id 1 appears twice"):
        coco.import_coco({"images": [{"id": 1}, {"id": 1}]}, KNOWN, CLASSES)
    with pytest.raises(FormatError, match=r"categories\[0\] has no integer 'id'"):
        coco.import_coco({"images": [], "categories": [{"name": "cat"}]}, KNOWN, CLASSES)


# ---- YOLO classification folders --------------------------------------------------------

def fake_jpeg(cid: str) -> bytes:
    return b"\xff\xd8\xff\xe0" + cid.encode() + b"\xff\xd9"


def test_yolo_round_trip(tmp_path):
    labeled = [item(cid, label=TRUTH[cid]) for cid in (A, B, C)]
    assert yolo.write_yolo_classify(tmp_path, labeled, fake_jpeg, classes=CLASSES) == 3
    assert yolo.write_yolo_classify(tmp_path, [item(D, label="cat")], fake_jpeg, split="val") == 1
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == sorted(["train", "train/cat", "train/dog", "train/bird", f"train/dog/{A}.jpg",
                              f"train/dog/{B}.jpg", f"train/bird/{C}.jpg", "val", "val/cat", f"val/cat/{D}.jpg"])
    assert (tmp_path / "train" / "bird" / f"{C}.jpg").read_bytes() == fake_jpeg(C)

    # the labeler corrects one image by moving it to another class folder
    (tmp_path / "train" / "dog" / f"{A}.jpg").rename(tmp_path / "train" / "cat" / f"{A}.jpg")
    result = yolo.read_yolo_classify(tmp_path, KNOWN, CLASSES)
    assert labels_of(result) == {**TRUTH, A: "cat"} and result.all_accepted
    assert {r.source for r in result.labels} == {"yolo"}


def test_yolo_refusals(tmp_path):
    for rel in (f"train/cat/{A}.jpg", f"val/cat/{A}.JPG",  # same class in two splits: one label
                f"train/dog/{B}.png", f"train/cat/{B}.jpg",  # copied rather than moved: a conflict
                "train/cat/notes.txt", "train/cat/stray.jpg", f"train/horse/{C}.jpg", "train/readme.md",
                "data.yaml", f"train/cat/nested/{D}.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\xff\xd8")
    result = yolo.read_yolo_classify(tmp_path, KNOWN, CLASSES)
    assert labels_of(result) == {A: "cat"}
    conflict = f"conflicting labels for candidate {B}: 'cat' (train/cat/{B}.jpg); 'dog' (train/dog/{B}.png)"
    assert refusals(result) == [
        ("data.yaml", "not a split folder (expected train, val, test)"),
        (f"train/cat/{B}.jpg", conflict),
        ("train/cat/nested", "folder inside a class folder"),
        ("train/cat/notes.txt", "not an image file (expected .bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp)"),
        ("train/cat/stray.jpg", "unknown candidate id 'stray'"),
        (f"train/dog/{B}.png", conflict),
        (f"train/horse/{C}.jpg", "unknown label 'horse' (known classes: cat, dog, bird)"),
        ("train/readme.md", "file outside a class folder"),
    ]


def test_yolo_flat_folder_and_missing_root(tmp_path):
    (tmp_path / "bird").mkdir()
    (tmp_path / "bird" / f"{E}.jpg").write_bytes(b"\xff\xd8")
    assert labels_of(yolo.read_yolo_classify(tmp_path, KNOWN, CLASSES)) == {E: "bird"}
    with pytest.raises(FormatError, match="not a directory"):
        yolo.read_yolo_classify(tmp_path / "nope", KNOWN, CLASSES)


def test_yolo_write_refuses_what_it_cannot_write_faithfully(tmp_path):
    with pytest.raises(ExportError, match="have no label"):
        yolo.write_yolo_classify(tmp_path, [item(A)], fake_jpeg)
    with pytest.raises(ExportError, match="cannot be used as a file or folder name"):
        yolo.write_yolo_classify(tmp_path, [item(A, label="../up")], fake_jpeg)
    with pytest.raises(ExportError, match="not one of the classes"):
        yolo.write_yolo_classify(tmp_path, [item(A, label="horse")], fake_jpeg, classes=CLASSES)
    with pytest.raises(ExportError, match="split must be"):
        yolo.write_yolo_classify(tmp_path, [item(A, label="cat")], fake_jpeg, split="training")
    with pytest.raises(ExportError, match="not a JPEG"):
        yolo.write_yolo_classify(tmp_path / "png", [item(A, label="cat")], lambda cid: b"\x89PNG")
    yolo.write_yolo_classify(tmp_path / "twice", [item(A, label="cat")], fake_jpeg)
    with pytest.raises(ExportError, match="not empty"):
        yolo.write_yolo_classify(tmp_path / "twice", [item(A, label="dog")], fake_jpeg)
    assert not (tmp_path / "twice" / "train" / "dog").exists()


# ---- CSV --------------------------------------------------------------------------------

def test_csv_export_known_answer():
    text = csv_rows.format_csv([QUEUE[0], QUEUE[2], item(E, {"bird": 0.55556}, label="bird")], CLASSES)
    assert text.splitlines() == [
        "candidate_id,image_url,predicted_label,predicted_score,label",
        f"{A},{QUEUE[0].image_url},cat,0.7000,",
        f"{C},{QUEUE[2].image_url},,,",
        f"{E},{item(E).image_url},bird,0.5556,bird",
    ]


def test_csv_round_trip(tmp_path):
    path = tmp_path / "queue.csv"
    assert csv_rows.write_csv(path, QUEUE, CLASSES) == 4
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # a spreadsheet user fills the label column, adds a notes column and saves with a BOM
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["notes", *rows[0].keys()], lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "label": TRUTH[row["candidate_id"]], "notes": "checked, twice"})
    path.write_text("\ufeff" + out.getvalue(), encoding="utf-8")
    result = csv_rows.read_csv(path, KNOWN, CLASSES)
    assert labels_of(result) == TRUTH and result.all_accepted
    assert {r.source for r in result.labels} == {"csv"}


def test_csv_refusals_name_their_lines():
    text = ("candidate_id,label,comment\n"
            f"{A},cat,ok\n"
            f"{B},,forgot\n"
            f"nope,dog,\n"
            f"{C},horse\n"
            "\n"  # a blank line is not a row
            f"{D.upper()},bird\n")
    result = csv_rows.import_csv_text(text, KNOWN, CLASSES)
    assert labels_of(result) == {A: "cat", D: "bird"}
    assert refusals(result) == [
        ("line 3", "empty label"),
        ("line 4", "unknown candidate id 'nope'"),
        ("line 5", "unknown label 'horse' (known classes: cat, dog, bird)"),
    ]


def test_csv_unreadable_files_raise(tmp_path):
    with pytest.raises(FormatError, match="header must contain candidate_id,label"):
        csv_rows.import_csv_text("id,label\nx,cat\n", KNOWN, CLASSES)
    with pytest.raises(FormatError, match="header must contain"):
        csv_rows.import_csv_text("", KNOWN, CLASSES)
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"candidate_id,label\nx,chat\xe9\n")
    with pytest.raises(FormatError, match="not UTF-8"):
        csv_rows.read_csv(path, KNOWN, CLASSES)


def test_csv_export_defuses_spreadsheet_formulas():
    from cloud_selector.formats import QueueItem
    from cloud_selector.formats.csv_rows import export_rows

    item = QueueItem(candidate_id="6f1d8c8e-4a43-4f2e-9d8e-2f4f1f0b7a11", image_url="=HYPERLINK(\"http://x\")",
                     file_name="a.jpg", width=1, height=1, predicted={"+cmd": 1.0}, label="@SUM(A1)")
    row = export_rows([item], ["+cmd", "@SUM(A1)"])[0]
    assert row["image_url"].startswith("'=") and row["predicted_label"] == "'+cmd" and row["label"] == "'@SUM(A1)"
