"""Summary figures of a replay, under the key names the JSON report promises."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memcache.eval.replay import QueryRecord

WARMUP_HITS = 100  # the running false-hit rate is judged after this many served hits
TENANT_KEYS = ("queries", "false_hit_rate", "correct_hit_rate", "first_hit_query", "max_running_false_hit_rate")


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


def cheap_path(records: Sequence[QueryRecord], cheap_cost: float) -> dict:
    """The cheap path's figures: `cheap_calls` (share of queries the cheap model was asked
    about), `cheap_answer_rate` (share answered by it), `false_answer_rate` (wrong answers
    served without the strong model over all such answers: hits and cheap answers),
    `max_running_false_answer_rate` (its highest running value from the `WARMUP_HITS`-th such
    answer on) and `cost` (a strong call 1, a cheap call `cheap_cost`, a hit 0, over the cost of
    sending every query to the strong model)."""
    n = len(records)
    answered = wrong = 0
    running = []
    for record in records:
        if record.served:
            answered += 1
            wrong += not record.correct
            if answered >= WARMUP_HITS:
                running.append(wrong / answered)
    calls = sum(r.cheap_called for r in records)
    spent = sum(r.paid for r in records) + cheap_cost * calls
    return {
        "cheap_calls": calls / n if n else 0.0,
        "cheap_answers": sum(r.outcome == "cheap" for r in records),
        "cheap_answer_rate": sum(r.outcome == "cheap" for r in records) / n if n else 0.0,
        "false_answer_rate": wrong / answered if answered else 0.0,
        "max_running_false_answer_rate": max(running) if running else None,
        "cost": spent / n if n else 0.0,
        "cheap_cost": cheap_cost,
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


def tenant_figures(records: Sequence[QueryRecord], bound: float) -> dict:
    """Each tenant's own figures (`--tenant-col`), and how many of them ended over the bound:
    the bound is over all served hits, and a tenant reads its own share."""
    tenants = {}
    for name in sorted({r.tenant for r in records}):
        mine = summarize([r for r in records if r.tenant == name], max_false_hit_rate=bound)
        tenants[name] = {key: mine[key] for key in TENANT_KEYS}
    over = sum(t["false_hit_rate"] > bound for t in tenants.values())
    return {"tenants": tenants, "tenants_over_bound": f"{over}/{len(tenants)}"}


def across_seeds(runs: Sequence[dict]) -> list[dict]:
    """One row per bound over its runs (seeds, and audit seeds where given): the spread of the
    realized false-hit rate, and how often it went over.

    Why: the bound is promised with high probability, not on every stream, and one seed's
    figures move by a few points with the shuffle alone (docs/EVAL.md); the spread over seeds
    is what to read.
    """
    rows = []
    for bound, accuracy in dict.fromkeys((run["max_false_hit_rate"], run.get("cheap_accuracy")) for run in runs):
        group = [run for run in runs if (run["max_false_hit_rate"], run.get("cheap_accuracy")) == (bound, accuracy)]
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
        if accuracy is not None:  # with the cheap path: everything served without the strong model
            answers = np.array([run["false_answer_rate"] for run in group])
            cost = np.array([run["cost"] for run in group])
            rows[-1].update(
                cheap_accuracy=accuracy,
                false_answer_rate_mean=float(answers.mean()),
                false_answer_rate_max=float(answers.max()),
                seeds_over_bound_answers=int((answers > bound).sum()) if bound is not None else None,
                cheap_answer_rate_mean=float(np.mean([run["cheap_answer_rate"] for run in group])),
                cost_mean=float(cost.mean()),
                cost_max=float(cost.max()),
            )
    return rows


def best_static(static: dict[float, list[tuple[int, int, int]]], bound: float) -> dict | None:
    """The static cut-off with the most correct hits whose mean false-hit rate over the streams
    met the bound: a threshold that knew the answers from the first query.

    `static` maps each cut-off to one (queries, hits, wrong hits) per stream."""
    best = None
    for threshold, rows in sorted(static.items()):
        rates = [wrong / hits if hits else 0.0 for _, hits, wrong in rows]
        correct = float(np.mean([(hits - wrong) / n for n, hits, wrong in rows]))
        if np.mean(rates) <= bound and (best is None or correct > best["correct_hit_rate_mean"]):
            over = sum(rate > bound for rate in rates)
            best = {
                "threshold": threshold,
                "correct_hit_rate_mean": correct,
                "false_hit_rate_mean": float(np.mean(rates)),
                "over_bound": f"{over}/{len(rows)}",
            }
    return best
