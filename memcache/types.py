"""Plain records passed between the rooms; no behaviour beyond small helpers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np

Outcome = Literal["hit", "miss", "audit"]
Path = Literal["memory", "cheap", "strong"]


@dataclass(frozen=True)
class Scope:
    """Everything that must match before two requests may share an answer.

    `key` is a hash of all fields; the index and store partition by it.
    """

    tenant: str
    model: str
    params_fingerprint: str
    system_fingerprint: str
    context_fingerprint: str
    key: str


@dataclass(frozen=True)
class Candidate:
    """One stored query key near the request, inside the request's scope.

    `similarity` is cosine similarity in [-1, 1]; higher is closer. `entry_similarity` is
    the request's cosine similarity to the centroid of all the entry's keys, and `entry_gap`
    its mean similarity to those keys minus theirs to one another (see `memcache.centroids`);
    both None for a one-key entry, whose centroid is this key.
    """

    key_id: int
    entry_id: int
    similarity: float
    entry_similarity: float | None = None
    entry_gap: float | None = None


@dataclass(frozen=True, slots=True)
class EntryStats:
    """What the policy knows of an entry: its answer checks so far (for per-entry reliability)."""

    entry_id: int
    n_keys: int = 1
    checks: int = 0
    failures: int = 0


@dataclass(frozen=True)
class Label:
    """A paid answer compared with the nearest entry: the policy's training example.

    `claimed_confidence` is set for audits: the confidence with which the entry was served.
    """

    features: tuple[float, ...]
    correct: bool
    entry_id: int
    claimed_confidence: float | None = None


@dataclass(frozen=True)
class HindsightExample:
    """A paid query asked again of today's index, itself left out.

    `candidates` are its in-scope neighbours now (its own key removed); the nearest entry
    would have been right when it is `entry_id`, the entry the paid answer was stored under.
    """

    key_id: int
    entry_id: int
    candidates: tuple[Candidate, ...]
    scope_key: str = ""


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one lookup.

    Attributes:
        action: "hit" serves the entry; "miss" escalates; "audit" escalates although
            the entry would have been served, to check it.
        entry_id: the best entry in scope, or None when the scope is empty.
        similarity: cosine similarity of the closest key of that entry (higher = closer).
        confidence: estimated probability in [0, 1] that the entry's answer is right.
        features: the numbers the confidence was computed from, kept so a paid answer
            can later be turned into a training label.
        held: an audit that must not serve the stored answer while it is checked (the policy
            is re-checking the bound after a traffic shift), even with shadow audits on.
        shift_detected: this lookup set off the policy's traffic-shift alarm (and its hold,
            which the caller persists so a restart resumes it).
    """

    action: Outcome
    entry_id: int | None
    similarity: float
    confidence: float
    features: tuple[float, ...] = ()
    held: bool = False
    shift_detected: bool = False


@dataclass(frozen=True)
class PolicyStatus:
    """Where a policy stands: what `stats()`, `memcache stats` and the proxy's `/metrics` report.

    `estimated_false_hit_rate` is the policy's upper estimate of the served false-hit rate at its
    current cut-off (None while it serves nothing); `target` the rate that cut-off was certified
    against (below the bound while it warms up); `claim_ratio` what its audits found wrong over
    what the served confidences claimed; `shifts_detected` the traffic changes it saw in this
    process and `shift_hold_remaining` the would-be hits it still escalates unserved after one.
    None where the policy does not learn.
    """

    max_false_hit_rate: float
    estimated_false_hit_rate: float | None = None
    target: float | None = None
    claim_ratio: float | None = None
    shifts_detected: int | None = None
    shift_hold_remaining: int | None = None


@dataclass(frozen=True)
class CacheEntry:
    """One stored answer and the metadata the store keeps for it."""

    id: int
    scope_key: str
    tenant: str
    answer: str
    source_model: str
    created_at: datetime
    last_hit_at: datetime | None
    hit_count: int
    verified: bool
    expires_at: datetime | None
    queries: tuple[str, ...] = ()


@dataclass(frozen=True)
class CacheHit:
    """A served answer and why it was served.

    `similarity` is cosine similarity (1.0 for an exact repeat); `confidence` is the
    policy's estimated probability that the answer is right for this query. `payload` is
    whatever opaque text was written back with the answer (adapters keep full responses there).
    """

    answer: str
    entry_id: int
    similarity: float
    confidence: float
    exact: bool = False
    payload: str | None = None


@dataclass(frozen=True)
class LookupResult:
    """The outcome of `MemCache.lookup`: a hit, or the decision that led to a miss/audit."""

    hit: CacheHit | None
    decision: Decision
    scope: Scope
    query: str
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)
    candidates: tuple[Candidate, ...] = field(default=(), repr=False, compare=False)  # in scope, nearest first


@dataclass(frozen=True)
class CheapVerdict:
    """What the controller made of a cheap model's reply.

    `action`: "serve" (the cheap answer is served), "audit" (served, and the strong model is
    asked too, to check it) or "escalate" (the strong model answers). `answer` is the cheap
    model's answer (None when it abstained or its reply did not parse); `confidence` the cheap
    path's estimated probability that it is right; `features` what that was computed from,
    kept so the strong model's answer can teach the cheap path (empty for an abstain);
    `entry_id` the stored entry the reply said it used.
    """

    action: Literal["serve", "audit", "escalate"]
    answer: str | None
    confidence: float = 0.0
    features: tuple[float, ...] = ()
    entry_id: int | None = None

    @property
    def served(self) -> bool:
        return self.action != "escalate"


