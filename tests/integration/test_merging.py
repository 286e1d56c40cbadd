"""Entries that say the same are merged when the hindsight labels bring them together (real stack:
the packaged model, FAISS, SQLite and PostgreSQL)."""

import time

import pytest
from sqlalchemy import create_engine, select

from memcache import CalibratedPolicy, EmbeddingJudge, LLMJudge, MemCache
from memcache.schema import ChangeRow

FRANCE = ("What is the capital of France?", "The capital of France is Paris.")
FRANCE_AGAIN = ("Capital of France?", "Paris is the capital of France.")
OTHERS = [  # eight paid answers on other topics: with the two above, the tenth starts a relabel
    ("How long do I bake bread?", "Bake the bread for 40 minutes at 220 degrees."),
    ("How do I reset my password?", "Open Settings and choose Reset password."),
    ("When does the store open?", "The store opens at nine on weekdays."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ("How far is the Moon?", "The Moon is about 384,000 kilometres from Earth."),
    ("What colour is the sky?", "The sky looks blue on a clear day."),
]


class CountingJudge(EmbeddingJudge):
    def __init__(self, embedder, threshold):
        super().__init__(embedder, threshold)
        self.pairs = []

    def same_answer(self, query, answer, reference):
        self.pairs.append(frozenset((answer, reference)))
        return super().same_answer(query, answer, reference)


def _cache(url, embedder, judge):
    return MemCache(url, embedder=embedder, policy=CalibratedPolicy(0.02, seed=0), judge=judge,
                    relabel_in_background=False)  # fmt: skip


@pytest.mark.parametrize("store", ["db_url", "pg_url"])
def test_two_entries_that_say_the_same_become_one(request, store, embedder):
    """Two paid answers of one question, each stored as an entry of its own (written without a
    lookup, so no judge compared them), are merged at the next relabel: the keys move to the kept
    entry, its answer is served for both wordings, and another process follows the change."""
    url = request.getfixturevalue(store)
    judge = CountingJudge(embedder, 0.8)
    with _cache(url, embedder, judge) as cache, _cache(url, embedder, EmbeddingJudge(embedder, 0.8)) as peer:
        first = cache.write_back(*FRANCE)
        second = cache.write_back(*FRANCE_AGAIN)
        assert second.id != first.id  # no lookup, no judge: an entry of its own
        peer.memory.sync()
        assert peer.memory.entries == 2
        for question, answer in OTHERS:  # the tenth paid answer asks the window again
            cache.write_back(question, answer)
        merger = cache.controller.merger
        assert merger.merged == 1 and 0 < merger.calls <= 0.25 * (len(OTHERS) + 2)  # its share of paid answers
        assert cache.stats().entries == len(OTHERS) + 1 and cache.stats().keys == len(OTHERS) + 2
        assert cache.get(second.id) is None and cache.stats().merged_entries == 1
        kept = cache.get(first.id)
        assert set(kept.queries) == {FRANCE[0], FRANCE_AGAIN[0]} and kept.answer == FRANCE[1]
        hit = cache.lookup(FRANCE_AGAIN[0])
        assert hit.hit is not None and hit.hit.entry_id == first.id and hit.hit.answer == FRANCE[1]
        assert len(judge.pairs) == len(set(judge.pairs))  # each pair judged once

        peer.memory.sync()  # another process: the key moved, the entry is gone
        assert peer.memory.entries == len(OTHERS) + 1
        moved = cache.memory.exact_entry(cache.lookup(FRANCE_AGAIN[0]).scope.key, FRANCE_AGAIN[0])
        assert moved == first.id
        assert peer.lookup(FRANCE_AGAIN[0]).hit.entry_id == first.id

    engine = create_engine(url)
    with engine.connect() as conn:
        kinds = [
            k for (k,) in conn.execute(select(ChangeRow.kind).where(ChangeRow.entry_id.in_([first.id, second.id])))
        ]
    engine.dispose()
    assert kinds.count("move") == 1 and kinds.count("drop") == 1
    with _cache(url, embedder, EmbeddingJudge(embedder, 0.8)) as reopened:  # nothing lost on restart
        assert reopened.stats().entries == len(OTHERS) + 1 and reopened.stats().lifetime["merged_entries"] == 1
        assert reopened.lookup(FRANCE_AGAIN[0]).hit.entry_id == first.id


@pytest.mark.parametrize("store", ["db_url", "pg_url"])
def test_a_merge_keeps_one_key_per_query_and_adds_the_counters(request, store, embedder):
    url = request.getfixturevalue(store)
    with _cache(url, embedder, EmbeddingJudge(embedder, 0.8)) as cache:
        first = cache.write_back(*FRANCE)
        second = cache.write_back(FRANCE_AGAIN[0], FRANCE_AGAIN[1])
        cache.write_back(FRANCE[0], FRANCE_AGAIN[1])  # the same query under both entries
        scope = cache.lookup(FRANCE[0]).scope.key
        assert cache.memory.merge(first.id, second.id, scope)
        assert set(cache.get(first.id).queries) == {FRANCE[0], FRANCE_AGAIN[0]}
        assert cache.stats().keys == 2 and cache.memory.key_count(first.id) == 2
        assert not cache.memory.merge(first.id, second.id, scope)  # gone: nothing changes
        other = cache.write_back("Who wrote Hamlet?", "William Shakespeare wrote Hamlet.")
        assert not cache.memory.merge(first.id, other.id, "another scope")
        assert cache.stats().entries == 2


def test_an_expired_entry_is_not_merged(db_url, embedder):
    with MemCache(db_url, embedder=embedder, judge=EmbeddingJudge(embedder, 0.8), ttl=0.3) as cache:
        first = cache.write_back(*FRANCE)
        time.sleep(0.4)
        second = cache.write_back(*FRANCE_AGAIN)
        assert not cache.memory.merge(second.id, first.id, cache.lookup(FRANCE[0]).scope.key)
        assert cache.get(second.id).queries == (FRANCE_AGAIN[0],)


def test_an_llm_judge_compares_several_entries_in_one_call_and_its_calls_are_counted(db_url, embedder, llm_kwargs):
    """Through LiteLLM over HTTP (the stub judge finds answers with the same first word the same)."""
    answers = ["Paris is the capital.", "Paris lies on the Seine and is the capital."]
    others = [
        (q, f"{word} {a}") for word, (q, a) in zip("Alpha Beta Gamma Delta Epsilon Zeta Eta Theta".split(), OTHERS)
    ]
    with _cache(db_url, embedder, LLMJudge("openai/judge", **llm_kwargs)) as cache:
        first = cache.write_back(FRANCE[0], answers[0])
        second = cache.write_back(FRANCE_AGAIN[0], answers[1])
        assert cache.stats().judge_calls == 0  # written without a lookup: nothing judged yet
        for question, answer in others:
            cache.write_back(question, answer)
        merger = cache.controller.merger
        assert merger.merged == 1 and cache.get(second.id) is None
        assert set(cache.get(first.id).queries) == {FRANCE[0], FRANCE_AGAIN[0]}
        assert cache.stats().judge_calls == merger.calls <= 0.25 * 10
