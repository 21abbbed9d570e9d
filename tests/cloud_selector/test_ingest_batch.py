"""Ingest's group commit keeps the ack contract: many concurrent streams, each with many
candidates in flight, all get their acks in order, and every acked candidate is readable; a blob
store that fails acks nothing it did not store and ends the stream with UNAVAILABLE; the
directory store's batch write is atomic per blob. Real server on loopback, real SQLite, real
files; the failing store is a real BlobStore (a directory with a byte quota)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from conftest import make_candidate

from cloud_selector.blobstore import BlobError, DirectoryBlobStore
from cloud_selector.catalog import Catalog
from cloud_selector.ingest import IngestService
from cloud_selector.ingest_batch import AckPipe, Committer, StoreFailed
from cloud_selector.server import create_server
from edge_agent.transport import open_channel
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc


class QuotaBlobStore:
    """A directory that refuses new blobs once it holds `quota` of them (a full disk, say): a
    real store with `put` only, so ingest's batch goes through `put_all`'s one-by-one path."""

    def __init__(self, root: Path, quota: int):
        self.inner = DirectoryBlobStore(root)
        self.quota = quota
        self.used = 0
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            if self.used >= self.quota:
                raise BlobError(f"quota of {self.quota} blobs reached, {key!r} not stored")
            self.used += 1
        self.inner.put(key, data)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(key, offset, length)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)


def _stream(channel: grpc.Channel, candidates: list[pb.Candidate]) -> list[pb.Ack]:
    """Send all of them on one stream without waiting for acks (the server reads ahead)."""
    return list(pb_grpc.IngestStub(channel).Upload(iter(candidates), timeout=60))


def _candidates(device: str, n: int, seed: int) -> list[pb.Candidate]:
    return [make_candidate(device, width=64, height=48, seed=seed + i) for i in range(n)]


def _assert_readable(catalog: Catalog, blobs, sent: dict[str, pb.Candidate], acked_ids: list[str]) -> None:
    rows = {row.id: row for row in catalog.candidates(ids=acked_ids)}
    assert set(rows) == set(acked_ids)
    for cid in acked_ids:
        assert blobs.get(rows[cid].blob_key) == sent[cid].jpeg


def test_concurrent_streams_all_get_stored_acks_in_order_and_every_candidate_is_readable(cloud_factory):
    cloud = cloud_factory()
    streams = {f"cam-{d}": _candidates(f"cam-{d}", 25, seed=100 * d) for d in range(6)}
    results: dict[str, list[pb.Ack]] = {}

    def run(device: str) -> None:
        with open_channel(cloud.address) as channel:
            results[device] = _stream(channel, streams[device])

    threads = [threading.Thread(target=run, args=(d,)) for d in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    sent = {c.candidate_id: c for cs in streams.values() for c in cs}
    for device, candidates in streams.items():
        acks = results[device]
        assert [a.candidate_id for a in acks] == [c.candidate_id for c in candidates]  # the order they came
        assert {a.status for a in acks} == {pb.ACK_STATUS_STORED}
    _assert_readable(cloud.services.catalog, cloud.services.blobs, sent, list(sent))
    assert cloud.candidate_count() == len(sent)
    assert not [p for p in cloud.blob_files() if p.name.startswith(".tmp-")]


def test_resends_in_flight_on_two_streams_are_stored_once(cloud_factory):
    cloud = cloud_factory()
    candidates = _candidates("cam-r", 20, seed=7)
    results = []

    def run() -> None:
        with open_channel(cloud.address) as channel:
            results.append(_stream(channel, candidates))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(len(candidates)):  # each id: STORED on exactly one stream, ALREADY_STORED on the other
        assert sorted(acks[i].status for acks in results) == [pb.ACK_STATUS_STORED, pb.ACK_STATUS_ALREADY_STORED]
    sent = {c.candidate_id: c for c in candidates}
    _assert_readable(cloud.services.catalog, cloud.services.blobs, sent, list(sent))
    assert cloud.candidate_count() == len(candidates) == len(cloud.blob_files())


def test_a_failing_blob_store_acks_nothing_it_did_not_store(tmp_path):
    catalog = Catalog.sqlite(tmp_path / "catalog.sqlite")
    candidates = _candidates("cam-q", 40, seed=3)
    blobs = QuotaBlobStore(tmp_path / "blobs", quota=15)
    running = create_server("127.0.0.1:0", catalog=catalog, blobs=blobs)
    acks: list[pb.Ack] = []
    try:
        with open_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.RpcError) as failed:
                for ack in pb_grpc.IngestStub(channel).Upload(iter(candidates), timeout=60):
                    acks.append(ack)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "quota" in failed.value.details() and "resend" in failed.value.details()
        assert running.ingest.committer.stats.failed_batches >= 1
        # Acks came in order and only for stored candidates, whose rows and blobs are all there.
        assert [a.candidate_id for a in acks] == [c.candidate_id for c in candidates[:len(acks)]]
        assert {a.status for a in acks} <= {pb.ACK_STATUS_STORED}
        sent = {c.candidate_id: c for c in candidates}
        _assert_readable(catalog, blobs, sent, [a.candidate_id for a in acks])
        # No row without its blob: everything in the catalog is readable, acked or not.
        rows = catalog.candidates()
        assert len(rows) <= 15 and all(blobs.get(r.blob_key) == sent[r.id].jpeg for r in rows)
        # The server keeps serving once there is room again; the agent's resend is stored.
        blobs.quota = 1000
        with open_channel(f"127.0.0.1:{running.port}") as channel:
            resent = _stream(channel, candidates[len(acks):])
        assert {a.status for a in resent} <= {pb.ACK_STATUS_STORED, pb.ACK_STATUS_ALREADY_STORED}
        _assert_readable(catalog, blobs, sent, list(sent))
    finally:
        running.stop(grace_s=0.5)
        catalog.close()


def test_committer_refuses_work_after_close(tmp_path):
    catalog = Catalog.sqlite(tmp_path / "catalog.sqlite")
    service = IngestService(catalog, DirectoryBlobStore(tmp_path / "blobs"))
    pending = service.check(make_candidate())
    committer = Committer(catalog, service.blobs)
    assert committer.submit(pending).result(30).status == pb.ACK_STATUS_STORED
    committer.close()
    with pytest.raises(StoreFailed):
        committer.submit(service.check(make_candidate(seed=1))).result(30)
    assert sum(catalog.count_by_state().values()) == 1
    catalog.close()


def test_the_ack_pipe_bounds_read_ahead_and_keeps_order():
    pipe = AckPipe(max_items=2, max_bytes=1000)
    first, second = Future(), pb.Ack(candidate_id="b")
    assert pipe.put(first, 10) and pipe.put(second, 10)
    blocked = threading.Event()

    def third() -> None:
        pipe.put(pb.Ack(candidate_id="c"), 10)
        blocked.set()

    threading.Thread(target=third, daemon=True).start()
    time.sleep(0.2)
    assert not blocked.is_set()  # two unacked: the reader waits
    entry, size = pipe.get()
    assert entry is first and size == 10
    pipe.acked(size)
    assert blocked.wait(5)
    assert pipe.get()[0] is second and pipe.get()[0].candidate_id == "c"
    big = AckPipe(max_items=8, max_bytes=100)
    assert big.put(pb.Ack(), 500)  # one candidate always goes through, however large
    big.close()
    assert big.put(pb.Ack(), 1) is False  # the stream ended: the reader stops


def test_put_many_writes_every_blob_atomically_and_checks_every_key_first(tmp_path):
    store = DirectoryBlobStore(tmp_path / "blobs")
    items = [(f"candidates/{i:02x}/blob-{i}.jpg", bytes([i]) * (1000 + i)) for i in range(20)]
    store.put_many(items)
    assert all(store.get(key) == data for key, data in items)
    with pytest.raises(BlobError):
        store.put_many([("fresh/one.jpg", b"x"), ("../escape", b"y")])
    assert not store.exists("fresh/one.jpg")
    assert sorted(p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()) == \
        sorted(key.rsplit("/", 1)[1] for key, _ in items)  # no temp file left behind


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """An APP1 Exif segment holding only the Orientation tag (0x0112), right after SOI."""
    tiff = (b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little")
            + (0x0112).to_bytes(2, "little") + (3).to_bytes(2, "little") + (1).to_bytes(4, "little")
            + orientation.to_bytes(2, "little") + b"\x00\x00" + (0).to_bytes(4, "little"))
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_a_jpeg_rotated_by_exif_is_stored_with_its_header_size(tmp_path):
    c = make_candidate(width=64, height=24)
    c.jpeg = _with_exif_orientation(c.jpeg, 6)  # "rotate 90°": a decoder honouring it turns 64x24 into 24x64
    rotated = cv2.imdecode(np.frombuffer(c.jpeg, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    assert rotated.shape == (8, 3)  # the EXIF tag is real: honoured, the decoded size would not match
    catalog = Catalog.sqlite(tmp_path / "catalog.sqlite")
    service = IngestService(catalog, DirectoryBlobStore(tmp_path / "blobs"))
    assert service.store(c).status == pb.ACK_STATUS_STORED
    catalog.close()
