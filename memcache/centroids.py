"""Entry centroids: the mean direction of all the queries stored under one answer.

The nearest key says how close the request is to one earlier wording; the centroid of an
entry's keys says how close it is to what that answer is about. Paraphrases of one intent
scatter around their centroid, while a near-miss from another intent usually sits close to
a single key only. On CLINC150 at a 2% bound, the request's similarity to the best entry's
centroid and its margin over the other nearby entries' centroids lifted correct hits from
43.5% to 49.0% (ten seeds; docs/EVAL.md), which is what made the audits' claim check
(`CalibratedPolicy.claim_ratio`) necessary.

Only entries with two keys or more keep a vector (the sum of their unit key vectors): for a
one-key entry the centroid is that key, whose similarity the index search already returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from memcache.types import Candidate


class EntryCentroids:
    """Sums of key vectors per multi-key entry, kept up to date as keys arrive and entries go.

    Sums are replaced, never changed in place, so a reader on another thread sees either the
    old or the new vector.
    """

    def __init__(self) -> None:
        self._sums: dict[int, np.ndarray] = {}
        self._norms: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._sums)

    def add_key(self, entry_id: int, vector: np.ndarray, n_keys: int, others: Callable[[], np.ndarray | None]) -> None:
        """Count one new key of `entry_id`, which now has `n_keys` keys.

        `others` returns the sum of the entry's earlier keys' vectors; it is called only when
        the entry gets its second key (the first key's vector is kept by the index and the
        store, not here).
        """
        if n_keys < 2:
            return
        total = self._sums.get(entry_id)
        if total is None:
            total = others()
            if total is None:
                return
        self.set_sum(entry_id, np.asarray(total, dtype=np.float32) + np.asarray(vector, dtype=np.float32))

    def set_sum(self, entry_id: int, total: np.ndarray) -> None:
        total = np.asarray(total, dtype=np.float32)
        self._norms[entry_id] = float(np.linalg.norm(total))  # before the sum: a reader finds the norm first
        self._sums[entry_id] = total

    def drop(self, entry_id: int) -> None:
        self._sums.pop(entry_id, None)
        self._norms.pop(entry_id, None)

    def similarity(self, entry_id: int, query: np.ndarray, leave_out: np.ndarray | None = None) -> float | None:
        """Cosine similarity of `query` to the entry's centroid (None for one-key entries).

        `leave_out` is a key vector to take out of the centroid first: a hindsight label asks
        a stored key again without itself.
        """
        total = self._sums.get(entry_id)
        if total is None:
            return None
        if leave_out is None:
            norm = self._norms.get(entry_id, 0.0)
        else:
            total = total - leave_out
            norm = float(np.linalg.norm(total))
        return float(total @ query) / norm if norm > 1e-6 else None

    def annotate(
        self, candidates: Sequence[Candidate], query: np.ndarray, *, own_entry: int | None = None
    ) -> list[Candidate]:
        """The candidates with `entry_similarity` set (the query itself left out of `own_entry`)."""
        if not self._sums:
            return list(candidates)
        cache: dict[int, float | None] = {}
        out = []
        for c in candidates:
            entry_id = c.entry_id
            if entry_id not in cache:
                cache[entry_id] = self.similarity(entry_id, query, query if entry_id == own_entry else None)
            sim = cache[entry_id]
            out.append(c if sim is None else Candidate(c.key_id, entry_id, c.similarity, sim))
        return out
