"""The same store on PostgreSQL. Needs MEMCACHE_TEST_DATABASE_URL (`.ci/run` sets it)."""

from __future__ import annotations

import os

import pytest

from memcache import MemCache, ThresholdPolicy

URL = os.environ.get("MEMCACHE_TEST_DATABASE_URL")
pytestmark = pytest.mark.skipif(
    not URL, reason="MEMCACHE_TEST_DATABASE_URL is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
)


def test_write_back_lookup_and_restart_on_postgres(pg_url, embedder):
    with MemCache(pg_url, embedder=embedder, policy=ThresholdPolicy(0.75)) as cache:
        cache.write_back("How do I renew my passport?", "Fill in form DS-82 and mail it.", tenant="a")
        cache.write_back("How can I renew a passport?", "Fill in form DS-82 and mail it.", tenant="a")
        assert cache.stats().entries == 1 and cache.stats().keys == 2
    with MemCache(pg_url, embedder=embedder, policy=ThresholdPolicy(0.75)) as cache:
        assert cache.lookup("passport renewal: how?", tenant="a").hit is not None
        assert cache.lookup("How do I renew my passport?", tenant="b").hit is None
        assert cache.forget(tenant="a") == 1 and cache.stats().entries == 0


@pytest.mark.parametrize("same_query", [False, True])
def test_a_write_back_that_meets_a_concurrent_insert_of_the_same_answer_joins_it(pg_url, monkeypatch, same_query):
    """Regression: two processes writing the same answer in one scope at once. The second insert
    waited for the first, then failed the whole transaction on the unique index, and three such
    failures in a row (with deletes between) surfaced as a StoreError under concurrent churn.
    Now the second joins the first's entry (and its key, for the same query) in the same
    transaction, with no retry needed."""
    import threading
    import time

    from memcache import store as store_module
    from memcache.scope import build_scope
    from memcache.store import Store, _add_answer, utcnow

    monkeypatch.setattr(store_module, "_retryable", lambda exc: False)  # a conflict would now surface
    scope = build_scope(tenant="t", model="m", params={})
    first, second = Store(pg_url), Store(pg_url)
    try:
        with first.engine.connect() as conn:
            transaction = conn.begin()
            mine = _add_answer(conn, scope, "How do I renew my passport?", "h1", None, "Form DS-82.", "m", None, None,
                               None, utcnow(), first.writer)  # fmt: skip
            results, errors = [], []

            def write() -> None:
                try:
                    results.append(second.add_answer(scope=scope, query="Renewing a passport?",
                                                     normalized_hash="h1" if same_query else "h2", embedding=None,
                                                     answer="Form DS-82.", source_model="m"))  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            other = threading.Thread(target=write)
            other.start()
            time.sleep(0.5)  # the other insert now waits on this transaction's row
            transaction.commit()
            other.join(10)
        assert errors == []
        (joined,) = results
        assert joined.entry_id == mine.entry_id and not joined.new_entry
        assert joined.new_key is not same_query and (joined.key_id == mine.key_id) is same_query
        assert first.counts()[:2] == (1, 1 if same_query else 2)
    finally:
        first.close()
        second.close()
