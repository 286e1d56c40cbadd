"""The replay protocol: a labeled stream through the real engine, with a simulated strong model.

Every query goes through `MemCache.lookup`. On a miss or an audit the simulated strong model
answers with the query's label (an "oos" query, or `b` of a non-duplicate pair, gets an answer
of its own; with `wordings`, in words of its own each time, compared by `MeaningJudge`) and that
answer goes through the normal verified `write_back`, which is also the only way the policy sees
a label. Hits are scored against the labels but never shown to the
policy: it learns only from answers the replay paid for. An audit serves the stored answer
(scored as a hit) while it is checked, as `MemCache.completion` does with `shadow_audits`
(the default); with `shadow_audits=False` the audited query gets the strong model's answer.

With a `SimulatedCheapModel` the cheap path runs too (docs/EVAL.md states the simulation): a
miss the controller sends to the cheap path gets the simulated reply through the real prompt
format, parser and gate; a served cheap answer is scored like a hit, and an escalated or
audited one is labeled by the strong model's answer through `write_back(..., cheap=...)`.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from memcache.cache import MemCache
from memcache.cheap import MemoryPair, reply_text
from memcache.cheap_gate import CheapGate
from memcache.embedding import Embedder
from memcache.errors import ConfigError
from memcache.eval.data import OOS, LabeledPair, LabeledQuery, meaning, right_answer, worded
from memcache.judge import ExactJudge, Judge
from memcache.policy import Policy

STREAM_TENANT = "replay"  # the scope of an intent stream's rows that name no tenant of their own


def tenant_of(query: LabeledQuery) -> str:
    return query.tenant or STREAM_TENANT


@dataclass(frozen=True)
class QueryRecord:
    """What happened to one replayed query.

    `outcome` is "hit", "miss", "audit" or "cheap" (a cheap model's answer was served).
    `correct` is None for queries that were not served; `reusable` says whether a right
    answer for this query was already stored before it arrived (the ceiling for hits).
    `audited` marks a served answer that was also paid for (a shadow audit); `cheap_called`
    a query the cheap model was asked about.
    """

    outcome: str
    correct: bool | None
    reusable: bool
    similarity: float | None
    confidence: float
    latency_ms: float
    audited: bool = False
    cheap_called: bool = False
    tenant: str = ""

    @property
    def paid(self) -> bool:
        """A strong-model call was made for this query (a miss, an audit, or an audited answer)."""
        return self.outcome in ("miss", "audit") or self.audited

    @property
    def served(self) -> bool:
        """Answered without waiting for the strong model: a hit or a cheap answer."""
        return self.outcome in ("hit", "cheap")


class SimulatedCheapModel:
    """The cheap model `memcache eval` replays (docs/EVAL.md): given the query and the pairs the
    controller passes, it names the right answer with probability `accuracy` when it is among
    them; otherwise (absent, or the reader failing) it abstains with probability `abstain`, and
    else names the most similar passed pair that is not the right one (a confident wrong answer)."""

    def __init__(self, accuracy: float = 0.9, abstain: float = 0.5, cost: float = 0.05, seed: int = 0) -> None:
        for name, value in (("accuracy", accuracy), ("abstain", abstain), ("cost", cost)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"the cheap model's {name} must be in [0, 1], got {value!r}")
        self.accuracy, self.abstain, self.cost = accuracy, abstain, cost
        self._rng = random.Random(seed)

    def reply(self, answer: str, pairs: Sequence[MemoryPair]) -> str:
        """The reply to a query whose right answer is `answer` (`right_answer`): an out-of-scope
        question's is among the pairs only where the same question was asked before."""
        right = next((i for i, p in enumerate(pairs) if meaning(p.answer) == answer), None)
        if right is not None and self._rng.random() < self.accuracy:
            return reply_text(right + 1, pairs[right].answer)
        wrong = next((i for i in range(len(pairs)) if i != right), None)
        if wrong is None or self._rng.random() < self.abstain:
            return reply_text(None)
        return reply_text(wrong + 1, pairs[wrong].answer)


class MemoEmbedder:
    """Remembers vectors by text, so sweeps over one stream embed each query once."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self._memo: dict[str, np.ndarray] = {}

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def prefill(self, texts: Sequence[str], progress: bool = False, batch: int = 256) -> None:
        todo = sorted({t for t in texts if t not in self._memo})
        chunks = range(0, len(todo), batch)
        if progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="embedding", unit="batch")
        encode = getattr(self.inner, "encode_batch", self.inner.embed)
        for start in chunks:
            part = todo[start : start + batch]
            for text, vector in zip(part, encode(part)):
                self._memo[text] = vector

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self._memo]
        if missing:
            for text, vector in zip(missing, self.inner.embed(missing)):
                self._memo[text] = vector
        return np.stack([self._memo[t] for t in texts])


class MeaningJudge:
    """The replay's judge where each answer is worded anew (`worded`): the same when they word
    the same answer, as a good judge of a real model's answers would say."""

    def same_answer(self, query: str, answer: str, reference: str) -> bool:
        return meaning(answer) == meaning(reference)


def _cache(
    policy: Policy, embedder: Embedder, directory: str, shadow_audits: bool, gate: CheapGate | None = None,
    judge: Judge | None = None,
) -> MemCache:  # fmt: skip
    return MemCache(
        f"sqlite:///{Path(directory) / 'replay.db'}",
        embedder=embedder,
        policy=policy,
        judge=ExactJudge() if judge is None else judge,
        relabel_in_background=False,  # the same stream and seed give the same report
        shadow_audits=shadow_audits,
        cheap_gate=gate,
    )


def _progress(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="q")


def _timed_lookup(cache: MemCache, text: str, tenant: str):
    """(lookup result, the answer served or None, milliseconds): a shadow audit serves too."""
    start = time.perf_counter()
    result = cache.lookup(text, model="replay", tenant=tenant)
    served = result.hit or cache.shadow_hit(result)
    return result, served, (time.perf_counter() - start) * 1000.0


def shuffled(
    queries: Sequence[LabeledQuery], seed: int, oos_from: int | None = None, oos_ramp: bool = False
) -> list[LabeledQuery]:
    """The replay order: a seeded shuffle; with `oos_from`, out-of-scope queries arrive only from that position on.

    Why `oos_from`: a stream whose traffic changes under the policy (out-of-scope questions
    start arriving after it has learned on in-scope ones) tests the bound on traffic unlike
    what it learned from; the first `oos_from` queries are in scope, then the remaining
    in-scope and all out-of-scope queries arrive shuffled together. With `oos_ramp` the change
    is gradual instead: the out-of-scope share rises linearly from none at `oos_from` to its
    highest at the end of the stream.
    """
    rng = random.Random(seed)
    stream = list(queries)
    rng.shuffle(stream)
    if oos_from is None:
        if oos_ramp:
            raise ConfigError("oos_ramp needs oos_from, the position where the out-of-scope share starts rising")
        return stream
    if oos_from < 0:
        raise ConfigError("oos_from is a position in the stream and must be >= 0")
    in_scope = [q for q in stream if q.label != OOS]
    out_of_scope = [q for q in stream if q.label == OOS]
    if oos_ramp:  # positions drawn with density rising linearly (sqrt of a uniform) for out-of-scope queries
        keyed = [(rng.random(), q) for q in in_scope[oos_from:]] + [(math.sqrt(rng.random()), q) for q in out_of_scope]
        keyed.sort(key=lambda pair: pair[0])
        return in_scope[:oos_from] + [q for _, q in keyed]
    tail = in_scope[oos_from:] + out_of_scope
    rng.shuffle(tail)
    return in_scope[:oos_from] + tail


def replay_intents(
    queries: Sequence[LabeledQuery],
    *,
    policy: Policy,
    embedder: Embedder,
    seed: int = 0,
    warm: Sequence[LabeledQuery] = (),
    progress: bool = False,
    on_query: Callable[[int, QueryRecord], None] | None = None,
    shadow_audits: bool = True,
    oos_from: int | None = None,
    oos_ramp: bool = False,
    limit: int | None = None,
    cheap_model: SimulatedCheapModel | None = None,
    wordings: bool = False,
    shuffle: bool = True,
) -> list[QueryRecord]:
    """Replay intent-labeled queries in a seeded shuffle (see `shuffled`; with `shuffle=False`,
    in the order given), from an empty (or warmed) cache; with `limit`, only the first `limit`
    queries (a short stream); with `cheap_model`, through the cheap path as well; with
    `wordings`, each paid answer is worded anew and judged by `MeaningJudge`, as a real model's
    answers are. Each query is looked up in its tenant's scope (`LabeledQuery.tenant`)."""
    stream = (shuffled(queries, seed, oos_from, oos_ramp) if shuffle else list(queries))[:limit]
    records = []
    gate = None
    if cheap_model is not None:
        gate = CheapGate(policy.max_false_hit_rate, cost_ratio=cheap_model.cost, seed=seed)
    with tempfile.TemporaryDirectory() as directory:
        cache = _cache(policy, embedder, directory, shadow_audits, gate, MeaningJudge() if wordings else None)
        seen: set[tuple[str, str]] = set()  # (tenant, answer) stored
        for query in warm:
            answer = right_answer(query)
            cache.write_back(query.text, answer, model="replay", tenant=tenant_of(query), paid=False)
            seen.add((query.tenant, answer))
        for i, query in enumerate(_progress(stream, progress, "replay")):
            result, served, ms = _timed_lookup(cache, query.text, tenant_of(query))
            right = right_answer(query)
            reusable = (query.tenant, right) in seen
            decision = result.decision
            similarity = decision.similarity if np.isfinite(decision.similarity) else None
            if served is not None:
                correct = meaning(served.answer) == right
                record = QueryRecord(
                    "hit", correct, reusable, similarity, served.confidence, ms, audited=result.hit is None,
                    tenant=query.tenant,
                )  # fmt: skip
            else:
                record = QueryRecord(
                    decision.action, None, reusable, similarity, decision.confidence, ms, tenant=query.tenant
                )
            verdict = None
            pairs = cache.cheap_pairs(result) if served is None and cheap_model is not None else None
            if pairs:
                verdict = cache.read_cheap_reply(result, pairs, cheap_model.reply(right, pairs))
                record = replace(record, cheap_called=True)
                if verdict.served:
                    correct = meaning(verdict.answer) == right
                    record = replace(record, outcome="cheap", correct=correct, confidence=verdict.confidence,
                                     audited=verdict.action == "audit")  # fmt: skip
            if result.hit is None and (verdict is None or verdict.action != "serve"):
                # a miss, an audit or a checked cheap answer: the strong model is paid, its answer written back
                cache.controller.record_call("strong", 0, 0)
                cache.write_back(result, worded(right, i) if wordings else right, cheap=verdict)
                seen.add((query.tenant, right))
            records.append(record)
            if on_query:
                on_query(i, record)
        cache.close()
    return records


def replay_pairs(
    pairs: Sequence[LabeledPair],
    *,
    policy: Policy,
    embedder: Embedder,
    seed: int = 0,
    progress: bool = False,
    shadow_audits: bool = True,
) -> list[QueryRecord]:
    """Each pair is an episode in a scope of its own: ask `a` (paid, written back), then `b`."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    records = []
    with tempfile.TemporaryDirectory() as directory:
        cache = _cache(policy, embedder, directory, shadow_audits)
        for i in _progress(order, progress, "replay"):
            pair, tenant = pairs[i], f"pair-{i}"
            for text, answer, reusable in (
                (pair.a, f"[pair {i}]", False),
                (pair.b, f"[pair {i}]" if pair.duplicate else f"[pair {i} b]", pair.duplicate),
            ):
                result, served, ms = _timed_lookup(cache, text, tenant)
                decision = result.decision
                similarity = decision.similarity if np.isfinite(decision.similarity) else None
                if served is not None:
                    records.append(
                        QueryRecord(
                            "hit",
                            served.answer == answer,
                            reusable,
                            similarity,
                            served.confidence,
                            ms,
                            audited=result.hit is None,
                        )
                    )
                else:
                    records.append(QueryRecord(decision.action, None, reusable, similarity, decision.confidence, ms))
                if result.hit is None:
                    cache.write_back(result, answer)
        cache.close()
    return records


def static_replay(
    queries: Sequence[LabeledQuery],
    vectors: np.ndarray,
    thresholds: Sequence[float],
    warm: Sequence[LabeledQuery] = (),
    warm_vectors: np.ndarray | None = None,
) -> dict[float, tuple[int, int]]:
    """{threshold: (hits, wrong hits)} of static cosine cut-offs on one ordered stream.

    The engine's semantics with `ThresholdPolicy`, computed directly from one similarity matrix
    instead of one engine replay per cut-off: the nearest stored query at or above the cut-off
    serves its answer, a miss stores the query; `warm` queries are stored first; each tenant
    (`LabeledQuery.tenant`) searches only its own. An out-of-scope
    question's answer fits only its exact repeat (`right_answer`). tests/integration/test_eval.py
    checks it against the engine.
    """
    keys = vectors if warm_vectors is None or not len(warm) else np.vstack([warm_vectors, vectors])
    similarity = vectors @ keys.T
    answers = [right_answer(q) for q in warm] + [right_answer(q) for q in queries]
    first = len(warm)
    out = {}
    for threshold in thresholds:
        stored: dict[str, list[int]] = {}  # each tenant's own scope
        for j, query in enumerate(warm):
            stored.setdefault(query.tenant, []).append(j)
        hits = wrong = 0
        for i, query in enumerate(queries):
            scope = stored.setdefault(query.tenant, [])
            if scope:
                j = scope[int(np.argmax(similarity[i, scope]))]
                if similarity[i, j] >= threshold - 1e-9:
                    hits += 1
                    wrong += answers[j] != answers[first + i]
                    continue
            scope.append(first + i)
        out[threshold] = (hits, wrong)
    return out
