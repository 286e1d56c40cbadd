"""Hindsight labels: paid queries asked again of today's index, each with itself left out.

A label taken when a query arrived describes the store as it was then: early labels saw an
almost empty store, so their neighbourhood features (margin, agreement, support) mean
something else than the same numbers do now. Asking every recent paid query again, against
the current index minus its own key, gives one fresh label per paid query that describes the
store the policy serves from today. The answer is known (it was paid for), so the label is
exact: the nearest entry would have been right when it is the entry the answer was stored in.
Only keys written from paid answers join the window; imported keys and served hits never do.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import numpy as np

from memcache.centroids import EntryCentroids
from memcache.types import Candidate, HindsightExample

Search = Callable[[str, np.ndarray, int], tuple[np.ndarray, np.ndarray]]
# Queries per index search when the window is asked again. The index lets a waiting write-back
# in between two pieces, so a write-back waits for one piece, not for the whole window. Not
# smaller: FAISS (1.15) computes a flat search of fewer than ~128,000 / dimension queries
# without BLAS, and at 384 dimensions smaller pieces made the relabel several times slower
# where 512 took the time of one batch (docs/DECISIONS.md; `memcache.eval.relabel_bench`).
SEARCH_PIECE = 512


class HindsightWindow:
    """The most recent `size` paid keys, and when to ask them again.

    Asking again costs one k-NN search per key, so it runs after every `size // 20` (at
    least 10) new paid keys: at most ~5% of the paid answers go by on stale labels.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: deque[tuple[int, str, np.ndarray]] = deque(maxlen=max(size, 1))
        self._since = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key_id: int, scope_key: str, vector: np.ndarray) -> bool:
        """Remember a paid key; True when the window is due to be asked again."""
        if self.size < 1:
            return False
        with self._lock:
            self._keys.append((key_id, scope_key, np.asarray(vector, dtype=np.float32)))
            self._since += 1
            due = self._since >= max(10, len(self._keys) // 20)
            if due:
                self._since = 0
            return due

    def examples(
        self,
        search: Search,
        entry_of: Callable[[int], int | None],
        k: int,
        centroids: EntryCentroids | None = None,
        *,
        piece: int = SEARCH_PIECE,
    ) -> list[HindsightExample]:
        """Each live key of the window with its in-scope neighbours now, its own key left out.

        `entry_of` gives a live key's entry id (None for keys deleted since, which are
        skipped); `search` is the index's search (scope key, vectors, k) -> (similarities, ids),
        called with at most `piece` vectors at a time.
        With `centroids`, candidates carry their entry's centroid similarity, the key's own
        vector taken out of its own entry's centroid.
        """
        with self._lock:
            keys = list(self._keys)
        by_scope: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        for key_id, scope_key, vector in keys:
            entry_id = entry_of(key_id)
            if entry_id is not None:
                by_scope.setdefault(scope_key, []).append((key_id, entry_id, vector))
        out = []
        for scope_key, items in by_scope.items():
            pieces = [
                search(scope_key, np.stack([v for _, _, v in items[start : start + piece]]), k + 1)
                for start in range(0, len(items), piece)
            ]
            sims, ids = np.vstack([p[0] for p in pieces]), np.vstack([p[1] for p in pieces])
            for (key_id, entry_id, vector), row_sims, row_ids in zip(items, sims.tolist(), ids.tolist()):
                candidates = []
                for sim, other in zip(row_sims, row_ids):
                    other_entry = entry_of(other) if other != key_id else None
                    if other_entry is not None:
                        candidates.append(Candidate(other, other_entry, sim))
                if candidates:  # alone in its scope: nothing it could have been served
                    candidates = candidates[:k]
                    if centroids is not None:
                        candidates = centroids.annotate(candidates, vector, own_entry=entry_id)
                    out.append(HindsightExample(key_id, entry_id, tuple(candidates), scope_key))
        return out
