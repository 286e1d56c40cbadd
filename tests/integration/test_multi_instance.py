"""Several processes on one store: what one writes or deletes reaches the others' lookups within 1 s."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memcache import MemCache, ThresholdPolicy

PEER = Path(__file__).with_name("peer.py")


class Peer:
    def __init__(self, url: str, *, wait: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if wait:
            self.ready()

    def ready(self) -> None:
        assert self.proc.stdout.readline().strip() == "ready"

    def __call__(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        assert reply.startswith("ok "), reply
        return reply[3:]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def seen_within(check, seconds: float = 1.0) -> float:
    """Seconds until check() held, polling; fails past `seconds`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not visible within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


def follow_a_peer(url: str, embedder) -> None:
    with MemCache(url, embedder=embedder, policy=ThresholdPolicy(0.8)) as local:
        local.lookup("warm up")
        peer = Peer(url)
        try:
            entry = int(peer("write acme|How do I rotate my API key?|Settings, then API keys, then Rotate."))
            seen_within(lambda: local.lookup("how can i rotate my api key", tenant="acme").hit is not None)
            assert local.lookup("How do I rotate my API key?", tenant="acme").hit.exact
            peer("write beta|What are the office hours?|9 to 5.")
            seen_within(lambda: local.lookup("What are the office hours?", tenant="beta").hit is not None)
            assert peer(f"invalidate {entry}") == "True"
            seen_within(lambda: local.lookup("How do I rotate my API key?", tenant="acme").hit is None)
            assert peer("forget beta") == "1"
            seen_within(lambda: local.lookup("What are the office hours?", tenant="beta").hit is None)
            local.write_back("Where is the car park?", "Behind building B.", tenant="acme")
            assert local.stats().entries == 1
        finally:
            peer.close()


def test_two_processes_on_sqlite(db_url, embedder):
    follow_a_peer(db_url, embedder)


@pytest.mark.skipif(not os.environ.get("MEMCACHE_TEST_DATABASE_URL"), reason="MEMCACHE_TEST_DATABASE_URL is not set")
def test_two_processes_on_postgres(pg_url, embedder):
    follow_a_peer(pg_url, embedder)


def test_sync_can_be_turned_off(db_url, embedder):
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8), sync_interval=None) as local:
        local.lookup("warm up")
        with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8)) as other:
            other.write_back("What is the wifi password?", "hunter2")
        time.sleep(0.6)
        assert local.lookup("What is the wifi password?").hit is None
        assert local.sync() >= 1
        assert local.lookup("What is the wifi password?").hit is not None


@pytest.mark.skipif(not os.environ.get("MEMCACHE_TEST_DATABASE_URL"), reason="MEMCACHE_TEST_DATABASE_URL is not set")
def test_three_processes_write_at_once_and_each_sees_the_others(pg_url):
    questions = {
        0: ("How do I rotate my API key?", "Settings, then API keys, then Rotate."),
        1: ("What are the office hours?", "9 to 5."),
        2: ("Where is the car park?", "Behind building B."),
    }
    peers = [Peer(pg_url, wait=False) for _ in questions]  # start together: three model loads at once
    try:
        for peer in peers:
            peer.ready()
        for i, peer in enumerate(peers):  # each writes without waiting for the others
            peer.proc.stdin.write(f"write acme|{questions[i][0]}|{questions[i][1]}\n")
            peer.proc.stdin.flush()
        for peer in peers:
            assert peer.proc.stdout.readline().startswith("ok ")
        for i, peer in enumerate(peers):
            for j, (question, answer) in questions.items():
                if j != i:
                    seen_within(lambda p=peer, q=question, a=answer: p(f"lookup acme|{q}") == a)
                    assert peer(f"lookup other|{question}") == "None"  # another tenant sees nothing
    finally:
        for peer in peers:
            peer.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_check_made_in_one_process_reaches_the_others(backend, tmp_path, embedder, request):
    """A paid answer found a stored answer wrong in one process: the others' policies see the
    entry's failure too (its failure rate is a feature), not only after a restart."""
    url = f"sqlite:///{tmp_path / 'memcache.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    question, paraphrase = "How do I rotate my API key?", "How can I rotate an API key?"
    with (
        MemCache(url, embedder=embedder, policy=ThresholdPolicy(0.99)) as serving,
        MemCache(url, embedder=embedder, policy=ThresholdPolicy(0.99)) as paying,
    ):
        entry = serving.write_back(question, "Settings, then API keys, then Rotate.")
        paying.sync()
        missed = paying.lookup(paraphrase)
        assert missed.hit is None and missed.decision.entry_id == entry.id
        paying.write_back(missed, "Open the API page and press Rotate.")  # differs: the entry failed a check

        def checks_of(cache: MemCache) -> tuple[int, int] | None:
            stats = cache.memory.entry_stats.get(entry.id)
            return None if stats is None else (stats.checks, stats.failures)

        assert checks_of(paying) == (1, 1)
        serving.sync()  # what its lookups do every sync_interval
        assert checks_of(serving) == (1, 1)  # was None until a restart


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_instance_learns_the_labels_the_others_paid_for(backend, tmp_path, embedder, request):
    """Labels (and audits' claims) one instance pays for reach the others' policies at their next
    sync, once each, and their keys join the others' hindsight windows; an instance never learns
    its own twice, and a restart loads them all once."""
    url = f"sqlite:///{tmp_path / 'memcache.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")

    def instance() -> MemCache:  # syncs only when told: a slow step must not sync early
        cache = MemCache(url, embedder=embedder, relabel_in_background=False, sync_interval=None)
        cache.warm_up()
        return cache

    def paid(cache: MemCache, question: str, answer: str, *, audited: bool = False) -> None:
        result = cache.lookup(question)
        assert result.hit is None and result.decision.features
        if audited:  # as if served at 0.99 and checked: the label carries the claim
            result = dataclasses.replace(result, decision=dataclasses.replace(result.decision, action="audit",
                                                                               confidence=0.99))  # fmt: skip
        cache.write_back(result, answer)

    follower, payer = instance(), instance()
    try:
        follower.write_back("How do I reset my password?", "Use the reset link.", paid=False)  # seeded, not paid
        payer.sync()
        paid(payer, "I forgot my password, what now?", "Use the reset link.")
        paid(payer, "How do I change my password?", "Open Settings, then Security.")
        paid(payer, "Can I reset my password by phone?", "Use the reset link.", audited=True)
        paid(follower, "Where do I reset the password?", "Use the reset link.")
        assert (payer.policy.labels, follower.policy.labels) == (3, 1)
        follower.sync()
        payer.sync()
        assert (payer.policy.labels, follower.policy.labels) == (4, 4)
        assert len(follower.policy._claims) == len(payer.policy._claims) == 1  # the audit's claim too
        assert follower.policy.served == 5  # an audit elsewhere: at least 1 / 0.2 hits were served there
        scope = follower.lookup("Can I reset my password by phone?").scope.key
        assert follower.policy.scope_served(scope) == 5  # ... in the scope of the key its answer was stored under
        assert len(follower.controller._hindsight) == len(payer.controller._hindsight) == 4  # every paid key
        follower.sync()  # nothing new: nothing learned again
        assert follower.policy.labels == 4
        with instance() as restarted:
            restarted.sync()
            assert restarted.policy.labels == 4 and len(restarted.policy._claims) == 1
            assert restarted.policy.scope_served(scope) == 5
    finally:
        follower.close()
        payer.close()


