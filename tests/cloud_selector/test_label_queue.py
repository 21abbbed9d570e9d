"""The labeling queue through the catalog: states, stale assignments, history, the class list,
export -> fill in -> import for every format, and the `labels` commands' exit codes.

Catalog tests take `catalog_url` (conftest.py): each runs on a new SQLite file and on a fresh
PostgreSQL schema. The Label Studio export is written by hand in the shape Label Studio's JSON
export has (task ids, `annotations[]` with `completed_by`, `was_cancelled`, timestamps,
`predictions`, bookkeeping fields), as in test_formats.py, so the import meets the real format.
"""

from __future__ import annotations

import csv
import json
import shutil
import urllib.request
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cloud_selector import catalog as cat
from cloud_selector import label_queue
from cloud_selector.blobstore import DirectoryBlobStore
from cloud_selector.catalog import (
    IN_LABELING,
    LABELED,
    POOLED,
    REJECTED,
    SELECTED,
    SKIPPED,
    Catalog,
    InvalidLabel,
    NewLabel,
    UnknownCandidates,
    metadata,
    pack_floats,
    upgrade,
)
from cloud_selector.cli import main, open_services
from cloud_selector.formats import FormatError

CLASSES = ["shirt", "shoe", "bag"]
NS = uuid.UUID("0b6f5c3e-9a51-4a53-8f1e-0d7f4e2a9c10")


def cid(i: int) -> str:
    return str(uuid.uuid5(NS, str(i)))


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def values(i: int, *, probabilities=(0.7, 0.2, 0.1), model_version: int = 1) -> dict:
    return {
        "id": cid(i), "device_id": "cam-1", "capture_time_ms": 1_000 + i, "received_ms": 2_000,
        "model_version": model_version, "blob_key": f"candidates/{cid(i)}.jpg", "jpeg_bytes": 100, "width": 32,
        "height": 24, "embedding": pack_floats([0.5, -1.0]), "probabilities": pack_floats(probabilities),
        "least_confidence": 0.3, "margin": 0.5, "entropy": 0.8, "novelty": 0.1, "combined": 0.4,
        "reason": "uncertainty", "extra": json.dumps({"source": "round-01.avi", "frame_index": str(i)}),
    }


def select(catalog: Catalog, ids: list[str]) -> None:
    catalog.record_selection(config={}, model_version=1, pool_size=len(ids), duplicates=0, picks=[
        {"candidate_id": c, "rank": r, "typicality": 1.0, "min_distance": 0.5, "score": 0.5} for r, c in enumerate(ids)])


def populate(catalog: Catalog, blobs=None, *, n: int = 6, selected: int = 4) -> list[str]:
    """`n` candidates with predictions of model v1 (CLASSES), the first `selected` of them selected."""
    catalog.add_model(version=1, name="m", parent_version=0, manifest={"classes": CLASSES}, files=[])
    for i in range(n):
        # Candidate i predicts class i % 3 most strongly, so a YOLO export files them apart.
        probs = np.roll([0.7, 0.2, 0.1], i % 3)
        catalog.insert_candidate(values(i, probabilities=tuple(probs)))
        if blobs is not None:
            blobs.put(f"candidates/{cid(i)}.jpg", jpeg(i))
    ids = [cid(i) for i in range(n)]
    select(catalog, ids[:selected])
    return ids


def states(catalog: Catalog) -> dict[str, str]:
    return {r.id: r.state for r in catalog.candidates()}


@pytest.fixture
def catalog(catalog_url):
    c = Catalog.open(catalog_url)
    yield c
    c.close()


@pytest.fixture
def blobs(tmp_path):
    return DirectoryBlobStore(tmp_path / "blobs")


# ------------------------------------------------------------------ states and history


