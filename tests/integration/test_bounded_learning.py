"""A restart reads only the labels and audit claims the policy keeps (real model, SQLite and
PostgreSQL): with millions of stored labels, a start-up that read them all would take minutes
and the memory of all of them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from memcache import CalibratedPolicy, MemCache


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, db_url):
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else db_url


def test_a_restart_loads_the_newest_labels_and_claims_the_policy_keeps(url, embedder):
    with MemCache(url, embedder=embedder, policy=CalibratedPolicy(0.05, seed=0)) as cache:
        for i in range(30):
            cache.write_back(cache.lookup(f"What is the weather like in city number {i}?"), "Weather answer")
        for claimed, question in (
            (0.9, "what's the weather like in city number 3"),
            (0.8, "weather in city number 7?"),
        ):
            result = cache.lookup(question)  # two audits, stored with the confidence they were served with
            audit = replace(result, decision=replace(result.decision, action="audit", confidence=claimed))
            cache.write_back(audit, "Weather answer")
        stored = list(cache.store.iter_labels())
        assert len(stored) == 31
        assert list(cache.store.iter_labels(limit=10)) == stored[-10:]
        assert [c for c, _ in cache.store.iter_audit_claims()] == [0.9, 0.8]
        assert [c for c, _ in cache.store.iter_audit_claims(limit=1)] == [0.8]

    restarted = CalibratedPolicy(0.05, seed=0, max_labels=10, recent_window=1)
    with MemCache(url, embedder=embedder, policy=restarted) as cache:
        cache.lookup("warm-up question")
        assert restarted.labels == restarted.labels_in_use == 10
        assert [row[:-1] for row in restarted.to_dict()["labels"]] == [features for features, _ in stored[-10:]]
        assert restarted.to_dict()["audit_claims"] == [[0.8, 1]]
