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
