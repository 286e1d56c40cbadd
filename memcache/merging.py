"""Entries that say the same, made one: what the judge finds when the hindsight labels look.

A paid answer joins the nearest entries the judge finds to say the same (`Controller.same_entry`),
but one whose meaning has no entry among those nearest, or none yet, starts an entry of its own;
a model that words each answer anew then leaves two entries of one meaning, and they stay.
Each splits the other's support, and the hindsight labels, which ask whether a paid query's
nearest entry is the one its answer was stored in, call every paraphrase that lands on the other
entry wrong, though its answer was right. A young memory suffers most: duplicates made among
its first answers kept the policy from certifying for hundreds of queries (docs/EVAL.md).

So when the labels are asked again, the entries near a paid key that are not its own are judged
against its entry: its answer against theirs, nearest first, several in one call of a model
judge, a few calls per pass, and a pair found different is never judged again. An entry found
to say the same is merged in the store (`Memory.merge`), the one with more keys kept. Only keys
of one scope are ever compared, so a merge never crosses tenants, models or conversations.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from memcache.errors import MemcacheError
from memcache.judge import Judge, which_same
from memcache.memory import Memory
from memcache.types import HindsightExample

CALLS_PER_PASS = 32  # judge calls per pass of the hindsight labels: a model judge's calls stay a share of paid answers
CALLS_PER_PAID_ANSWER = 0.25  # at most this many judge calls per paid answer, over the process's life
REFERENCES_PER_CALL = 4  # other entries one entry is compared with in one call, nearest first
KEPT_VERDICTS = 100_000  # pairs found different, remembered so none is judged twice
log = logging.getLogger("memcache")


@dataclass(frozen=True)
class Comparison:
    """One entry's answer against the unjudged entries nearest its paid keys, nearest first:
    one call of a judge that compares several at once (`memcache.judge.which_same`)."""

    scope_key: str
    entry_id: int
    key_id: int  # the paid key whose question the judge reads
    others: tuple[int, ...]
    similarity: float  # of the nearest other key: comparisons are made nearest first


class EntryMerger:
    """Judge the entries the hindsight labels bring together, and merge those that say the same."""

    def __init__(self, memory: Memory, judge: Judge, calls_per_pass: int | None = None) -> None:
        self.memory, self.judge = memory, judge
        self.calls_per_pass = CALLS_PER_PASS if calls_per_pass is None else calls_per_pass
        self._different: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._lock = threading.Lock()
        self.merged = self.calls = self._paid = 0

    def count_paid(self) -> None:
        """One more paid answer: the merger's room for judge calls grows with them."""
        with self._lock:
            self._paid += 1

    def comparisons(self, examples: Sequence[HindsightExample]) -> list[Comparison]:
        """This pass's comparisons: for each entry, the other entries among its paid keys'
        neighbours that were not judged against it yet; the nearest `calls_per_pass` of them."""
        near: dict[int, dict[int, float]] = {}
        asked_by: dict[int, tuple[float, HindsightExample]] = {}
        with self._lock:
            for example in examples:
                for candidate in example.candidates:
                    other = candidate.entry_id
                    if other == example.entry_id or _pair(example.entry_id, other) in self._different:
                        continue
                    found = near.setdefault(example.entry_id, {})
                    found[other] = max(found.get(other, -1.0), candidate.similarity)
                    if example.entry_id not in asked_by or candidate.similarity > asked_by[example.entry_id][0]:
                        asked_by[example.entry_id] = (candidate.similarity, example)
        out = []
        for entry_id, found in near.items():
            similarity, example = asked_by[entry_id]
            others = sorted(found, key=lambda other: -found[other])[:REFERENCES_PER_CALL]
            out.append(Comparison(example.scope_key, entry_id, example.key_id, tuple(others), similarity))
        out.sort(key=lambda c: -c.similarity)
        with self._lock:
            room = int(CALLS_PER_PAID_ANSWER * self._paid) - self.calls
        return out[: max(min(self.calls_per_pass, room), 0)]

    def merge_same(self, examples: Sequence[HindsightExample]) -> int:
        """Judge this pass's comparisons and merge what is found the same; returns how many merged."""
        comparisons = self.comparisons(examples)
        if not comparisons:
            return 0
        queries = self.memory.store.key_queries(c.key_id for c in comparisons)
        merged, gone = 0, set()
        for comparison in comparisons:
            if comparison.entry_id in gone:
                continue  # merged away this pass: the next pass compares it as it is now
            own = self.memory.answer(comparison.entry_id, comparison.scope_key)
            others = [
                (o, self.memory.answer(o, comparison.scope_key))
                for o in comparison.others
                if o not in gone and not self._judged(comparison.entry_id, o)  # the other way round, this pass
            ]
            others = [(o, stored.answer) for o, stored in others if stored is not None]
            if own is None or not others:
                continue
            query = queries.get(comparison.key_id, "")
            with self._lock:
                self.calls += 1
            try:
                chosen = which_same(self.judge, query, own.answer, [text for _, text in others])
            except MemcacheError as exc:  # tried again at a later pass
                log.warning("stored answers could not be compared, so none was merged: %s", exc)
                break
            if chosen is None:  # none of them says the same
                self._remember_different(comparison.entry_id, [o for o, _ in others])
                continue
            keep, drop = self._keep_first(comparison.entry_id, others[chosen][0])
            try:
                done = self.memory.merge(keep, drop, comparison.scope_key)
            except MemcacheError as exc:  # nothing changed in the store; tried again at a later pass
                log.warning("two entries found to say the same could not be merged: %s", exc)
                break
            if done:
                merged += 1
                gone.add(drop)
        with self._lock:
            self.merged += merged
        return merged

    def _keep_first(self, a: int, b: int) -> tuple[int, int]:
        """The entry with more keys is kept (fewer keys move), the older one on a tie."""
        ka, kb = self.memory.key_count(a), self.memory.key_count(b)
        return (a, b) if (ka, -a) >= (kb, -b) else (b, a)

    def _judged(self, entry_id: int, other: int) -> bool:
        with self._lock:
            return _pair(entry_id, other) in self._different

    def _remember_different(self, entry_id: int, others: Sequence[int]) -> None:
        with self._lock:
            for other in others:
                self._different[_pair(entry_id, other)] = None
            while len(self._different) > KEPT_VERDICTS:
                self._different.popitem(last=False)


def _pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)
