"""A seeded cloud for the dashboard tests, the dashboard over it, and a real headless Chromium.

The world is built once per session (it takes a few seconds) and copied for every test, so a
test may promote, disable or relabel without affecting another:

- 150 real Fashion-MNIST images (T-shirt, trouser, sneaker) ingested through the Ingest
  service's own `store` as JPEG candidates from three cameras, scored by the tiny v1 model, their
  arrival spread over the last 12 days;
- tiny real ONNX bundles v1 (released on `default`), v2 and v3 published through the registry;
  120 labels (classes a, b, c = T-shirt, trouser, sneaker), a held-out set, and the evaluation
  gate run for each version: v2 passes against v1, v3 is refused;
- one selection run over the remaining pool;
- heartbeats from cam-1..3 (cam-3 went quiet an hour ago), cam-2 and cam-3 on channel `canary`,
  and a staged rollout of v2 there with its first device assigned and installed;
- users ada (admin), lou (labeler) and rey (reviewer).

Browser: Debian's /usr/bin/chromium through Playwright (never `playwright install`); a test that
needs it fails, with the command that installs it, when it is missing. Screenshots go to
test-artifacts/dashboard/.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import sqlalchemy as sa

from conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
SECRET = b"dashboard-test-secret-0123456789abcdef"
PASSWORDS = {"ada": "ada-password-1", "lou": "lou-password-1", "rey": "rey-password-1"}
ROLES = {"ada": "admin", "lou": "labeler", "rey": "reviewer"}
FASHION_CLASSES = {0: "a", 1: "b", 7: "c"}  # T-shirt, trouser, sneaker as the tiny models' classes
PER_CLASS, LABELED_PER_CLASS = 50, 40
DEVICES = ("cam-1", "cam-2", "cam-3")
DAY_MS = 86_400_000
# Seeds of the tiny bundles' random weights: on this held-out set v2 is as good as v1 (the gate
# passes) and v3 is worse (refused). The world fixture checks both, so a change shows up there.
V2_SEED, V3_SEED = 2, 3


@dataclass(frozen=True)
class SeedInfo:
    candidate_ids: tuple[str, ...]
    labeled: int
    run_id: int
    rollout_id: str
    gate_passed: dict


@dataclass
class World:
    services: object
    data_dir: Path
    info: SeedInfo


def _seed(data_dir: Path, root: Path, dataset) -> SeedInfo:
    from cloud_selector import rollouts
    from cloud_selector.catalog import now_ms
    from cloud_selector.cli import open_services
    from cloud_selector.ingest import IngestService
    from cloud_selector.promotion import ensure_holdout, judge
    from cloud_selector.releases import Releases
    from cloud_selector.rounds import RoundConfig, run_round
    from cloud_selector.schema import candidates, devices
    from cloud_selector.users import UserStore
    from edge_agent.runtime import LoadedModel
    from edge_agent.scoring import score_frame
    from flywheel_demo.streams import render_clean
    from protos import flywheel_pb2 as pb
    from tiny_models import tiny_bundle

    s = open_services(data_dir)
    s.registry.publish(tiny_bundle(root, 1), release=True, actor="seed")
    s.registry.publish(tiny_bundle(root, 2, seed=V2_SEED), release=False, actor="seed")
    s.registry.publish(tiny_bundle(root, 3, seed=V3_SEED), release=False, actor="seed")
    model = LoadedModel(s.registry.local_bundle(1))

    rng = np.random.default_rng(0)
    picks = [(int(i), label) for cls, label in FASHION_CLASSES.items()
             for i in rng.choice(np.flatnonzero(dataset.labels == cls), PER_CLASS, replace=False)]
    frames = [render_clean(dataset.images[i], 56) for i, _ in picks]
    inference = model.infer_batched(frames)
    ingest, ids, now = IngestService(s.catalog, s.blobs), [], now_ms()
    for n, ((index, _), frame) in enumerate(zip(picks, frames)):
        scores = score_frame(inference.probs[n], inference.embeddings[n], model.bank)
        ok, jpeg = cv2.imencode(".jpg", frame)
        candidate = pb.Candidate(
            candidate_id=str(uuid.UUID(bytes=rng.bytes(16), version=4)),
            device_id=DEVICES[n % 3], capture_time_ms=now - n * 60_000, model_version=1, jpeg=jpeg.tobytes(),
            width=56, height=56, embedding=inference.embeddings[n].tolist(), probabilities=inference.probs[n].tolist(),
            scores=pb.Scores(least_confidence=scores.least_confidence, margin=scores.margin, entropy=scores.entropy,
                             novelty=scores.novelty, combined=(scores.least_confidence + scores.novelty) / 2),
            reason=pb.KEEP_REASON_UNCERTAINTY if n % 4 else pb.KEEP_REASON_NOVELTY,
            metadata={"site": f"line-{n % 2 + 1}", "fashion_index": str(index)})
        ack = ingest.store(candidate)
        assert ack.status == pb.ACK_STATUS_STORED, ack.detail
        ids.append(candidate.candidate_id)
    with s.catalog.engine.begin() as conn:  # arrivals over the last 12 days, for the per-day charts
        conn.execute(candidates.update().where(candidates.c.id == sa.bindparam("cid"))
                     .values(received_ms=sa.bindparam("at")),
                     [{"cid": cid, "at": now - (n % 12) * DAY_MS - n * 1000} for n, cid in enumerate(ids)])

    by_class: dict[str, list[str]] = {}
    for cid, (_, label) in zip(ids, picks):
        by_class.setdefault(label, []).append(cid)
    labels = [(cid, label) for label, members in by_class.items() for cid in members[:LABELED_PER_CLASS]]
    s.catalog.apply_labels(labels, source="manual", annotator="seed")

    releases = Releases(s.catalog, s.registry.signer)
    shuffled = [labels[i] for i in rng.permutation(len(labels))]
    for version, spent in ((1, 30), (2, 60), (3, 120)):  # what each version was trained on (its lineage)
        releases.record_lineage(version, trainer_mode="head", labels=shuffled[:spent])
    assert len(ensure_holdout(s.catalog, releases)) >= 20
    judge(s.registry, releases, s.blobs, 1)
    releases.set_status(1, "released")  # judging v1 against itself recorded it as a candidate
    gate_passed = {v: judge(s.registry, releases, s.blobs, v).passed for v in (2, 3)}
    run = run_round(s.catalog, s.blobs, s.registry, RoundConfig(n_samples=8))

    for n, device in enumerate(DEVICES):
        s.catalog.record_heartbeat({
            "id": device, "model_version": 1, "frames_seen": 5000 * (n + 1), "frames_kept": 60 * (n + 1),
            "candidates_acked": 50, "spool_depth": 3 * n, "spool_bytes": 40_000 * n, "fps": 9.5 - n,
            "status": {"source": "rtsp", "agent_version": "0.1.0", "inference_p50_ms": 4.2,
                       "bytes_uploaded": 2_000_000 * (n + 1), "spool_cap_bytes": 500_000_000}})
        releases.saw(device, channel="default" if device == "cam-1" else "canary", version=1)
    with s.catalog.engine.begin() as conn:
        conn.execute(devices.update().where(devices.c.id == "cam-3").values(last_seen_ms=now - 3_600_000))
    rollout_id = rollouts.start_rollout(releases, 2, channel="canary", stages=(50, 100), actor="seed")
    rollouts.RolloutController(releases).advance(rollout_id)
    first = rollouts.rollout(s.catalog, rollout_id)["devices"][0]["device_id"]
    rollouts.record_report(s.catalog, first, rollout_id=rollout_id, version=2, status="installed", detail="",
                           health=None)

    store = UserStore(s.catalog)
    for name, role in ROLES.items():
        store.add(name, PASSWORDS[name], role)
    s.catalog.close()
    return SeedInfo(tuple(ids), len(labels), run.run_id, rollout_id, gate_passed)


@pytest.fixture(scope="session")
def seeded(tmp_path_factory, fashion_train) -> tuple[Path, SeedInfo]:
    root = tmp_path_factory.mktemp("dashboard-seed")
    info = _seed(root / "cloud", root / "bundles", fashion_train)
    return root / "cloud", info


@pytest.fixture
def world(seeded, tmp_path) -> World:
    """A private copy of the seeded data dir, opened."""
    from cloud_selector.cli import open_services

    template, info = seeded
    assert info.gate_passed == {2: True, 3: False}, \
        f"the seeded gate decisions changed ({info.gate_passed}): pick new V2_SEED/V3_SEED in {__file__}"
    data_dir = tmp_path / "cloud"
    shutil.copytree(template, data_dir)
    services = open_services(data_dir)
    yield World(services, data_dir, info)
    services.catalog.close()


def make_app(world: World, **options):
    from cloud_selector.dashboard.app import create_app

    return create_app(world.services, secret_key=SECRET, **options)


@pytest.fixture
def app(world):
    return make_app(world)


@pytest.fixture
def client_for(app):
    """client_for(name) -> a TestClient logged in as that seeded user (None: logged out)."""
    from starlette.testclient import TestClient

    clients = []

    def make(name: str | None = None, *, application=None):
        client = TestClient(application or app, base_url="https://testserver")
        clients.append(client)
        if name is not None:
            login(client, name)
        return client

    yield make
    for client in clients:
        client.close()


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, "the page has no csrf-token meta tag"
    return match.group(1)


def login(client, name: str, password: str | None = None, next_path: str = "/"):
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"username": name, "password": password or PASSWORDS[name],
                                           "csrf_token": token, "next": next_path}, follow_redirects=False)
    assert response.status_code == 303, response.text[:500]
    return response


@pytest.fixture
def live(world):
    """The dashboard served by uvicorn on 127.0.0.1:<free port>; yields its base URL (no trailing /)."""
    from cloud_selector.dashboard.server import DashboardServer

    server = DashboardServer(make_app(world), "127.0.0.1", 0).start()
    yield server.url.rstrip("/")
    server.stop()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `sudo apt-get install -y chromium` (or `bash "
                    "scripts/install_system_deps.sh` as root); the dashboard's browser tests need /usr/bin/chromium",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    console_errors: list[str] = []
    tab.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: console_errors.append(f"uncaught: {error}"))
    yield tab
    context.close()
    # Anything the Content-Security-Policy blocked, or a script error, is a bug of the page.
    assert not [e for e in console_errors if "Content Security Policy" in e or e.startswith("uncaught")], console_errors


def screenshot(tab, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path


def browser_login(tab, base: str, name: str, path: str = "/") -> None:
    tab.goto(base + path)
    assert "/login" in tab.url
    tab.fill("#username", name)
    tab.fill("#password", PASSWORDS[name])
    tab.click("button[type=submit]")
    tab.wait_for_url(re.compile(re.escape(base + path) + r"$"))
