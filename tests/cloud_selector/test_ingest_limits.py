"""Ingest refuses what it cannot or should not store, cheaply and with a clear answer, and keeps
serving: REJECTED acks for bad candidates (nothing written), RESOURCE_EXHAUSTED for oversized
messages and for devices over their rate. Real server on loopback, real SQLite, real JPEGs."""

from __future__ import annotations

import time

import cv2
import grpc
import numpy as np
import pytest

from cloud_selector.ingest import IngestLimits, InvalidCandidate, RateLimit, jpeg_size
from conftest import make_candidate
from edge_agent.transport import open_channel
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

KNOWN_VERSION = 7


@pytest.fixture
def ingest(cloud_factory):
    """A server whose catalog knows model v7 (8-dim embedding, 4 classes); yields (cloud, channel)."""
    cloud = cloud_factory(ingest_limits=IngestLimits(max_jpeg_bytes=64 * 1024))
    cloud.services.catalog.add_model(version=KNOWN_VERSION, name="m", parent_version=0, files=[], published=False,
                                     manifest={"classes": ["a", "b", "c", "d"], "embedding_dim": 8})
    with open_channel(cloud.address) as channel:
        yield cloud, channel


def upload(channel: grpc.Channel, *candidates: pb.Candidate) -> list[pb.Ack]:
    return list(pb_grpc.IngestStub(channel).Upload(iter(candidates), timeout=30))


def assert_rejected(cloud, channel, candidate: pb.Candidate, needle: str) -> None:
    [ack] = upload(channel, candidate)
    assert ack.status == pb.ACK_STATUS_REJECTED and needle in ack.detail, ack
    assert cloud.candidate_count() == 0 and cloud.blob_files() == []


def with_sof_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header declaring another size (the data no longer matches)."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[sof + 9:]


