"""Ingest accepts the embedding as float32 values, as int8 + scale, or not at all; stores float32
(or nothing); and rejects a candidate that sends both or a scale that is not a finite number >= 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import make_candidate
from edge_agent.embedding_codec import encode_int8
from edge_agent.transport import open_channel
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc


@pytest.fixture
def cloud_channel(cloud_factory):
    cloud = cloud_factory()
    cloud.services.catalog.add_model(version=7, name="m", parent_version=0, files=[], published=False,
                                     manifest={"classes": ["a", "b", "c", "d"], "embedding_dim": 8})
    with open_channel(cloud.address) as channel:
        yield cloud, channel


def _int8(c: pb.Candidate) -> pb.Candidate:
    values = np.asarray(c.embedding, dtype=np.float32)
    del c.embedding[:]
    c.embedding_int8, c.embedding_scale = encode_int8(values)
    return c


def _upload(channel, c: pb.Candidate) -> pb.Ack:
    [ack] = pb_grpc.IngestStub(channel).Upload(iter([c]), timeout=30)
    return ack


def test_an_int8_embedding_is_stored_as_float32(cloud_channel):
    cloud, channel = cloud_channel
    original = make_candidate(model_version=7)
    values = np.asarray(original.embedding, dtype=np.float32)
    c = _int8(original)
    assert _upload(channel, c).status == pb.ACK_STATUS_STORED
    [row] = cloud.services.catalog.candidates()
    assert row.embedding.dtype == np.float32 and len(row.embedding) == 8
    assert np.abs(row.embedding - values).max() <= c.embedding_scale / 2 + 1e-6


def test_an_int8_embedding_of_the_wrong_length_is_rejected(cloud_channel):
    cloud, channel = cloud_channel
    ack = _upload(channel, _int8(make_candidate(model_version=7, embedding_dim=5)))
    assert ack.status == pb.ACK_STATUS_REJECTED and "5 values" in ack.detail
    assert cloud.candidate_count() == 0


@pytest.mark.parametrize("scale", [math.nan, math.inf, -1.0])
def test_a_bad_scale_is_rejected(cloud_channel, scale):
    cloud, channel = cloud_channel
    c = _int8(make_candidate())
    c.embedding_scale = scale
    ack = _upload(channel, c)
    assert ack.status == pb.ACK_STATUS_REJECTED and "embedding_scale" in ack.detail
    assert cloud.candidate_count() == 0


def test_a_candidate_without_an_embedding_is_stored_without_one(cloud_channel):
    cloud, channel = cloud_channel
    c = make_candidate(model_version=7)
    del c.embedding[:]
    assert _upload(channel, c).status == pb.ACK_STATUS_STORED
    [row] = cloud.services.catalog.candidates()
    assert len(row.embedding) == 0  # a selection round embeds its JPEG, as for imported images


def test_both_forms_at_once_are_rejected(cloud_channel):
    cloud, channel = cloud_channel
    c = make_candidate()
    c.embedding_int8, c.embedding_scale = encode_int8(np.asarray(c.embedding))
    ack = _upload(channel, c)
    assert ack.status == pb.ACK_STATUS_REJECTED and "both" in ack.detail
    assert cloud.candidate_count() == 0
