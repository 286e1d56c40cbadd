"""A hold after a traffic shift survives a restart (real model, real SQLite and PostgreSQL):
a process restarted mid-hold must not resume serving on the certificate the shift made stale."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from sqlalchemy import select

from memcache import CalibratedPolicy, MemCache, ShiftDetector
from memcache.schema import MetaRow, set_meta
from memcache.store import SHIFT_COUNTS, SHIFT_COUNTS_KEPT_S, Store

STORED = {
    "How do I renew my passport?": "Fill in form DS-82 and mail it.",
    "What is the capital of France?": "Paris.",
    "How do I reset my router?": "Hold the reset button for ten seconds.",
}
NEAR = ["passport renewal, how?", "renewing a passport", "which city is france's capital", "router reset steps"]
FAR = [
    "best sourdough starter ratio",
    "who painted the sistine chapel ceiling",
    "how deep is the mariana trench",
    "recommend a sci-fi novel",
    "symptoms of vitamin d deficiency",
    "rules of cricket for beginners",
    "how do volcanoes form",
    "tips for a marathon taper week",
    "history of the printing press",
    "what do axolotls eat",
    "how to knit a scarf",
    "why is the sky blue",
]
HOLD = 4


def small_policy() -> CalibratedPolicy:
    policy = CalibratedPolicy(0.05, seed=0, shift_hold_audits=HOLD)
    policy.shift_detector = ShiftDetector(scales=((10, 20),), cooldown=10_000)
    return policy


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, db_url):
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else db_url


def test_a_restart_during_a_hold_resumes_it(url, embedder):
    with MemCache(url, embedder=embedder, policy=small_policy()) as cache:
        for question, answer in STORED.items():
            cache.write_back(question, answer)
        for i in range(30):  # traffic close to the memory: the detector's reference
            cache.lookup(NEAR[i % len(NEAR)])
        for question in FAR:  # then traffic far from it: the alarm
            cache.lookup(question)
            if cache.policy.shifts_detected:
                break
        assert cache.policy.shifts_detected and cache.policy.hold_remaining == HOLD
        assert cache.store.shift_hold_left() == HOLD
        # one audit comes back (the decision as a held audit would carry it) and is stored
        result = cache.lookup("what documents do I need to renew a passport")
        audit = replace(result, decision=replace(result.decision, action="audit", confidence=0.9, held=True))
        cache.write_back(audit, STORED["How do I renew my passport?"])
        assert cache.store.shift_hold_left() == HOLD - 1

    restarted = small_policy()
    assert not restarted.holding
    with MemCache(url, embedder=embedder, policy=restarted) as cache:
        cache.lookup(NEAR[0])  # the first lookup loads the store
        assert restarted.holding and restarted.hold_remaining == HOLD - 1
        assert cache.stats().shift_hold_remaining == HOLD - 1
        assert restarted.shifts_detected == []  # this process saw no alarm: the hold came from the store


def test_no_hold_is_resumed_without_a_recorded_shift(db_url, embedder):
    with MemCache(db_url, embedder=embedder, policy=small_policy()) as cache:
        for question, answer in STORED.items():
            cache.write_back(question, answer)
        for i in range(40):
            cache.lookup(NEAR[i % len(NEAR)])
        assert cache.store.shift_hold_left() == 0
    restarted = small_policy()
    with MemCache(db_url, embedder=embedder, policy=restarted) as cache:
        cache.lookup(NEAR[0])
        assert not restarted.holding


def test_a_hold_one_instance_starts_holds_the_others_and_their_audits_count_toward_it(url, embedder):
    """Instances on one store serve the same traffic: a shift one of them detects holds every
    one of them (at its next sync), and an audit any of them stores shortens the hold for all."""
    with (
        MemCache(
            url, embedder=embedder, policy=small_policy(), sync_interval=None, relabel_in_background=False
        ) as alarmed,
        MemCache(
            url, embedder=embedder, policy=small_policy(), sync_interval=None, relabel_in_background=False
        ) as other,
    ):  # syncs only when told, and each sync learns inline
        for question, answer in STORED.items():
            alarmed.write_back(question, answer)
        other.sync()
        assert not other.policy.holding
        for i in range(30):
            alarmed.lookup(NEAR[i % len(NEAR)])
        for question in FAR:
            alarmed.lookup(question)
            if alarmed.policy.shifts_detected:
                break
        assert alarmed.policy.hold_remaining == HOLD
        other.sync()
        assert other.policy.holding and other.policy.hold_remaining == HOLD
        assert other.policy.shifts_detected == []  # its own detector saw nothing
        result = other.lookup("what documents do I need to renew a passport")  # the other's audit ...
        audit = replace(result, decision=replace(result.decision, action="audit", confidence=0.9, held=True))
        other.write_back(audit, STORED["How do I renew my passport?"])
        alarmed.sync()  # ... counts toward the alarmed instance's hold
        assert alarmed.policy.hold_remaining == alarmed.store.shift_hold_left() == HOLD - 1
        other.sync()
        assert other.policy.hold_remaining == HOLD - 1


@pytest.mark.parametrize("pooled", [True, False])
def test_instances_that_divide_the_traffic_test_for_a_shift_together(url, embedder, pooled):
    """Two instances, each half of the traffic: the change is seen on their lookups together,
    after about as many in all as one instance with all the traffic needs, and one alarm holds
    both. Each testing alone would need about twice as many: here none has alarmed yet."""
    with (
        MemCache(url, embedder=embedder, policy=small_policy(), sync_interval=None, relabel_in_background=False) as a,
        MemCache(url, embedder=embedder, policy=small_policy(), sync_interval=None, relabel_in_background=False) as b,
    ):
        if not pooled:
            a.controller._pool_shift_test = b.controller._pool_shift_test = lambda: None
        for question, answer in STORED.items():
            a.write_back(question, answer)
        for i in range(60):
            (a, b)[i % 2].lookup(NEAR[i % len(NEAR)])
            a.sync()
            b.sync()
        assert a.policy.shifts_detected == b.policy.shifts_detected == []
        for i, question in enumerate(FAR):  # 12 far questions, 6 each: half the 10 one detector needs
            (a, b)[i % 2].lookup(question)
            a.sync()
            b.sync()
        alarms = len(a.policy.shifts_detected) + len(b.policy.shifts_detected)
        if pooled:
            assert alarms == 1
            assert a.policy.hold_remaining == b.policy.hold_remaining == a.store.shift_hold_left() == HOLD
        else:
            assert alarms == 0 and not a.policy.holding and not b.policy.holding


def test_shares_of_the_shift_test_are_read_while_fresh_and_dropped_when_stale(url, monkeypatch):
    """Each instance reads the shares the others published lately, not its own; an instance
    silent for an hour is dropped at the next publish; a row this version cannot read is left out."""
    first, second = Store(url), Store(url)
    try:
        first.publish_shift_counts([(3, 25, 75, 100, 300), (0, 0, 0, 300, 900)])
        assert first.peer_shift_counts(30.0) == []
        assert second.peer_shift_counts(30.0) == [[(3, 25, 75, 100, 300), (0, 0, 0, 300, 900)]]
        with first.engine.begin() as conn:
            set_meta(conn, SHIFT_COUNTS + "not-json", "{")
        assert second.peer_shift_counts(30.0) == [[(3, 25, 75, 100, 300), (0, 0, 0, 300, 900)]]
        now = time.time()
        monkeypatch.setattr(time, "time", lambda: now + 60)
        assert second.peer_shift_counts(30.0) == []  # stopped or idle for longer than asked
        monkeypatch.setattr(time, "time", lambda: now + 2 * SHIFT_COUNTS_KEPT_S)
        second.publish_shift_counts([(1, 25, 75, 100, 300), (0, 0, 0, 300, 900)])
        with first.engine.connect() as conn:
            names = conn.execute(select(MetaRow.name).where(MetaRow.name.startswith(SHIFT_COUNTS))).scalars().all()
        assert names == [SHIFT_COUNTS + second.writer]
    finally:
        first.close()
        second.close()
