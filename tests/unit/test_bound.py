"""The bound's mechanics on streams whose true error is known: the policy in a closed loop.

Each lookup draws a similarity; the nearest entry is right with a known probability. The policy
decides; a miss or an audit pays and teaches it the label, a hit is served and scored against
the truth, unseen by the policy (as `memcache eval` does on real data).
"""

from __future__ import annotations

import math

import numpy as np

from memcache.policy import CalibratedPolicy
from memcache.types import Candidate


def right_chance(similarity: float, centre: float = 0.75) -> float:
    return 1 / (1 + math.exp(-(similarity - centre) * 40))


def candidates(rng, similarity: float) -> list[Candidate]:
    margin = rng.uniform(0.02, 0.3)
    return [Candidate(1, 1, similarity), Candidate(2, 1, similarity - 0.01), Candidate(3, 2, similarity - margin)]


def run_stream(policy: CalibratedPolicy, seed: int, queries: int, served_centre: float = 0.75):
    """(hits, wrong hits, worst running rate after 100 hits); served hits are right with the
    chance `served_centre` gives, paid ones teach the policy with the usual 0.75."""
    rng = np.random.default_rng(seed)
    hits = wrong = 0
    worst = 0.0
    for _ in range(queries):
        s = rng.uniform(0.4, 1.0)
        decision = policy.decide(candidates(rng, s), {})
        if decision.action == "miss":
            policy.observe(decision.features, rng.random() < right_chance(s))
            continue
        right = rng.random() < right_chance(s, served_centre)
        hits += 1
        wrong += not right
        if hits >= 100:
            worst = max(worst, wrong / hits)
        if decision.action == "audit":  # served while checked: the audit's label teaches the policy
            policy.observe_audit(decision.confidence, right)
            policy.observe(decision.features, right)
    return hits, wrong, worst


def test_a_stream_whose_true_error_is_known_stays_under_the_bound():
    bound, streams = 0.02, 12
    results = [
        run_stream(CalibratedPolicy(bound, seed=seed, detect_shifts=False), seed, 1200) for seed in range(streams)
    ]
    rates = [w / h for h, w, _ in results if h]
    assert len(rates) >= streams - 2 and sum(h for h, _, _ in results) > 1000  # it serves
    assert np.mean(rates) <= bound
    assert sum(rate > bound for rate in rates) <= 1  # at most one stream in twelve ends over
    assert sum(worst > bound for _, _, worst in results) <= 2


def test_a_policy_too_confident_for_the_served_traffic_is_pulled_back_by_audits():
    """Paid answers say the neighbourhood is right from 0.75 up; served traffic is wrong more often
    (its curve sits at 0.80). Audits are the only sample of it: they must pull the policy back."""
    prior = CalibratedPolicy(0.02).claim_ratio  # what the claim check assumes before any audit
    audited_rates, blind_rates = [], []
    for seed in range(1, 5):
        audited = CalibratedPolicy(0.02, seed=seed, detect_shifts=False)
        hits, wrong, _ = run_stream(audited, seed, 3000, served_centre=0.80)
        blind = CalibratedPolicy(0.02, seed=seed, detect_shifts=False, min_audit_rate=0.0, max_audit_rate=0.0)
        blind_hits, blind_wrong, _ = run_stream(blind, seed, 3000, served_centre=0.80)
        assert audited.claim_ratio > prior  # the audits found more wrong hits than even the prior allowed
        audited_rates.append(wrong / hits)
        blind_rates.append(blind_wrong / blind_hits)
    assert np.mean(audited_rates) < 0.75 * np.mean(blind_rates)
