"""The cheap path's pure logic: the reply format, the gate's certification and budget, and the
simulated cheap model `memcache eval` replays."""

from __future__ import annotations

import random

import pytest

from memcache import CalibratedPolicy, certify
from memcache.cheap import MemoryPair, cheap_messages, parse_reply, reply_text
from memcache.cheap_gate import GATE_FEATURES, CheapGate, gate_features
from memcache.errors import ConfigError
from memcache.eval.replay import SimulatedCheapModel

PAIRS = [
    MemoryPair(7, "How do I reset my password?", "[answer for reset]", 0.91),
    MemoryPair(3, "How do I close my account?", "[answer for close]", 0.62),
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"memory": 1, "answer": "Use the reset link."}', (0, "Use the reset link.")),
        ('```json\n{"memory": 2, "answer": "x"}\n```', (1, "x")),
        ('Sure! {"memory": "2", "answer": " y "} hope that helps', (1, "y")),
        ('{"memory": null}', None),
        ('{"memory": 3, "answer": "out of range"}', None),
        ('{"memory": 0, "answer": "out of range"}', None),
        ('{"memory": true, "answer": "a bool is not a number"}', None),
        ('{"memory": 1, "answer": "   "}', None),
        ('{"memory": 1}', None),
        ("[1, 2]", None),
        ("I would say 42.", None),
        ('{"memory": 1, "answer": "unterminated', None),
        (None, None),
    ],
)
def test_replies_that_do_not_follow_the_format_are_abstains(text, expected):
    reply = parse_reply(text, PAIRS)
    assert (reply if reply is None else (reply.used, reply.answer)) == expected


def test_the_prompt_numbers_the_pairs_and_keeps_the_callers_messages():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "reset password?"}]
    prompt = cheap_messages(messages, PAIRS)
    assert prompt[1:] == messages and prompt[0]["role"] == "system"
    assert '[1] Request: "How do I reset my password?"' in prompt[0]["content"]
    assert '[2] Request: "How do I close my account?"' in prompt[0]["content"]
    assert parse_reply(reply_text(2, "[answer for close]"), PAIRS).used == 1


def test_features_say_which_pair_the_reply_used():
    hit = (0.91, 0.29, 1.0, 1.0, 0.0, 0.5, 0.62, 0.91, 0.29, -0.05)
    other = gate_features(hit, 0.9, PAIRS, parse_reply('{"memory": 2, "answer": "x"}', PAIRS))
    nearest = gate_features(hit, 0.9, PAIRS, parse_reply('{"memory": 1, "answer": "x"}', PAIRS))
    assert len(other) == len(nearest) == len(GATE_FEATURES)
    assert other[4:6] == (0.0, pytest.approx(2.1972, abs=1e-4))  # the log-odds of 0.9, where another pair was used
    assert nearest[4:6] == (pytest.approx(2.1972, abs=1e-4), 0.0)
    assert other[6:] == (0.0, 1.0, 0.62, pytest.approx(0.62 - 0.91))  # not the nearest: the second pair
    assert nearest[6:] == (1.0, 0.0, 0.91, pytest.approx(0.29))


def _reply(s: float) -> list[float]:
    """The features of a reply that names the nearest pair, at similarity `s`."""
    return [s, 0.1, 1.0, -0.1, 0.0, 0.0, 1.0, 0.0, s, 0.1]


def _labels(n: int, noise: float, rng: random.Random):
    """Replies whose pair is close are right, far are wrong; `noise` of them flipped."""
    rows = []
    for _ in range(n):
        s = rng.random()
        correct = (s > 0.5) != (rng.random() < noise)
        rows.append((_reply(s), correct, None))
    return rows


def test_the_gate_serves_only_what_its_labels_certify():
    rng = random.Random(0)
    clean, noisy = CheapGate(0.02, seed=0), CheapGate(0.02, seed=0)
    clean.load(_labels(1000, 0.0, rng))
    noisy.load(_labels(1000, 0.15, rng))  # 15% of replies wrong wherever they fall: nothing is safe
    assert clean.threshold is not None and clean.bound <= 0.02
    assert clean.decide(_reply(0.95))[0] in ("serve", "audit")
    assert clean.decide(_reply(0.05))[0] == "escalate"
    assert noisy.threshold is None
    assert noisy.decide(_reply(0.95))[0] == "escalate"
    with pytest.raises(ConfigError):  # another feature set: refused, and nothing is counted
        clean.decide(_reply(0.95)[:-1])


