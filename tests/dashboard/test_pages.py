"""The admin and overview pages over the seeded world (and an empty one): what they show, and
that each release action happens only after its confirmation and does what it says."""

from __future__ import annotations

import html
import re

import pytest

from dashboard.conftest import SECRET, csrf_of, login


def post(client, path: str, data: dict, *, confirm: bool):
    token = csrf_of(client.get("/").text)
    return client.post(path, data={**data, "csrf_token": token, **({"confirmed": "yes"} if confirm else {})},
                       follow_redirects=False)


def flash_after(client, response) -> str:
    assert response.status_code == 303, response.text[:300]
    page = client.get(response.headers["location"]).text
    match = re.search(r'<p class="flash (ok|error)" role="status">([^<]*)</p>', page)
    assert match, "no message on the page after the redirect"
    return f"{match.group(1)}: {match.group(2)}"


def releases_of(world):
    from cloud_selector.releases import Releases

    return Releases(world.services.catalog, world.services.registry.signer)


def test_overview_shows_the_funnel_models_and_rollout(client_for, world):
    page = client_for("rey").get("/").text
    assert re.search(r'data-testid="total-candidates"><div class="value">150<', page)
    assert re.search(r'data-testid="total-labeled"><div class="value">120<', page)
    assert re.search(r'data-testid="devices-online"><div class="value">2 / 3<', page)
    for title in ("Frames scored on devices", "Candidates uploaded", "Selected for labeling", "Labels given"):
        assert title in page
    assert "No selection run found near-duplicates." in page  # the seeded run found none: said, not drawn
    assert page.count("<svg") == 7  # five day charts with data, two model charts
    assert "v2</strong> on channel <strong>canary" in page


def test_models_list_and_detail(client_for):
    client = client_for("rey")
    listing = client.get("/models").text
    assert [int(v) for v in re.findall(r'<tr data-version="(\d+)">', listing)] == [3, 2, 1]
    detail = client.get("/models/3").text
    assert "refused" in detail and "balanced accuracy 0.167 &lt; 0.323 needed" in detail
    assert "v3 ← <a href=\"/models/2\">v2</a> ← <a href=\"/models/1\">v1</a>" in detail
    confusion = re.search(r'<table class="confusion".*?</table>', detail, re.S).group(0)
    assert len(re.findall(r"<tr><th scope=\"row\">", confusion)) == 3
    assert client.get("/models/99").status_code == 404


def test_promote_needs_confirmation_and_a_passed_gate_or_force(client_for, world):
    admin, releases = client_for("ada"), releases_of(world)
    page = post(admin, "/models/3/promote", {"channel": "default"}, confirm=False)
    assert page.status_code == 200 and "Tick &#39;force&#39; to release it anyway" in page.text
    refused = post(admin, "/models/3/promote", {"channel": "default"}, confirm=True)
    assert flash_after(admin, refused).startswith("error: v3 did not pass the evaluation gate")
    assert releases.channel_version("default") == 1
    forced = post(admin, "/models/3/promote", {"channel": "default", "force": "on"}, confirm=True)
    assert flash_after(admin, forced) == "ok: v3 released to channel default."
    assert releases.channel_version("default") == 3
    assert releases.history("default")[-1]["action"] == "promote (forced)"
    assert releases.history("default")[-1]["actor"] == "ada (dashboard)"


def test_rollback_pin_unpin(client_for, world):
    admin, releases = client_for("ada"), releases_of(world)
    flash_after(admin, post(admin, "/models/2/promote", {"channel": "default"}, confirm=True))
    question = post(admin, "/models/rollback", {"channel": "default"}, confirm=False)
    assert "Roll channel default back from v2 to the version it ran before?" in question.text
    assert releases.channel_version("default") == 2
    done = post(admin, "/models/rollback", {"channel": "default", "reason": "too many false alarms"}, confirm=True)
    assert flash_after(admin, done).startswith("ok: Channel default: v2 → v1")
    assert releases.channel_version("default") == 1 and releases.revocation(2, 1) is not None

    assert "Pin device cam-1 to v2?" in post(admin, "/models/2/pin", {"device_id": "cam-1"}, confirm=False).text
    assert flash_after(admin, post(admin, "/models/2/pin", {"device_id": "cam-1"}, confirm=True)) == \
        "ok: Device cam-1 pinned to v2."
    assert releases.pins() == {"cam-1": 2}
    assert "cam-1" in admin.get("/fleet").text and "pinned to v2" in admin.get("/fleet").text
    unpinned = post(admin, "/models/unpin", {"device_id": "cam-1"}, confirm=True)
    assert "unpinned" in flash_after(admin, unpinned) and releases.pins() == {}
    assert post(admin, "/models/2/pin", {"device_id": ""}, confirm=True).status_code == 400


