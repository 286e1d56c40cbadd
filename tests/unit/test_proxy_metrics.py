"""The proxy's metrics across the workers of `memcache serve --workers N`: whichever worker
answers a scrape, it renders every worker's figures summed."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from memcache.adapters.proxy import Metrics  # noqa: E402
from memcache.types import CacheInfo, PolicyStatus  # noqa: E402

COUNTERS = {"lookups": 0, "strong_calls": 0, "spend_micro_usd": 0, "cheap_spend_micro_usd": 0, "cheap_calls": 0}


def value(text: str, name: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.startswith(f"{name} "))


def served(metrics: Metrics, outcome: str, seconds: float) -> None:
    metrics.count("requests")
    metrics.observe(CacheInfo(outcome, None, 0.0, None), seconds)


def test_every_worker_scrape_renders_the_sum_of_all_workers(tmp_path):
    first, second = Metrics(tmp_path), Metrics(tmp_path)
    for _ in range(3):
        served(first, "hit", 0.003)
    served(second, "miss", 0.2)
    served(second, "hit", 0.004)
    quiet = PolicyStatus(0.02, estimated_false_hit_rate=0.004, shifts_detected=0, shift_hold_remaining=0)
    worried = PolicyStatus(0.02, estimated_false_hit_rate=0.011, shifts_detected=1, shift_hold_remaining=40)
    first.publish(quiet, {**COUNTERS, "lookups": 3})
    for scrape in (
        second.render(worried, {**COUNTERS, "lookups": 2, "strong_calls": 1}),
        first.render(quiet, {**COUNTERS, "lookups": 3}),
    ):
        assert value(scrape, "memcache_requests_total") == "5" and value(scrape, "memcache_hits_total") == "4"
        assert value(scrape, "memcache_misses_total") == "1"
        assert value(scrape, "memcache_strong_calls_total") == "1"
        assert value(scrape, 'memcache_request_seconds_bucket{outcome="hit",le="0.005"}') == "4"
        assert value(scrape, 'memcache_request_seconds_count{outcome="miss"}') == "1"
        # the most worried worker's estimate and hold; shifts seen anywhere, added
        assert value(scrape, "memcache_false_hit_rate_estimate") == "0.011"
        assert value(scrape, "memcache_shift_hold_remaining") == "40"
        assert value(scrape, "memcache_shifts_detected_total") == "1"


def test_a_stopped_workers_last_figures_still_count_and_one_process_renders_its_own(tmp_path):
    stopped, running = Metrics(tmp_path), Metrics(tmp_path)
    served(stopped, "hit", 0.003)
    stopped.publish(PolicyStatus(0.02), COUNTERS)  # what a worker leaves when it stops
    del stopped
    served(running, "miss", 0.1)
    assert value(running.render(PolicyStatus(0.02), COUNTERS), "memcache_requests_total") == "2"
    alone = Metrics()
    served(alone, "miss", 0.1)
    assert value(alone.render(PolicyStatus(0.02), COUNTERS), "memcache_requests_total") == "1"
    assert not list(tmp_path.glob("*.tmp"))


def test_the_judges_calls_and_spend_are_rendered_and_taken_off_the_saving(tmp_path):
    counters = {**COUNTERS, "lookups": 10, "strong_calls": 4, "spend_micro_usd": 400, "judge_calls": 4,
                "judge_spend_micro_usd": 40, "merged_entries": 2}  # fmt: skip
    scrape = Metrics(tmp_path).render(PolicyStatus(0.02), counters)
    assert value(scrape, "memcache_judge_calls_total") == "4"
    assert value(scrape, "memcache_judge_spend_micro_usd_total") == "40"
    assert value(scrape, "memcache_merged_entries_total") == "2"  # the judge's other work: entries found the same
    assert value(scrape, "memcache_saving_micro_usd") == str(10 * 100 - 400 - 40)
