"""The review pages in a real headless Chromium (Debian's, through the harness in conftest.py):
filter the grid and tag a shift-click range, open a candidate and its neighbours, label five
candidates from the keyboard (and undo a skip), box- and lasso-select on the WebGL map and queue
the selection. Every step checks the catalog or the page and leaves a screenshot in
test-artifacts/dashboard/."""

from __future__ import annotations

import re

from cloud_selector.dashboard_data import CandidateFilter, candidate_page
from dashboard.conftest import browser_login, screenshot

QUEUEABLE = ("pooled", "duplicate", "skipped", "rejected")


def total(page) -> int:
    return int(page.inner_text("[data-testid=grid-total]").replace(",", ""))


def card_ids(page) -> list[str]:
    return page.eval_on_selector_all(".rv-card", "cards => cards.map(c => c.dataset.id)")


def states(world, ids) -> dict[str, str]:
    return {r.id: r.state for r in world.services.catalog.candidates(ids=list(ids))}


def load_images(page) -> bool:
    """Load every image now (thumbnails below the fold are lazy), then whether all decoded."""
    page.evaluate("() => document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    return page.evaluate("() => Array.from(document.images).every(i => i.naturalWidth > 0)")


def test_filter_the_grid_tag_a_range_and_open_a_candidate(live, page, world):
    browser_login(page, live, "lou", "/candidates")
    assert total(page) == 150 and len(card_ids(page)) == 60
    assert load_images(page)
    screenshot(page, "20-candidates")

    newest = card_ids(page)
    page.select_option("#f-device_id", "cam-2")
    page.select_option("#f-sort", "entropy")
    page.click("[data-testid=apply-filters]")
    page.wait_for_url(re.compile(r"device_id=cam-2"))
    assert total(page) == 50
    shown = card_ids(page)
    assert len(shown) == 50 and shown != newest[:50]
    assert {r.device_id for r in world.services.catalog.candidates(ids=shown)} == {"cam-2"}
    entropy = {r.id: r.scores["entropy"] for r in world.services.catalog.candidates(ids=shown)}
    assert [entropy[i] for i in shown] == sorted(entropy.values(), reverse=True)

    # A range that cannot be: said inline, the form kept for fixing it.
    page.click(".rv-ranges summary")
    page.fill("#f-min_margin", "0.9")
    page.fill("#f-max_margin", "0.1")
    page.click("[data-testid=apply-filters]")
    assert "min_margin: must not exceed max_margin" in page.inner_text("[data-testid=filter-error]")
    assert page.input_value("#f-min_margin") == "0.9" and page.locator(".rv-card").count() == 0
    screenshot(page, "21-candidates-bad-filter")
    page.fill("#f-min_margin", "")
    page.fill("#f-max_margin", "")
    page.click("[data-testid=apply-filters]")
    assert total(page) == 50

    # Shift-click selects a range; tag it.
    boxes = page.locator(".rv-card input[name=id]")
    boxes.nth(1).click()
    boxes.nth(4).click(modifiers=["Shift"])
    assert page.inner_text("#rv-selected-count") == "4"
    chosen = card_ids(page)[1:5]
    selected_before = {cid for cid, state in states(world, chosen).items() if state == "selected"}
    page.fill(".rv-actions input[name=tag]", "glare")
    page.press(".rv-actions input[name=tag]", "Enter")  # tags: Enter does not press the form's first button
    page.wait_for_selector(".flash")
    assert page.inner_text(".flash") == "Tagged 4 of 4 'glare'."
    assert "device_id=cam-2" in page.url  # back on the same filtered grid
    tagged = candidate_page(world.services.catalog, CandidateFilter(tag="glare")).items
    assert {c.id for c in tagged} == set(chosen) and all(c.tags == ["glare"] for c in tagged)
    assert all(c.state != "selected" or c.id in selected_before for c in tagged)  # nothing was queued
    assert page.locator(".rv-card[data-id='%s'] .badge-tag" % chosen[0]).inner_text() == "glare"
    screenshot(page, "22-candidates-tagged")

    # One candidate: image, scores, probabilities, then its neighbours arrive.
    page.click(f".rv-card[data-id='{chosen[0]}'] .rv-id")
    page.wait_for_url(f"{live}/candidates/{chosen[0]}")
    page.wait_for_selector("[data-testid=neighbours] a.rv-ref")
    assert page.locator("[data-testid=neighbours] a.rv-ref").count() == 12
    assert page.locator("[data-testid=probabilities] li").count() == 3
    [row] = world.services.catalog.candidates(ids=[chosen[0]])
    assert page.inner_text("td[data-score=entropy]") == f"{row.scores['entropy']:.4f}"
    assert "cam-2" in page.inner_text("[data-testid=facts]")
    assert load_images(page)
    screenshot(page, "23-candidate-detail")
    neighbour = page.get_attribute("[data-testid=neighbours] a.rv-ref >> nth=0", "data-id")
    page.click("[data-testid=neighbours] a.rv-ref >> nth=0")
    page.wait_for_url(f"{live}/candidates/{neighbour}")
    assert neighbour[:8] in page.inner_text("h1")


def test_label_five_from_the_keyboard_then_undo_a_skip(live, page, world):
    catalog = world.services.catalog
    browser_login(page, live, "lou", "/label")
    done = int(page.inner_text("[data-progress=done]").replace(",", ""))
    remaining = int(page.inner_text("[data-progress=remaining]"))
    assert remaining == 8  # the seeded selection run's picks
    page.wait_for_function("() => document.getElementById('rv-label-img').complete")
    screenshot(page, "24-label")

    expected = {}
    for key in ("Enter", "1", "2", "3", "Enter"):
        current = page.get_attribute("#rv-label", "data-item-id")
        predicted = page.inner_text("#rv-label-predicted")
        expected[current] = predicted if key == "Enter" else "abc"[int(key) - 1]
        page.keyboard.press(key)
        page.wait_for_function("id => document.getElementById('rv-label').dataset.itemId !== id", arg=current)
    assert page.inner_text("[data-progress=remaining]") == str(remaining - 5)
    assert int(page.inner_text("[data-progress=done]").replace(",", "")) == done + 5
    rows = {r.id: r for r in catalog.candidates(ids=list(expected))}
    assert {cid: (r.state, r.label) for cid, r in rows.items()} == {cid: ("labeled", lab) for cid, lab in
                                                                     expected.items()}
    for cid, label in expected.items():
        [event] = catalog.label_history(cid)
        assert (event.label, event.source, event.annotator) == (label, "manual", "lou (dashboard)")
    last = list(expected)[-1]
    assert page.inner_text("#rv-label-status") == f"{last[:8]} labeled {expected[last]}."

    sixth = page.get_attribute("#rv-label", "data-item-id")
    page.keyboard.press("s")
    page.wait_for_function("id => document.getElementById('rv-label').dataset.itemId !== id", arg=sixth)
    assert catalog.candidates(ids=[sixth])[0].state == "skipped"
    page.keyboard.press("u")
    page.wait_for_function("id => document.getElementById('rv-label').dataset.itemId === id", arg=sixth)
    assert page.inner_text("#rv-label-status").startswith("Undone: the skip of " + sixth[:8])
    [row] = catalog.candidates(ids=[sixth])
    assert (row.state, row.assigned_to) == ("in_labeling", "lou (dashboard)")
    page.wait_for_function("() => document.getElementById('rv-label-img').complete")
    page.wait_for_function("() => !document.querySelector('.rv-flash')")  # a pressed key's flash lasts 250 ms
    screenshot(page, "25-label-after-five")

    # A reason typed, then Enter: a reject with that reason (not the form's first button, class a).
    page.fill("#rv-label-reason-input", "lens cap on")
    page.press("#rv-label-reason-input", "Enter")
    page.wait_for_function("id => document.getElementById('rv-label').dataset.itemId !== id", arg=sixth)
    [row] = catalog.candidates(ids=[sixth])
    assert (row.state, row.label) == ("rejected", None)
    assert catalog.label_history(sixth)[-1].note == "lens cap on"


def test_box_and_lasso_on_the_map_then_queue_the_selection(live, page, world):
    catalog = world.services.catalog
    browser_login(page, live, "lou", "/map")
    page.wait_for_selector("#rv-map[data-ready=true]")
    assert "150 points of model v1" in page.inner_text("[data-testid=map-status]")
    assert "WebGL" in page.inner_text("[data-testid=map-status]")
    page.select_option("#rv-map-color", "state")
    page.wait_for_function("() => document.getElementById('rv-map-legend').textContent.includes('pooled')")
    box = page.locator("#rv-map").bounding_box()
    positions = {cid: (x, y) for cid, x, y in page.evaluate("() => window.reviewMap.positions()")}
    assert len(positions) == 150
    before = states(world, positions)
    pooled = [cid for cid, s in before.items() if s == "pooled"]
    assert pooled

    # Hover: the thumbnail of the point under the mouse.
    x, y = positions[pooled[0]]
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_selector("#rv-map-tip img")
    assert page.get_attribute("#rv-map-tip img", "src").startswith("/images/")

    # Box: drag a rectangle around a pooled point; every point inside it, and only those, is selected.
    page.click("button[data-mode=box]")
    x0, y0, x1, y1 = x - 40, y - 40, x + 40, y + 40
    page.mouse.move(box["x"] + x0, box["y"] + y0)
    page.mouse.down()
    page.mouse.move(box["x"] + x1, box["y"] + y1, steps=8)
    page.mouse.up()
    def within(grow: float) -> set[str]:  # mouse positions may be rounded to whole pixels
        return {cid for cid, (px, py) in positions.items()
                if x0 - grow <= px <= x1 + grow and y0 - grow <= py <= y1 + grow}

    selected = set(page.evaluate("() => window.reviewMap.selectedIds()"))
    assert pooled[0] in selected and within(-2) <= selected <= within(2)
    assert page.inner_text("[data-testid=map-selected]") == str(len(selected))

    # Lasso: a diamond around the middle of the map replaces the box's selection.
    page.click("button[data-mode=lasso]")
    cx, cy, r = box["width"] / 2, box["height"] / 2, min(box["width"], box["height"]) * 0.3
    corners = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy), (cx, cy - r)]
    page.mouse.move(box["x"] + corners[0][0], box["y"] + corners[0][1])
    page.mouse.down()
    for px, py in corners[1:]:
        page.mouse.move(box["x"] + px, box["y"] + py, steps=12)
    page.mouse.up()
    selected = set(page.evaluate("() => window.reviewMap.selectedIds()"))
    margin = 3  # the drawn path is sampled from mouse events: only points clearly in or out are checked
    clearly_in = {cid for cid, (px, py) in positions.items() if abs(px - cx) + abs(py - cy) < r - margin}
    clearly_out = {cid for cid, (px, py) in positions.items() if abs(px - cx) + abs(py - cy) > r + margin}
    assert clearly_in <= selected and not (selected & clearly_out) and len(selected) >= 10
    queueable = {cid for cid in selected if before[cid] in QUEUEABLE}
    assert page.inner_text("[data-testid=map-queue]") == f"Queue {len(selected)} for labeling"
    screenshot(page, "26-map-lasso")

    page.click("[data-testid=map-queue]")
    page.wait_for_function("() => document.getElementById('rv-map-status').textContent.includes('queued')")
    assert page.inner_text("[data-testid=map-status]").startswith(f"{len(queueable)} of {len(selected)} queued")
    after = states(world, selected)
    assert {cid for cid in selected if after[cid] == "selected" and before[cid] != "selected"} == queueable
    assert all(after[cid] == before[cid] for cid in selected - queueable)
    assert page.inner_text("[data-testid=map-selected]") == "0"
    page.wait_for_function("() => /selected \\(\\d+\\)/.test(document.getElementById('rv-map-legend').textContent)")
    legend = page.inner_text("[data-testid=map-legend]")
    now_selected = sum(1 for s in states(world, positions).values() if s == "selected")
    assert f"selected ({now_selected})" in legend
    screenshot(page, "27-map-queued")


