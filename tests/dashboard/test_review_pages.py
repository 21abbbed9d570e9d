"""The review pages over the seeded world, through Starlette's TestClient: the candidate grid's
filters, sort and pages (and what bad input shows), the labeler's actions and their roles, one
candidate's page, the labeling queue's POST and undo, and the map's JSON."""

from __future__ import annotations

import html
import re
import uuid

import pytest

from dashboard.conftest import csrf_of

CARD = re.compile(r'<article class="rv-card" data-id="([0-9a-f-]{36})" data-state="([a-z_]+)">')


def cards(page: str) -> list[tuple[str, str]]:
    return CARD.findall(page)


def total_of(page: str) -> int:
    return int(re.search(r'data-testid="grid-total">([\d,]+)<', page).group(1).replace(",", ""))


def flash_of(client, response) -> str:
    assert response.status_code == 303, response.text[:300]
    page = client.get(response.headers["location"]).text
    match = re.search(r'<p class="flash (ok|error)" role="status">([^<]*)</p>', page)
    assert match, "no message after the redirect"
    return f"{match.group(1)}: {html.unescape(match.group(2))}"


def post(client, path: str, data: dict):
    return client.post(path, data={**data, "csrf_token": csrf_of(client.get("/").text)}, follow_redirects=False)


def post_json(client, path: str, body):
    return client.post(path, json=body, headers={"x-csrf-token": csrf_of(client.get("/").text),
                                                 "accept": "application/json"})


def ids_in(world, state: str) -> list[str]:
    return sorted(r.id for r in world.services.catalog.candidates(states=[state]))


def state_of(world, cid: str):
    [row] = world.services.catalog.candidates(ids=[cid])
    return row


# ------------------------------------------------------------------ the grid


def test_the_grid_pages_through_every_candidate(client_for):
    client = client_for("rey")
    first = client.get("/candidates").text
    assert total_of(first) == 150 and len(cards(first)) == 60 and "page 1 of 3" in first
    third = client.get("/candidates?page=3").text
    assert len(cards(third)) == 30 and 'rel="next"' not in third and 'rel="prev"' in third
    seen = {cid for p in (1, 2, 3) for cid, _ in cards(client.get(f"/candidates?page={p}").text)}
    assert len(seen) == 150
    past = client.get("/candidates?page=9").text
    assert not cards(past) and "No candidates on page 9." in past
    assert len(cards(client.get("/candidates?per_page=200").text)) == 150
    assert "/static/candidates.js" in first and "review.css" in first


def test_filters_narrow_the_grid(client_for, world):
    client = client_for("rey")
    by_device = client.get("/candidates?device_id=cam-2").text
    assert total_of(by_device) == 50
    assert all(f"/candidates/{cid}" in by_device for cid, _ in cards(by_device))
    pooled = ids_in(world, "pooled")
    page = client.get("/candidates?state=pooled&per_page=200").text
    assert sorted(cid for cid, _ in cards(page)) == pooled and {s for _, s in cards(page)} == {"pooled"}
    labeled = client.get("/candidates?label=a").text
    assert total_of(labeled) == 40
    unlabeled = client.get("/candidates?label=__none__").text
    assert total_of(unlabeled) == 30
    novelty = client.get("/candidates?reason=novelty").text
    assert total_of(novelty) == 38  # every fourth of 150 was uploaded for novelty
    # Score ranges: the grid agrees with the catalog's own numbers.
    rows = world.services.catalog.candidates()
    expected = sum(1 for r in rows if 0.2 <= r.scores["entropy"] <= 0.6)
    assert total_of(client.get("/candidates?min_entropy=0.2&max_entropy=0.6").text) == expected
    # Dates (UTC days, `until` inclusive): everything arrived within the last 12 days.
    assert total_of(client.get("/candidates?since=2000-01-01&until=2999-12-31").text) == 150
    assert "No candidate matches these filters." in client.get("/candidates?until=2000-01-01").text
    # The form shows what was asked.
    assert re.search(r'<option value="cam-2" selected>cam-2</option>', by_device)


def test_sort_by_a_score_both_ways(client_for, world):
    client = client_for("rey")
    entropy = {r.id: r.scores["entropy"] for r in world.services.catalog.candidates()}
    ascending = [cid for cid, _ in cards(client.get("/candidates?sort=entropy&order=asc&per_page=200").text)]
    assert ascending == sorted(entropy, key=lambda cid: (entropy[cid], cid))
    descending = [cid for cid, _ in cards(client.get("/candidates?sort=entropy&order=desc").text)]
    assert descending[0] == max(entropy, key=lambda cid: (entropy[cid], cid))