def test_hits_served_count_toward_the_gates_warm_up():
    gate = CheapGate(0.02, warmup_hits=300, warmup_share=0.75, seed=0)
    assert gate.target == pytest.approx(0.015)  # nothing served yet: three quarters of the bound
    hits = 0
    gate.count_hits_with(lambda: hits)
    hits = 150
    assert gate.target == pytest.approx(0.0175)
    hits = 1000
    assert gate.target == pytest.approx(0.02)  # beside a thousand hits, a cheap path starts at the whole bound


def test_labels_of_an_older_feature_set_are_not_loaded():
    rng = random.Random(1)
    gate = CheapGate(0.02, seed=0)
    current = _labels(50, 0.0, rng)
    older = [(features[:7] + features[8:], correct, claimed) for features, correct, claimed in current]  # no rank
    gate.load(older + current)
    assert gate.labels == 50


def test_a_cheap_model_that_never_pays_is_asked_only_within_the_learning_budget():
    gate = CheapGate(0.02, cost_ratio=0.05, learning_budget=0.02, learn_replies=10, seed=0)
    lookups = 0
    gate.count_lookups_with(lambda: lookups)
    asked = 0
    for i in range(4000):  # memory serves every other lookup; each other is a miss whose reply abstains
        lookups += 1
        if i % 2 and gate.wants_reply():
            asked += 1
            gate.record_abstain()
    # unserved replies may cost 2% of every lookup sent to the strong model: 0.02 / 0.05 = 0.4 a lookup
    assert asked == 0.4 * 4000  # 1,600 replies at 0.05: exactly 2% of 4,000 lookups
    assert asked * 0.05 <= 0.02 * 4000  # what the path added: within 2% of sending every lookup to the strong model


def test_replies_still_in_flight_count_against_the_learning_budget():
    gate = CheapGate(0.02, cost_ratio=0.05, learning_budget=0.02, learn_replies=0, seed=0)
    gate.count_lookups_with(lambda: 100)  # room for 2% x 100 / 0.05 = 40 unserved replies
    asked = sum(gate.wants_reply() for _ in range(60))  # 60 misses asked at once, before any reply is read
    assert asked == 40
    for _ in range(asked):
        gate.record_abstain()  # the replies, read: none served
    assert not gate.wants_reply()


def test_the_learning_budget_resumes_what_earlier_processes_spent():
    gate = CheapGate(0.02, cost_ratio=0.05, learning_budget=0.02, learn_replies=0, seed=0)
    gate.count_lookups_with(lambda: 1)  # a new process, on its first lookup
    assert not gate.wants_reply()  # 0.05 > 2% of one lookup
    gate.resume_budget(lookups=500, replies=0, served=0)  # a store that saw 500 lookups and no reply
    assert sum(gate.wants_reply() for _ in range(300)) == 200  # 2% x 501 lookups / 0.05
    spent = CheapGate(0.02, cost_ratio=0.05, learning_budget=0.02, learn_replies=0, seed=0)
    spent.count_lookups_with(lambda: 1)
    spent.resume_budget(lookups=500, replies=260, served=60)  # ... whose budget earlier processes spent
    assert not spent.wants_reply()


def test_the_free_first_replies_are_the_stores_not_each_processes():
    gate = CheapGate(0.02, cost_ratio=0.05, learning_budget=0.02, learn_replies=100, seed=0)
    gate.count_lookups_with(lambda: 1)
    gate.resume_budget(lookups=10, replies=98, served=0)  # earlier processes asked 98 of them
    assert sum(gate.wants_reply() for _ in range(10)) == 2


def test_a_reply_withdrawn_before_it_is_asked_frees_its_budget():
    gate = CheapGate(0.02, cost_ratio=0.05, learning_budget=0.02, learn_replies=0, seed=0)
    gate.count_lookups_with(lambda: 100)  # room for 40
    assert sum(gate.wants_reply() for _ in range(50)) == 40
    gate.withdraw()  # one of them had no pair left to pass: never asked
    assert gate.wants_reply() and not gate.wants_reply()


