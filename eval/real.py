"""`memcache eval --strong-model M [--cheap-model C]`: the replay with real models, for users with keys.

Every query goes through `MemCache.completion` as an application would send it: memory, the
cheap model and the strong model, through LiteLLM, with real audits, judged by `--judge-model`
(an `LLMJudge`; without one, answers must match after normalization). A served answer counts
right when the entry it came from (the hit's entry, or the pair the cheap model said it used)
was first written for a query of the same label; out-of-scope queries are never right. Cost
counts calls as the simulated replay does (a strong call 1, a cheap call `--cheap-cost`);
`memcache stats` on a real store has the dollars.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from memcache.cache import MemCache
from memcache.calls import cache_info
from memcache.embedding import Embedder
from memcache.eval.data import LabeledQuery, right_answer
from memcache.eval.replay import QueryRecord, shuffled
from memcache.judge import ExactJudge, LLMJudge
from memcache.policy import Policy


def replay_real(
    queries: Sequence[LabeledQuery],
    *,
    policy: Policy,
    embedder: Embedder,
    strong_model: str,
    cheap_model: str | None = None,
    judge_model: str | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> list[QueryRecord]:
    """Replay the shuffle's first `limit` queries through real models; `options` are the LiteLLM
    arguments of every call (api_base, api_key, ...)."""
    options = dict(options or {})
    judge = LLMJudge(judge_model, **options) if judge_model else ExactJudge()
    records: list[QueryRecord] = []
    answer_of_entry: dict[int, str] = {}  # the right answer (`right_answer`) of the query that made each entry
    seen: set[str] = set()
    with tempfile.TemporaryDirectory() as directory:
        cache = MemCache(f"sqlite:///{Path(directory) / 'real.db'}", embedder=embedder, policy=policy, judge=judge,
                         strong_model=strong_model, cheap_model=cheap_model, cheap_options=options,
                         relabel_in_background=False)  # fmt: skip
        with cache:
            for query in shuffled(queries, seed)[:limit]:
                messages = [{"role": "user", "content": query.text}]
                asked_cheap = cache.counters()["cheap_calls"]
                start = time.perf_counter()
                info = cache_info(cache.completion(messages=messages, **options))
                ms = (time.perf_counter() - start) * 1000.0
                cache.wait_for_learning()  # an audit's answer is stored before the next query
                served = info.outcome == "hit" or info.path == "cheap"
                correct = None
                right = right_answer(query)
                if served:
                    correct = answer_of_entry.get(info.entry_id) == right
                outcome = "cheap" if info.path == "cheap" else info.outcome
                records.append(
                    QueryRecord(outcome, correct, right in seen, info.similarity,
                                info.confidence, ms, audited=info.audited,
                                cheap_called=cache.counters()["cheap_calls"] > asked_cheap)
                )  # fmt: skip
                entry = cache.entry_of(messages, model=strong_model, **options)
                if entry is not None:
                    answer_of_entry.setdefault(entry, right)
                    seen.add(right)
    return records
