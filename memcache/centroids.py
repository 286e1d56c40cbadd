"""Entry centroids: the mean direction of all the queries stored under one answer.

The nearest key says how close the request is to one earlier wording; the centroid of an
entry's keys says how close it is to what that answer is about. Paraphrases of one intent
scatter around their centroid, while a near-miss from another intent usually sits close to
a single key only. The request's similarity to the best entry's centroid and its margin over
the other nearby entries' centroids lifted correct hits at the bound more than any other
feature; they also made the model claim more than its labels showed on served traffic, which
is what made the audits' claim check (`CalibratedPolicy.claim_ratio`) necessary
(docs/DECISIONS.md has the figures of both).

The same sum says how tight the entry is. With n unit keys summing to S, the keys' mean
similarity to one another is (|S|^2 - n) / (n (n - 1)) and the request's mean similarity to them
is q.S / n; their difference (`gap`) is near 0 for a request that sits among the entry's
paraphrases as they sit among themselves, and negative for one further out. A cosine of 0.8 is
close for an intent that people word in many ways and far for one they word alike; the gap tells
the two apart where the similarities alone cannot: it lifted correct hits at a lower false-hit
rate, and drifting streams went over the bound less often (docs/DECISIONS.md).

Only entries with two keys or more keep a vector (the sum of their unit key vectors) and a key
count: for a one-key entry the centroid is that key, whose similarity the index search already
returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from memcache.types import Candidate


class EntryCentroids:
    """Sums and counts of key vectors per multi-key entry, kept up to date as keys arrive and entries go.

    Sums are replaced, never changed in place, so a reader on another thread sees either the
    old or the new vector.
    """

    def __init__(self) -> None:
        self._sums: dict[int, tuple[np.ndarray, int]] = {}  # (sum of key vectors, how many), set together
        self._norms: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._sums)

    def add_key(
        self, entry_id: int, vector: np.ndarray, n_keys: int, others: Callable[[], tuple[np.ndarray, int] | None]
    ) -> None:
        """Count one new key of `entry_id`, which now has `n_keys` keys.

        `others` returns the sum of the entry's earlier keys' vectors and how many there are;
        it is called only when the entry gets its second key (the first key's vector is kept by
        the index and the store, not here).
        """
        if n_keys < 2:
            return
        known = self._sums.get(entry_id)
        if known is None:
            known = others()
            if known is None:
                return
        total, count = known
        self.set_sum(entry_id, np.asarray(total, dtype=np.float32) + np.asarray(vector, dtype=np.float32), count + 1)

    def set_sum(self, entry_id: int, total: np.ndarray, count: int) -> None:
        """Set an entry's sum of `count` key vectors."""
        total = np.asarray(total, dtype=np.float32)
        self._norms[entry_id] = float(np.linalg.norm(total))  # before the sum: a reader finds the norm first
        self._sums[entry_id] = (total, int(count))

    def drop(self, entry_id: int) -> None:
        self._sums.pop(entry_id, None)
        self._norms.pop(entry_id, None)

    def similarity(self, entry_id: int, query: np.ndarray, leave_out: np.ndarray | None = None) -> float | None:
        """Cosine similarity of `query` to the entry's centroid (None for one-key entries).

        `leave_out` is a key vector to take out of the centroid first: a hindsight label asks
        a stored key again without itself.
        """
        return self.measure(entry_id, query, leave_out)[0]

    def gap(self, entry_id: int, query: np.ndarray, leave_out: np.ndarray | None = None) -> float | None:
        """The query's mean similarity to the entry's keys minus the keys' mean similarity to one
        another (None while the entry has fewer than two keys, `leave_out` taken out first)."""
        return self.measure(entry_id, query, leave_out)[1]

    def measure(
        self, entry_id: int, query: np.ndarray, leave_out: np.ndarray | None = None
    ) -> tuple[float | None, float | None]:
        """(`similarity`, `gap`) of `query` for one entry, from one read of its sum."""
        known = self._sums.get(entry_id)
        if known is None:
            return None, None
        total, count = known
        if leave_out is None:
            norm = self._norms.get(entry_id, 0.0)
        else:
            total, count = total - leave_out, count - 1
            norm = float(np.linalg.norm(total))
        dot = float(total @ query)
        similarity = dot / norm if norm > 1e-6 else None
        gap = dot / count - (float(total @ total) - count) / (count * (count - 1)) if count >= 2 else None
        return similarity, gap

    def annotate(
        self, candidates: Sequence[Candidate], query: np.ndarray, *, own_entry: int | None = None
    ) -> list[Candidate]:
        """The candidates with `entry_similarity` and `entry_gap` set (the query itself left out of `own_entry`)."""
        if not self._sums:
            return list(candidates)
        cache: dict[int, tuple[float | None, float | None]] = {}
        out = []
        for c in candidates:
            entry_id = c.entry_id
            if entry_id not in cache:
                cache[entry_id] = self.measure(entry_id, query, query if entry_id == own_entry else None)
            sim, gap = cache[entry_id]
            out.append(c if sim is None else Candidate(c.key_id, entry_id, c.similarity, sim, gap))
        return out
