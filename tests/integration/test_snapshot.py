"""Index snapshots: a restart loads the saved index and reads only what changed since from the store."""

from __future__ import annotations

import logging

from memcache import MemCache, ThresholdPolicy

QUESTIONS = {
    "How do I renew my passport?": "Fill in form DS-82 and mail it.",
    "What is the capital of Australia?": "Canberra.",
    "How many legs does a spider have?": "Eight.",
}


def _open(url, embedder, snapshot):
    return MemCache(url, embedder=embedder, policy=ThresholdPolicy(0.75), snapshot=snapshot)


def test_restart_from_snapshot_sees_writes_and_deletes_made_after_it(db_url, embedder, tmp_path):
    snapshot = tmp_path / "index.snap"
    with _open(db_url, embedder, snapshot) as cache:
        ids = {q: cache.write_back(q, a, paid=False).id for q, a in QUESTIONS.items()}
    assert snapshot.exists()
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.75)) as other:  # no snapshot: after it
        other.write_back("Who wrote Hamlet?", "William Shakespeare.", paid=False)
        assert other.invalidate(ids["What is the capital of Australia?"])
    cache = _open(db_url, embedder, snapshot)
    fetched: list[int] = []
    keys_by_id = cache.store.keys_by_id
    cache.store.keys_by_id = lambda key_ids: fetched.extend(key_ids) or keys_by_id(key_ids)
    assert cache.lookup("Hamlet was written by whom?").hit.answer == "William Shakespeare."
    assert cache.lookup("Which city is Australia's capital?").hit is None
    assert cache.lookup("How many legs do spiders have?").hit.answer == "Eight."
    assert len(fetched) == 1  # only the key written after the snapshot was read from the store
    cache.close()


def test_snapshot_of_another_store_or_corrupt_is_ignored(db_url, embedder, tmp_path, caplog):
    snapshot = tmp_path / "index.snap"
    with _open(f"sqlite:///{tmp_path / 'other.db'}", embedder, snapshot) as other:
        other.write_back("What is the capital of Australia?", "Sydney.", paid=False)
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.75)) as cache:
        cache.write_back("What is the capital of Australia?", "Canberra.", paid=False)
    with caplog.at_level(logging.WARNING, logger="memcache"), _open(db_url, embedder, snapshot) as cache:
        assert cache.lookup("Which city is Australia's capital?").hit.answer == "Canberra."
    assert "belongs to another store" in caplog.text
    snapshot.write_bytes(snapshot.read_bytes()[:100])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memcache"), _open(db_url, embedder, snapshot) as cache:
        assert cache.lookup("Which city is Australia's capital?").hit.answer == "Canberra."
    assert "unreadable" in caplog.text


def test_cache_on_the_torch_index(db_url, embedder):
    """The GPU path's index, here on the CPU, under the real engine: hits, scopes, deletes."""
    from memcache.gpu_index import TorchIndex

    with MemCache(
        db_url, embedder=embedder, policy=ThresholdPolicy(0.75), index=TorchIndex(384, device="cpu")
    ) as cache:
        entry = cache.write_back("How do I renew my passport?", "Fill in form DS-82 and mail it.", tenant="a")
        assert cache.lookup("passport renewal: how?", tenant="a").hit.answer == "Fill in form DS-82 and mail it."
        assert cache.lookup("passport renewal: how?", tenant="b").hit is None
        cache.invalidate(entry.id)
        assert cache.lookup("passport renewal: how?", tenant="a").hit is None