def test_truncated_jpeg_is_rejected(ingest):
    cloud, channel = ingest
    c = make_candidate()
    c.jpeg = c.jpeg[:len(c.jpeg) // 2]
    assert_rejected(cloud, channel, c, "does not decode")


def test_jpeg_with_a_corrupt_huffman_table_is_rejected(ingest):
    cloud, channel = ingest
    c = make_candidate()
    dht = c.jpeg.index(b"\xff\xc4")
    c.jpeg = c.jpeg[:dht + 5] + b"\xff" * 16 + c.jpeg[dht + 21:]  # headers parse, the table is bogus
    assert_rejected(cloud, channel, c, "does not decode")


def test_jpeg_without_its_end_marker_is_rejected(ingest):
    cloud, channel = ingest
    c = make_candidate()
    c.jpeg = c.jpeg[:-2]
    assert_rejected(cloud, channel, c, "does not decode")


def test_jpeg_without_a_frame_header_is_rejected(ingest):
    cloud, channel = ingest
    c = make_candidate()
    c.jpeg = b"\xff\xd8" + b"not a jpeg" * 10
    assert_rejected(cloud, channel, c, "malformed")


def test_too_many_pixels_are_rejected_from_the_header_before_decoding(ingest):
    cloud, channel = ingest
    c = make_candidate()
    c.jpeg, c.width, c.height = with_sof_size(c.jpeg, 10_000, 10_000), 10_000, 10_000  # 100 MP declared
    assert_rejected(cloud, channel, c, "100000000 pixels")


def test_oversized_jpeg_bytes_are_rejected(ingest):
    cloud, channel = ingest
    c = make_candidate(width=400, height=300)
    assert len(c.jpeg) > 64 * 1024
    assert_rejected(cloud, channel, c, "larger than 65536 bytes")


def test_width_height_must_match_the_jpeg(ingest):
    cloud, channel = ingest
    c = make_candidate(width=32, height=24)
    c.width, c.height = 24, 32
    assert_rejected(cloud, channel, c, "do not match")


@pytest.mark.parametrize("embedding_dim,num_classes,needle", [(7, 4, "embedding has 7 values"),
                                                             (8, 5, "5 class probabilities")])
def test_vector_lengths_must_fit_a_known_model_version(ingest, embedding_dim, num_classes, needle):
    cloud, channel = ingest
    c = make_candidate(embedding_dim=embedding_dim, num_classes=num_classes, model_version=KNOWN_VERSION)
    assert_rejected(cloud, channel, c, needle)


def test_vector_lengths_of_an_unknown_version_are_not_checked(ingest):
    cloud, channel = ingest
    acks = upload(channel, make_candidate(model_version=KNOWN_VERSION),
                  make_candidate(embedding_dim=3, num_classes=2, model_version=99, seed=1))
    assert [a.status for a in acks] == [pb.ACK_STATUS_STORED] * 2
    assert cloud.candidate_count() == 2 and len(cloud.blob_files()) == 2


def test_unknown_fields_from_a_newer_agent_are_ignored(ingest):
    cloud, channel = ingest
    c = make_candidate()
    # Field 99 as a varint (key 99 << 3 | 0 = 0x318) and field 100 as bytes (key 100 << 3 | 2).
    newer = c.SerializeToString() + b"\x98\x06\x01" + b"\xa2\x06\x05hello"
    parsed = pb.Candidate.FromString(newer)
    assert parsed.SerializeToString() == newer  # the unknown fields really travel
    [ack] = upload(channel, parsed)
    assert ack.status == pb.ACK_STATUS_STORED
    [row] = cloud.services.catalog.candidates()
    assert row.id == c.candidate_id and cloud.services.blobs.get(row.blob_key) == c.jpeg


def test_a_resend_is_acked_already_stored(ingest):
    cloud, channel = ingest
    c = make_candidate()
    assert [a.status for a in upload(channel, c, c)] == [pb.ACK_STATUS_STORED, pb.ACK_STATUS_ALREADY_STORED]
    assert cloud.candidate_count() == 1 and len(cloud.blob_files()) == 1


def test_a_100_mb_message_is_refused_and_the_server_keeps_serving(cloud_factory):
    cloud = cloud_factory()  # default 8 MiB receive limit
    big = make_candidate()
    big.jpeg = big.jpeg[:2] + bytes(100 * 1024 * 1024)
    # This client allows itself to send it, so the server's limit is what refuses it.
    with open_channel(cloud.address, max_message_bytes=128 * 1024 * 1024) as channel:
        with pytest.raises(grpc.RpcError) as err:
            upload(channel, big)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [a.status for a in upload(channel, make_candidate())] == [pb.ACK_STATUS_STORED]
    with open_channel(cloud.address) as channel:
        assert [a.status for a in upload(channel, make_candidate(seed=1))] == [pb.ACK_STATUS_STORED]
    assert cloud.candidate_count() == 2


def test_rate_limit_ends_the_stream_and_refills(cloud_factory):
    cloud = cloud_factory(rate_limit=RateLimit(per_s=10.0, burst=3))
    with open_channel(cloud.address) as channel:
        responses = pb_grpc.IngestStub(channel).Upload(iter([make_candidate(seed=i) for i in range(5)]), timeout=30)
        acks = []
        with pytest.raises(grpc.RpcError) as err:
            for ack in responses:
                acks.append(ack)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [a.status for a in acks] == [pb.ACK_STATUS_STORED] * 3  # the burst; these acks stay valid
        assert cloud.candidate_count() == 3 and len(cloud.blob_files()) == 3

        time.sleep(0.25)  # 10/s refills at least two tokens
        assert [a.status for a in upload(channel, make_candidate(seed=10))] == [pb.ACK_STATUS_STORED]
    assert cloud.candidate_count() == 4


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("shape", [(24, 32, 3), (7, 5), (300, 401, 3)])
def test_jpeg_size_reads_the_frame_header(shape, progressive):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok and jpeg_size(jpeg.tobytes()) == (shape[1], shape[0])


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00", b"\xff\xd8\xff\xda\x00\x08",
                                  b"\xff\xd8\xff\xe0\x00\x01"])
def test_jpeg_size_refuses_what_is_not_a_jpeg_header(data):
    with pytest.raises(InvalidCandidate):
        jpeg_size(data)