def test_queue_states_history_and_reopen(catalog_url):
    c = Catalog.open(catalog_url)
    ids = populate(c)
    a, b, d, e, pooled, _ = ids

    assert c.mark_in_labeling([a, b, d, pooled], "ana") == 3  # the pooled one is not in the queue
    row = c.candidates(ids=[a])[0]
    assert (row.state, row.assigned_to, row.width, row.height) == (IN_LABELING, "ana", 32, 24)
    assert row.assigned_ms is not None
    assert c.mark_in_labeling([b], "bo") == 1  # handed to someone else
    assert c.candidates(ids=[b])[0].assigned_to == "bo"

    assert c.apply_labels([NewLabel(a, "shirt", "ana@example.com")], source="csv", annotator="fallback",
                          skipped=[b], skip_note="too dark") == cat.LabelsApplied(1, 0, 1, ())
    assert c.set_labels([(a, "shirt")], source="csv") == 0  # unchanged: no event
    assert c.reject([d], "not a product photo", annotator="lead") == 1
    assert c.reject([d], "again") == 0
    assert c.mark_skipped([a]) == 0  # a skip never undoes a label
    assert c.set_labels([(d, "bag")], source="manual", annotator="lead") == 1  # a label brings a rejected one back
    assert c.set_labels([(a, "shoe")], source="label-studio") == 1

    with pytest.raises(UnknownCandidates):
        c.apply_labels([(e, "shoe"), ("nope", "shoe")], source="csv")
    with pytest.raises(UnknownCandidates):
        c.mark_in_labeling([e, "nope"], "ana")
    with pytest.raises(InvalidLabel):
        c.set_labels([(e, " shoe")])
    with pytest.raises(ValueError, match="two labels"):
        c.set_labels([(e, "shoe"), (e, "bag")])
    with pytest.raises(ValueError, match="label source"):
        c.set_labels([(e, "shoe")], source="spreadsheet")
    assert c.candidates(ids=[e])[0].state == SELECTED  # all or nothing
    c.close()

    # persist-queue style: reopen and check every item and every event.
    c = Catalog.open(catalog_url)
    expected = {a: (LABELED, "shoe", None), b: (SKIPPED, None, None), d: (LABELED, "bag", None),
                e: (SELECTED, None, None), pooled: (POOLED, None, None), ids[5]: (POOLED, None, None)}
    assert {r.id: (r.state, r.label, r.assigned_to) for r in c.candidates()} == expected
    history = [(ev.state, ev.previous_label, ev.label, ev.source, ev.annotator, ev.note) for ev in c.label_history(a)]
    assert history == [(LABELED, None, "shirt", "csv", "ana@example.com", ""),
                       (LABELED, "shirt", "shoe", "label-studio", "", "")]
    assert [(ev.state, ev.note, ev.annotator) for ev in c.label_history(b)] == [(SKIPPED, "too dark", "fallback")]
    assert [(ev.state, ev.previous_label, ev.label, ev.note) for ev in c.label_history(d)] == [
        (REJECTED, None, None, "not a product photo"), (LABELED, None, "bag", "")]
    assert c.label_history(e) == []
    with pytest.raises(UnknownCandidates):
        c.label_history("nope")
    assert c.label_counts() == {"shoe": 1, "bag": 1}
    assert c.candidate_ids() == set(ids)
    c.close()


def test_requeue_returns_only_stale_assignments(catalog):
    ids = populate(catalog, selected=4)
    catalog.mark_in_labeling(ids[:3], "ana")
    catalog.set_labels([(ids[2], "bag")])
    # Two assignments an hour old; one fresh; one labeled (its assignment was cleared).
    with catalog.engine.begin() as conn:
        conn.execute(cat.candidates.update().where(cat.candidates.c.id.in_(ids[:2]))
                     .values(assigned_ms=cat.now_ms() - 3_600_000))
    catalog.mark_in_labeling([ids[3]], "bo")
    assert catalog.requeue_stale(1800) == 2
    rows = {r.id: r for r in catalog.candidates()}
    assert [(rows[i].state, rows[i].assigned_to, rows[i].assigned_ms) for i in ids[:2]] == [(SELECTED, None, None)] * 2
    assert (rows[ids[2]].state, rows[ids[3]].state) == (LABELED, IN_LABELING)
    assert catalog.requeue_stale(1800) == 0
    assert catalog.requeue_stale(0) == 1  # everything assigned up to now
    assert states(catalog)[ids[3]] == SELECTED


def test_class_list(catalog):
    assert catalog.class_list() == []
    assert catalog.add_class("zebra") is True
    assert catalog.add_class("zebra") is False  # a no-op
    for bad in ("", " zebra", "x" * 129, "tab\there"):
        with pytest.raises(InvalidLabel):
            catalog.add_class(bad)
    # Publishing a model adds its classes; the list leads with the latest model's order.
    populate(catalog)
    assert catalog.class_list() == [*CLASSES, "zebra"]
    catalog.set_labels([(cid(0), "hat")])  # every label in use is a class
    assert catalog.class_list() == [*CLASSES, "zebra", "hat"]
    catalog.add_model(version=2, name="m", parent_version=1, manifest={"classes": [*CLASSES, "hat"]}, files=[])
    assert catalog.class_list() == [*CLASSES, "hat", "zebra"]
    catalog.add_model(version=3, name="m", parent_version=2, manifest={"classes": ["unpublished"]}, files=[],
                      published=False)
    assert "unpublished" not in catalog.class_list()


