"""LiteLLM's own caching path (caching=True) served by memcache, over LiteLLM's real HTTP client."""

from __future__ import annotations

import asyncio

import litellm
import pytest

from memcache import MemCache, ThresholdPolicy, cache_info
from memcache.adapters.litellm import MemCacheLiteLLMCache

MODEL = "openai/stub-strong"


@pytest.fixture
def backend(db_url, embedder):
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8)) as cache:
        backend = MemCacheLiteLLMCache(cache)
        previous, litellm.cache = litellm.cache, backend
        yield backend
        litellm.cache = previous


def call(text, llm_kwargs, **kwargs):
    return litellm.completion(
        model=MODEL, messages=[{"role": "user", "content": text}], caching=True, **llm_kwargs, **kwargs
    )


def test_miss_then_paraphrase_hit_reported_the_litellm_way(backend, stub_llm, llm_kwargs):
    calls = len(stub_llm.calls)
    first = call("What is the boiling point of water?", llm_kwargs)
    assert not first._hidden_params.get("cache_hit")
    hit = call("what's the boiling point of water", llm_kwargs)
    assert hit._hidden_params["cache_hit"] is True
    info = cache_info(hit)
    assert info.outcome == "hit" and info.similarity > 0.8 and 0 <= info.confidence <= 1
    assert hit.choices[0].message.content == first.choices[0].message.content
    assert len(stub_llm.calls) == calls + 1


def test_scope_follows_answer_changing_params(backend, llm_kwargs):
    call("Describe the sea.", llm_kwargs, temperature=0)
    assert call("Describe the sea.", llm_kwargs, temperature=0)._hidden_params.get("cache_hit") is True
    assert not call("Describe the sea.", llm_kwargs, temperature=1)._hidden_params.get("cache_hit")


async def test_async_completion(backend, llm_kwargs):
    messages = [{"role": "user", "content": "Name the largest desert."}]
    await litellm.acompletion(model=MODEL, messages=messages, caching=True, **llm_kwargs)
    for _ in range(100):  # LiteLLM writes the cache from a background task after it returns
        if backend.memcache.stats().entries:
            break
        await asyncio.sleep(0.05)
    again = await litellm.acompletion(model=MODEL, messages=messages, caching=True, **llm_kwargs)
    assert again._hidden_params["cache_hit"] is True and cache_info(again).exact


def test_unverified_answers_are_not_stored(backend, llm_kwargs):
    call("TRUNCATE a long essay about rivers", llm_kwargs)
    assert backend.memcache.stats().entries == 0
    with pytest.raises(litellm.InternalServerError):
        call("FAIL-500 anything", llm_kwargs)
    assert backend.memcache.stats().entries == 0


def test_a_litellm_cache_set_by_the_application_never_answers_for_the_strong_model(
    backend, tmp_path, embedder, stub_llm, llm_kwargs
):
    """memcache is the cache: with `litellm.cache` set, its own strong call still reaches the model."""
    question = "Name the largest planet in the solar system."
    call(question, llm_kwargs)  # now in litellm.cache (the backend)
    calls = len(stub_llm.calls)
    with MemCache(f"sqlite:///{tmp_path / 'own.db'}", embedder=embedder, strong_model=MODEL) as cache:
        response = cache.completion(messages=[{"role": "user", "content": question}], **llm_kwargs)
    assert cache_info(response).outcome == "miss" and len(stub_llm.calls) == calls + 1