def test_the_cheap_paths_labels_reach_the_other_instances_too(db_url, embedder):
    from memcache.cheap_gate import GATE_FEATURES, CheapGate

    with (
        MemCache(db_url, embedder=embedder, cheap_gate=CheapGate(0.02), relabel_in_background=False) as follower,
        MemCache(db_url, embedder=embedder, cheap_gate=CheapGate(0.02), relabel_in_background=False) as payer,
    ):
        follower.warm_up()
        payer.warm_up()
        for correct in (True, True, False):
            payer.store.add_cheap_label([0.5] * len(GATE_FEATURES), correct, None)  # what `learn_cheap` stores
            payer.controller.cheap_gate.observe([0.5] * len(GATE_FEATURES), correct)  # ... and teaches its own gate
        follower.sync()
        payer.sync()
        assert follower.controller.cheap_gate.labels == payer.controller.cheap_gate.labels == 3


def test_the_workers_replay_deals_a_stream_over_instances(data_dir, vectors, monkeypatch, tmp_path):
    from memcache.eval import workers

    monkeypatch.setattr(workers, "SentenceTransformerEmbedder", lambda: vectors)
    out = tmp_path / "workers.json"
    report = workers.main([str(data_dir / "clinc150.jsonl"), "--family", "validation", "--seeds", "0",
                           "--workers", "2", "--limit", "60", "--own", "--json", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["summary"] == report["summary"]
    assert set(report["summary"]) == {"one instance", "2 instances", "2 instances, own labels only"}
    assert len(report["runs"]) == 9 and all(run["queries"] == 60 for run in report["runs"])
    for run in report["runs"]:
        assert 0 <= run["wrong_hits"] <= run["hits"] <= 60
        assert run["false_hit_rate"] == (run["wrong_hits"] / run["hits"] if run["hits"] else 0.0)


def test_the_workers_replay_of_drift_streams_sets_pooled_shift_tests_beside_lone_ones(
    data_dir, vectors, monkeypatch, tmp_path
):
    from memcache.eval import workers

    monkeypatch.setattr(workers, "SentenceTransformerEmbedder", lambda: vectors)
    report = workers.main([str(data_dir / "clinc150.jsonl"), "--family", "validation", "--seeds", "0",
                           "--workers", "2", "--limit", "40", "--drift"])  # fmt: skip
    assert set(report["summary"]) == {"one instance", "2 instances", "2 instances, each testing for a shift alone"}
    assert len(report["runs"]) == 6 and {run["oos_from"] for run in report["runs"]} == {1000, 2000}
    for run in report["runs"]:
        assert run["queries"] == 40 and run["hits_after"] == run["wrong_hits_after"] == 0  # cut before the shift
        assert run["shift_alarms"] == []
    for summary in report["summary"].values():
        assert summary["first_alarm_after_shift"] == [None, None]


def test_a_label_paid_for_in_another_process_is_learned_here(db_url, embedder):
    with MemCache(db_url, embedder=embedder) as local:
        local.write_back("How do I rotate my API key?", "Settings, then API keys, then Rotate.", tenant="acme")
        peer = Peer(db_url)
        try:
            peer("pay acme|Where can I see my API usage?|Settings, then Usage.")
            peer("pay acme|How do I delete my API key?|Settings, then API keys, then Delete.")
        finally:
            peer.close()
        assert local.policy.labels == 0
        local.sync()
        local.wait_for_learning()
        assert local.policy.labels == 2 and len(local.controller._hindsight) == 3  # its own key, and the two paid there
