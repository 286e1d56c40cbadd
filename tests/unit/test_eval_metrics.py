import pytest

from memcache.eval.metrics import across_seeds, best_static, summarize
from memcache.eval.replay import QueryRecord


def run(bound, seed, false_hit_rate, correct, strong):
    return {
        "max_false_hit_rate": bound,
        "seed": seed,
        "false_hit_rate": false_hit_rate,
        "correct_hit_rate": correct,
        "strong_calls": strong,
    }


def test_across_seeds_groups_by_bound_and_counts_the_seeds_over_it():
    runs = [
        run(0.02, 0, 0.015, 0.45, 0.60),
        run(0.02, 1, 0.021, 0.47, 0.58),
        run(0.02, 2, 0.012, 0.43, 0.62),
        run(0.05, 0, 0.03, 0.55, 0.49),
    ]
    tight, loose = across_seeds(runs)
    assert tight["max_false_hit_rate"] == 0.02 and tight["seeds"] == 3 and tight["seeds_over_bound"] == 1
    assert tight["false_hit_rate_mean"] == pytest.approx(0.016) and tight["false_hit_rate_max"] == 0.021
    assert tight["correct_hit_rate_mean"] == pytest.approx(0.45) and tight["correct_hit_rate_min"] == 0.43
    assert tight["strong_calls_mean"] == pytest.approx(0.60) and tight["strong_calls_max"] == 0.62
    assert loose["seeds"] == 1 and loose["seeds_over_bound"] == 0


def test_a_run_exactly_at_the_bound_is_not_over_it():
    assert across_seeds([run(0.02, 0, 0.02, 0.4, 0.6)])[0]["seeds_over_bound"] == 0


def test_summary_compares_wrong_hits_with_what_the_served_confidences_claimed():
    records = [
        QueryRecord("hit", True, True, 0.9, 0.99, 1.0),
        QueryRecord("hit", False, True, 0.9, 0.97, 1.0),
        QueryRecord("hit", True, True, 0.9, 0.99, 1.0, audited=True),
        QueryRecord("miss", None, False, 0.5, 0.2, 1.0),  # not served: claims nothing
    ]
    summary = summarize(records)
    assert summary["claimed_wrong_hits"] == pytest.approx(0.05)
    assert summary["claim_shortfall"] == pytest.approx(1 / 0.05)  # one wrong hit where 0.05 were claimed


def test_no_hits_no_claim_shortfall():
    assert summarize([QueryRecord("miss", None, False, 0.5, 0.0, 1.0)])["claim_shortfall"] is None


def hit(correct):
    return QueryRecord("hit", correct, True, 0.9, 0.99, 1.0)


def test_the_running_rate_is_judged_after_the_warm_up_and_the_first_hit_is_reported():
    from memcache.eval.metrics import WARMUP_HITS

    records = (
        [QueryRecord("miss", None, False, 0.5, 0.2, 1.0)] * 7 + [hit(False)] * 3 + [hit(True)] * (WARMUP_HITS + 50)
    )
    summary = summarize(records, max_false_hit_rate=0.02)
    assert summary["first_hit_query"] == 7
    assert summary["max_running_false_hit_rate"] == pytest.approx(3 / WARMUP_HITS)  # the worst from the 100th hit on
    few = summarize([hit(False)] * 5)
    assert few["max_running_false_hit_rate"] is None and few["first_hit_query"] == 0
    assert summarize([QueryRecord("miss", None, False, 0.5, 0.2, 1.0)])["first_hit_query"] is None


def test_across_seeds_counts_the_streams_whose_running_rate_crossed_the_bound():
    runs = [
        {**run(0.02, seed, 0.015, 0.45, 0.6), "max_running_false_hit_rate": worst}
        for seed, worst in enumerate((0.019, 0.031, None, 0.02))
    ]
    assert across_seeds(runs)[0]["seeds_crossed_after_warmup"] == 1


def test_the_best_static_cut_off_is_the_most_correct_hits_whose_mean_rate_meets_the_bound():
    """(queries, hits, wrong hits) per stream: 0.70 serves most but its mean rate is 3%; 0.80 meets
    the bound on average while one of its two streams ends over it."""
    curves = {
        0.70: [(100, 50, 1), (100, 50, 2)],
        0.80: [(100, 40, 0), (100, 40, 1)],
        0.90: [(100, 20, 0), (100, 20, 0)],
    }
    best = best_static(curves, 0.02)
    assert best["threshold"] == 0.80 and best["over_bound"] == "1/2"
    assert best["correct_hit_rate_mean"] == pytest.approx(0.395)
    assert best["false_hit_rate_mean"] == pytest.approx(0.0125)
    assert best_static({0.9: [(10, 10, 5)]}, 0.02) is None
