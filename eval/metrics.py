"""Summary figures of a replay, under the key names the JSON report promises."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memcache.eval.replay import QueryRecord


def summarize(records: Sequence[QueryRecord], *, max_false_hit_rate: float | None = None, claimed: float | None = None) -> dict:
    """Rates are shares in [0, 1]; latencies are milliseconds of `MemCache.lookup`."""
    n = len(records)
    hits = sum(r.outcome == "hit" for r in records)
    wrong = sum(r.outcome == "hit" and not r.correct for r in records)
    audits = sum(r.outcome == "audit" or r.audited for r in records)  # escalated, or served and checked
    misses = sum(r.outcome == "miss" for r in records)
    latencies = np.array([r.latency_ms for r in records]) if records else np.zeros(1)
    return {
        "queries": n,
        "hits": hits,
        "wrong_hits": wrong,
        "misses": misses,
        "audits": audits,
        "hit_rate": hits / n if n else 0.0,
        "false_hit_rate": wrong / hits if hits else 0.0,
        "error_rate": wrong / n if n else 0.0,
        "correct_hit_rate": (hits - wrong) / n if n else 0.0,
        "reusable_rate": sum(r.reusable for r in records) / n if n else 0.0,
        "strong_calls": sum(r.paid for r in records) / n if n else 0.0,  # misses + audits
        "lookup_p50_ms": float(np.percentile(latencies, 50)),
        "lookup_p95_ms": float(np.percentile(latencies, 95)),
        "lookup_p99_ms": float(np.percentile(latencies, 99)),
        "max_false_hit_rate": max_false_hit_rate,
        "claimed_false_hit_rate": claimed,
    }
