"""The hindsight window on its own: which keys are asked again, and against what."""

import numpy as np

from memcache.hindsight import HindsightWindow


class ExactSearch:
    """A brute-force stand-in for the index: per scope, inner product over stored vectors."""

    def __init__(self):
        self.rows = {}

    def add(self, scope, key_id, vector):
        self.rows.setdefault(scope, []).append((key_id, np.asarray(vector, dtype=np.float32)))

    def search(self, scope, vectors, k):
        rows = self.rows.get(scope, [])
        ids = np.array([key for key, _ in rows] + [-1] * k)
        sims = np.vstack([v for _, v in rows]) @ vectors.T if rows else np.zeros((0, len(vectors)))
        sims = np.vstack([sims, np.full((k, len(vectors)), -np.inf)])
        order = np.argsort(-sims, axis=0)[:k].T
        return np.take_along_axis(sims.T, order, axis=1), ids[order]


def unit(*values):
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_each_key_is_asked_again_without_itself_and_only_in_its_scope():
    search, window = ExactSearch(), HindsightWindow(100)
    entry_of = {1: 10, 2: 10, 3: 11, 4: 12}
    for key, scope, vector in [
        (1, "a", unit(1, 0)),
        (2, "a", unit(1, 0.1)),
        (3, "a", unit(0, 1)),
        (4, "b", unit(1, 0)),
    ]:
        search.add(scope, key, vector)
        window.add(key, scope, vector)
    examples = {e.key_id: e for e in window.examples(search.search, entry_of.get, k=5)}
    assert set(examples) == {1, 2, 3}  # key 4 is alone in scope b: nothing it could have been served
    assert [c.key_id for c in examples[1].candidates] == [2, 3]  # itself left out, nearest first
    assert examples[1].candidates[0].entry_id == examples[1].entry_id == 10  # would have been right
    assert examples[3].candidates[0].entry_id != examples[3].entry_id  # would have been wrong


def test_deleted_keys_are_neither_asked_nor_offered():
    search, window = ExactSearch(), HindsightWindow(100)
    for key, vector in [(1, unit(1, 0)), (2, unit(1, 0.1)), (3, unit(1, 0.3))]:
        search.add("a", key, vector)
        window.add(key, "a", vector)
    alive = {1: 10, 3: 11}  # key 2 was deleted since (its entry invalidated)
    examples = window.examples(search.search, alive.get, k=5)
    assert {e.key_id for e in examples} == {1, 3}
    assert all(c.key_id != 2 for e in examples for c in e.candidates)


def test_the_window_keeps_the_latest_keys_and_says_when_it_is_due():
    window = HindsightWindow(40)
    due = [window.add(key, "a", unit(1, key)) for key in range(100)]
    assert len(window) == 40
    assert due.index(True) == 9  # the first refresh after 10 paid keys
    assert sum(due) == 10
    assert not HindsightWindow(0).add(1, "a", unit(1, 0))  # size 0: off


def test_the_window_is_searched_in_pieces_with_the_same_result():
    """Pieces let a write-back into the index between two searches; the labels must not change."""
    rng = np.random.default_rng(5)
    search, window = ExactSearch(), HindsightWindow(100)
    for key in range(1, 31):
        vector = unit(*rng.normal(size=4))
        search.add("a", key, vector)
        window.add(key, "a", vector)
    entry_of = {key: key % 7 for key in range(1, 31)}
    sizes = []

    def counted(scope, vectors, k):
        sizes.append(len(vectors))
        return search.search(scope, vectors, k)

    whole = window.examples(search.search, entry_of.get, k=5, piece=1000)
    in_pieces = window.examples(counted, entry_of.get, k=5, piece=8)
    assert sizes == [8, 8, 8, 6]
    assert in_pieces == whole