def test_rollouts_start_and_abort(client_for, world):
    from cloud_selector import rollouts

    admin, catalog = client_for("ada"), world.services.catalog
    busy = post(admin, "/models/3/rollout", {"channel": "canary", "stages": "50,100"}, confirm=True)
    assert "a rollout is already running on channel canary" in flash_after(admin, busy)
    bad = post(admin, "/models/3/rollout", {"channel": "default", "stages": "50,10"}, confirm=False)
    assert bad.status_code == 400 and "increasing percentages" in bad.text
    fleet = admin.get("/fleet").text
    assert f'action="/rollouts/{world.info.rollout_id}/abort"' in fleet
    assert "1 installed" in fleet
    aborted = post(admin, f"/rollouts/{world.info.rollout_id}/abort", {"reason": "canary looks wrong"}, confirm=True)
    assert flash_after(admin, aborted).startswith("ok: Rollout")
    assert rollouts.rollout(catalog, world.info.rollout_id)["state"] == "aborted"
    started = post(admin, "/models/3/rollout", {"channel": "default", "stages": "25,100"}, confirm=True)
    assert "v3 on channel default in stages [25, 100]" in flash_after(admin, started)
    assert rollouts.running_rollout(catalog, "default")["version"] == 3


def test_fleet_shows_devices_and_health(client_for):
    page = client_for("rey").get("/fleet").text
    rows = re.findall(r'<tr data-device="([^"]+)">(.*?)</tr>', page, re.S)
    assert [device for device, _ in rows] == ["cam-1", "cam-2", "cam-3"]
    cells = dict(rows)
    assert "online" in cells["cam-1"] and "offline" in cells["cam-3"] and "1 h ago" in cells["cam-3"]
    assert "canary" in cells["cam-2"] and "agent 0.1.0" in cells["cam-1"] and "p50 4.2 ms" in cells["cam-1"]


def test_selection_run_pages(client_for, world):
    client = client_for("rey")
    listing = client.get("/runs").text
    assert f'href="/runs/{world.info.run_id}"' in listing
    detail = client.get(f"/runs/{world.info.run_id}").text
    assert "DIVERSITY · EMBEDDINGS" in detail and "TYPICALITY · EMBEDDINGS" in detail
    assert len(re.findall(r'<img class="thumb" src="/images/[0-9a-f-]{36}\?size=96"', detail)) == 8
    assert "Metrics against random picks" in detail and client.get("/runs/999").status_code == 404


@pytest.mark.parametrize("config,path", [
    ("{not json", "JSON line 1, column 2"),
    ("[]", "(the whole config)"),
    ('{"n_samples": 5, "strategies": [{"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", '
     '"strength": "high"}}]}', "strategies[0].strategy.strength"),
    ('{"n_samples": 5, "strategies": [{"input": {"type": "METADATA", "key": "no_such_key"}, '
     '"strategy": {"type": "WEIGHTS"}}]}', "strategies[0].input.key"),
])
def test_a_bad_selection_config_is_shown_inline_with_its_field(config, path, client_for, world):
    admin = client_for("ada")
    runs_before = len(world.services.catalog.selection_runs())
    response = post(admin, "/runs/new", {"config": config, "duplicate_distance": "0.2", "action": "run"}, confirm=False)
    assert response.status_code == 400
    error = re.search(r'data-testid="config-error"><strong>([^<]*)</strong>', response.text)
    assert error and error.group(1) == html.escape(path)
    assert len(world.services.catalog.selection_runs()) == runs_before
    assert config.replace('"', "&#34;")[:20] in response.text  # the text is kept for fixing


def test_empty_dashboard_says_what_to_do(tmp_path, client_for):
    from cloud_selector.cli import open_services
    from cloud_selector.dashboard.app import create_app
    from cloud_selector.users import UserStore

    services = open_services(tmp_path / "empty")
    UserStore(services.catalog).add("ada", "ada-password-1", "admin")
    client = client_for(application=create_app(services, secret_key=SECRET))
    login(client, "ada")
    expected = {"/": ["No device reported scored frames", "No model version has a held-out evaluation",
                      "No rollout yet."],
                "/models": ["No model version yet.", "cloud-selector train"],
                "/runs": ["No selection run yet."], "/fleet": ["No device has reported yet.", "No rollout yet."]}
    for path, needles in expected.items():
        response = client.get(path)
        assert response.status_code == 200, path
        for needle in needles:
            assert needle in response.text, (path, needle)
    assert "no model is published yet" in post(client, "/runs/new", {"config": '{"n_samples": 3, "strategies": ['
                                                                        '{"input": {"type": "EMBEDDINGS"}, "strategy": '
                                                                        '{"type": "DIVERSITY"}}]}'}, confirm=False).text
    services.catalog.close()


def test_api_requests_get_json_errors(client_for):
    client = client_for("rey")
    missing = client.get("/models/99", headers={"accept": "application/json"})
    assert missing.status_code == 404 and missing.json() == {"error": "no model version 99 (see the Models page)"}
    denied = client.get("/runs/new", headers={"accept": "application/json"})
    assert denied.status_code == 403 and denied.json()["error"].startswith("this needs the admin role")
