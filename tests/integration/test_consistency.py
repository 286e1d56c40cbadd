"""Two instances on one store, four threads of random writes, lookups, deletes, forgets and
syncs, one instance restarted from its snapshot: afterwards each instance's derived state is
what a rebuild from the store makes of it, and a learning policy has learned every stored label
once (real SQLite and PostgreSQL; the tiny embedder, since what is checked is bookkeeping, not
ranking; a fixed cut-off serves many hits, the calibrated policy few).

This is how three faults were found: a write-back that failed when other writers deleted and
re-created its entry, an exact repeat lost when the newest of two entries holding the same
query was deleted, and entry checks that never reached the other process.
"""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from conftest import HashingEmbedder

from memcache import CalibratedPolicy, MemCache, ThresholdPolicy

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
OPERATIONS = 150  # per thread


def derived_state(cache: MemCache) -> dict[str, dict]:
    memory = cache.memory
    with memory._lock:
        return {
            "keys": dict(memory._keys),
            "keys of entries": {e: sorted(keys) for e, keys in memory._keys_of_entry.items()},
            "exact repeats": dict(memory._exact._newest),
            "index": memory.index.scopes() if memory.index is not None else {},
            "centroids": {e: (np.round(total, 4).tolist(), n) for e, (total, n) in memory.centroids._sums.items()},
            "entry checks": {e: (s.n_keys, s.checks, s.failures) for e, s in memory.entry_stats.items()},
        }


def churn(caches: list[MemCache], queries: list[str], seed: int) -> list[str]:
    rnd, errors = random.Random(seed), []
    for _ in range(OPERATIONS):
        cache, tenant, query = rnd.choice(caches), rnd.choice(["a", "b"]), rnd.choice(queries)
        answer, roll = f"answer {rnd.randrange(8)}", rnd.random()
        try:
            if roll < 0.3:
                cache.write_back(query, answer, tenant=tenant)
            elif roll < 0.55:
                result = cache.lookup(query, tenant=tenant)
                if result.hit is None:
                    cache.write_back(result, answer)  # paid: a label, and a check of the nearest entry
            elif roll < 0.75:
                cache.lookup(query, tenant=tenant)
            elif roll < 0.9:
                entries = list(cache.memory._keys_of_entry)
                if entries:
                    cache.invalidate(rnd.choice(entries))
            elif roll < 0.95:
                cache.sync()
            else:
                cache.forget(tenant=tenant)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none is expected
            errors.append(repr(exc))
    return errors


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("policy", ["threshold", "calibrated"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_random_concurrent_work_leaves_every_instance_as_a_rebuild_would(backend, policy, seed, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'memcache.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    embedder, snapshot = HashingEmbedder(), tmp_path / "index.snapshot"
    rnd = random.Random(seed)
    queries = [" ".join(rnd.sample(WORDS, 3)) for _ in range(25)]

    def open_cache(**kwargs) -> MemCache:
        rule = ThresholdPolicy(0.8) if policy == "threshold" else CalibratedPolicy(0.05, seed=seed)
        cache = MemCache(url, embedder=embedder, policy=rule, hindsight_window=20, **kwargs)
        cache.warm_up()
        return cache

    caches = [open_cache(sync_interval=0.0, max_entries=12, snapshot=snapshot), open_cache(sync_interval=0.0)]
    try:
        errors: list[str] = []
        threads = [
            threading.Thread(target=lambda s=s: errors.extend(churn(caches, queries, seed * 10 + s))) for s in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        caches[0].close()  # writes the snapshot; the other instance goes on writing and deleting
        for query in queries[:5]:
            caches[1].write_back(query + " again", "answer later", tenant="a")
        for entry_id in list(caches[1].memory._keys_of_entry)[:3]:
            caches[1].invalidate(entry_id)
        caches[0] = open_cache(snapshot=snapshot)
        for cache in caches:
            cache.wait_for_learning()
            cache.sync()
        with open_cache() as rebuilt:
            expected = derived_state(rebuilt)
        for cache in caches:
            assert derived_state(cache) == expected
        if policy == "calibrated":  # its own at once, the other's at a sync, the restarted one's at start-up
            labels = len(list(caches[1].store.iter_labels()))
            assert [cache.policy.labels for cache in caches] == [labels, labels]
    finally:
        for cache in caches:
            cache.close()