@pytest.mark.parametrize("query, says", [
    ("min_entropy=abc", "min_entropy: a number (got &#39;abc&#39;)"),
    ("min_margin=0.9&max_margin=0.1", "min_margin: must not exceed max_margin"),
    ("colour=red", "colour: not a filter"),
    ("state=happy", "state: one of pooled"),
    ("since=2025-13-40", "since: a date like 2025-01-31"),
    ("since=1969-12-31", "since: a date from 1970-01-01 on"),
    ("until_ms=99999999999999999999999", "until_ms: a time in ms since the epoch, before the year 10000"),
    ("since=2025-02-02&until=2025-01-01", "since_ms: must be before until_ms"),
    ("sort=mood", "sort: one of received_ms"),
    ("order=sideways", "order: asc or desc"),
    ("page=0", "page: a whole number &gt;= 1"),
    ("per_page=lots", "per_page: a whole number &gt;= 1"),
    ("device_id=" + "x" * 200, "device_id: 1 to 128 printable characters"),
])
def test_bad_filters_are_shown_inline_not_a_server_error(client_for, query, says):
    response = client_for("rey").get(f"/candidates?{query}")
    assert response.status_code == 400
    error = re.search(r'data-testid="filter-error">([^<]*)<', response.text)
    assert error and says in error.group(1), response.text[-800:]
    assert '<form method="get" action="/candidates"' in response.text  # the form is still there to fix it
    assert not cards(response.text)


def test_cards_show_scores_reasons_picks_and_tags(client_for, world):
    picked = world.services.catalog.selection_picks(world.info.run_id)[0]
    page = client_for("rey").get("/candidates?state=selected").text
    card = page[page.index(f'data-id="{picked["candidate_id"]}"'):]
    card = card[:card.index("</article>")]
    assert f'run #{world.info.run_id} · #{picked["rank"] + 1}' in card
    assert re.search(r'badge-up"[^>]*>(uncertainty|novelty)<', card)
    for short in ("LC", "Mgn", "Ent", "Nov", "Comb"):
        assert f">{short}</dt>" in card
    assert 'type="checkbox"' not in card  # a reviewer cannot act
    assert 'type="checkbox" name="id"' in client_for("lou").get("/candidates").text


# ------------------------------------------------------------------ actions


def test_queue_reject_and_tag_selected_candidates(client_for, world):
    client = client_for("lou")
    pooled = ids_in(world, "pooled")
    labeled = ids_in(world, "labeled")[0]
    back = "/candidates?state=pooled"
    response = post(client, "/candidates/queue", {"id": [*pooled[:3], labeled], "back": back})
    assert response.headers["location"] == back
    assert flash_of(client, response) == ("ok: 3 of 4 queued for labeling; 1 were already queued or labeled and "
                                          "kept their state.")
    assert [state_of(world, cid).state for cid in pooled[:3]] == ["selected"] * 3
    assert state_of(world, labeled).state == "labeled"

    refused = post(client, "/candidates/reject", {"id": pooled[3:5], "reason": "  "})
    assert flash_of(client, refused).startswith("error: Nothing changed: give a reason to reject")
    assert state_of(world, pooled[3]).state == "pooled"
    rejected = post(client, "/candidates/reject", {"id": pooled[3:5], "reason": "lens covered"})
    assert flash_of(client, rejected) == "ok: 2 of 2 rejected (lens covered)."
    [event] = world.services.catalog.label_history(pooled[3])
    assert (event.state, event.note, event.annotator) == ("rejected", "lens covered", "lou (dashboard)")

    tagged = post(client, "/candidates/tag", {"id": pooled[5:8], "tag": "night"})
    assert flash_of(client, tagged) == "ok: Tagged 3 of 3 'night'."
    again = post(client, "/candidates/tag", {"id": pooled[5:9], "tag": "night"})
    assert flash_of(client, again) == "ok: Tagged 1 of 4 'night'; 3 had it already."
    page = client.get("/candidates?tag=night").text
    assert total_of(page) == 4 and '<option value="night" selected>' in page
    bad = post(client, "/candidates/tag", {"id": pooled[:1], "tag": "x\ty"})
    assert flash_of(client, bad).startswith("error: Nothing changed:")


