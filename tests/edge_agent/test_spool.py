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


def test_claim_is_highest_value_first_then_fifo_and_limited(spool_path):
    s = Spool(spool_path)
    for i, score in enumerate([1.0, 3.0, 1.0, 2.0, 3.0]):
        s.put(f"c{i}", payload(i), score=score)
    assert [i.candidate_id for i in s.claim(2)] == ["c1", "c4"]
    assert [i.candidate_id for i in s.claim(2)] == ["c3", "c0"]
    assert [i.candidate_id for i in s.claim(2)] == ["c2"]
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
    assert [(i.candidate_id, i.payload) for i in items] == [(f"id-{i:03d}", payload(i)) for i in reversed(range(n))]
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


# --- disk cap ------------------------------------------------------------------------------


def test_cap_evicts_lowest_value_queued_items_first(spool_path):
    s = Spool(spool_path, cap_bytes=1000)
    for i, score in enumerate([0.5, 0.1, 0.9, 0.3]):
        assert s.put(f"c{i}", b"x" * 250, score).stored
    r = s.put("high", b"y" * 400, 0.8)  # needs 400 bytes: evicts 0.1 and 0.3
    assert r.stored and r.evicted == 2
    assert sorted(cid for cid, _, _ in s.items()) == ["c0", "c2", "high"]
    st = s.stats()
    assert st.pending_bytes == 900 and st.evicted_total == 2 and st.cap_bytes == 1000


def test_cap_drops_the_newcomer_when_it_is_worth_least_and_keeps_progress(spool_path):
    s = Spool(spool_path, cap_bytes=500)
    s.put("a", b"x" * 250, 0.5)
    s.put("b", b"x" * 250, 0.6)
    r = s.put("low", b"x" * 100, 0.2, progress=("cam.mp4", 41))
    assert not r.stored and r.evicted == 1
    assert s.progress() == {"cam.mp4": 41}
    assert not s.put("huge", b"x" * 501, 9.0).stored  # larger than the whole cap
    assert s.stats().evicted_total == 2
    s.close()
    assert Spool(spool_path, cap_bytes=500).stats().evicted_total == 2  # the counter persists


def test_cap_never_evicts_items_in_flight(spool_path):
    s = Spool(spool_path, cap_bytes=500)
    s.put("sending", b"x" * 400, 0.1)
    assert [i.candidate_id for i in s.claim(1)] == ["sending"]
    assert not s.put("new", b"x" * 200, 0.9).stored
    assert s.stats().sending == 1


def test_long_offline_keeps_the_best_under_the_cap(spool_path):
    import random

    rng = random.Random(3)
    s = Spool(spool_path, cap_bytes=20_000, synchronous="NORMAL")
    scores = {}
    for i in range(400):
        score = rng.random()
        scores[f"c{i}"] = score
        s.put(f"c{i}", rng.randbytes(rng.randint(300, 700)), score)
        assert s.stats().pending_bytes <= 20_000
    kept = {cid for cid, _, _ in s.items()}
    assert min(scores[c] for c in kept) >= sorted(scores.values())[-len(kept) - 5]  # the top set, up to packing
    assert s.path.stat().st_size < 20_000 * 3 + 64 * 1024
    drained = [item.candidate_id for item in s.claim(1000)]
    assert [scores[c] for c in drained] == sorted((scores[c] for c in drained), reverse=True)


def test_negative_cap_is_an_error(spool_path):
    with pytest.raises(ValueError, match="cap_bytes"):
        Spool(spool_path, cap_bytes=-1)