@dataclass(frozen=True)
class CheapPathStatus:
    """Where the cheap path's learner stands (`CheapGate.status`): the gate's cut-off on its score
    (None while it serves no cheap answer), its upper estimate of the wrong answers served at that
    cut-off, the rate it certifies against now, and the labeled replies it has learned from."""

    cheap_threshold: float | None = None
    cheap_estimated_false_answer_rate: float | None = None
    cheap_target: float | None = None
    cheap_labels: int | None = None


@dataclass(frozen=True)
class Stats:
    """Counters since this process opened the cache, plus store totals.

    `audits` counts every audit; an audit served while it is checked (a shadow audit) is also
    one of the `hits`, an escalated one is neither a hit nor a miss. `strong_calls` counts the
    strong model's calls memcache made itself (`completion`, `cached`, their audits), and
    `spend_micro_usd` their cost as LiteLLM priced it (millionths of a dollar; streams and
    unpriced models add nothing). `cheap_calls`, `cheap_answers` (cheap replies served) and
    `cheap_spend_micro_usd` are the cheap path's (see `MemCache(cheap_model=...)`), and the
    `cheap_*` figures its learner's (None without a cheap path). `strong_tokens` and `cheap_tokens`
    are the providers' token counts; `judge_calls`, `judge_spend_micro_usd` and `judge_tokens` those
    of a judge that calls a model (`LLMJudge`); `merged_entries` the entries merged into another that
    says the same (`memcache.merging`); `unpriced_calls` the calls LiteLLM could not price
    (their spend is 0: count their tokens instead). `lifetime` holds the same counters summed over every process
    that used the store, this one's included. The policy's figures are
    those of `PolicyStatus` (`target`: the rate its cut-off is certified against now). `claim_ratio` is what the
    audits found wrong over what the policy predicted when serving them (see
    `CalibratedPolicy.claim_ratio`); None for policies without one. `shifts_detected` counts the
    traffic changes the policy saw in this process (see `memcache.shift`), and
    `shift_hold_remaining` the would-be hits it will still escalate unserved before serving
    again (0 when serving; a hold resumed after a restart counts); both None for policies that
    do not watch for changes.
    """

    entries: int
    keys: int
    lookups: int
    hits: int
    exact_hits: int
    misses: int
    audits: int
    write_backs: int
    rejected_write_backs: int
    labels: int
    max_false_hit_rate: float
    estimated_false_hit_rate: float | None
    target: float | None = None
    claim_ratio: float | None = None
    shifts_detected: int | None = None
    shift_hold_remaining: int | None = None
    strong_calls: int = 0
    spend_micro_usd: int = 0
    cheap_calls: int = 0
    cheap_answers: int = 0
    cheap_spend_micro_usd: int = 0
    strong_tokens: int = 0
    cheap_tokens: int = 0
    unpriced_calls: int = 0
    judge_calls: int = 0
    judge_spend_micro_usd: int = 0
    judge_tokens: int = 0
    merged_entries: int = 0
    cheap_threshold: float | None = None
    cheap_estimated_false_answer_rate: float | None = None
    cheap_target: float | None = None
    cheap_labels: int | None = None
    lifetime: Mapping[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def saving_micro_usd(self) -> int | None:
        """What sending every lookup to the strong model would have cost, less what the strong,
        cheap and judge calls did (see `saving_micro_usd`)."""
        return saving_micro_usd(self.lookups, self.strong_calls, self.spend_micro_usd, self.cheap_spend_micro_usd,
                                self.judge_spend_micro_usd)  # fmt: skip


def saving_micro_usd(
    lookups: int, strong_calls: int, strong_spend: int, cheap_spend: int, judge_spend: int = 0
) -> int | None:
    """Every lookup priced at the strong calls' mean price so far, less the strong, cheap and
    judge spend; None before a priced strong call (an unpriced model's calls add no spend)."""
    if not strong_calls or not strong_spend:
        return None
    return round(lookups * strong_spend / strong_calls) - strong_spend - cheap_spend - judge_spend


@dataclass(frozen=True)
class CacheInfo:
    """Attached to every response `MemCache.completion` returns (see `memcache.cache_info`).

    `outcome` is "hit" (served from memory), "miss" (strong model called) or "audit"
    (a would-be hit that was re-asked of the strong model and answered by it).
    `path` says who answered: "memory" (a stored answer), "cheap" (the cheap model, reading
    the nearest stored answers) or "strong" (the strong model).
    `audited` marks a hit that was served while the strong model checks it in the
    background (a shadow audit: see `MemCache(shadow_audits=...)`).
    `similarity` is cosine similarity of the nearest in-scope key (None if the scope was empty);
    `confidence` the policy's probability that the nearest entry is right.
    """

    outcome: Outcome
    similarity: float | None
    confidence: float
    entry_id: int | None
    exact: bool = False
    stored: bool = False
    audited: bool = False
    path: Path = "strong"
