"""EntryCentroids: pure bookkeeping of key-vector sums (the real-stack tests are in
tests/integration/test_entry_centroids.py)."""

from __future__ import annotations

import numpy as np
import pytest

from memcache.centroids import EntryCentroids
from memcache.types import Candidate


def unit(*values):
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_an_entry_gets_a_centroid_with_its_second_key_only():
    centroids, asked = EntryCentroids(), []
    first, second = unit(1, 0, 0), unit(0, 1, 0)
    centroids.add_key(7, first, 1, lambda: asked.append(1))
    assert len(centroids) == 0 and not asked and centroids.similarity(7, first) is None
    centroids.add_key(7, second, 2, lambda: asked.append(1) or (first, 1))
    assert asked == [1]  # the earlier keys' sum is read once, when the second key arrives
    assert centroids.similarity(7, unit(1, 1, 0)) == pytest.approx(1.0)
    centroids.add_key(7, unit(0, 0, 1), 3, lambda: pytest.fail("not read again"))
    assert centroids.similarity(7, unit(1, 1, 1)) == pytest.approx(1.0)


def test_leave_out_and_drop():
    centroids = EntryCentroids()
    centroids.set_sum(3, unit(1, 0, 0) + unit(0, 1, 0), 2)
    assert centroids.similarity(3, unit(0, 1, 0), leave_out=unit(0, 1, 0)) == pytest.approx(0.0, abs=1e-6)
    assert centroids.similarity(3, unit(1, 0, 0), leave_out=unit(0, 1, 0)) == pytest.approx(1.0)
    centroids.drop(3)
    assert len(centroids) == 0 and centroids.similarity(3, unit(1, 0, 0)) is None


def test_annotate_sets_entry_similarity_for_multi_key_entries_only():
    centroids = EntryCentroids()
    centroids.set_sum(1, unit(1, 0, 0) + unit(0, 1, 0), 2)
    query = unit(1, 0, 0)
    out = centroids.annotate([Candidate(10, 1, 1.0), Candidate(11, 2, 0.5), Candidate(12, 1, 0.0)], query)
    assert [c.entry_similarity for c in out] == [pytest.approx(2**-0.5), None, pytest.approx(2**-0.5)]
    assert [c.entry_gap for c in out] == [pytest.approx(0.5), None, pytest.approx(0.5)]  # (1 + 0) / 2 - 0
    assert [(c.key_id, c.entry_id, c.similarity) for c in out] == [(10, 1, 1.0), (11, 2, 0.5), (12, 1, 0.0)]
    own = centroids.annotate([Candidate(12, 1, 0.0)], unit(0, 1, 0), own_entry=1)  # itself left out
    assert own[0].entry_similarity == pytest.approx(0.0, abs=1e-6)
    assert own[0].entry_gap is None  # one key left: no similarity among keys to compare with


def brute_gap(keys, query):
    pairs = [a @ b for i, a in enumerate(keys) for j, b in enumerate(keys) if i != j]
    return float(np.mean([k @ query for k in keys]) - np.mean(pairs))


def test_gap_is_the_mean_similarity_to_the_keys_minus_theirs_to_one_another():
    rng = np.random.default_rng(0)
    keys = [unit(*rng.normal(size=8)) for _ in range(5)]
    query = unit(*rng.normal(size=8))
    centroids = EntryCentroids()
    centroids.add_key(4, keys[0], 1, lambda: pytest.fail("one key keeps no sum"))
    centroids.add_key(4, keys[1], 2, lambda: (keys[0], 1))
    for n, key in enumerate(keys[2:], start=3):
        centroids.add_key(4, key, n, lambda: pytest.fail("not read again"))
    assert centroids.gap(4, query) == pytest.approx(brute_gap(keys, query), abs=1e-5)
    assert centroids.gap(4, keys[2], leave_out=keys[2]) == pytest.approx(
        brute_gap(keys[:2] + keys[3:], keys[2]), abs=1e-5
    )
    assert centroids.gap(9, query) is None