def test_actions_refuse_bad_selections_without_changing_anything(client_for, world):
    client = client_for("lou")
    pooled = ids_in(world, "pooled")
    assert flash_of(client, post(client, "/candidates/queue", {})).startswith("error: Select candidates first")
    unknown = post(client, "/candidates/queue", {"id": [pooled[0], str(uuid.uuid4())]})
    assert flash_of(client, unknown).startswith("error: Nothing changed: 1 unknown candidate id(s)")
    malformed = post(client, "/candidates/queue", {"id": [pooled[0], "../../etc/passwd"]})
    assert "is not a candidate id" in flash_of(client, malformed)
    assert state_of(world, pooled[0]).state == "pooled"
    elsewhere = post(client, "/candidates/queue", {"id": pooled[:1], "back": "https://evil.example/"})
    assert elsewhere.headers["location"] == "/candidates"


def test_only_labelers_and_admins_act(client_for, world):
    pooled = ids_in(world, "pooled")
    reviewer = client_for("rey")
    for path in ("/candidates/queue", "/candidates/reject", "/candidates/tag"):
        response = post(reviewer, path, {"id": pooled[:1], "reason": "x", "tag": "x"})
        assert response.status_code == 403 and "needs the labeler role" in response.text
    assert post_json(reviewer, "/api/candidates/queue", {"ids": pooled[:1]}).status_code == 403
    assert state_of(world, pooled[0]).state == "pooled" and state_of(world, pooled[0]).label is None
    admin = client_for("ada")
    assert flash_of(admin, post(admin, "/candidates/queue", {"id": pooled[:1]})).startswith("ok: 1 of 1 queued")


def test_the_json_queue_for_the_map(client_for, world):
    client = client_for("lou")
    pooled = ids_in(world, "pooled")
    reply = post_json(client, "/api/candidates/queue", {"ids": pooled[:5]})
    assert reply.status_code == 200
    assert reply.json() == {"queued": 5, "requested": 5, "message": "5 of 5 queued for labeling."}
    for body, says in (({"ids": []}, "select points first"), ({"id": pooled[0]}, 'send JSON {"ids"'),
                       ([1, 2], 'send JSON {"ids"'), ({"ids": ["nope"]}, "is not a candidate id"),
                       ({"ids": [str(uuid.uuid4())]}, "nothing changed: 1 unknown candidate")):
        response = post_json(client, "/api/candidates/queue", body)
        assert response.status_code == 400 and says in response.json()["error"], (body, response.text)


# ------------------------------------------------------------------ one candidate


def test_a_candidate_page_shows_everything_known_about_it(client_for, world):
    client = client_for("rey")
    picked = world.services.catalog.selection_picks(world.info.run_id)[0]
    cid = picked["candidate_id"]
    page = client.get(f"/candidates/{cid}").text
    assert f'src="/images/{cid}?size=512"' in page
    assert len(re.findall(r'<li(?: class="top")?><span class="rv-pname">[abc]</span>', page)) == 3
    for name in ("least_confidence", "margin", "entropy", "novelty", "combined", "predicted_prob"):
        assert f'data-score="{name}"' in page
    row = state_of(world, cid)
    assert f'{row.scores["entropy"]:.4f}' in page
    assert row.device_id in page and "line-" in page  # device and its metadata
    selections = re.search(r'data-testid="selections">.*?</table>', page, re.S).group(0)
    assert f'href="/runs/{world.info.run_id}"' in selections and "<strong>" in selections
    assert f'data-neighbours-url="/candidates/{cid}/neighbours"' in page
    assert 'action="/candidates/queue"' not in page  # reviewers get no actions
    labeled = ids_in(world, "labeled")[0]
    history = client.get(f"/candidates/{labeled}").text
    assert re.search(r'data-testid="history">.*seed', history, re.S)
    assert 'action="/candidates/queue"' in client_for("lou").get(f"/candidates/{cid}").text


def test_near_duplicates_link_both_ways(client_for, world):
    pooled = ids_in(world, "pooled")
    original, copies = pooled[0], pooled[1:3]
    world.services.catalog.mark_duplicates([(cid, original) for cid in copies])
    client = client_for("rey")
    page = client.get(f"/candidates/{original}").text
    listed = re.search(r'data-testid="duplicates">(.*?)</div>', page, re.S).group(1)
    assert "2 candidates marked near-duplicates of this one" in page
    assert sorted(re.findall(r'href="/candidates/([0-9a-f-]{36})"', listed)) == sorted(copies)
    copy = client.get(f"/candidates/{copies[0]}").text
    assert re.search(r'data-testid="duplicate-of">.*?href="/candidates/' + original, copy, re.S)
    assert total_of(client.get("/candidates?state=duplicate").text) == 2


