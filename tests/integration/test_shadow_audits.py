"""Shadow audits on the real stack: the audited hit is served at once, the strong model checks it
in the background (LiteLLM over real HTTP to the loopback stub), and its answer becomes a label."""

from __future__ import annotations

import asyncio
import threading

import pytest
from policies import AuditEveryHit, HoldEveryHit

from memcache import CalibratedPolicy, MemCache, cache_info
from memcache import controller as controller_module
from memcache.certify import poisson_upper

MODEL = "openai/stub-strong"
STORED = "Paris is the capital of France."
QUESTION = "What is the capital of France?"
PARAPHRASE = "which city is the capital of france"


@pytest.fixture
def make_cache(db_url, embedder):
    opened = []

    def make(policy=None, **kwargs):
        policy = policy or AuditEveryHit(0.75)
        cache = MemCache(db_url, embedder=embedder, policy=policy, strong_model=MODEL, **kwargs)
        cache.write_back(QUESTION, STORED, model=MODEL)
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        cache.close()


def ask(cache, text, llm_kwargs, **kwargs):
    return cache.completion(messages=[{"role": "user", "content": text}], model=MODEL, **llm_kwargs, **kwargs)


def test_audited_hit_is_served_and_checked_in_the_background(make_cache, stub_llm, llm_kwargs):
    cache = make_cache()
    calls, before = len(stub_llm.calls), cache.stats()
    response = ask(cache, PARAPHRASE, llm_kwargs)
    info = cache_info(response)
    assert response.choices[0].message.content == STORED
    assert info.outcome == "hit" and info.audited and not info.stored
    cache.wait_for_learning()
    assert len(stub_llm.calls) == calls + 1  # the audit is one paid call
    after = cache.stats()
    assert after.labels == before.labels + 1 and after.audits == before.audits + 1 and after.hits == before.hits + 1
    # the strong model's answer (here another one) was written back under the audited query
    again = cache.lookup(PARAPHRASE, model=MODEL).hit
    assert again is not None and again.exact and again.answer == f"Answer to: {PARAPHRASE}"


def test_a_held_audit_is_not_served_but_answered_by_the_strong_model(make_cache, stub_llm, llm_kwargs):
    """After a traffic shift the policy holds would-be hits: checked first, never served stale."""
    cache = make_cache(HoldEveryHit(0.75))
    calls, before = len(stub_llm.calls), cache.stats()
    response = ask(cache, PARAPHRASE, llm_kwargs)
    info = cache_info(response)
    assert response.choices[0].message.content == f"Answer to: {PARAPHRASE}"
    assert info.outcome == "audit" and not info.audited and info.stored
    assert len(stub_llm.calls) == calls + 1
    after = cache.stats()
    assert after.hits == before.hits and after.audits == before.audits + 1 and after.labels == before.labels + 1
    assert list(cache.store.iter_audit_claims())[-1] == (pytest.approx(info.confidence), False)


def test_audit_claims_are_stored_and_reloaded_by_the_calibrated_policy(make_cache, db_url, embedder, llm_kwargs):
    """What the audit found against the confidence the hit was served with survives a restart."""
    cache = make_cache()
    response = ask(cache, PARAPHRASE, llm_kwargs)
    claimed = cache_info(response).confidence
    cache.wait_for_learning()  # the stub answers otherwise: the audit finds the hit wrong
    cache.close()
    policy = CalibratedPolicy(0.02, seed=0)
    with MemCache(db_url, embedder=embedder, policy=policy, strong_model=MODEL) as reopened:
        reopened.warm_up()
        assert list(reopened.store.iter_audit_claims()) == [(pytest.approx(claimed), False)]
        assert policy.claim_ratio == pytest.approx((poisson_upper(1, 0.95) + 2) / (1 - claimed + 2))
        stats = reopened.stats()
        assert stats.claim_ratio == policy.claim_ratio and stats.shifts_detected == 0


