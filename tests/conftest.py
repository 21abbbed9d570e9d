"""Shared fixtures: a real cloud (catalog + blob store + gRPC server on 127.0.0.1:0) and a
seed model trained on a handful of real Fashion-MNIST images."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from flywheel_demo.datasets import FASHION_MNIST_DIR, load_fashion_mnist

if TYPE_CHECKING:
    from cloud_selector.cli import Services

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback port nothing listens on right now (for a server a test starts later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str):
    """Poll `condition` until it returns something truthy (returned), failing after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


DATA_DIR = Path(os.environ.get("FASHION_MNIST_DIR", FASHION_MNIST_DIR))


@pytest.fixture(scope="session")
def fashion_train():
    if not (DATA_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST is missing in {DATA_DIR}: run `make test` (it installs dataset-fashion-mnist)")
    return load_fashion_mnist("train", DATA_DIR)


@pytest.fixture
def cloud(tmp_path):
    """Services on a fresh data dir plus a running gRPC server; yields (services, port)."""
    from cloud_selector.cli import open_services
    from cloud_selector.server import create_server

    services = open_services(tmp_path / "cloud")
    running = create_server("127.0.0.1:0", catalog=services.catalog, blobs=services.blobs, watch_poll_s=0.1)
    yield services, running.port
    running.stop(grace_s=0.5)
    services.catalog.close()


@pytest.fixture
def cloud_factory(tmp_path):
    """Start servers with your own `create_server` options (auth=, tls=, rate_limit=, ...).

    `start(**options)` returns a `CloudUnderTest` on the data dir tmp_path/<name> (another
    process or a CLI call may share it); every server is stopped and every catalog closed at
    teardown. `auth` may also be a function of the cloud's catalog, e.g. `DeviceAuthenticator`."""
    from cloud_selector.cli import open_services
    from cloud_selector.server import create_server

    started = []

    def start(*, name: str = "cloud", auth=None, **options) -> CloudUnderTest:
        services = open_services(tmp_path / name)
        if isinstance(auth, type) or (auth is not None and not hasattr(auth, "authenticate")):
            auth = auth(services.catalog)
        running = create_server("127.0.0.1:0", catalog=services.catalog, blobs=services.blobs, auth=auth,
                                **{"watch_poll_s": 0.1, **options})
        started.append((services, running))
        return CloudUnderTest(services, running.port, tmp_path / name / "blobs")

    yield start
    for services, running in started:
        running.stop(grace_s=0.5)
        services.catalog.close()


@dataclass(frozen=True)
class CloudUnderTest:
    services: Services
    port: int
    blob_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blob_files(self) -> list[Path]:
        """Every file under the blob directory (temp files too: a rejected upload leaves none)."""
        return [p for p in self.blob_dir.rglob("*") if p.is_file()]

    def candidate_count(self) -> int:
        return sum(self.services.catalog.count_by_state().values())


def make_candidate(device_id: str = "cam-test", *, width: int = 32, height: int = 24, embedding_dim: int = 8,
                   num_classes: int = 4, model_version: int = 0, seed: int = 0):
    """A valid Candidate with a real JPEG of `width` x `height` (noise, so it is not tiny)."""
    import uuid

    from protos import flywheel_pb2 as pb

    rng = np.random.default_rng(seed)
    ok, jpeg = cv2.imencode(".jpg", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    assert ok
    probabilities = rng.random(num_classes)
    return pb.Candidate(
        candidate_id=str(uuid.uuid4()), device_id=device_id, capture_time_ms=1_700_000_000_000,
        model_version=model_version, jpeg=jpeg.tobytes(), width=width, height=height,
        embedding=rng.standard_normal(embedding_dim).tolist(),
        probabilities=(probabilities / probabilities.sum()).tolist(),
        scores=pb.Scores(least_confidence=0.5, margin=0.5, entropy=0.5, novelty=0.1, combined=0.5),
        reason=pb.KEEP_REASON_UNCERTAINTY, metadata={"source": "test"},
    )


def seed_model(services, dataset, root: Path, classes=(0, 1, 7, 9), per_class: int = 6, frame_size: int = 56):
    """Import `per_class` labeled images of each class and train v1; returns the local bundle."""
    from cloud_selector.labels import import_image_folder
    from cloud_selector.retrain import SMALL_CNN, retrain
    from cloud_selector.trainer import TrainConfig
    from flywheel_demo.streams import render_clean

    rng = np.random.default_rng(0)
    for label in classes:
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in rng.choice(np.flatnonzero(dataset.labels == label), per_class, replace=False):
            cv2.imwrite(str(folder / f"{index}.png"), render_clean(dataset.images[index], frame_size))
    import_image_folder(services.catalog, services.blobs, root)
    result = retrain(services.catalog, services.blobs, services.registry, name="test-cnn",
                     config=TrainConfig(epochs=8, seed=0), trainer=SMALL_CNN)
    return services.registry.local_bundle(result.manifest.version)


def write_video(dataset, path: Path, *, classes=(0, 1, 7, 9), n_items: int = 30, seed: int = 0) -> Path:
    from flywheel_demo.streams import StreamPlan, plan_stream, write_stream_video

    mix = np.zeros(len(dataset.classes))
    mix[list(classes)] = 1.0 / len(classes)
    items = plan_stream(dataset.labels, mix, n_items, rng=np.random.default_rng(seed), run_length=(3, 6))
    plan = StreamPlan(device_id="cam-test", round=1, items=items, fps=10.0)
    return write_stream_video(path, dataset, plan, frame_size=56, seed=seed)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One real SeaweedFS S3 server on loopback for the whole session (HTTP, plus HTTPS signed by
    a throwaway CA at `s3_server.tls.ca`); fails, never skips, with its log tail if it cannot start."""
    from s3_server import SeaweedS3, SeaweedStartError, TLSFiles
    from tls_certs import make_ca

    pki = tmp_path_factory.mktemp("s3-pki")
    ca = make_ca(pki)
    leaf = ca.issue(pki, "seaweed-s3")
    server = SeaweedS3(tls=TLSFiles(cert=leaf.cert, key=leaf.key, ca=ca.files.cert))
    try:
        server.start()
    except SeaweedStartError as exc:
        pytest.fail(f"could not start SeaweedFS for the S3 tests: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on `s3_server` per test; yields the `S3Settings` (plain HTTP) for it."""
    import uuid

    from cloud_selector.s3store import S3Settings

    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.client().make_bucket(bucket)
    yield S3Settings(endpoint=s3_server.endpoint, bucket=bucket, access_key=s3_server.access_key,
                     secret_key=s3_server.secret_key, secure=False)


# ------------------------------------------------------------ catalog backends (tests/pg.py)
# The same checks on both catalog backends: take `catalog_url` and open it with Catalog.open.


@pytest.fixture
def pg_schema():
    """A fresh PostgreSQL schema (PgSchema: url, schema, base_url), dropped afterwards."""
    from pg import fresh_schema

    with fresh_schema() as schema:
        yield schema


@pytest.fixture
def pg_url(pg_schema) -> str:
    """A PostgreSQL URL whose search_path is a fresh, empty schema."""
    return pg_schema.url


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request, tmp_path) -> str:
    """An empty catalog database on each backend: a new SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return request.getfixturevalue("pg_url")
