"""Entry centroids on the real stack: packaged MiniLM, FAISS, SQLite and PostgreSQL.

Each candidate carries the request's similarity to its entry's centroid (the mean direction of
the entry's keys) and its gap (mean similarity to the keys minus theirs to one another); both
must match the vectors actually stored, survive a restart (with and without an index
snapshot), follow keys written by another process, and go with the entry.
"""

from __future__ import annotations

import numpy as np
import pytest

from memcache import MemCache, ThresholdPolicy

PASSWORD = "Open Settings > Account > Reset password."
PASSWORD_QUESTIONS = ["How do I reset my password?", "I forgot my password, what now?", "password reset steps"]
REFUND = "Refunds are issued within 5 days."
QUERY = "how can I change my forgotten password"


class RecordingPolicy(ThresholdPolicy):
    """A static cut-off that keeps the candidates of every lookup."""

    def __init__(self) -> None:
        super().__init__(0.99)
        self.seen = []

    def decide(self, candidates, entries):
        self.seen.append(list(candidates))
        return super().decide(candidates, entries)


def fill(cache: MemCache, questions=PASSWORD_QUESTIONS) -> None:
    for question in questions:
        cache.write_back(question, PASSWORD, paid=False)
    cache.write_back("How do I get a refund?", REFUND, paid=False)


def centroid_similarity(embedder, questions, query) -> float:
    total = embedder.embed(list(questions)).sum(axis=0)
    return float(total @ embedder.embed([query])[0] / np.linalg.norm(total))


def gap(embedder, questions, query) -> float:
    """Mean similarity of the query to the questions minus theirs to one another, computed pair by pair."""
    keys, q = embedder.embed(list(questions)), embedder.embed([query])[0]
    among = [float(a @ b) for i, a in enumerate(keys) for j, b in enumerate(keys) if i != j]
    return float(np.mean(keys @ q) - np.mean(among))


def entry_similarities(cache: MemCache, policy: RecordingPolicy, query: str = QUERY) -> dict[int, float | None]:
    cache.lookup(query)
    return {c.entry_id: c.entry_similarity for c in policy.seen[-1]}


def entry_gaps(cache: MemCache, policy: RecordingPolicy, query: str = QUERY) -> dict[int, float | None]:
    cache.lookup(query)
    return {c.entry_id: c.entry_gap for c in policy.seen[-1]}


def test_candidates_carry_their_entry_centroid_similarity(db_url, embedder):
    policy = RecordingPolicy()
    with MemCache(db_url, embedder=embedder, policy=policy) as cache:
        fill(cache)
        sims = entry_similarities(cache, policy)
        password_entry = cache.lookup(PASSWORD_QUESTIONS[0]).hit.entry_id
    expected = centroid_similarity(embedder, PASSWORD_QUESTIONS, QUERY)
    assert sims[password_entry] == pytest.approx(expected, abs=1e-5)
    refund = [entry for entry in sims if entry != password_entry]
    assert refund and sims[refund[0]] is None  # one key: its similarity is the key's own
    gaps = entry_gaps(cache, policy)
    assert gaps[password_entry] == pytest.approx(gap(embedder, PASSWORD_QUESTIONS, QUERY), abs=1e-5)
    assert gaps[refund[0]] is None
    # the centroid is closer than the average key, and not simply the nearest key's similarity
    nearest = max(c.similarity for c in policy.seen[-1] if c.entry_id == password_entry)
    assert sims[password_entry] != pytest.approx(nearest, abs=1e-4)


@pytest.mark.parametrize("snapshot", [False, True])
def test_entry_centroids_survive_a_restart(db_url, embedder, tmp_path, snapshot):
    path = tmp_path / "index.faiss" if snapshot else None
    first = RecordingPolicy()
    with MemCache(db_url, embedder=embedder, policy=first, snapshot=path) as cache:
        fill(cache)
        before = entry_similarities(cache, first), entry_gaps(cache, first)
        if snapshot:
            cache.save_snapshot()
    again = RecordingPolicy()
    with MemCache(db_url, embedder=embedder, policy=again, snapshot=path) as cache:
        assert entry_similarities(cache, again) == pytest.approx(before[0], abs=1e-5)
        assert entry_gaps(cache, again) == pytest.approx(before[1], abs=1e-5)


def test_invalidated_entry_takes_its_centroid_along(db_url, embedder):
    policy = RecordingPolicy()
    with MemCache(db_url, embedder=embedder, policy=policy) as cache:
        fill(cache)
        entry = cache.lookup(PASSWORD_QUESTIONS[0]).hit.entry_id
        assert len(cache.memory.centroids) == 1
        assert cache.invalidate(entry)
        assert len(cache.memory.centroids) == 0 and entry not in entry_similarities(cache, policy)


def test_keys_written_by_another_process_move_the_centroid(pg_url, embedder):
    policy = RecordingPolicy()
    with (
        MemCache(pg_url, embedder=embedder, policy=policy, sync_interval=None) as reader,
        MemCache(pg_url, embedder=embedder, policy=ThresholdPolicy(0.99), sync_interval=None) as writer,
    ):
        fill(reader, PASSWORD_QUESTIONS[:1])
        entry = reader.lookup(PASSWORD_QUESTIONS[0]).hit.entry_id
        assert entry_similarities(reader, policy)[entry] is None  # one key so far
        writer.write_back(PASSWORD_QUESTIONS[1], PASSWORD, paid=False)
        writer.write_back(PASSWORD_QUESTIONS[2], PASSWORD, paid=False)
        reader.sync()
        expected = centroid_similarity(embedder, PASSWORD_QUESTIONS, QUERY)
        assert entry_similarities(reader, policy)[entry] == pytest.approx(expected, abs=1e-5)
        assert entry_gaps(reader, policy)[entry] == pytest.approx(gap(embedder, PASSWORD_QUESTIONS, QUERY), abs=1e-5)


def test_a_sync_between_a_writes_commit_and_its_indexing_counts_the_key_once(db_url, embedder):
    """Another thread's sync may register a key this thread has just committed and not yet
    indexed; the write's own registration must then not add its vector to the centroid again."""
    policy = RecordingPolicy()
    with MemCache(db_url, embedder=embedder, policy=policy) as cache:
        fill(cache, PASSWORD_QUESTIONS[:2])
        commit = cache.store.add_answer

        def commit_then_synced(**kwargs):
            written = commit(**kwargs)
            cache.memory.sync()  # a lookup in another thread, whose sync came due in the gap
            return written

        cache.store.add_answer = commit_then_synced
        cache.write_back(PASSWORD_QUESTIONS[2], PASSWORD, paid=False)
        cache.store.add_answer = commit
        password_entry = cache.lookup(PASSWORD_QUESTIONS[0]).hit.entry_id
        sims = entry_similarities(cache, policy)
        gaps = entry_gaps(cache, policy)
    assert sims[password_entry] == pytest.approx(centroid_similarity(embedder, PASSWORD_QUESTIONS, QUERY), abs=1e-5)
    assert gaps[password_entry] == pytest.approx(gap(embedder, PASSWORD_QUESTIONS, QUERY), abs=1e-5)
