"""The controller: deciding each lookup, and learning from every answer that was paid for.

It asks the policy, keeps the per-process counters, turns paid answers into labels, schedules
the hindsight relabel, runs shadow audits (on worker threads or the caller's event loop),
persists traffic-shift holds, restores what a learning policy learned from the store at start-up
and then learns the labels other processes store, and flushes hit counters. Every background
thread or task it starts is waited for by `wait` (or `await_wait`) and released by `close`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import asdict, replace
from datetime import datetime

import numpy as np

from memcache import cheap, llm
from memcache.cheap_gate import GATE_FEATURES, CheapGate, gate_features
from memcache.errors import MemcacheError, StoreError
from memcache.hindsight import HindsightWindow
from memcache.judge import ExactJudge, Judge, which_same
from memcache.label_feed import LabelFeed
from memcache.memory import Memory
from memcache.merging import EntryMerger
from memcache.policy import FEATURE_NAMES, LearningPolicy, Policy, PolicyStatus
from memcache.store import utcnow
from memcache.types import CacheHit, CheapPathStatus, CheapVerdict, Label, LookupResult, Scope, Stats

NEIGHBOURS = 10  # in-scope keys the policy sees per lookup (its features are defined on ten)
AUDIT_WORKERS = 8  # threads for shadow audits' strong calls: a slow model cannot starve lookups
MAX_PENDING_AUDITS = 256  # past this many unfinished shadow audits, an audit makes its caller wait again
PEER_SHARE_FRESH_S = 30.0  # an instance whose share of the shift test is older than this has stopped or is idle
PUBLISH_ALONE_S = 5.0  # with no other instance seen, a share is published this often (with one, at every sync)
JUDGE_HINT_AT = 200  # labels, none of them agreeing, after which ExactJudge is said to be the likely cause
JUDGED_ENTRIES = 5  # nearest distinct entries a paid answer is compared with, to join one that says the same
HIT_FLUSH_AT = 256  # buffered hit counters written to the store, off the lookup's path, past this many entries
COUNTERS = (
    "lookups", "hits", "exact_hits", "misses", "audits", "write_backs", "rejected_write_backs", "strong_calls",
    "spend_micro_usd", "cheap_calls", "cheap_answers", "cheap_spend_micro_usd", "strong_tokens", "cheap_tokens",
    "unpriced_calls", "judge_calls", "judge_spend_micro_usd", "judge_tokens", "merged_entries",
)  # fmt: skip
CALL_COUNTERS = {  # model: its calls, spend and tokens
    "strong": ("strong_calls", "spend_micro_usd", "strong_tokens"),
    "cheap": ("cheap_calls", "cheap_spend_micro_usd", "cheap_tokens"),
    "judge": ("judge_calls", "judge_spend_micro_usd", "judge_tokens"),
}
log = logging.getLogger("memcache")


def _start_unless_running(current: threading.Thread | None, target: Callable[[], None], name: str) -> threading.Thread:
    """`current` while it still runs, else a new daemon thread on `target`: one job of a kind at a time."""
    if current is not None and current.is_alive():
        return current
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class Controller:
    """Decides per lookup and learns per paid answer, for one `MemCache`.

    Args:
        policy: the decision rule; a `LearningPolicy` also gets labels from the store at start-up,
            audit outcomes, hindsight labels and a persisted shift hold.
        memory: where candidates, answers and entry records come from.
        judge: whether a paid answer agrees with the nearest stored one (the label).
        hindsight_window: recent paid keys asked again of today's index (0: off).
        relabel_in_background: ask them on a thread (False: inline, for reproducible replays).
        shadow_audits: serve an audited would-be hit while the strong model checks it.
        cheap_gate: the cheap path's learner (None: no cheap path).
    """

    def __init__(
        self,
        policy: Policy,
        memory: Memory,
        judge: Judge,
        *,
        hindsight_window: int = 4000,
        relabel_in_background: bool = True,
        shadow_audits: bool = True,
        cheap_gate: CheapGate | None = None,
    ) -> None:
        self.policy = policy
        self.cheap_gate = cheap_gate
        self.learning = policy if isinstance(policy, LearningPolicy) else None
        if cheap_gate is not None:
            cheap_gate.count_lookups_with(lambda: self._counters["lookups"])
            if self.learning is not None:
                cheap_gate.count_hits_with(lambda: self.learning.served)
        self.memory = memory
        self.store = memory.store
        self.judge = judge
        counts_calls = getattr(judge, "count_calls_with", None)
        if callable(counts_calls):  # a judge that calls a model: its calls and spend are counted here too
            counts_calls(
                lambda response: self.record_call("judge", llm.cost_micro_usd(response), llm.usage_tokens(response))
            )
        self.shadow_audits = shadow_audits
        self.relabel_in_background = relabel_in_background
        self._hindsight = HindsightWindow(hindsight_window if self.learning is not None else 0)
        self.merger = EntryMerger(memory, judge)
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)  # this process's, since it started
        self._unflushed = dict.fromkeys(COUNTERS, 0)  # ... not yet added to the store's lifetime totals
        self._pending_hits: dict[int, tuple[int, datetime]] = {}
        self._flusher: threading.Thread | None = None
        self._relabeler: threading.Thread | None = None
        self._audits: set[Future] = set()  # shadow audits' strong calls still running (threads)
        self._audit_tasks: set[asyncio.Task] = set()  # ... and on an event loop (async `cached`)
        self._audit_pool: ThreadPoolExecutor | None = None
        self._policy_feed: LabelFeed | None = None  # set by `restore`
        self._cheap_feed: LabelFeed | None = None
        self._follower: threading.Thread | None = None
        self._hold: tuple[int, int] | None = None  # the store's shift-hold record this instance follows
        self._shift_share: tuple | None = None  # the shift test's share last published, and the lookups then
        self._shift_shared_at = -PUBLISH_ALONE_S  # when (time.monotonic)
        self._judged = self._agreed = 0  # this process's labels, and how many found the nearest answer the same

    # -- start-up ---------------------------------------------------------------------------

    def restore(self) -> None:
        """Hand a learning policy what the store kept: audit claims (before the labels, whose
        refit uses them), the newest labels it keeps, and a shift hold a restart interrupted;
        then follow the labels other instances write from there (`follow_labels`). The cheap
        path gets its labels and what earlier processes spent of its learning budget."""
        if self.cheap_gate is not None:
            highest = self.store.last_label_id(cheap=True)
            self.cheap_gate.load(self.store.iter_cheap_labels(limit=self.cheap_gate.max_labels, until=highest))
            self._cheap_feed = self._feed_from(highest, cheap=True)
            lifetime = self.store.lifetime_counts()
            self.cheap_gate.resume_budget(
                lifetime.get("lookups", 0), lifetime.get("cheap_calls", 0), lifetime.get("cheap_answers", 0)
            )
        if self.learning is None:
            return
        highest = self.store.last_label_id()
        self.learning.load_audit_claims(self.store.iter_audit_claims(limit=self.learning.claim_limit, until=highest))
        self.learning.load_scope_audits(self.store.audits_per_scope(until=highest))
        labels = list(self.store.iter_labels(limit=self.learning.label_limit, until=highest))
        if labels:
            self.learning.load_labels(labels)
        self._hold = self.store.shift_hold()
        self.learning.resume_hold(self.store.shift_hold_left(self._hold))
        self._policy_feed = self._feed_from(highest, cheap=False)

    def _feed_from(self, highest: int, *, cheap: bool) -> LabelFeed:
        """A feed of one label table that starts after what start-up loaded (up to `highest`)."""
        feed = LabelFeed(
            lambda after: self.store.label_ids_after(after, cheap=cheap),
            lambda ids: self.store.labels_by_id(ids, cheap=cheap),
            lambda after: self.store.label_ids_after(after, cheap=cheap, others_only=False),
        )
        feed.start(highest)
        return feed

    def follow_labels(self) -> None:
        """Learn the labels other instances on the store wrote since the last call (a sync
        calls it): on a thread, or inline where relabels run inline (replays)."""
        if self._policy_feed is None and self._cheap_feed is None:
            return
        if not self.relabel_in_background:
            self._follow()
            return
        with self._lock:
            self._follower = _start_unless_running(self._follower, self._follow, "memcache-labels")

    def _follow(self) -> None:
        try:
            if self._policy_feed is not None and self.learning is not None:
                self._learn_others([r for r in self._policy_feed.new_rows() if len(r[0]) == len(FEATURE_NAMES)])
                self._follow_hold()
                self._pool_shift_test()
            if self._cheap_feed is not None and self.cheap_gate is not None:
                for features, correct, claimed, _ in self._cheap_feed.new_rows():
                    if len(features) == len(GATE_FEATURES):  # another feature set: an older version's
                        self.cheap_gate.observe(features, correct, claimed)
        except StoreError as exc:  # the next sync reads them
            log.warning("labels of other instances not read yet: %s", exc)

    def _follow_hold(self) -> None:
        """A hold another instance started after its shift alarm holds this one too, and every
        instance's audits count toward it: they serve the same traffic, and learn each other's
        audit claims."""
        record = self.store.shift_hold()
        if record is None or (record == self._hold and not self.learning.holding):
            return
        left = self.store.shift_hold_left(record)
        if record != self._hold:
            self._hold = record
            self.learning.resume_hold(left)
            if left and self.learning.holding:
                log.warning("a traffic shift detected by another instance: escalating the next %d would-be hits", left)
        else:
            self.learning.shorten_hold(left)

    def _pool_shift_test(self) -> None:
        """Test for a traffic shift on the lookups of every instance on the store together.

        Each instance sees only its share of the traffic, so alone it would see a change after
        as many more lookups in all as there are instances. It publishes its share of one test
        (`CalibratedPolicy.shift_counts`) and runs the test on the shares the others published
        lately; an alarm starts the shared hold, as its own detector's does. A policy that tests
        for no shift (`shift_counts` is None) takes no part."""
        peers = self.store.peer_shift_counts(PEER_SHARE_FRESH_S)
        mine = self.learning.shift_counts(len(peers) + 1)
        if mine is None:
            return
        published, now = (mine, self._counters["lookups"]), time.monotonic()
        alone_lately = not peers and now - self._shift_shared_at < PUBLISH_ALONE_S
        if published != self._shift_share and not alone_lately:  # an idle instance writes nothing
            self.store.publish_shift_counts(mine)
            self._shift_share, self._shift_shared_at = published, now
        if peers and self.learning.pooled_shift([mine, *peers]):
            self._hold = self.store.start_shift_hold(self.learning.shift_hold_audits)

    def _learn_others(self, rows: list[tuple[list[float], bool, float | None, int | None]]) -> None:
        """Teach the policy labels other instances paid for, as their own are taught (`learn`):
        an audit's claim first, and the paid key joins the hindsight window, so its label is
        asked again of today's index like this instance's own."""
        try:
            keys = {key.key_id: key for key in self.store.keys_by_id([r[3] for r in rows if r[3] is not None])}
        except StoreError as exc:  # the labels are still learned, as they were taken
            log.warning("keys of other instances' labels not read: %s", exc)
            keys = {}
        due = False
        for features, correct, claimed, key_id in rows:
            key = keys.get(key_id)
            if claimed is not None:
                scope_key = None if key is None else key.scope_key
                self.learning.observe_audit(claimed, correct, elsewhere=True, scope_key=scope_key)
            self.learning.observe(features, correct, key=None if key is None else key_id)
            if key is not None and key.embedding is not None:
                due = self._hindsight.add(key_id, key.scope_key, key.embedding) or due
        if due:
            self._start_relabel()

    # -- deciding ---------------------------------------------------------------------------

    def decide(self, query: str, scope: Scope, vector: np.ndarray) -> LookupResult:
        """Ask the policy about the nearest in-scope entries; serve a hit if its answer still lives."""
        candidates = self.memory.candidates(scope.key, vector, NEIGHBOURS)
        if self.learning is not None:
            decision = self.learning.decide(
                candidates, self.memory.entry_stats, scope_size=self.memory.scope_size(scope.key), scope_key=scope.key
            )
        else:
            decision = self.policy.decide(candidates, self.memory.entry_stats)
        if (
            decision.shift_detected and self.learning is not None
        ):  # one store write per alarm: a restart resumes the hold
            self._hold = self.store.start_shift_hold(self.learning.shift_hold_audits)
        hit = None
        if decision.action == "hit":
            row = self.memory.answer(decision.entry_id, scope.key)
            if row is None:  # expired or deleted since it was indexed
                decision = replace(decision, action="miss")
            else:
                self.count_hit(decision.entry_id, exact=False)
                hit = CacheHit(
                    row.answer, decision.entry_id, decision.similarity, decision.confidence, payload=row.payload
                )
        with self._lock:
            self._add("lookups", int(hit is None))
            self._add("misses", int(decision.action == "miss"))
            self._add("audits", int(decision.action == "audit"))
        return LookupResult(hit, decision, scope, query, embedding=vector, candidates=tuple(candidates))

    def shadow_hit(self, result: LookupResult) -> CacheHit | None:
        """The stored answer an audit may serve while the strong model checks it, else None
        (see `MemCache.shadow_hit`)."""
        decision = result.decision
        if not self.shadow_audits or result.hit is not None or decision.action != "audit" or decision.held:
            return None
        if decision.entry_id is None or self.pending_audits >= MAX_PENDING_AUDITS:
            return None
        row = self.memory.answer(decision.entry_id, result.scope.key)
        if row is None:
            return None
        self.count_hit(decision.entry_id, exact=False, new_lookup=False)  # the lookup was counted as an audit
        return CacheHit(row.answer, decision.entry_id, decision.similarity, decision.confidence, payload=row.payload)

    # -- the cheap path -------------------------------------------------------------------------

    def cheap_pairs(self, result: LookupResult) -> list[cheap.MemoryPair] | None:
        """The stored pairs of the request's scope a cheap model should read for this lookup, or
        None where the cheap path is not taken: no cheap path, a hit or an audit (the strong
        model is asked anyway), nothing stored in scope, or the gate says asking does not pay."""
        gate, decision = self.cheap_gate, result.decision
        if gate is None or result.hit is not None or decision.action != "miss" or not decision.features:
            return None
        nearest = {}  # entry id: the candidate of its nearest key, nearest entry first
        for candidate in result.candidates:
            if candidate.entry_id not in nearest and len(nearest) < cheap.PAIRS:
                nearest[candidate.entry_id] = candidate
        if not nearest or not gate.wants_reply():
            return None
        questions = self.store.key_queries(c.key_id for c in nearest.values())
        pairs = []
        for entry_id, candidate in nearest.items():
            row = self.memory.answer(entry_id, result.scope.key)  # in scope, alive: checked again here
            if row is not None and candidate.key_id in questions:
                question = questions[candidate.key_id]
                pairs.append(cheap.MemoryPair(entry_id, question, row.answer, candidate.similarity))
        if not pairs:  # the entries went (deleted, expired) between the search and now: nothing asked
            gate.withdraw()
            return None
        return pairs

    def read_cheap(self, result: LookupResult, pairs: list[cheap.MemoryPair], text: object) -> CheapVerdict:
        """Serve, audit or escalate a cheap model's reply (`text`) to `pairs`."""
        gate = self.cheap_gate
        reply = cheap.parse_reply(text, pairs)
        if gate is None or reply is None:
            if gate is not None:
                gate.record_abstain()
            return CheapVerdict("escalate", None)
        features = gate_features(result.decision.features, result.decision.confidence, pairs, reply)
        action, confidence = gate.decide(features)
        if action != "escalate":
            self.count("cheap_answers")
        return CheapVerdict(action, reply.answer, confidence, features, pairs[reply.used].entry_id)

    def learn_cheap(self, verdict: CheapVerdict, query: str, answer: str) -> None:
        """The strong model answered a request the cheap model replied to: a cheap-path label,
        stored, then taught (an audit's also checks the confidence it was served with)."""
        if self.cheap_gate is None or verdict.answer is None or not verdict.features:
            return
        try:
            correct = bool(self.judge.same_answer(query, answer, verdict.answer))
        except MemcacheError as exc:  # the strong answer is stored already; the reply stays unlabeled
            log.warning("a cheap reply was not judged: %s", exc)
            return
        claimed = verdict.confidence if verdict.action == "audit" else None
        try:
            self.store.add_cheap_label(verdict.features, correct, claimed)
        except StoreError as exc:  # the answer is stored already; the label is learned, not kept
            log.warning("a cheap-path label was not stored: %s", exc)
        self.cheap_gate.observe(verdict.features, correct, claimed)

    def stats(self) -> Stats:
        """What `MemCache.stats` reports: the store's totals and lifetime counters, this process's
        counters, the policy's status and the cheap path's learner's."""
        entries, keys, labels = self.store.counts()
        cheap = self.cheap_gate.status() if self.cheap_gate is not None else CheapPathStatus()
        return Stats(entries=entries, keys=keys, labels=labels, **asdict(self.status()), **asdict(cheap), **self.counters(),
                     lifetime=self.store.lifetime_counts())  # fmt: skip

    def status(self) -> PolicyStatus:
        """The policy's bound, estimate, claim check and shift hold, as one record."""
        if self.learning is not None:
            return self.learning.status()
        return PolicyStatus(max_false_hit_rate=self.policy.max_false_hit_rate)

    # -- counters -----------------------------------------------------------------------------

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._add(name, amount)

    def _add(self, name: str, amount: int) -> None:  # hold the lock
        self._counters[name] += amount
        self._unflushed[name] += amount

    def record_call(self, path: str, spend_micro_usd: int, tokens: int = 0) -> None:
        """Count one call memcache made of the "strong", the "cheap" or the "judge" model, what
        LiteLLM priced it at and the provider's token count (a call with tokens and no price is
        unpriced)."""
        calls, spend, used = CALL_COUNTERS[path]
        with self._lock:
            self._add(calls, 1)
            self._add(spend, spend_micro_usd)
            self._add(used, tokens)
            self._add("unpriced_calls", int(tokens > 0 and not spend_micro_usd))
        if self.cheap_gate is not None and path != "judge":
            self.cheap_gate.observe_cost(path, spend_micro_usd)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def count_hit(self, entry_id: int, *, exact: bool, new_lookup: bool = True) -> None:
        """Count a served hit here, and buffer it for the entry's counters in the store."""
        with self._lock:
            self._add("lookups", int(new_lookup))
            self._add("hits", 1)
            self._add("exact_hits", int(exact))
            count, _ = self._pending_hits.get(entry_id, (0, None))
            self._pending_hits[entry_id] = (count + 1, utcnow())
            if len(self._pending_hits) >= HIT_FLUSH_AT:  # off the lookup's path: the write would
                # otherwise land in one unlucky hit's latency
                self._flusher = _start_unless_running(self._flusher, self.flush, "memcache-hit-counters")

    def flush(self) -> None:
        """Write buffered hit counters, and this process's counts since the last flush, to the store."""
        with self._lock:
            pending, self._pending_hits = self._pending_hits, {}
            counts, self._unflushed = self._unflushed, dict.fromkeys(COUNTERS, 0)
        try:
            self.store.record_usage(pending, counts)
        except Exception:  # kept for the next flush: a failed write must not lose what it counted
            with self._lock:
                for entry_id, (count, last) in pending.items():
                    newer, when = self._pending_hits.get(entry_id, (0, last))
                    self._pending_hits[entry_id] = (count + newer, max(last, when))
                for name, amount in counts.items():
                    self._unflushed[name] += amount
            raise

    # -- learning -----------------------------------------------------------------------------

    def label(self, result: LookupResult, answer: str) -> Label | None:
        """Turn a paid answer into a label: would the nearest entry (not served) have been right?"""
        decision = result.decision
        if decision.entry_id is None or not decision.features:
            return None
        reference = self.store.answer_of(decision.entry_id)
        if reference is None or reference.scope_key != result.scope.key:
            return None
        try:
            agreed = bool(self.judge.same_answer(result.query, answer, reference.answer))
        except MemcacheError as exc:  # the paid answer is still stored and returned, unlabeled
            log.warning("a paid answer was not judged, so it teaches nothing: %s", exc)
            return None
        claimed = decision.confidence if decision.action == "audit" else None
        return Label(tuple(decision.features), agreed, decision.entry_id, claimed)

    def same_entry(self, result: LookupResult, answer: str, label: Label | None) -> int | None:
        """The entry a paid answer joins as another wording of its question: the nearest in-scope
        entry whose answer the judge finds the same (the label's own, then the next nearest, up
        to `JUDGED_ENTRIES` in all), else None (a new entry, unless an equal answer is stored).
        Without a label (nothing near in scope, or a judge that failed) it judges nothing more.

        A model words each answer anew. An entry per wording would leave every entry with one
        key, and the hindsight labels, which ask whether the nearest entry is the one a query's
        answer was stored in, would say no paraphrase is ever right: the policy would serve none."""
        if label is None or label.correct:
            return None if label is None else label.entry_id
        nearest = list(dict.fromkeys(c.entry_id for c in result.candidates if c.entry_id != label.entry_id))
        others = []  # (entry id, its answer), nearest first
        for entry_id in nearest[: JUDGED_ENTRIES - 1]:
            stored = self.memory.answer(entry_id, result.scope.key)  # alive, in scope; usually cached
            if stored is not None:
                others.append((entry_id, stored.answer))
        try:  # one call of an LLMJudge for all of them: the caller is waiting
            chosen = which_same(self.judge, result.query, answer, [text for _, text in others])
        except MemcacheError as exc:  # the answer is stored as an entry of its own
            log.warning("a paid answer was not compared with the stored ones: %s", exc)
            return None
        return None if chosen is None else others[chosen][0]

    def learn(self, label: Label | None, key_id: int | None, scope_key: str, vector: np.ndarray) -> None:
        """Teach the policy a stored label, and remember the paid key for hindsight."""
        if label is not None:
            self._hint_at_the_judge(label.correct)
            if label.claimed_confidence is not None and self.learning is not None:
                self.learning.observe_audit(
                    label.claimed_confidence, label.correct
                )  # before the refit `observe` may run
            self.policy.observe(label.features, label.correct, key=key_id)  # a hindsight label may replace it later
        self.merger.count_paid()
        if key_id is not None and self._hindsight.add(key_id, scope_key, vector):
            self._start_relabel()

    def _hint_at_the_judge(self, agreed: bool) -> None:
        """Say once when `JUDGE_HINT_AT` paid answers all differed from the nearest stored one
        under `ExactJudge`: a model that words its answers freely never matches a stored text,
        and then no paraphrase is ever served, silently."""
        with self._lock:
            self._judged, self._agreed = self._judged + 1, self._agreed + int(agreed)
            hint = self._judged == JUDGE_HINT_AT and not self._agreed and isinstance(self.judge, ExactJudge)
        if hint:
            log.warning(
                "none of %d paid answers had the same text as the nearest stored answer: if the model words its "
                "answers freely, ExactJudge never finds two the same and no paraphrase will be served; pass a "
                "judge that reads them, e.g. judge=LLMJudge(model) (README: The judge)",
                JUDGE_HINT_AT,
            )

    def _start_relabel(self) -> None:
        if not self.relabel_in_background:
            self._relabel()
            return
        with self._lock:  # while one still asks, the next due point asks again with what came since
            self._relabeler = _start_unless_running(self._relabeler, self._relabel, "memcache-hindsight")

    def _relabel(self) -> None:
        """Ask the hindsight window again of today's index and hand the labels to the policy;
        entries its pairs show to say the same are merged first (`memcache.merging`)."""
        index = self.memory.index
        if index is None or self.learning is None:
            return

        def ask() -> list:
            return self._hindsight.examples(index.search, self.memory.entry_of, NEIGHBOURS, self.memory.centroids)

        examples = ask()
        merged = self.merger.merge_same(examples)
        if merged:  # labels as the merged entries give them
            self.count("merged_entries", merged)
            examples = ask()
        self.learning.set_hindsight(examples, dict(self.memory.entry_stats))

    # -- shadow audits ----------------------------------------------------------------------------

    @property
    def pending_audits(self) -> int:
        return len(self._audits) + len(self._audit_tasks)

    def audit_later(self, ask: Callable[[], str | None], write: Callable[[str], object], entry_id: int | None) -> None:
        """Run a shadow audit's strong call on an audit thread; its answer goes to `write`."""

        def run() -> None:
            try:
                text = ask()
                if isinstance(text, str) and text.strip():
                    write(text)
            except Exception as exc:  # noqa: BLE001 - the user already has an answer; a failed audit writes nothing
                log.warning("shadow audit of entry %s failed, nothing written back: %s", entry_id, exc)

        with self._lock:
            if self._audit_pool is None:
                self._audit_pool = ThreadPoolExecutor(max_workers=AUDIT_WORKERS, thread_name_prefix="memcache-audit")
            future = self._audit_pool.submit(run)
            self._audits.add(future)

        def done(finished: Future) -> None:
            with self._lock:
                self._audits.discard(finished)

        future.add_done_callback(done)

    def aaudit_later(
        self, ask: Callable[[], Awaitable[object]], write: Callable[[str], Awaitable[object]], entry_id: int | None
    ) -> None:
        """Like `audit_later`, for a coroutine strong model: a task on the caller's event loop."""

        async def run() -> None:
            try:
                text = await ask()
                if isinstance(text, str) and text.strip():
                    await write(text)
            except Exception as exc:  # noqa: BLE001 - as in audit_later
                log.warning("shadow audit of entry %s failed, nothing written back: %s", entry_id, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._audit_tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._audit_tasks.discard)

    # -- waiting and closing ----------------------------------------------------------------------

    def wait(self) -> None:
        """Block until background learning is done: shadow audits on worker threads, then the
        hindsight relabel they may have started, a hit-counter flush and a read of other
        processes' labels under way."""
        with self._lock:
            audits = list(self._audits)
        wait_for_futures(audits)
        for thread in (self._relabeler, self._flusher, self._follower):
            if thread is not None:
                thread.join()

    async def await_tasks(self) -> None:
        """Wait for shadow audits running on this event loop."""
        await asyncio.gather(*list(self._audit_tasks), return_exceptions=True)

    def close(self) -> None:
        """Wait for background work, flush hit counters, release the audit threads."""
        try:
            self.wait()
            self.flush()
        finally:
            if self._audit_pool is not None:
                self._audit_pool.shutdown(wait=False)
