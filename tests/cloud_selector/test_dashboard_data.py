"""The dashboard's data layer on both catalog backends (`catalog_url`): the candidate grid's
filters, sorts and pages against hand-checked expectations, a candidate's detail, the overview's
day buckets, the embedding map, the pages' actions and the labeling queue, the fleet, and the
predicted class ingest stores. Real SQLite and PostgreSQL; the catalog is arranged through its
own API, and directly in its tables only where the API stamps "now" (to move a row to another day).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import numpy as np
import pytest
import sqlalchemy as sa

from cloud_selector import dashboard_data as dd
from cloud_selector.blobstore import DirectoryBlobStore
from cloud_selector.catalog import Catalog, UnknownCandidates, now_ms, pack_floats, utc_day
from cloud_selector.dashboard_data import NO_VALUE, CandidateFilter, PageRequest, candidate_page
from cloud_selector.ingest import IngestService
from cloud_selector.releases import Releases
from cloud_selector.schema import (
    candidates, fleet_daily, label_events, models, rollout_devices, rollouts, selection_runs,
)
from cloud_selector.selection_engine import Contribution
from conftest import make_candidate

DAY = 86_400_000


def values(cid: str, **overrides) -> dict:
    return {"id": cid, "device_id": "cam-a", "capture_time_ms": 1, "received_ms": 1, "model_version": 1,
            "blob_key": f"candidates/{cid}.jpg", "jpeg_bytes": 100, "width": 32, "height": 24,
            "embedding": pack_floats([1.0, 0.0]), "probabilities": pack_floats([0.5, 0.5]), "least_confidence": 0.5,
            "margin": 0.5, "entropy": 0.5, "novelty": 0.5, "combined": 0.5, "reason": "uncertainty", "extra": "{}",
            **overrides}


@pytest.fixture
def catalog(catalog_url):
    c = Catalog.open(catalog_url)
    yield c
    c.close()


# id, device, capture, received, state, reason, label, predicted class, prob, lc, margin, entropy, novelty, combined
GRID = [
    ("c1", "cam-a", 100, 1000, "pooled", "uncertainty", None, "shirt", 0.9, 0.1, 0.6, 0.2, 0.5, 0.3),
    ("c2", "cam-a", 300, 2000, "selected", "novelty", None, "coat", 0.4, 0.6, 0.1, 0.9, 0.95, 0.8),
    ("c3", "cam-b", 200, 2000, "labeled", "uncertainty", "shirt", "shirt", 0.7, 0.3, 0.4, 0.5, 0.1, 0.55),
    ("c4", "cam-b", 400, 3000, "pooled", "random", None, None, None, 0.5, 0.3, 0.7, 0.2, 0.45),
    ("c5", "cam-c", 500, 4000, "rejected", "uncertainty", None, "coat", 0.55, 0.45, 0.8, 0.35, 0.7, 0.65),
    ("c6", "cam-a", 600, 5000, "duplicate", "novelty", None, None, None, 0.2, 0.9, 0.1, 0.3, 0.1),
]
_GRID_KEYS = ("cid", "device_id", "capture_time_ms", "received_ms", "state", "reason", "label", "predicted_class",
              "predicted_prob", "least_confidence", "margin", "entropy", "novelty", "combined")


@pytest.fixture
def grid(catalog):
    for row in GRID:
        assert catalog.insert_candidate(values(**dict(zip(_GRID_KEYS, row))))
    dd.tag(catalog, ["c1", "c4"], "night", "ana")
    dd.tag(catalog, ["c1"], "dusk", "ana")
    return catalog


def ids(page) -> list[str]:
    return [card.id for card in page.items]


# ------------------------------------------------------------------ the grid


DESCENDING = {
    "received_ms": ["c6", "c5", "c4", "c3", "c2", "c1"],  # c2 and c3 tie: by id, descending too
    "capture_time_ms": ["c6", "c5", "c4", "c2", "c3", "c1"],
    "least_confidence": ["c2", "c4", "c5", "c3", "c6", "c1"],
    "margin": ["c6", "c5", "c1", "c3", "c4", "c2"],
    "entropy": ["c2", "c4", "c3", "c5", "c1", "c6"],
    "novelty": ["c2", "c5", "c1", "c6", "c4", "c3"],
    "combined": ["c2", "c5", "c3", "c4", "c1", "c6"],
    "predicted_prob": ["c1", "c3", "c5", "c2", "c6", "c4"],  # no prediction last, ties by id
}
ASCENDING = {**{k: v[::-1] for k, v in DESCENDING.items()},
             "received_ms": ["c1", "c2", "c3", "c4", "c5", "c6"],
             "predicted_prob": ["c2", "c5", "c3", "c1", "c4", "c6"]}


@pytest.mark.parametrize("sort", dd.SORT_KEYS)
def test_every_sort_in_both_directions(grid, sort):
    assert ids(candidate_page(grid, sort=sort)) == DESCENDING[sort]
    assert ids(candidate_page(grid, sort=sort, descending=False)) == ASCENDING[sort]


FILTERS = [
    ({"device_id": "cam-a"}, ["c6", "c2", "c1"]),
    ({"state": "pooled"}, ["c4", "c1"]),
    ({"reason": "novelty"}, ["c6", "c2"]),
    ({"predicted_class": "coat"}, ["c5", "c2"]),
    ({"predicted_class": NO_VALUE}, ["c6", "c4"]),
    ({"label": "shirt"}, ["c3"]),
    ({"label": NO_VALUE}, ["c6", "c5", "c4", "c2", "c1"]),
    ({"tag": "night"}, ["c4", "c1"]),
    ({"tag": "nobody-uses-this"}, []),
    ({"since_ms": 2000}, ["c6", "c5", "c4", "c3", "c2"]),
    ({"until_ms": 3000}, ["c3", "c2", "c1"]),
    ({"since_ms": 2000, "until_ms": 4000}, ["c4", "c3", "c2"]),
    ({"min_least_confidence": 0.3}, ["c5", "c4", "c3", "c2"]),
    ({"max_least_confidence": 0.3}, ["c6", "c3", "c1"]),
    ({"min_margin": 0.6}, ["c6", "c5", "c1"]),
    ({"max_margin": 0.3}, ["c4", "c2"]),
    ({"min_entropy": 0.5}, ["c4", "c3", "c2"]),
    ({"max_entropy": 0.2}, ["c6", "c1"]),
    ({"min_novelty": 0.5}, ["c5", "c2", "c1"]),
    ({"max_novelty": 0.2}, ["c4", "c3"]),
    ({"min_combined": 0.55}, ["c5", "c3", "c2"]),
    ({"max_combined": 0.3}, ["c6", "c1"]),
    ({"min_predicted_prob": 0.55}, ["c5", "c3", "c1"]),
    ({"max_predicted_prob": 0.55}, ["c5", "c2"]),
    ({"device_id": "cam-a", "state": "pooled"}, ["c1"]),
    ({"device_id": "cam-b", "min_entropy": 0.3, "max_entropy": 0.8}, ["c4", "c3"]),
    ({"tag": "night", "state": "pooled", "min_novelty": 0.3}, ["c1"]),
]


@pytest.mark.parametrize(("given", "expected"), FILTERS, ids=[json.dumps(f) for f, _ in FILTERS])
def test_every_filter(grid, given, expected):
    page = candidate_page(grid, CandidateFilter(**given))
    assert (ids(page), page.total, page.pages) == (expected, len(expected), 1)
    # The same filter from query parameters (strings), sorted by novelty this time.
    by_novelty = candidate_page(grid, CandidateFilter.from_query({k: str(v) for k, v in given.items()}),
                                sort="novelty")
    assert ids(by_novelty) == [cid for cid in DESCENDING["novelty"] if cid in expected]


def test_cards_carry_scores_tags_and_no_blobs(grid):
    card = next(c for c in candidate_page(grid).items if c.id == "c1")
    assert card == dd.CandidateCard(
        id="c1", device_id="cam-a", capture_time_ms=100, received_ms=1000, state="pooled", reason="uncertainty",
        label=None, predicted_class="shirt", predicted_prob=0.9,
        scores={"least_confidence": 0.1, "margin": 0.6, "entropy": 0.2, "novelty": 0.5, "combined": 0.3},
        tags=["dusk", "night"], width=32, height=24, model_version=1, blob_key="candidates/c1.jpg")
    assert [c.tags for c in candidate_page(grid, CandidateFilter(device_id="cam-b")).items] == [["night"], []]


def test_pagination_totals_and_the_per_page_cap(catalog):
    with catalog.engine.begin() as conn:  # 250 rows in one statement
        conn.execute(candidates.insert(), [{**values(f"p{i:03d}", received_ms=i), "state": "pooled"}
                                              for i in range(250)])
    first = candidate_page(catalog, per_page=100)
    assert (first.total, first.pages, first.per_page, len(first.items)) == (250, 3, 100, 100)
    assert (ids(first)[0], first.has_previous, first.has_next) == ("p249", False, True)
    last = candidate_page(catalog, page=3, per_page=100)
    assert (ids(last)[0], ids(last)[-1], len(last.items), last.has_next) == ("p049", "p000", 50, False)
    past = candidate_page(catalog, page=4, per_page=100)
    assert (past.items, past.total, past.pages) == ([], 250, 3)
    capped = candidate_page(catalog, per_page=1000)
    assert (capped.per_page, len(capped.items), capped.pages) == (dd.MAX_PER_PAGE, 200, 2)
    none = candidate_page(catalog, CandidateFilter(device_id="cam-z"))
    assert (none.items, none.total, none.pages) == ([], 0, 1)
    for bad in ({"page": 0}, {"per_page": 0}, {"sort": "embedding"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            candidate_page(catalog, **bad)


@pytest.mark.parametrize(("query", "message"), [
    ({"colour": "red"}, "colour: not a filter"),
    ({"state": "lost"}, "state: one of pooled"),
    ({"since_ms": "yesterday"}, "since_ms: a whole number"),
    ({"since_ms": "-5"}, "since_ms: a time in ms"),
    ({"since_ms": "10", "until_ms": "10"}, "since_ms: must be before until_ms"),
    ({"min_entropy": "high"}, "min_entropy: a number"),
    ({"max_novelty": "nan"}, "max_novelty: a finite number"),
    ({"min_margin": "0.9", "max_margin": "0.1"}, "min_margin: must not exceed max_margin"),
    ({"device_id": "x" * 129}, "device_id: 1 to 128"),
    ({"tag": "a\tb"}, "tag: 1 to 64 printable"),
])
def test_from_query_names_the_bad_field(query, message):
    with pytest.raises(ValueError, match=message):
        CandidateFilter.from_query(query)


def test_from_query_skips_empty_values_and_page_keys_and_round_trips():
    query = {"device_id": " cam-a ", "state": "", "min_entropy": "0.25", "since_ms": "5", "sort": "novelty",
             "order": "asc", "page": "2", "per_page": "30"}
    f = CandidateFilter.from_query(query)
    assert f == CandidateFilter(device_id="cam-a", min_entropy=0.25, since_ms=5)
    assert CandidateFilter.from_query(f.to_query()) == f
    assert PageRequest.from_query(query) == PageRequest(sort="novelty", descending=False, page=2, per_page=30)
    assert PageRequest.from_query({}) == PageRequest()
    for bad, message in (({"order": "up"}, "order: asc or desc"), ({"page": "two"}, "page: a whole number"),
                         ({"sort": "id"}, "sort: one of"), ({"per_page": "-1"}, "per_page")):
        with pytest.raises(ValueError, match=message):
            PageRequest.from_query(bad)


# ------------------------------------------------------------------ detail


def test_detail_neighbours_probabilities_duplicates_runs_and_history(catalog):
    catalog.add_model(version=1, name="m", parent_version=0, manifest={"classes": ["a", "b", "c"]}, files=[])
    vectors = {"t": [1, 0, 0, 0], "n1": [0.9, 0.1, 0, 0], "n2": [0.5, 0.5, 0, 0], "n3": [0, 1, 0, 0],
               "z0": [0, 0, 0, 0], "n4": [-1, 0, 0, 0]}
    for cid, vector in vectors.items():
        catalog.insert_candidate(values(cid, embedding=pack_floats(vector),
                                        probabilities=pack_floats([0.2, 0.7, 0.1])))
    catalog.insert_candidate(values("v2", model_version=2, embedding=pack_floats([1, 0, 0, 0])))  # another space
    catalog.insert_candidate(values("d1", model_version=3))
    catalog.insert_candidate(values("d2", model_version=3))
    catalog.mark_duplicates([("d1", "t"), ("d2", "t")])
    contributions = [Contribution(0, "DIVERSITY", "EMBEDDINGS", 0.25, 0.25, 1.0, 0.25),
                     Contribution(1, "TYPICALITY", "EMBEDDINGS", 0.5, 0.5, 1.0, 0.5)]
    run = catalog.record_selection(config={"n_samples": 1}, model_version=1, pool_size=6, duplicates=2, picks=[
        {"candidate_id": "t", "rank": 0, "typicality": 0.5, "min_distance": 0.25, "score": 0.125,
         "contributions": [asdict(c) for c in contributions]}])
    catalog.set_labels([("t", "b")], annotator="ana")
    dd.reject(catalog, ["t"], "blurry", "bob")

    detail = dd.candidate_detail(catalog, "t", neighbours=10)
    assert [(n.id, round(n.distance, 4)) for n in detail.neighbours] == [
        ("n1", 0.0061), ("n2", 0.2929), ("n3", 1.0), ("z0", 1.0), ("n4", 2.0)]  # the tie at 1.0 by id
    assert [n.id for n in dd.candidate_detail(catalog, "t", neighbours=3).neighbours] == ["n1", "n2", "n3"]
    assert [n.id for n in dd.candidate_neighbours(catalog, "t", k=2)] == ["n1", "n2"]
    assert dd.candidate_detail(catalog, "t", neighbours=0).neighbours == []
    assert [(p.index, p.name, round(p.probability, 3)) for p in detail.class_probabilities] == [
        (1, "b", 0.7), (0, "a", 0.2), (2, "c", 0.1)]
    assert ([d.id for d in detail.duplicates], detail.duplicate_count, detail.duplicate_of) == (["d1", "d2"], 2, None)
    assert dd.candidate_detail(catalog, "d1").duplicate_of == dd.CandidateRef("t", "cam-a", "rejected", None, None)
    [reason] = detail.selections
    assert (reason.run_id, reason.rank, reason.score, reason.config, reason.contributions) == (
        run, 0, 0.125, {"n_samples": 1}, contributions)
    assert [(e.state, e.label, e.annotator, e.note) for e in detail.history] == [
        ("labeled", "b", "ana", ""), ("rejected", None, "bob", "blurry")]
    assert (detail.card.state, detail.embedding_dim, detail.extra) == ("rejected", 4, {})
    # A version the catalog does not know: probabilities without names.
    assert [p.name for p in dd.candidate_detail(catalog, "v2").class_probabilities] == [None, None]
    assert dd.candidate_detail(catalog, "nope") is None and dd.candidate_neighbours(catalog, "nope") is None


# ------------------------------------------------------------------ overview and fleet


def heartbeat(device_id: str, frames_seen: int, bytes_uploaded: int, **status) -> dict:
    return {"id": device_id, "model_version": 1, "frames_seen": frames_seen, "frames_kept": frames_seen // 10,
            "candidates_acked": 1, "spool_depth": 2, "spool_bytes": 300, "fps": 9.5,
            "status": {"bytes_uploaded": bytes_uploaded, "agent_version": "1.2", **status}}


def put_daily(catalog: Catalog, device_id: str, day_ms: int, frames_seen: int, bytes_uploaded: int) -> None:
    with catalog.engine.begin() as conn:  # a heartbeat of another day (record_heartbeat stamps today)
        conn.execute(fleet_daily.insert().values(device_id=device_id, day=utc_day(day_ms), frames_seen=frames_seen,
                                                 frames_kept=frames_seen // 10, candidates_acked=1,
                                                 bytes_uploaded=bytes_uploaded))


def test_heartbeats_keep_the_last_report_of_each_day(catalog):
    catalog.record_heartbeat(heartbeat("cam-a", 10, 1000))
    catalog.record_heartbeat(heartbeat("cam-a", 25, 4000))
    with catalog.engine.connect() as conn:
        rows = conn.execute(sa.select(fleet_daily)).all()
    assert [tuple(r) for r in rows] == [("cam-a", utc_day(now_ms()), 25, 2, 1, 4000)]


def test_overview_buckets_days_and_computes_device_deltas(catalog):
    now = now_ms()
    for cid, received, device in (("t1", now, "cam-a"), ("t2", now, "cam-b"), ("y1", now - DAY, "cam-a"),
                                  ("o1", now - 3 * DAY, "cam-a"), ("old", now - 20 * DAY, "cam-a"),
                                  ("imp", now, "import")):
        catalog.insert_candidate(values(cid, received_ms=received, device_id=device))
    run = catalog.record_selection(config={}, model_version=1, pool_size=4, duplicates=2, picks=[
        {"candidate_id": "t1", "rank": 0, "typicality": 0.0, "min_distance": 0.0, "score": 1.0}])
    earlier = catalog.record_selection(config={}, model_version=1, pool_size=4, duplicates=1, picks=[])
    with catalog.engine.begin() as conn:
        conn.execute(selection_runs.update().where(selection_runs.c.id == earlier).values(created_ms=now - DAY))
    catalog.set_labels([("t1", "shirt"), ("y1", "coat")], annotator="ana")
    dd.reject(catalog, ["o1"], "blurry", "ana")  # an outcome, not a label
    with catalog.engine.begin() as conn:
        conn.execute(label_events.update().where(label_events.c.candidate_id == "y1").values(at_ms=now - DAY))
    put_daily(catalog, "cam-a", now - 20 * DAY, 100, 1_000)  # before the window: only a base
    put_daily(catalog, "cam-a", now - 2 * DAY, 150, 1_500)
    put_daily(catalog, "cam-a", now - DAY, 30, 300)  # restarted: counts in full
    put_daily(catalog, "cam-b", now - DAY, 40, 400)  # its first report
    catalog.record_heartbeat(heartbeat("cam-a", 80, 800))
    catalog.record_heartbeat(heartbeat("cam-b", 40, 400))  # nothing new today

    o = dd.overview(catalog, days=4, now_ms=now)
    assert [d.day for d in o.days] == [utc_day(now - k * DAY) for k in (3, 2, 1, 0)]
    assert [(d.frames_scored, d.uploaded, d.duplicates, d.selected, d.labeled, d.bytes_uploaded) for d in o.days] == [
        (0, 1, 0, 0, 0, 0), (50, 0, 0, 0, 0, 500), (70, 1, 1, 0, 1, 700), (50, 2, 2, 1, 1, 500)]
    assert [d.frames_kept for d in o.days] == [0, 5, 7, 5]
    assert (o.devices_online, o.devices_total, o.rollout) == (2, 2, None)
    assert o.candidates_by_state == {"pooled": 3, "labeled": 2, "rejected": 1}
    assert run > 0 and len(dd.overview(catalog, days=30, now_ms=now).days) == 30


def test_overview_models_and_rollout(catalog):
    now = now_ms()
    catalog.insert_candidate(values("a", received_ms=now - 5000, jpeg_bytes=300))
    catalog.insert_candidate(values("imp", received_ms=now - 5000, jpeg_bytes=999, device_id="import"))
    catalog.add_model(version=1, name="m", parent_version=0, manifest={"classes": ["x"]}, files=[])
    catalog.insert_candidate(values("b", received_ms=now + 60_000, jpeg_bytes=50))  # after v1 was made
    catalog.add_model(version=2, name="m", parent_version=1, manifest={"classes": ["x"]}, files=[])
    releases = Releases(catalog)
    releases.record_lineage(1, trainer_mode="head", labels=[("a", "x"), ("b", "x")])
    releases.record_evaluation(1, {"accuracy": 0.75}, None, "candidate")
    with catalog.engine.begin() as conn:
        conn.execute(sa.update(models).where(models.c.version == 2).values(created_ms=now + 120_000))
    catalog.record_heartbeat(heartbeat("cam-a", 10, 100))
    catalog.record_heartbeat(heartbeat("cam-b", 10, 100))
    with catalog.engine.begin() as conn:
        for rid, state, created in (("r-old", "completed", now - DAY), ("r-new", "running", now - 1000)):
            conn.execute(rollouts.insert().values(
                id=rid, channel="default", version=2, previous_version=1, stages="[10, 100]", stage=0, criteria="{}",
                state=state, reason="", actor="ana", created_ms=created, updated_ms=created))
        conn.execute(rollout_devices.insert(), [
            {"rollout_id": "r-new", "device_id": d, "stage": 0, "status": s, "detail": "", "health": None,
             "assigned_ms": now - 500, "reported_ms": None}
            for d, s in (("cam-a", "healthy"), ("cam-b", "healthy"), ("cam-c", "assigned"))])
    o = dd.overview(catalog, now_ms=now)
    assert [(m.version, m.accuracy, m.label_count, m.status, m.trainer_mode, m.upload_bytes) for m in o.models] == [
        (1, 0.75, 2, "candidate", "head", 300), (2, None, None, "", "", 350)]
    assert (o.rollout.id, o.rollout.counts, o.rollout.devices, o.rollout.stages) == (
        "r-new", {"assigned": 1, "healthy": 2}, 3, [10, 100])
    assert dd.rollout_progress(catalog, "r-old").counts == {}
    rows = dd.fleet(catalog, days=3, now_ms=now)
    assert [r.id for r in rows] == ["cam-a", "cam-b"]
    a = rows[0]
    assert (a.online, a.fps, a.spool_depth, a.status) == (True, 9.5, 2, {})
    assert a.health == dd.DeviceHealth(agent_version="1.2", bytes_uploaded=100)
    assert a.bytes_per_day == {utc_day(now - 2 * DAY): 0, utc_day(now - DAY): 0, utc_day(now): 100}
    assert (a.rollout.rollout_id, a.rollout.status, a.rollout.rollout_state) == ("r-new", "healthy", "running")


# ------------------------------------------------------------------ embedding map


def test_embedding_map_is_pca_of_the_newest_version_and_deterministic(catalog, monkeypatch):
    for i in range(5):
        for j in range(3):  # a 5 x 3 grid in a plane of 4-D space, wider along the first axis
            catalog.insert_candidate(values(f"g{i}{j}", model_version=2, embedding=pack_floats([3 * i, j, 0, 1]),
                                            predicted_class=None if i else "x", predicted_prob=None if i else 0.5))
    catalog.insert_candidate(values("old", model_version=1))
    catalog.insert_candidate(values("imp", model_version=0, embedding=b""))
    m = dd.embedding_map(catalog)
    assert (m.model_version, m.method, m.total, len(m)) == (2, "pca", 15, 15)
    assert m.x.dtype == np.float32 and m.y.dtype == np.float32
    order = [(int(cid[1]), int(cid[2])) for cid in m.ids]
    assert np.allclose(m.x, [i / 4 for i, _ in order], atol=1e-5)
    assert np.allclose(m.y, [j / 2 for _, j in order], atol=1e-5)
    again = dd.embedding_map(catalog)
    assert again.ids == m.ids and np.array_equal(again.x, m.x) and np.array_equal(again.y, m.y)
    sample = dd.embedding_map(catalog, max_points=7, seed=3)
    assert (len(sample), sample.total) == (7, 15) and dd.embedding_map(catalog, max_points=7, seed=3).ids == sample.ids
    columns = json.loads(json.dumps(m.to_json_columns()))
    assert set(columns) == {"model_version", "method", "total", "ids", "x", "y", "state", "device_id",
                            "predicted_class", "label", "scores"}
    assert len(columns["x"]) == 15 and all(round(v, 4) == v for v in columns["x"] + columns["y"])
    assert columns["scores"]["predicted_prob"][:3] == [0.5, 0.5, 0.5] and columns["scores"]["predicted_prob"][3] is None
    assert len(dd.embedding_map(catalog, model_version=1)) == 1
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn not installed
    with pytest.raises(ValueError, match="umap-learn"):
        dd.embedding_map(catalog, method="umap")
    with pytest.raises(ValueError, match="method"):
        dd.embedding_map(catalog, method="tsne")


def test_embedding_map_of_an_empty_catalog(catalog):
    m = dd.embedding_map(catalog)
    assert (m.model_version, len(m), m.to_json_columns()["x"]) == (0, 0, [])


# ------------------------------------------------------------------ actions and the labeling queue


def test_queue_reject_and_tag(grid):
    assert dd.queue_for_labeling(grid, ["c1", "c2", "c3", "c5", "c6"], "ana") == 3  # pooled, rejected, duplicate
    states = {c.id: c.state for c in candidate_page(grid).items}
    assert states == {"c1": "selected", "c2": "selected", "c3": "labeled", "c4": "pooled", "c5": "selected",
                      "c6": "selected"}
    with pytest.raises(UnknownCandidates):
        dd.queue_for_labeling(grid, ["c4", "ghost"], "ana")
    assert candidate_page(grid, CandidateFilter(state="pooled")).total == 1  # c4 did not move
    assert dd.reject(grid, ["c4", "c5"], "not our domain", "bob") == 2
    assert [(e.state, e.note, e.annotator) for e in grid.label_history("c4")] == [
        ("rejected", "not our domain", "bob")]
    assert dd.tag(grid, ["c1", "c2"], "night", "ana") == 1  # c1 had it
    assert ids(candidate_page(grid, CandidateFilter(tag="night"))) == ["c4", "c2", "c1"]
    assert dd.untag(grid, ["c1", "c3", "ghost"], "night", "ana") == 1
    assert dd.filter_options(grid).tags == {"dusk": 1, "night": 2}
    with pytest.raises(UnknownCandidates):
        dd.tag(grid, ["c1", "ghost"], "glare", "ana")
    for bad in ("", " padded", "x" * 65):
        with pytest.raises(ValueError):
            dd.tag(grid, ["c1"], bad, "ana")
    assert dd.filter_options(grid).tags == {"dusk": 1, "night": 2}


def test_filter_options(grid):
    options = dd.filter_options(grid)
    assert (options.devices, options.reasons, options.predicted_classes) == (
        ["cam-a", "cam-b", "cam-c"], ["novelty", "random", "uncertainty"], ["coat", "shirt"])
    assert "pooled" in options.states and "shirt" in options.labels


def test_labeling_queue_hands_each_candidate_to_one_labeler(catalog):
    for cid, capture in (("q3", 30), ("q1", 10), ("q2", 20), ("q4", 40)):
        catalog.insert_candidate(values(cid, capture_time_ms=capture, state="selected"))
    catalog.insert_candidate(values("p1", capture_time_ms=5))  # pooled: not in the queue
    first = dd.label_queue_next(catalog, assignee="ana")
    assert first.id == "q1" and (first.state, dd.candidate_detail(catalog, "q1").assigned_to) == (
        "in_labeling", "ana")
    assert dd.label_queue_next(catalog, assignee="ana").id == "q1"  # a reload gives back what she holds
    assert dd.label_queue_next(catalog, assignee="bob").id == "q2"  # never ana's
    assert dd.label_queue_next(catalog, assignee="ana", after_id="q1").id == "q3"  # skipped "for now"
    catalog.set_labels([("q1", "shirt")], source="manual", annotator="ana")
    assert dd.label_queue_next(catalog, assignee="ana").id == "q3"
    assert dd.label_queue_next(catalog, assignee="ana", after_id="q3").id == "q4"
    assert dd.label_queue_next(catalog, assignee="ana", after_id="q4") is None
    with pytest.raises(UnknownCandidates):
        dd.label_queue_next(catalog, assignee="ana", after_id="ghost")
    progress = dd.queue_progress(catalog)
    assert (progress.done, progress.remaining, progress.total) == (1, 3, 4)
    assert dd.queue_progress(catalog, since_ms=now_ms() + DAY).done == 0


def test_claims_race_with_one_winner(catalog):
    catalog.insert_candidate(values("q1", state="selected"))
    assert catalog.claim_for_labeling("q1", "ana") and not catalog.claim_for_labeling("q1", "bob")
    assert catalog.claim_for_labeling("q1", "ana")  # hers already
    assert dd.label_queue_next(catalog, assignee="bob") is None


# ------------------------------------------------------------------ ingest fills the predicted class


def test_ingest_stores_the_predicted_class(catalog, tmp_path):
    catalog.add_model(version=7, name="m", parent_version=0, published=False, files=[],
                      manifest={"classes": ["a", "b", "c", "d"], "embedding_dim": 8})
    service = IngestService(catalog, DirectoryBlobStore(tmp_path / "blobs"))
    known, unknown = make_candidate(model_version=7, seed=1), make_candidate(model_version=9, seed=2)
    for c in (known, unknown):
        service.store(c)
    best = int(np.argmax(known.probabilities))
    cards = {c.id: c for c in candidate_page(catalog).items}
    assert (cards[known.candidate_id].predicted_class, round(cards[known.candidate_id].predicted_prob, 5)) == (
        "abcd"[best], round(known.probabilities[best], 5))
    assert (cards[unknown.candidate_id].predicted_class, cards[unknown.candidate_id].predicted_prob) == (None, None)
    assert ids(candidate_page(catalog, CandidateFilter(predicted_class=NO_VALUE))) == [unknown.candidate_id]
