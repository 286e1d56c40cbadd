"""Summary figures of a replay, under the key names the JSON report promises."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memcache.eval.replay import QueryRecord

WARMUP_HITS = 100  # the running false-hit rate is judged after this many served hits


def running_false_hit_rates(records: Sequence[QueryRecord]) -> list[tuple[int, float, float]]:
    """(query index, served false-hit rate so far, claimed rate so far) at every served hit.

    The claimed rate is the mean of 1 - confidence over the hits so far: what the served
    confidences promised, beside what happened."""
    out, hits, wrong, claimed = [], 0, 0, 0.0
    for i, record in enumerate(records):
        if record.outcome == "hit":
            hits += 1
            wrong += not record.correct
            claimed += 1.0 - record.confidence
            out.append((i, wrong / hits, claimed / hits))
    return out


def hit_rates(queries: int, hits: int, wrong: int) -> dict:
    """The shares every report gives, from its counts (0.0 where a count is zero)."""
    return {
        "hit_rate": hits / queries if queries else 0.0,
        "false_hit_rate": wrong / hits if hits else 0.0,
        "error_rate": wrong / queries if queries else 0.0,
        "correct_hit_rate": (hits - wrong) / queries if queries else 0.0,
    }


def summarize(
    records: Sequence[QueryRecord], *, max_false_hit_rate: float | None = None, claimed: float | None = None
) -> dict:
    """Rates are shares in [0, 1]; latencies are milliseconds of `MemCache.lookup`.

    `max_running_false_hit_rate` is the highest served false-hit rate so far, taken at every hit
    from the `WARMUP_HITS`-th on (None before that many hits): what a user watching the stream
    saw at its worst. `first_hit_query` is the index of the first query served from memory.

    `claimed_wrong_hits` is what the served confidences predicted (the sum of 1 - confidence
    over hits) and `claim_shortfall` is wrong hits over it: how honest the confidence that
    every hit carries was. The calibrated policy estimates that factor from its audits
    (`CalibratedPolicy.claim_ratio`); docs/EVAL.md compares the two.
    """
    n = len(records)
    hits = sum(r.outcome == "hit" for r in records)
    wrong = sum(r.outcome == "hit" and not r.correct for r in records)
    claimed_wrong = float(sum(1.0 - r.confidence for r in records if r.outcome == "hit"))
    audits = sum(r.outcome == "audit" or r.audited for r in records)  # escalated, or served and checked
    misses = sum(r.outcome == "miss" for r in records)
    latencies = np.array([r.latency_ms for r in records]) if records else np.zeros(1)
    running = running_false_hit_rates(records)
    after_warmup = [rate for _, rate, _ in running[WARMUP_HITS - 1 :]]
    return {
        "queries": n,
        "hits": hits,
        "wrong_hits": wrong,
        "misses": misses,
        "audits": audits,
        **hit_rates(n, hits, wrong),
        "reusable_rate": sum(r.reusable for r in records) / n if n else 0.0,
        "strong_calls": sum(r.paid for r in records) / n if n else 0.0,  # misses + audits
        "lookup_p50_ms": float(np.percentile(latencies, 50)),
        "lookup_p95_ms": float(np.percentile(latencies, 95)),
        "lookup_p99_ms": float(np.percentile(latencies, 99)),
        "max_false_hit_rate": max_false_hit_rate,
        "claimed_false_hit_rate": claimed,
        "claimed_wrong_hits": claimed_wrong,
        "claim_shortfall": wrong / claimed_wrong if claimed_wrong > 0 else None,
        "max_running_false_hit_rate": max(after_warmup) if after_warmup else None,
        "first_hit_query": running[0][0] if running else None,
    }


def across_seeds(runs: Sequence[dict]) -> list[dict]:
    """One row per bound over its runs (seeds, and audit seeds where given): the spread of the
    realized false-hit rate, and how often it went over.

    Why: the bound is promised with high probability, not on every stream, and one seed's
    figures move by a few points with the shuffle alone (docs/EVAL.md); the spread over seeds
    is what to read.
    """
    rows = []
    for bound in dict.fromkeys(run["max_false_hit_rate"] for run in runs):
        group = [run for run in runs if run["max_false_hit_rate"] == bound]
        false_hits = np.array([run["false_hit_rate"] for run in group])
        worst = [run.get("max_running_false_hit_rate") for run in group]
        correct = np.array([run["correct_hit_rate"] for run in group])
        strong = np.array([run["strong_calls"] for run in group])
        rows.append(
            {
                "max_false_hit_rate": bound,
                "seeds": len(group),
                "false_hit_rate_mean": float(false_hits.mean()),
                "false_hit_rate_max": float(false_hits.max()),
                "seeds_over_bound": int((false_hits > bound).sum()) if bound is not None else None,
                # streams whose running rate went over the bound after the warm-up, at any point
                "seeds_crossed_after_warmup": None
                if bound is None
                else sum(w is not None and w > bound for w in worst),
                "correct_hit_rate_mean": float(correct.mean()),
                "correct_hit_rate_min": float(correct.min()),
                "strong_calls_mean": float(strong.mean()),
                "strong_calls_max": float(strong.max()),
            }
        )
    return rows
