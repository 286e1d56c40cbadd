"""A hold after a traffic shift survives a restart (real model, real SQLite and PostgreSQL):
a process restarted mid-hold must not resume serving on the certificate the shift made stale."""

from __future__ import annotations

from dataclasses import replace

import pytest

from memcache import CalibratedPolicy, MemCache, ShiftDetector

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