def test_a_served_reply_frees_the_budget_it_was_asked_under():
    gate = CheapGate(0.02, cost_ratio=0.6, learning_budget=0.02, learn_replies=0, seed=0)
    gate.count_lookups_with(lambda: 100)  # room for 2% x 100 / 0.6: 3 unserved replies
    gate.load(_labels(1000, 0.0, random.Random(2)))
    assert gate.wants_reply()  # a restored cut-off is asked until its replies say
    assert gate.decide(_reply(0.05))[0] == "escalate"  # not served: asking does not pay; 1 unserved
    assert sum(gate.wants_reply() for _ in range(5)) == 2  # 3 unserved, 2 of them in flight
    assert gate.decide(_reply(0.95))[0] in ("serve", "audit")  # one served (half served does not pay at 0.6)
    assert gate.wants_reply() and not gate.wants_reply()


def test_a_cut_off_restored_from_stored_labels_is_asked_until_its_replies_say_it_does_not_pay():
    gate = CheapGate(0.02, cost_ratio=0.05, learn_replies=0, seed=0)
    gate.count_lookups_with(lambda: 1)  # a restart: one lookup, no budget to speak of
    gate.load(_labels(1000, 0.0, random.Random(2)))
    assert gate.threshold is not None and gate.wants_reply()
    assert gate.decide([0.0] * len(GATE_FEATURES))[0] == "escalate"  # a reply it does not trust
    assert not gate.wants_reply()  # none of its recent replies served: asking does not pay


def test_settings_are_checked():
    with pytest.raises(ConfigError):
        CheapGate(0.0)
    with pytest.raises(ConfigError):
        CheapGate(0.02, learning_budget=2.0)
    with pytest.raises(ConfigError):
        SimulatedCheapModel(accuracy=1.5)


def test_the_simulated_cheap_model_follows_its_stated_rule():
    pairs = [
        MemoryPair(1, "q1", "[answer for a]", 0.9),
        MemoryPair(2, "q2", "[answer for b]", 0.8),
        MemoryPair(3, "q3", "[answer for c]", 0.7),
    ]
    always = SimulatedCheapModel(accuracy=1.0, abstain=0.0)
    assert parse_reply(always.reply("[answer for b]", pairs), pairs).used == 1  # the right one, when passed
    assert parse_reply(always.reply("[answer for z]", pairs), pairs).used == 0  # absent: the most similar other pair
    never = SimulatedCheapModel(accuracy=0.0, abstain=0.0)
    assert parse_reply(never.reply("[answer for a]", pairs), pairs).used == 1  # failing: the most similar wrong pair
    assert parse_reply(SimulatedCheapModel(accuracy=0.0, abstain=1.0).reply("[answer for a]", pairs), pairs) is None
    assert parse_reply(always.reply("[oos answer: q9]", pairs), pairs).used == 0  # out of scope: asked first
    half = SimulatedCheapModel(accuracy=0.5, abstain=0.0, seed=1)
    right = sum(parse_reply(half.reply("[answer for c]", pairs), pairs).used == 2 for _ in range(2000))
    assert 900 < right < 1100


@pytest.mark.parametrize("audits, served", [(1, 4), (3, 10), (0, 0)])
def test_a_restart_resumes_the_warm_up_where_the_hit_policy_would(audits, served):
    """Stored audits say how many answers were served at least (audits / max_audit_rate, rounded
    up): the gate and the hit policy resume their warm-ups from the same count."""
    assert certify.served_at_least(audits, 0.3) == served
    gate, policy = CheapGate(max_audit_rate=0.3), CalibratedPolicy(0.02, max_audit_rate=0.3)
    features = [0.0] * len(GATE_FEATURES)
    gate.load([(features, True, 0.99)] * audits)
    policy.load_audit_claims([(0.99, True)] * audits)
    expected = certify.warmup_target(0.02, served, 300, 0.75)
    assert gate.target == pytest.approx(expected) and policy.target == pytest.approx(expected)