def test_concurrent_imports_add_a_new_class_once(catalog_url):
    from test_catalog import run_in_threads

    a, b = Catalog.open(catalog_url), Catalog.open(catalog_url)
    for i in range(40):
        a.insert_candidate(values(i))
    results = run_in_threads(
        lambda: a.apply_labels([(cid(i), "hat") for i in range(20)], source="csv"),
        lambda: b.apply_labels([(cid(i), "hat") for i in range(20, 40)], source="coco"))
    assert sorted(r.new_classes for r in results) == [(), ("hat",)]
    assert a.class_list() == ["hat"] and a.label_counts() == {"hat": 40}
    with a.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(cat.label_events)).scalar_one() == 40
    a.close(), b.close()


def test_migration_0004_fills_the_class_list_from_what_the_catalog_implies(catalog_url):
    upgrade(catalog_url, revision="0003")
    engine = sa.create_engine(catalog_url, poolclass=sa.pool.NullPool)
    old_candidate = {k: v for k, v in values(0).items()}
    with engine.begin() as conn:
        conn.execute(cat.models.insert().values(version=4, name="m", created_ms=1, parent_version=3,
                                                manifest=json.dumps({"classes": ["shoe", "shirt"]}), files="[]",
                                                published=True))
        for i, label in enumerate(["bag", "shirt", "art"]):
            conn.execute(cat.candidates.insert().values(
                {**values(i), "id": cid(i), "state": LABELED, "label": label, "labeled_ms": 5}))
        conn.execute(cat.candidates.insert().values({**old_candidate, "id": cid(9), "state": POOLED}))
    engine.dispose()
    c = Catalog.open(catalog_url)
    assert c.class_list() == ["shoe", "shirt", "art", "bag"]
    assert c.candidates(ids=[cid(9)])[0].assigned_to is None
    with c.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    c.close()


def test_schema_downgrade_from_0004(tmp_path):
    from alembic import command

    from cloud_selector.migrations import alembic_config

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    Catalog.open(url).close()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        command.downgrade(alembic_config(connection=conn), "0003")
        assert "classes" not in sa.inspect(conn).get_table_names()
    engine.dispose()
    Catalog.open(url).close()  # and up again


# ------------------------------------------------------------------ export -> fill in -> import


def fill_csv(path: Path, truth: dict[str, str]) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["label"] = truth.get(row["candidate_id"], "")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def label_studio_export(tasks_path: Path, truth: dict[str, str], skipped: set[str]) -> list[dict]:
    """What Label Studio's JSON export gives after a labeler worked through our imported tasks."""
    out = []
    for n, task in enumerate(json.loads(tasks_path.read_text()), start=1):
        c = task["data"]["candidate_id"]
        stamp = f"2025-01-05T10:{n:02d}:00.000000Z"
        annotation = {
            "id": 1000 + n, "completed_by": {"id": 3, "email": "ana@example.com", "first_name": "", "last_name": ""},
            "result": [] if c in skipped else [{
                "value": {"choices": [truth[c]]}, "id": f"r{n}", "from_name": "choice", "to_name": "image",
                "type": "choices", "origin": "manual"}],
            "was_cancelled": c in skipped, "ground_truth": False, "created_at": stamp, "updated_at": stamp,
            "draft_created_at": None, "lead_time": 4.2, "prediction": {}, "result_count": 0,
            "unique_id": str(uuid.uuid5(NS, c)), "import_id": None, "last_action": None, "task": n, "project": 7,
            "updated_by": 3, "parent_prediction": 500 + n, "parent_annotation": None, "last_created_by": None,
        }
        out.append({
            "id": n, "annotations": [annotation], "file_upload": None, "drafts": [],
            "predictions": [500 + n] if task["predictions"] else [], "data": task["data"], "meta": {},
            "created_at": "2025-01-05T09:00:00.000000Z", "updated_at": stamp, "inner_id": n,
            "total_annotations": 0 if c in skipped else 1, "cancelled_annotations": 1 if c in skipped else 0,
            "total_predictions": len(task["predictions"]), "comment_count": 0, "unresolved_comment_count": 0,
            "last_comment_updated_at": None, "project": 7, "updated_by": 3, "comment_authors": [],
        })
    return out


