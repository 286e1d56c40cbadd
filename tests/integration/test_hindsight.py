"""Hindsight labels on the real stack: packaged MiniLM, FAISS, SQLite, the calibrated policy."""

from __future__ import annotations

import pytest

from memcache import CalibratedPolicy, MemCache

TOPICS = {
    "[password]": ["How do I reset my password?", "I forgot my password, how can I change it?"],
    "[refund]": ["How do I get a refund for my order?", "Can I get my money back for a purchase?"],
    "[shipping]": ["How long does shipping take?", "When will my package arrive?"],
    "[hours]": ["What are your opening hours?", "When is the store open?"],
    "[cancel]": ["How do I cancel my subscription?", "I want to stop my monthly plan."],
}


class RecordingPolicy(CalibratedPolicy):
    """Keeps every hindsight batch it is given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def set_hindsight(self, examples, entries):
        self.batches.append(list(examples))
        super().set_hindsight(examples, entries)


def pay(cache, question, answer):
    result = cache.lookup(question)
    assert result.hit is None  # nothing is certified yet: every question is paid for
    return cache.write_back(result, answer)


def test_paid_queries_are_asked_again_against_todays_index(db_url, embedder):
    policy = RecordingPolicy(0.02, seed=0)
    with MemCache(db_url, embedder=embedder, policy=policy, hindsight_window=100, relabel_in_background=False) as cache:
        imported = cache.write_back("What is the capital of France?", "[paris]", paid=False)
        first_of_each = {answer: pay(cache, questions[0], answer) for answer, questions in TOPICS.items()}
        assert not policy.batches
        paid = {answer: pay(cache, questions[1], answer) for answer, questions in TOPICS.items()}
        assert len(policy.batches) == 1  # due after 10 paid keys
        examples = policy.batches[0]
        assert len(examples) == 10
        assert {e.entry_id for e in examples} == {entry.id for entry in paid.values()}
        assert imported.id not in {e.entry_id for e in examples}  # imported keys are never labels
        for answer, entry in first_of_each.items():
            assert entry.id == paid[answer].id  # the paraphrase joined its topic's entry
        # On arrival the first question of each topic met only other topics (wrong); asked
        # again today its paraphrase is its nearest neighbour (right).
        right = [e.candidates[0].entry_id == e.entry_id for e in examples]
        assert sum(right) >= 8, right
        # its own entry's centroid leaves the key itself out: with two keys, that is the other key
        for example in examples:
            own = [c for c in example.candidates if c.entry_id == example.entry_id]
            assert len(own) == 1 and own[0].entry_similarity == pytest.approx(own[0].similarity, abs=1e-5)
            assert own[0].entry_gap is None  # one key left: no similarity among its keys to compare with
        # ten arrival-time labels (the imported key was the first one's neighbour), each
        # replaced by its key's hindsight label: still ten in use, not twenty
        assert policy.labels == 10
        assert policy.hindsight_labels == 10 and policy.labels_in_use == 10


def test_hits_and_deleted_entries_never_become_hindsight_labels(db_url, embedder):
    policy = RecordingPolicy(0.02, seed=0)
    with MemCache(db_url, embedder=embedder, policy=policy, hindsight_window=100) as cache:  # in the background
        entries = {answer: pay(cache, questions[0], answer) for answer, questions in TOPICS.items()}
        cache.invalidate(entries["[refund]"].id)
        for answer, questions in TOPICS.items():
            pay(cache, questions[1], answer)
        # write-backs of served hits are not paid: they never enter the window
        cache.write_back("When does the shop open?", "[hours]", paid=False)
        cache.wait_for_learning()
        examples = policy.batches[-1]
        refund = [e for e in examples if e.entry_id == entries["[refund]"].id]
        assert not refund  # its key was deleted with its entry
        assert all(c.entry_id != entries["[refund]"].id for e in examples for c in e.candidates)
        assert len(examples) == 9


def test_hindsight_can_be_turned_off(db_url, embedder):
    policy = RecordingPolicy(0.02, seed=0)
    with MemCache(db_url, embedder=embedder, policy=policy, hindsight_window=0) as cache:
        for answer, questions in TOPICS.items():
            for question in questions:
                pay(cache, question, answer)
        assert not policy.batches and policy.labels == 9