def test_failed_audit_writes_nothing_and_the_user_keeps_the_hit(make_cache, stub_llm, llm_kwargs):
    cache = make_cache()
    before = cache.stats()
    response = ask(cache, "What is the capital of France? FAIL-500", llm_kwargs)
    assert response.choices[0].message.content == STORED and cache_info(response).audited
    cache.wait_for_learning()
    after = cache.stats()
    assert (after.entries, after.keys, after.labels, after.write_backs) == (
        before.entries,
        before.keys,
        before.labels,
        before.write_backs,
    )


def test_streamed_audited_hit_is_checked_without_streaming(make_cache, stub_llm, llm_kwargs):
    cache = make_cache()
    calls = len(stub_llm.calls)
    stream = ask(cache, PARAPHRASE, llm_kwargs, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == STORED and cache_info(stream).audited
    cache.wait_for_learning()
    assert len(stub_llm.calls) == calls + 1 and not stub_llm.calls[-1].get("stream")
    assert cache.stats().labels == 1


def test_escalated_audit_waits_for_the_strong_answer(make_cache, llm_kwargs):
    cache = make_cache(shadow_audits=False)
    response = ask(cache, PARAPHRASE, llm_kwargs)
    info = cache_info(response)
    assert response.choices[0].message.content == f"Answer to: {PARAPHRASE}"
    assert info.outcome == "audit" and not info.audited and info.stored
    assert cache.stats().labels == 1 and cache.stats().hits == 0
    assert cache.shadow_hit(cache.lookup("which city is france's capital", model=MODEL)) is None


def test_async_completion_audits_on_a_worker_thread(make_cache, stub_llm, llm_kwargs):
    cache = make_cache()

    async def run():
        response = await cache.acompletion(
            messages=[{"role": "user", "content": PARAPHRASE}], model=MODEL, **llm_kwargs
        )
        await cache.await_learning()
        return response

    response = asyncio.run(run())
    assert response.choices[0].message.content == STORED and cache_info(response).audited
    assert cache.stats().labels == 1


def test_decorated_functions_are_asked_after_the_stored_answer_is_returned(db_url, embedder):
    asked = []
    with MemCache(db_url, embedder=embedder, policy=AuditEveryHit(0.75)) as cache:

        @cache.cached(model="sync-fn")
        def answer(prompt: str) -> str:
            asked.append(prompt)
            return f"checked: {prompt}"

        assert answer(QUESTION) == f"checked: {QUESTION}"  # a miss
        assert answer(PARAPHRASE) == f"checked: {QUESTION}"  # audited: the stored answer, at once
        cache.wait_for_learning()
        assert asked == [QUESTION, PARAPHRASE] and cache.stats().labels == 1

        @cache.cached(model="async-fn")
        async def async_answer(prompt: str) -> str:
            asked.append(prompt)
            return f"async: {prompt}"

        async def run():
            first = await async_answer(QUESTION)
            second = await async_answer(PARAPHRASE)
            await cache.await_learning()
            return first, second

        assert asyncio.run(run()) == (f"async: {QUESTION}", f"async: {QUESTION}")
        assert asked[2:] == [QUESTION, PARAPHRASE] and cache.stats().labels == 2


def test_too_many_unfinished_audits_make_callers_wait(db_url, embedder, monkeypatch):
    monkeypatch.setattr(controller_module, "MAX_PENDING_AUDITS", 1)
    release = threading.Event()
    with MemCache(db_url, embedder=embedder, policy=AuditEveryHit(0.75)) as cache:

        @cache.cached(model="slow-fn")
        def answer(prompt: str) -> str:
            if prompt == PARAPHRASE:  # this check hangs until released
                release.wait(10)
            return f"checked: {prompt}"

        answer(QUESTION)
        assert answer(PARAPHRASE) == f"checked: {QUESTION}"  # served; its check is still running
        other = "tell me the capital of france"
        assert answer(other) == f"checked: {other}"  # one check unfinished: this caller waits for its own
        release.set()
        cache.wait_for_learning()
        assert cache.stats().labels == 2