def fill_coco(path: Path, truth: dict[str, str]) -> None:
    doc = json.loads(path.read_text())
    category = {c["name"]: c["id"] for c in doc["categories"]}
    doc["annotations"] = [{"id": n, "image_id": image["id"], "category_id": category[truth[image["candidate_id"]]]}
                          for n, image in enumerate(doc["images"], start=1) if image["candidate_id"] in truth]
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("fmt", label_queue.FORMATS)
def test_export_fill_import_round_trip(catalog, blobs, tmp_path, fmt):
    ids = populate(catalog, blobs, selected=4)
    catalog.mark_in_labeling([ids[3]], "earlier-export")
    out = tmp_path / {"csv": "queue.csv", "label-studio": "tasks.json", "coco": "queue.json", "yolo": "queue"}[fmt]
    exported = label_queue.export_queue(catalog, blobs, fmt, out, assignee="ana",
                                        image_base_url="https://img.example/")
    assert sorted(exported.candidate_ids) == sorted(ids[:4]) and exported.url_kind == "base-url"
    assert {r.id: (r.state, r.assigned_to) for r in catalog.candidates(ids=ids[:4])} == {
        i: (IN_LABELING, "ana") for i in ids[:4]}

    truth = {ids[0]: "shoe", ids[1]: "shoe", ids[2]: "bag"}
    expected_skipped: set[str] = set()
    if fmt == "csv":
        assert f"https://img.example/candidates/{ids[0]}.jpg" in out.read_text()
        fill_csv(out, truth)  # ids[3] left empty -> refused "empty label"
        path = out
    elif fmt == "label-studio":
        tasks = json.loads(out.read_text())
        assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == ["shirt"]
        assert (tmp_path / "tasks.labeling-config.xml").is_file()
        expected_skipped = {ids[3]}
        path = tmp_path / "export.json"
        path.write_text(json.dumps(label_studio_export(out, truth, expected_skipped)))
    elif fmt == "coco":
        assert [c["name"] for c in json.loads(out.read_text())["categories"]] == CLASSES
        fill_coco(out, truth)  # ids[3] without annotation -> refused "not labeled yet"
        path = out
    else:
        # Filed by prediction (candidate i predicts CLASSES[i % 3]); the labeler moves two files.
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == sorted(
            f"train/{CLASSES[i % 3]}/{ids[i]}.jpg" for i in range(4))
        shutil.move(out / "train" / "shirt" / f"{ids[0]}.jpg", out / "train" / "shoe" / f"{ids[0]}.jpg")
        (out / "train" / "shirt" / f"{ids[3]}.jpg").rename(out / "train" / "shirt" / f"{ids[3]}.txt")
        path = out

    assert label_queue.detect_format(path) == fmt
    result = label_queue.import_labels(catalog, fmt, path, annotator="team-a")
    accepted = {r.candidate_id: r.label for r in result.labels}
    assert accepted == truth
    assert [r.candidate_id for r in result.refused] == ([ids[3]] if fmt != "yolo" else [""])
    rows = {r.id: r for r in catalog.candidates()}
    for c, label in truth.items():
        assert (rows[c].state, rows[c].label, rows[c].assigned_to) == (LABELED, label, None)
        event = catalog.label_history(c)[-1]
        assert (event.source, event.label) == (fmt, label)
        assert event.annotator == ("ana@example.com" if fmt == "label-studio" else "team-a")
    if expected_skipped:
        assert rows[ids[3]].state == SKIPPED
        assert [e.note for e in catalog.label_history(ids[3])] == ["skipped in Label Studio"]
    else:  # a refused row leaves its candidate exactly as it was
        assert (rows[ids[3]].state, rows[ids[3]].label, rows[ids[3]].assigned_to) == (IN_LABELING, None, "ana")
        assert catalog.label_history(ids[3]) == []
    assert [rows[i].state for i in ids[4:]] == [POOLED, POOLED]


def test_refused_rows_and_new_classes(catalog, blobs, tmp_path):
    ids = populate(catalog, selected=3)
    out = tmp_path / "labels.csv"
    out.write_text(f"candidate_id,label\n{ids[0]},hat\n{ids[1]},shoe\n{ids[2]},shoe\n{ids[2]},bag\nnope,bag\n")
    result = label_queue.import_labels(catalog, "csv", out)
    assert {r.candidate_id: r.label for r in result.labels} == {ids[1]: "shoe"}
    assert [r.where for r in result.refused] == ["line 2", "line 4", "line 5", "line 6"]
    assert states(catalog)[ids[0]] == SELECTED and "hat" not in catalog.class_list()
    assert states(catalog)[ids[2]] == SELECTED and catalog.label_history(ids[2]) == []

    out.write_text(f"candidate_id,label\n{ids[0]},hat\n")
    result = label_queue.import_labels(catalog, "csv", out, allow_new_classes=True)
    assert result.new_classes == ["hat"] and catalog.class_list()[-1] == "hat"
    assert catalog.candidates(ids=[ids[0]])[0].label == "hat"