def test_without_webgl_the_map_draws_with_canvas2d_and_still_selects(live, page, world):
    page.add_init_script("""(() => {  // a browser without WebGL (a policy, an old GPU)
        const original = HTMLCanvasElement.prototype.getContext;
        HTMLCanvasElement.prototype.getContext = function (kind, ...rest) {
            return /webgl/.test(kind) ? null : original.call(this, kind, ...rest);
        };
    })()""")
    browser_login(page, live, "rey", "/map")
    page.wait_for_selector("#rv-map[data-ready=true]")
    assert "drawn with Canvas2D" in page.inner_text("[data-testid=map-status]")
    assert page.locator("[data-testid=map-queue]").count() == 0  # a reviewer looks, a labeler queues
    drawn = page.evaluate("""() => {
        const c = document.querySelector('#rv-map canvas').getContext('2d');
        const d = c.getImageData(0, 0, c.canvas.width, c.canvas.height).data;
        let inked = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) inked += 1;
        return inked;
    }""")
    assert drawn > 150 * 9  # 150 points of at least 3x3 px
    box = page.locator("#rv-map").bounding_box()
    page.click("button[data-mode=box]")
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 5, box["y"] + box["height"] - 5, steps=5)
    page.mouse.up()
    assert page.inner_text("[data-testid=map-selected]") == "150"
