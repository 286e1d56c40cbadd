"""The labels other instances on the store write, read while this one runs.

Every paid answer is a label, and the store keeps them all, but an instance learned only its
own until it restarted: with four workers behind one proxy each needed its own few hundred
labels before its first hit, and an audit that found one worker overconfident did not pull back
the others. A sync now also reads the labels written since by other instances (each label names
the instance that wrote it, `Store.writer`; an instance learns its own when it pays for them).

Ids are handed out when a row is inserted, not when it commits, so a label can appear below one
already read (PostgreSQL, two writers at once). Each read looks back `LOOKBACK` ids and skips
the ones it has seen: a label is learned once, and one that commits late is not lost unless a
thousand later ones committed first (then the next restart loads it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

LOOKBACK = 1000  # ids below the highest read that are read again (a commit later than its id)

Row = tuple  # (features, right, claimed confidence or None, key id or None): `Store.labels_by_id`


class LabelFeed:
    """Where this instance is in one label table.

    Args:
        ids_after: ids of the other instances' labels above an id, in order.
        rows_of: those labels' rows, by id, in id order.
        all_ids_after: ids of every instance's labels above an id (this one's too), in order.
    """

    def __init__(
        self,
        ids_after: Callable[[int], list[int]],
        rows_of: Callable[[Sequence[int]], list[Row]],
        all_ids_after: Callable[[int], list[int]],
    ) -> None:
        self._ids_after, self._rows_of, self._all_ids_after = ids_after, rows_of, all_ids_after
        self._highest = 0
        self._seen: set[int] = set()  # ids read within LOOKBACK of the highest
        self._lock = threading.Lock()

    def start(self, highest: int) -> None:
        """Start-up loaded every label up to `highest`: those within LOOKBACK of it count as read."""
        with self._lock:
            self._highest = highest
            self._seen = {i for i in self._all_ids_after(max(0, highest - LOOKBACK)) if i <= highest}

    def new_rows(self) -> list[Row]:
        """The labels other instances wrote that this one has not read yet, oldest first."""
        with self._lock:
            fresh = [i for i in self._ids_after(max(0, self._highest - LOOKBACK)) if i not in self._seen]
            if not fresh:
                return []
            rows = self._rows_of(fresh)  # a row deleted meanwhile is simply absent
            self._seen.update(fresh)
            self._highest = max(self._highest, fresh[-1])
            self._seen = {i for i in self._seen if i > self._highest - LOOKBACK}
            return rows
