"""LangChain through its real invoke/ainvoke/batch paths, with langchain-core's own fake models."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

from langchain_core.globals import set_llm_cache  # noqa: E402
from langchain_core.language_models.fake import FakeListLLM  # noqa: E402
from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402

from memcache import MemCache, ThresholdPolicy  # noqa: E402
from memcache.adapters.langchain import MemCacheSemanticCache  # noqa: E402


@pytest.fixture
def lc_cache(db_url, embedder):
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8)) as cache:
        adapter = MemCacheSemanticCache(cache)
        yield adapter
    set_llm_cache(None)


def test_chat_model_hits_on_paraphrase_via_set_llm_cache(lc_cache):
    set_llm_cache(lc_cache)
    model = FakeListChatModel(responses=["Paris is the capital of France.", "SECOND CALL"])
    first = model.invoke("What is the capital of France?")
    again = model.invoke("what's the capital of france")
    assert first.content == again.content == "Paris is the capital of France."
    assert isinstance(again, AIMessage)
    assert lc_cache.cache.stats().entries == 1


def test_per_model_cache_and_batch(lc_cache):
    model = FakeListChatModel(responses=["one", "two", "three", "four"], cache=lc_cache)
    answers = model.batch(["How tall is Everest?", "How deep is the Mariana Trench?"])
    repeated = model.batch(["how tall is everest", "how deep is the mariana trench"])
    assert [a.content for a in repeated] == [a.content for a in answers]


def test_conversations_never_cross_hit(lc_cache):
    model = FakeListChatModel(responses=["He is 45.", "He is 12.", "He is 99."], cache=lc_cache)
    about_dad = [HumanMessage("Tell me about my dad."), AIMessage("Sure."), HumanMessage("How old is he?")]
    about_son = [HumanMessage("Tell me about my son."), AIMessage("Sure."), HumanMessage("How old is he?")]
    assert model.invoke(about_dad).content == "He is 45."
    assert model.invoke(about_son).content == "He is 12."
    assert model.invoke(about_dad).content == "He is 45."
    system = [SystemMessage("Answer in French."), HumanMessage("How old is he?")]
    assert model.invoke(system).content == "He is 99."


def test_generations_come_back_faithfully(lc_cache):
    from langchain_core.outputs import ChatGeneration

    prompt = '[{"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "HumanMessage"], "kwargs": {"content": "Ping?", "type": "human"}}]'
    stored = [
        ChatGeneration(
            message=AIMessage("Pong.", response_metadata={"model": "x", "tokens": 3}),
            generation_info={"finish_reason": "stop"},
        )
    ]
    assert lc_cache.lookup(prompt, "llm-a") is None
    lc_cache.update(prompt, "llm-a", stored)
    back = lc_cache.lookup(prompt, "llm-a")
    assert back == stored and back[0].message.response_metadata == {"model": "x", "tokens": 3}
    assert lc_cache.lookup(prompt, "llm-b") is None  # another model/params string is another scope


def test_plain_llm_and_clear(lc_cache):
    set_llm_cache(lc_cache)
    llm = FakeListLLM(responses=["Rome.", "Milan."])
    assert llm.invoke("What is the capital of Italy?") == "Rome."
    assert llm.invoke("What is the capital of Italy?") == "Rome."
    lc_cache.clear()
    assert llm.invoke("What is the capital of Italy?") == "Milan."


async def test_native_async_paths(lc_cache):
    model = FakeListChatModel(responses=["async one", "async two"], cache=lc_cache)
    first = await model.ainvoke("Name a prime number.")
    again = await model.ainvoke("name a prime number")
    assert first.content == again.content == "async one"
    await lc_cache.aclear()
    assert lc_cache.cache.stats().entries == 0