def test_export_options_and_what_yolo_leaves_out(catalog, blobs, tmp_path):
    ids = populate(catalog, blobs, selected=4)
    # An imported image has no prediction to file it under.
    catalog.insert_candidate({**values(9, probabilities=(), model_version=0), "id": cid(9)})
    blobs.put(f"candidates/{cid(9)}.jpg", jpeg(9))
    select(catalog, [cid(9)])
    catalog.mark_in_labeling(ids[:2], "bo")

    only = label_queue.export_queue(catalog, blobs, "csv", tmp_path / "q.csv", only_selected=True)
    assert sorted(only.candidate_ids) == sorted([*ids[2:4], cid(9)]) and only.assignee == "export:q.csv"
    assert only.url_kind == "blob-key" and f"candidates/{cid(9)}.jpg" in (tmp_path / "q.csv").read_text()
    assert {r.assigned_to for r in catalog.candidates(ids=ids[:2])} == {"bo"}

    folder = label_queue.export_queue(catalog, blobs, "yolo", tmp_path / "y", assignee="cy")
    assert folder.left_out == (cid(9),) and sorted(folder.candidate_ids) == sorted(ids[:4])
    assert catalog.candidates(ids=[cid(9)])[0].assigned_to == "export:q.csv"  # not handed to cy
    with pytest.raises(FormatError):
        label_queue.export_queue(catalog, blobs, "pascal", tmp_path / "x")


def test_presigned_image_urls_from_s3(s3_bucket, catalog, tmp_path):
    from cloud_selector.s3store import S3BlobStore

    store = S3BlobStore.open(s3_bucket)
    ids = populate(catalog, store, selected=1)
    result = label_queue.export_queue(catalog, store, "coco", tmp_path / "q.json")
    assert result.url_kind == "presigned"
    url = json.loads((tmp_path / "q.json").read_text())["images"][0]["coco_url"]
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=604800" in url
    with urllib.request.urlopen(url, timeout=10) as response:  # no credentials: the URL carries them
        assert response.read() == jpeg(0)
    assert ids[0] in url


# ------------------------------------------------------------------ the `labels` commands


def cli(data: Path, *args: str) -> int:
    return main(["--data-dir", str(data), "--log-level", "WARNING", "labels", *args])


def test_labels_commands_exit_codes_and_refused_rows(tmp_path, capsys):
    data = tmp_path / "cloud"
    services = open_services(data)
    ids = populate(services.catalog, services.blobs, selected=3)
    services.catalog.close()

    assert cli(data, "export", str(tmp_path / "tasks.json"), "--format", "label-studio", "--assignee", "ana") == 0
    assert "wrote 3 queued candidate(s)" in capsys.readouterr().out
    export = label_studio_export(tmp_path / "tasks.json", {ids[0]: "shirt", ids[1]: "zebra", ids[2]: "bag"}, set())
    (tmp_path / "export.json").write_text(json.dumps(export))

    assert cli(data, "import", str(tmp_path / "export.json"), "--annotator", "team") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"imported {tmp_path / 'export.json'} (label-studio): 2 label(s) accepted (2 changed), "
                             "0 skipped, 1 row(s) refused")
    assert out[1].startswith("refused task 2 annotation 1002: unknown label 'zebra' (known classes: shirt, shoe, bag")
    assert "--allow-new-classes" in out[2]

    assert cli(data, "import", str(tmp_path / "export.json"), "--allow-new-classes") == 0
    out = capsys.readouterr().out
    assert "3 label(s) accepted (1 changed), 0 skipped, 0 row(s) refused; new classes: zebra" in out

    assert cli(data, "classes", "--add", "hat") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "added class hat" and out[-1] == "hat\t0\tno (next training adds it)"
    assert "shirt\t1\tyes" in out

    assert cli(data, "history", ids[1]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{ids[1]}: labeled, label zebra"
    assert out[1].endswith("\tlabeled\t- -> zebra\tlabel-studio\tana@example.com")

    assert cli(data, "export-queue", str(tmp_path / "q.csv")) == 0  # the older name still works
    assert "wrote 0 queued candidate(s)" in capsys.readouterr().out
    assert cli(data, "requeue", "--older-than-min", "0") == 0
    assert "requeued 0 candidate(s)" in capsys.readouterr().out

    for bad in (["import", str(tmp_path / "missing.csv")], ["import", str(tmp_path / "tasks.labeling-config.xml")],
                ["history", "nope"], ["classes", "--add", " padded"]):
        assert cli(data, *bad) == 2, bad
        captured = capsys.readouterr()
        assert captured.err.startswith("cloud-selector: error: ") and len(captured.err.strip().splitlines()) == 1
