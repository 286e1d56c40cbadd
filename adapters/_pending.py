"""Lookups waiting for their paid answer, between a host's cache read and its cache write.

LangChain and LiteLLM ask the cache on one call and hand over the model's answer on another.
Keeping the miss's LookupResult lets the write-back reuse its embedding and teach the policy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from memcache.types import LookupResult


class PendingLookups:
    """A bounded, thread-safe map from a request key to its miss; the oldest go first when full."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._items: OrderedDict[Hashable, LookupResult] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: Hashable, result: LookupResult) -> None:
        with self._lock:
            self._items[key] = result
            while len(self._items) > self._limit:
                self._items.popitem(last=False)

    def pop(self, key: Hashable) -> LookupResult | None:
        with self._lock:
            return self._items.pop(key, None)