def test_neighbours_come_as_a_fragment(client_for, world):
    cid = world.info.candidate_ids[0]
    response = client_for("rey").get(f"/candidates/{cid}/neighbours")
    assert response.status_code == 200 and "<html" not in response.text
    links = re.findall(r'<a class="rv-ref" href="/candidates/([0-9a-f-]{36})"', response.text)
    assert len(links) == 12 and cid not in links
    distances = [float(d) for d in re.findall(r"distance ([\d.]+)", response.text)]
    assert distances == sorted(distances)


@pytest.mark.parametrize("path", ["/candidates/not-a-uuid", f"/candidates/{uuid.uuid4()}",
                                  f"/candidates/{uuid.uuid4()}/neighbours", "/candidates/x/neighbours"])
def test_unknown_or_malformed_candidates_are_404_pages(client_for, path):
    response = client_for("rey").get(path)
    assert response.status_code == 404 and "<h1>Not found</h1>" in response.text


# ------------------------------------------------------------------ labeling


def label_post(client, body: dict):
    return post_json(client, "/label", body)


def test_labeling_records_manual_labels_by_the_user(client_for, world):
    client, catalog = client_for("lou"), world.services.catalog
    queued_before = len(ids_in(world, "selected"))
    page = client.get("/label").text
    current = re.search(r'data-item-id="([0-9a-f-]{36})"', page).group(1)
    assert state_of(world, current).state == "in_labeling"
    assert state_of(world, current).assigned_to == "lou (dashboard)"
    assert re.findall(r'data-class="([^"]+)" data-key="(\d)"', page) == [("a", "1"), ("b", "2"), ("c", "3")]
    predicted = state_of(world, current)
    reply = label_post(client, {"id": current, "action": "label", "label": "b"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["message"] == f"{current[:8]} labeled b." and body["item"]["id"] != current
    assert body["progress"]["remaining"] == queued_before - 1
    assert set(body["item"]) >= {"image", "predicted_class", "predicted_prob", "probabilities", "scores"}
    [event] = catalog.label_history(current)
    assert (event.state, event.label, event.source, event.annotator) == ("labeled", "b", "manual", "lou (dashboard)")
    assert predicted.state == "in_labeling" and state_of(world, current).label == "b"
    assert catalog.label_counts()["b"] == 41  # counts toward the next retrain


def test_skip_reject_and_undo(client_for, world):
    client = client_for("lou")
    first = re.search(r'data-item-id="([0-9a-f-]{36})"', client.get("/label").text).group(1)
    labeled = label_post(client, {"id": first, "action": "label", "label": "a"}).json()
    second = labeled["item"]["id"]
    undone = label_post(client, {"id": first, "action": "undo"}).json()
    assert undone["item"]["id"] == first and undone["message"].startswith("Undone: the label a of")
    row = state_of(world, first)
    assert (row.state, row.label, row.assigned_to) == ("in_labeling", None, "lou (dashboard)")
    assert [e.state for e in world.services.catalog.label_history(first)] == ["labeled", "rejected"]
    # Undo again: nothing of lou's to undo now (the last outcome is the undo's own reject, state differs).
    again = label_post(client, {"id": first, "action": "undo"})
    assert again.status_code == 409 and "nothing of yours to undo" in again.json()["error"]

    skipped = label_post(client, {"id": second, "action": "skip"}).json()
    assert skipped["message"] == f"{second[:8]} skipped." and state_of(world, second).state == "skipped"
    label_post(client, {"id": second, "action": "undo"})
    assert state_of(world, second).state == "in_labeling"
    rejected = label_post(client, {"id": second, "action": "reject", "reason": "blurred"}).json()
    assert rejected["message"] == f"{second[:8]} rejected (blurred)."
    assert world.services.catalog.label_history(second)[-1].note == "blurred"
    label_post(client, {"id": second, "action": "undo"})
    assert state_of(world, second).state == "in_labeling"
    # Someone else's outcome is not yours to undo.
    other = client_for("ada")
    refused = label_post(other, {"id": second, "action": "undo"})
    assert refused.status_code == 409


@pytest.mark.parametrize("body, status, says", [
    ({"action": "label", "label": "a"}, 400, "id: the candidate's id"),
    ({"id": "x", "action": "label", "label": "a"}, 400, "id: the candidate's id"),
    ({"id": str(uuid.uuid4()), "action": "label", "label": "a"}, 404, "unknown candidate"),
    ({"action": "dance"}, 400, "action: one of label, skip, reject, undo"),
    ({"id": "ID", "action": "label", "label": "zebra"}, 400, "label: one of the classes a, b, c"),
    ({"id": "ID", "action": "label"}, 400, "label: one of the classes"),
])
def test_bad_label_posts_say_what_is_wrong(client_for, world, body, status, says):
    client = client_for("lou")
    cid = ids_in(world, "selected")[0]
    response = label_post(client, {k: cid if v == "ID" else v for k, v in body.items()})
    assert response.status_code == status and says in response.json()["error"], response.text
    assert state_of(world, cid).state in ("selected", "in_labeling") and state_of(world, cid).label is None
    not_json = client.post("/label", content=b"{nope", headers={"x-csrf-token": csrf_of(client.get("/").text),
                                                                "content-type": "application/json",
                                                                "accept": "application/json"})
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]


def test_the_plain_form_labels_too(client_for, world):
    client = client_for("lou")
    current = re.search(r'data-item-id="([0-9a-f-]{36})"', client.get("/label").text).group(1)
    response = post(client, "/label", {"id": current, "label": "c"})
    assert response.headers["location"] == "/label"
    assert flash_of(client, response) == f"ok: {current[:8]} labeled c."
    assert state_of(world, current).label == "c"


def test_a_reviewer_sees_the_queue_read_only(client_for, world):
    before = ids_in(world, "selected")
    page = client_for("rey").get("/label")
    assert page.status_code == 200 and "Labeling needs the labeler role; you are reviewer" in page.text
    assert "/static/label.js" not in page.text and 'data-testid="progress"' in page.text
    assert ids_in(world, "selected") == before  # nothing was claimed for a reviewer
    refused = label_post(client_for("rey"), {"id": before[0], "action": "label", "label": "a"})
    assert refused.status_code == 403 and "needs the labeler role" in refused.json()["error"]


def test_an_empty_queue_says_so(client_for, world):
    world.services.catalog.mark_skipped(ids_in(world, "selected"))
    page = client_for("lou").get("/label").text
    assert "The labeling queue is empty" in page and re.search(r'id="rv-label"[^>]* hidden', page)


# ------------------------------------------------------------------ the map


def test_the_map_json_colours_by_category_or_score(client_for, world):
    client = client_for("rey")
    body = client.get("/api/map?color=class").json()
    assert body["count"] == body["total"] == 150 and body["method"] == "pca" and body["model_version"] == 1
    assert len(body["ids"]) == len(body["x"]) == len(body["y"]) == len(body["color"]["values"]) == 150
    assert all(0.0 <= v <= 1.0 for v in body["x"] + body["y"])
    assert body["color"]["kind"] == "category" and set(body["color"]["categories"]) <= {"a", "b", "c", "unknown"}
    state = client.get("/api/map?color=state").json()["color"]
    states = {r.id: r.state for r in world.services.catalog.candidates()}
    assert [state["categories"][v] for v in state["values"]] == [states[cid] for cid in body["ids"]]
    entropy = client.get("/api/map?color=entropy&only=color").json()
    assert "ids" not in entropy and entropy["first_id"] == body["ids"][0] and entropy["color"]["kind"] == "number"
    assert entropy["color"]["min"] <= entropy["color"]["max"]
    for query, says in (("color=mood", "color: one of class"), ("method=tsne", "method: one of pca")):
        response = client.get(f"/api/map?{query}")
        assert response.status_code == 400 and says in response.json()["error"]


def test_the_map_shows_fresh_states_after_queueing(client_for, world):
    client = client_for("lou")
    before = client.get("/api/map?color=state").json()
    pooled = ids_in(world, "pooled")[:4]
    post_json(client, "/api/candidates/queue", {"ids": pooled})
    after = client.get("/api/map?color=state").json()
    assert after["x"] == before["x"]  # the projection came from the cache
    by_id = dict(zip(after["ids"], (after["color"]["categories"][v] for v in after["color"]["values"])))
    assert {by_id[cid] for cid in pooled} == {"selected"}
    page = client.get("/map").text
    assert 'data-testid="map-queue"' in page and "/static/scatter.js" in page
    assert 'data-testid="map-queue"' not in client_for("rey").get("/map").text


def test_review_pages_have_no_inline_script_or_style(client_for, world):
    client = client_for("lou")
    cid = world.info.candidate_ids[0]
    for path in ("/candidates", "/candidates?min_entropy=x", f"/candidates/{cid}", f"/candidates/{cid}/neighbours",
                 "/map", "/label"):
        page = client.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), path
        assert not re.search(r"\son[a-z]+\s*=", page), path
        assert not re.search(r"\sstyle\s*=", page), path
