"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): each step checks
what the page shows and leaves a screenshot in test-artifacts/dashboard/."""

from __future__ import annotations

import re

from dashboard.conftest import browser_login, screenshot


def test_login_then_the_overview_shows_the_flywheel_in_numbers(live, page, world):
    page.goto(live + "/models")
    assert re.search(r"/login\?next=%2Fmodels$", page.url)
    page.fill("#username", "ada")
    page.fill("#password", "wrong password!")
    page.click("button[type=submit]")
    assert page.inner_text("[role=alert]") == "Wrong user name or password."
    screenshot(page, "01-login-refused")

    browser_login(page, live, "ada")
    assert page.inner_text("h1") == "Overview"
    assert page.inner_text("[data-testid=user]") == "ada"
    labeled = page.inner_text("[data-testid=total-labeled] .value")
    assert labeled.replace(",", "") == str(world.info.labeled)
    assert page.inner_text("[data-testid=total-candidates] .value") == "150"
    assert page.locator(".chart svg").count() >= 5  # per-day funnel and the model charts
    assert "v2" in page.inner_text("[data-testid=current-rollout]")
    screenshot(page, "02-overview")


def test_an_admin_promotes_a_model_through_the_confirmation(live, page, world):
    from cloud_selector.releases import Releases

    browser_login(page, live, "ada", "/models/2")
    assert page.inner_text("[data-testid=gate]").startswith("passed")
    assert page.locator("[data-testid=confusion] tbody tr").count() == 3
    assert page.inner_text("[data-testid=channels-here]") == "no channel"
    page.click("[data-testid=promote-form] button[type=submit]")
    assert page.inner_text("#confirm-question") == "Release v2 to channel default?"
    assert "runs v1" in page.inner_text(".confirm .details")
    assert Releases(world.services.catalog).channel_version("default") == 1  # nothing happened yet
    screenshot(page, "03-promote-confirm")

    page.click(".confirm button[type=submit]")
    page.wait_for_url(live + "/models/2")
    assert page.inner_text(".flash") == "v2 released to channel default."
    assert page.inner_text("[data-testid=channels-here]") == "default"
    assert Releases(world.services.catalog).channel_version("default") == 2
    screenshot(page, "04-promoted")


def test_cancelling_the_confirmation_changes_nothing(live, page, world):
    from cloud_selector.releases import Releases

    browser_login(page, live, "ada", "/models/3")
    page.check("[data-testid=promote-form] input[name=force]")
    page.click("[data-testid=promote-form] button[type=submit]")
    assert "despite the gate" in page.inner_text("#confirm-question")
    assert "did NOT pass" in page.inner_text(".confirm .details")
    page.click("text=Cancel")
    page.wait_for_url(live + "/models/3")
    assert Releases(world.services.catalog).channel_version("default") == 1


def test_a_reviewer_is_denied_admin_actions(live, page, world):
    browser_login(page, live, "rey", "/models/2")
    assert page.locator("[data-testid=promote-form]").count() == 0
    screenshot(page, "05-reviewer-model")
    status = page.evaluate("""async () => {
        try { await csrfFetch('/models/2/promote', {method: 'POST', body: {channel: 'default'}}); return 'allowed'; }
        catch (error) { return error.response.status + ' ' + error.message; }
    }""")
    assert status.startswith("403 this needs the admin role; you are reviewer")
    page.goto(live + "/runs/new")
    assert page.inner_text("h1") == "Not allowed"
    assert "needs the admin role" in page.inner_text("[role=alert]")
    screenshot(page, "06-reviewer-denied")


def test_the_selection_config_editor_names_the_bad_field(live, page):
    browser_login(page, live, "ada", "/runs/new")
    config = page.input_value("#config")
    assert '"strategies"' in config
    page.fill("#config", '{"n_samples": 5, "strategies": [{"input": {"type": "EMBEDDINGS"}, ')
    page.click("button[data-format-json]")  # static/app.js: says what is wrong, keeps the text
    assert page.inner_text("#config-note").startswith("Not valid JSON yet")
    page.fill("#config", '{"n_samples": 5, "strategies": [{"input": {"type": "EMBEDDINGS"}, '
                         '"strategy": {"type": "DIVERSE"}}]}')
    page.click("button[data-format-json]")
    assert page.input_value("#config").startswith('{\n  "n_samples": 5,') and page.inner_text("#config-note") == ""
    page.click("button[value=check]")
    error = page.inner_text("[data-testid=config-error]")
    assert error.startswith("strategies[0].strategy.type:") and "DIVERSITY" in error
    screenshot(page, "07-config-error")
    page.fill("#config", '{"n_samples": 3, "strategies": [{"input": {"type": "EMBEDDINGS"}, '
                         '"strategy": {"type": "DIVERSITY"}}]}')
    page.click("button[value=run]")
    page.wait_for_url(re.compile(re.escape(live) + r"/runs/\d+$"))
    assert page.inner_text("[data-testid=run-selected] .value") == "3"
    assert page.locator("table img.thumb").count() == 3
    assert page.evaluate("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    screenshot(page, "08-run-started")


def test_the_fleet_page_shows_devices_and_rollout_progress(live, page):
    browser_login(page, live, "rey", "/fleet")
    assert page.inner_text("[data-testid=fleet-online] .value") == "2"
    rows = page.locator("[data-testid=fleet] tbody tr")
    assert rows.count() == 3
    assert "offline" in page.inner_text("tr[data-device=cam-3]")
    assert "canary" in page.inner_text("tr[data-device=cam-2]")
    rollout = page.inner_text("section[data-rollout]")
    assert "v2 on channel canary" in rollout and "stage 1 of 2" in rollout and "1 installed" in rollout
    assert page.locator("section[data-rollout] form").count() == 0  # abort is for admins
    screenshot(page, "09-fleet")
