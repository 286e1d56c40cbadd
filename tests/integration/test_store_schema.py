"""Schema versions: a store written by an older memcache opens, migrated, with nothing lost.

The fixtures hold the exact DDL that schema version 1 created (generated from the v1 models),
so these tests open a real old store, not a new one with a column dropped.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy

from memcache import MemCache, ThresholdPolicy
from memcache.errors import StoreError
from memcache.judge import comparable as v1_normal_form  # what the exact path hashed before v4
from memcache.schema import SCHEMA_VERSION, text_hash
from memcache.scope import build_scope
from memcache.store import Store

FIXTURES = Path(__file__).parent.parent / "fixtures"
ANSWER = "Open Settings > Account > Reset password and follow the e-mail link."


def _create_v1_store(url: str, embedder) -> None:
    """Build a v1 store as memcache 0.1 left it: its DDL, one entry with two keys, a label, a change."""
    engine = sqlalchemy.create_engine(url)
    ddl = (FIXTURES / f"store_v1_{engine.dialect.name}.sql").read_text()
    scope = build_scope(tenant=None, model="default", params={}, earlier=[], extra_parts=[])
    created = datetime(2026, 1, 2, 3, 4, 5)
    with engine.begin() as conn:
        for statement in ddl.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO memcache_entries (scope_key, tenant, model, scope_json, answer, payload, answer_hash,"
                " source_model, created_at, last_hit_at, hit_count, verified, expires_at, checks, failures)"
                " VALUES (:scope_key, :tenant, :model, :scope_json, :answer, NULL, :answer_hash, 'gpt-test',"
                " :created, NULL, 0, true, NULL, 1, 0)"
            ),
            {
                "scope_key": scope.key,
                "tenant": scope.tenant,
                "model": scope.model,
                "scope_json": json.dumps(scope.__dict__),
                "answer": ANSWER,
                "answer_hash": text_hash(ANSWER),
                "created": created,
            },
        )
        for query in ("How do I reset my password?", "I forgot my password, how can I reset it?"):
            vector = embedder.embed([query])[0].astype(np.float32).tobytes()
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO memcache_keys (entry_id, scope_key, query, normalized_hash, embedding, created_at)"
                    " VALUES (1, :scope_key, :query, :norm, :embedding, :created)"
                ),
                {
                    "scope_key": scope.key,
                    "query": query,
                    "norm": text_hash(v1_normal_form(query)),
                    "embedding": vector,
                    "created": created,
                },
            )
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO memcache_labels (features, correct, created_at) VALUES ('[0.9, 0.1, 1.0, 2.0, 0.0]', true, :c)"
            ),
            {"c": created},
        )
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO memcache_changes (kind, entry_id, key_id, created_at) VALUES ('key', 1, 1, :c), ('key', 1, 2, :c)"
            ),
            {"c": created},
        )
    engine.dispose()


def _check_migrated(url: str, embedder) -> None:
    with MemCache(url, embedder=embedder, policy=ThresholdPolicy(0.8)) as cache:
        assert cache.store.schema_version() == SCHEMA_VERSION == 7
        assert cache.stats().entries == 1 and cache.stats().keys == 2 and cache.stats().labels == 1
        exact = cache.lookup("How do I reset  my password? ")  # v4: key hashes of the stricter exact form
        assert exact.hit is not None and exact.hit.exact and exact.hit.answer == ANSWER
        assert cache.lookup("what are the steps to reset my password").hit.answer == ANSWER
        with cache.store.engine.connect() as conn:  # the new column was backfilled from creation time
            last_used = conn.execute(sqlalchemy.text("SELECT last_used_at FROM memcache_entries")).scalar_one()
            claimed = conn.execute(sqlalchemy.text("SELECT claimed_confidence FROM memcache_labels")).scalar_one()
        assert last_used is not None and claimed is None  # v3: labels from before have no audit claim
        assert len(cache.memory.centroids) == 1  # the entry with two keys has its centroid
        entry = cache.write_back("Where is the nearest branch?", "Use the branch finder.", paid=False)
        assert cache.store.least_recently_used(1) == [1] and entry.id == 2  # the old entry is evicted first
        lifetime = cache.stats().lifetime  # v5: the store keeps the counters of every process
        assert lifetime == {"lookups": 2, "hits": 2, "exact_hits": 1, "write_backs": 1}
        assert list(cache.store.iter_cheap_labels()) == []  # v6: the cheap path's labels have a table
        assert cache.store.label_ids_after(0) == [1]  # v7: a label of no named writer is another instance's
        assert cache.invalidate(entry.id)  # v4: the newest entry's id does not come back
        assert cache.write_back("Where is the nearest ATM?", "Use the ATM finder.", paid=False).id == 3


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_v6_store_gains_the_labels_writer(backend, tmp_path, request, embedder):
    """v7 adds `writer` to both label tables of a store laid out by v6 (its exact DDL)."""
    url = f"sqlite:///{tmp_path / 'v6.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        for statement in (FIXTURES / f"store_v6_{engine.dialect.name}.sql").read_text().split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        for table in ("memcache_labels", "memcache_cheap_labels"):
            conn.execute(
                sqlalchemy.text(f"INSERT INTO {table} (features, correct, created_at) VALUES ('[0.5]', false, :c)"),
                {"c": datetime(2026, 11, 1)},
            )
    engine.dispose()
    store = Store(url)
    try:
        assert store.schema_version() == 7
        assert store.label_ids_after(0) == [1] and store.label_ids_after(0, cheap=True) == [1]
        assert store.labels_by_id([1]) == [([0.5], False, None, None)]  # and no key: v6 kept none
        store.add_cheap_label([0.25], True, None)  # this instance's own: not another's
        assert store.label_ids_after(0, cheap=True) == [1]
        assert store.label_ids_after(0, cheap=True, others_only=False) == [1, 2]
    finally:
        store.close()


def test_v1_sqlite_store_is_migrated_with_nothing_lost(tmp_path, embedder):
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    _create_v1_store(url, embedder)
    _check_migrated(url, embedder)


def test_v1_postgres_store_is_migrated_with_nothing_lost(pg_url, embedder):
    _create_v1_store(pg_url, embedder)
    _check_migrated(pg_url, embedder)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_opens_migrate_once(backend, tmp_path, request, embedder):
    url = f"sqlite:///{tmp_path / 'v1.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    _create_v1_store(url, embedder)
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(url).close()
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised by the test
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    _check_migrated(url, embedder)


def test_store_from_a_newer_library_is_refused_untouched(db_url):
    Store(db_url).close()
    engine = sqlalchemy.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE memcache_meta SET value = '{SCHEMA_VERSION + 1}' WHERE name = 'schema_version'")
    with pytest.raises(StoreError, match="newer than this library"):
        Store(db_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT value FROM memcache_meta WHERE name = 'schema_version'").scalar() == str(
            SCHEMA_VERSION + 1
        )
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_bulk_insert_is_one_transaction_and_visible_to_a_cache(backend, tmp_path, request, embedder):
    from memcache.eval.bulk import BulkRow, bulk_insert
    from memcache.scope import normalize

    url = f"sqlite:///{tmp_path / 'bulk.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    scope = build_scope(tenant=None, model="bulk", params={}, earlier=[], extra_parts=[])
    questions = [
        "How do I renew my passport?",
        "What is the capital of Australia?",
        "How many legs does a spider have?",
    ]
    vectors = embedder.embed(questions)
    rows = [
        BulkRow(scope, q, text_hash(normalize(q)), v, f"answer {i}") for i, (q, v) in enumerate(zip(questions, vectors))
    ]
    store = Store(url)
    assert bulk_insert(store, rows[:2]) == 2
    with pytest.raises(StoreError):  # "answer 1" is already stored in this scope: the whole batch fails
        bulk_insert(store, rows[1:])
    assert store.counts()[:2] == (2, 2) and store.last_change_id() == 2
    store.close()
    with MemCache(url, embedder=embedder, policy=ThresholdPolicy(0.75)) as cache:
        assert cache.lookup("passport renewal: how?", model="bulk").hit.answer == "answer 0"


def test_a_failed_counter_write_keeps_the_counts_for_the_next_flush(db_url, embedder, monkeypatch):
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8)) as cache:
        entry = cache.write_back("How do I reset my password?", ANSWER, paid=False)
        assert cache.lookup("How do I reset my password?").hit.exact
        real = cache.store.record_usage
        monkeypatch.setattr(cache.store, "record_usage", lambda *a: (_ for _ in ()).throw(StoreError("disk full")))
        with pytest.raises(StoreError):
            cache.flush()
        monkeypatch.setattr(cache.store, "record_usage", real)
        assert cache.lookup("How do I reset my password?").hit.exact
        cache.flush()
        assert cache.store.lifetime_counts() == {"lookups": 2, "hits": 2, "exact_hits": 2, "write_backs": 1}
        assert cache.get(entry.id).hit_count == 2
