"""Spool: the durable outbox's state machine, on real SQLite files, across close/reopen."""

from __future__ import annotations

import sqlite3

import pytest

from edge_agent.spool import Spool


@pytest.fixture
def spool_path(tmp_path):
    return tmp_path / "state" / "spool.sqlite"  # the parent does not exist yet: Spool creates it


def payload(i: int) -> bytes:
    return f"candidate-{i}".encode() * (i + 1)


def test_put_claim_ack(spool_path):
    s = Spool(spool_path)
    s.put("a", b"AAA", score=0.9)
    s.put("b", b"BB", score=0.1)
    items = s.claim(10)
    assert [(i.candidate_id, i.payload) for i in items] == [("a", b"AAA"), ("b", b"BB")]
    st = s.stats()
    assert (st.queued, st.sending, st.dead) == (0, 2, 0)
    # claimed items are not handed out twice
    assert s.claim(10) == []
    s.ack("a")
    st = s.stats()
    assert (st.queued, st.sending, st.depth, st.pending_bytes) == (0, 1, 1, 2)
    s.ack("b")
    assert s.stats().depth == 0
    s.close()


def test_claim_is_fifo_and_limited(spool_path):
    s = Spool(spool_path)
    for i in range(5):
        s.put(f"c{i}", payload(i), score=float(i))
    assert [i.candidate_id for i in s.claim(2)] == ["c0", "c1"]
    assert [i.candidate_id for i in s.claim(2)] == ["c2", "c3"]
    assert [i.candidate_id for i in s.claim(2)] == ["c4"]
    assert s.claim(0) == [] and s.claim(-1) == []
    s.close()


def test_release_puts_items_back(spool_path):
    s = Spool(spool_path)
    s.put("a", b"1", 0.0)
    s.put("b", b"2", 0.0)
    claimed = [i.candidate_id for i in s.claim(10)]
    s.release(claimed)
    st = s.stats()
    assert (st.queued, st.sending) == (2, 0)
    assert [i.candidate_id for i in s.claim(10)] == ["a", "b"]
    s.close()


def test_release_only_touches_sending_items(spool_path):
    s = Spool(spool_path)
    s.put("a", b"1", 0.0)
    s.claim(1)
    s.reject("a", "bad jpeg")
    s.release(["a", "nonexistent"])  # a dead item stays dead; an unknown id is ignored
    st = s.stats()
    assert (st.queued, st.sending, st.dead) == (0, 0, 1)
    s.close()


def test_reject_keeps_item_out_of_future_claims(spool_path):
    s = Spool(spool_path)
    s.put("bad", b"x" * 100, 0.5)
    s.put("good", b"y" * 10, 0.5)
    assert [i.candidate_id for i in s.claim(1)] == ["bad"]
    s.reject("bad", "invalid: " + "z" * 1000)
    st = s.stats()
    assert (st.queued, st.sending, st.dead) == (1, 0, 1)
    # dead items do not count as pending bytes
    assert st.pending_bytes == 10
    assert [i.candidate_id for i in s.claim(10)] == ["good"]
    s.release(["good"])
    s.close()
    # still dead after a restart, never claimed again
    s = Spool(spool_path)
    assert [i.candidate_id for i in s.claim(10)] == ["good"]
    assert s.stats().dead == 1
    s.close()
    # kept for audit with a bounded detail and without its payload
    with sqlite3.connect(spool_path) as db:
        detail, body = db.execute("SELECT detail, payload FROM items WHERE candidate_id='bad'").fetchone()
    assert detail.startswith("invalid: ") and len(detail) == 500
    assert body == b""


def test_write_close_reopen_keeps_every_item(spool_path):
    n = 50
    s = Spool(spool_path)
    for i in range(n):
        s.put(f"id-{i:03d}", payload(i), score=i / n)
    s.close()

    s = Spool(spool_path)
    st = s.stats()
    assert (st.queued, st.sending, st.dead) == (n, 0, 0)
    assert st.pending_bytes == sum(len(payload(i)) for i in range(n))
    items = s.claim(n + 10)
    assert [(i.candidate_id, i.payload) for i in items] == [(f"id-{i:03d}", payload(i)) for i in range(n)]
    s.close()


def test_sending_items_come_back_queued_on_reopen(spool_path):
    s = Spool(spool_path)
    for i in range(10):
        s.put(f"id-{i}", payload(i), 0.0)
    in_flight = s.claim(4)  # the stream was open when the process died
    s.ack(in_flight[0].candidate_id)  # one was acknowledged before that
    assert (s.stats().queued, s.stats().sending) == (6, 3)
    s.close()

    s = Spool(spool_path)
    st = s.stats()
    assert (st.queued, st.sending, st.dead) == (9, 0, 0)
    items = s.claim(100)
    assert [i.candidate_id for i in items] == [f"id-{i}" for i in range(1, 10)]
    assert all(i.payload == payload(int(i.candidate_id[3:])) for i in items)
    s.close()


def test_acked_items_stay_gone_after_reopen(spool_path):
    s = Spool(spool_path)
    s.put("a", b"1", 0.0)
    s.put("b", b"2", 0.0)
    s.claim(1)
    s.ack("a")
    s.close()
    s = Spool(spool_path)
    assert [i.candidate_id for i in s.claim(10)] == ["b"]
    s.close()


def test_progress_recorded_with_put(spool_path):
    s = Spool(spool_path)
    s.put("a", b"1", 0.0, progress=("cam/video1.mp4", 120))
    s.put("b", b"2", 0.0, progress=("cam/video2.mp4", 7))
    assert s.progress() == {"cam/video1.mp4": 120, "cam/video2.mp4": 7}
    s.close()
    s = Spool(spool_path)
    assert s.progress() == {"cam/video1.mp4": 120, "cam/video2.mp4": 7}
    s.close()


def test_progress_is_in_the_same_transaction_as_put(spool_path):
    s = Spool(spool_path)
    s.put("a", b"1", 0.0, progress=("video.mp4", 10))
    # a put that fails (duplicate candidate id) must not move the progress either
    with pytest.raises(sqlite3.IntegrityError):
        s.put("a", b"other", 0.0, progress=("video.mp4", 20))
    assert s.progress() == {"video.mp4": 10}
    st = s.stats()
    assert (st.queued, st.pending_bytes) == (1, 1)
    # and the spool is still usable afterwards
    s.put("b", b"22", 0.0, progress=("video.mp4", 30))
    assert s.progress() == {"video.mp4": 30}
    s.close()


def test_record_progress_only_moves_forward(spool_path):
    s = Spool(spool_path)
    s.record_progress("v.mp4", 100)
    s.record_progress("v.mp4", 50)
    assert s.progress() == {"v.mp4": 100}
    s.put("a", b"1", 0.0, progress=("v.mp4", 90))  # put with an older index does not rewind either
    assert s.progress() == {"v.mp4": 100}
    s.record_progress("v.mp4", 101)
    s.record_progress("other.mp4", 0)
    s.close()
    s = Spool(spool_path)
    assert s.progress() == {"v.mp4": 101, "other.mp4": 0}
    s.close()


def test_stats_depth_and_bytes(spool_path):
    s = Spool(spool_path)
    st = s.stats()
    assert (st.queued, st.sending, st.dead, st.depth, st.pending_bytes) == (0, 0, 0, 0, 0)
    s.put("a", b"x" * 10, 0.0)
    s.put("b", b"x" * 20, 0.0)
    s.put("c", b"x" * 30, 0.0)
    s.claim(1)  # a -> sending
    st = s.stats()
    assert (st.queued, st.sending, st.depth, st.pending_bytes) == (2, 1, 3, 60)
    s.reject("a", "nope")
    st = s.stats()
    assert (st.queued, st.sending, st.dead, st.depth, st.pending_bytes) == (2, 0, 1, 2, 50)
    s.close()


def test_synchronous_normal_also_persists(spool_path):
    s = Spool(spool_path, synchronous="normal")
    s.put("a", b"1", 0.0)
    s.close()
    s = Spool(spool_path)
    assert [i.candidate_id for i in s.claim(5)] == ["a"]
    s.close()
