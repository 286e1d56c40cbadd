"""The engine end to end on the real stack: packaged MiniLM, FAISS, SQLite, LiteLLM over loopback HTTP."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from memcache import (
    CalibratedPolicy,
    ConfigError,
    EscalationError,
    InvalidRequestError,
    MemCache,
    SentenceTransformerEmbedder,
    StoreError,
    ThresholdPolicy,
    cache_info,
)

WRITER = Path(__file__).with_name("writer.py")
MODEL = "openai/stub-strong"


@pytest.fixture
def cache(db_url, embedder):
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.75), strong_model=MODEL) as c:
        yield c


def ask(cache, text, llm_kwargs, **kwargs):
    return cache.completion(messages=[{"role": "user", "content": text}], **llm_kwargs, **kwargs)


def test_paraphrase_hits_and_unrelated_query_misses(cache):
    cache.write_back("How do I reset my password?", "Click 'Forgot password' on the login page.")
    hit = cache.lookup("how can i reset my password").hit
    assert hit is not None and hit.answer.startswith("Click") and 0.75 <= hit.similarity < 1.0
    assert 0.0 <= hit.confidence <= 1.0 and not hit.exact
    assert cache.lookup("What is the boiling point of water at sea level?").hit is None


def test_miss_escalates_through_litellm_and_writes_back(cache, stub_llm, llm_kwargs):
    calls = len(stub_llm.calls)
    first = ask(cache, "What is the tallest mountain on Earth?", llm_kwargs)
    assert cache_info(first).outcome == "miss" and cache_info(first).stored
    assert first.choices[0].message.content == "Answer to: What is the tallest mountain on Earth?"
    second = ask(cache, "Which mountain is the tallest on Earth?", llm_kwargs)
    info = cache_info(second)
    assert info.outcome == "hit" and info.similarity > 0.75
    assert second._hidden_params["cache_hit"] is True
    assert second.choices[0].message.content == first.choices[0].message.content
    assert len(stub_llm.calls) == calls + 1


def test_exact_repeat_does_not_run_the_model(cache, embedder):
    cache.write_back("What time zone is Tokyo in?", "Japan Standard Time (UTC+9).")
    before = embedder.encode_calls
    hit = cache.lookup("  What time zone is\tTokyo in?  ").hit  # the same text up to whitespace
    assert hit is not None and hit.exact and hit.similarity == 1.0
    assert embedder.encode_calls == before
    case_variant = cache.lookup("what TIME zone is tokyo in?")  # no case folding: a paraphrase for the policy
    assert embedder.encode_calls == before + 1 and (case_variant.hit is None or not case_variant.hit.exact)


@pytest.mark.parametrize(
    "first, second",
    [
        ({"tenant": "acme"}, {"tenant": "globex"}),
        ({"model": "openai/model-a"}, {"model": "openai/model-b"}),
        ({"temperature": 0.0}, {"temperature": 1.0}),
        ({"system": "Answer in French."}, {"system": "Answer in German."}),
        ({"history": "Tell me about Paris."}, {"history": "Tell me about Rome."}),
    ],
    ids=["tenant", "model", "temperature", "system-prompt", "earlier-turns"],
)
def test_scope_isolation(cache, llm_kwargs, first, second):
    def request(scope):
        messages = []
        if "system" in scope:
            messages.append({"role": "system", "content": scope["system"]})
        if "history" in scope:
            messages += [{"role": "user", "content": scope["history"]}, {"role": "assistant", "content": "Sure."}]
        messages.append({"role": "user", "content": "How old is it?"})
        kwargs = {k: v for k, v in scope.items() if k in ("tenant", "model", "temperature")}
        return cache.completion(messages=messages, **llm_kwargs, **kwargs)

    assert cache_info(request(first)).outcome == "miss"
    assert cache_info(request(first)).outcome == "hit"  # same scope: exact repeat
    assert cache_info(request(second)).outcome == "miss"  # other scope: never the first's answer


def test_cross_tenant_paraphrase_never_hits(cache):
    cache.write_back("What is our refund policy?", "Refunds within 30 days.", tenant="acme")
    assert cache.lookup("what's the refund policy", tenant="acme").hit is not None
    assert cache.lookup("what's the refund policy", tenant="globex").hit is None
    assert cache.lookup("What is our refund policy?", tenant="globex").hit is None


def test_equal_answers_share_one_entry(cache):
    a = cache.write_back("Who wrote Hamlet?", "William Shakespeare")
    b = cache.write_back("Which author wrote the play Hamlet?", "William Shakespeare")
    assert a.id == b.id
    entry = cache.get(a.id)
    assert set(entry.queries) == {"Who wrote Hamlet?", "Which author wrote the play Hamlet?"}
    assert cache.stats().entries == 1 and cache.stats().keys == 2


def test_an_exact_repeat_is_served_the_newest_answer_and_the_older_one_once_that_is_deleted(db_url, embedder):
    question = "What is the capital of France?"
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.75)) as cache:
        old = cache.write_back(question, "Paris")
        new = cache.write_back(question, "Paris, on the Seine")  # a corrected answer: a second entry
        assert new.id != old.id
        assert cache.lookup(question).hit.answer == "Paris, on the Seine"
        assert cache.invalidate(new.id)
        assert cache.entry_of(question) == old.id  # was None: the deletion took the text's older key with it
        assert cache.lookup(question).hit.answer == "Paris"
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.75)) as restarted:
        assert restarted.entry_of(question) == old.id  # the same as a rebuild from the store
        assert restarted.invalidate(old.id) and restarted.entry_of(question) is None


def test_invalidate_and_forget_remove_from_search(cache):
    entry = cache.write_back("What is the speed of light?", "About 299,792 km/s.", tenant="a")
    cache.write_back("What is the speed of sound?", "About 343 m/s.", tenant="b")
    assert cache.lookup("how fast is light", tenant="a").hit is not None
    assert cache.invalidate(entry.id) and not cache.invalidate(entry.id)
    assert cache.lookup("how fast is light", tenant="a").hit is None
    assert cache.lookup("What is the speed of light?", tenant="a").hit is None
    assert cache.forget(tenant="b") == 1
    assert cache.lookup("What is the speed of sound?", tenant="b").hit is None
    assert cache.stats().entries == 0


def test_ttl_expires_entries(db_url, embedder):
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.75), ttl=0.2) as cache:
        cache.write_back("Is the store open today?", "Yes, until 8pm.")
        assert cache.lookup("Is the store open today?").hit is not None
        time.sleep(0.3)
        assert cache.lookup("Is the store open today?").hit is None
        assert cache.stats().entries == 0


def test_verifier_rejects_answers(db_url, embedder):
    with MemCache(db_url, embedder=embedder, verify=lambda q, a: "sorry" not in a.lower()) as cache:
        assert cache.write_back("What is 2+2?", "Sorry, I cannot help.") is None
        assert cache.stats().entries == 0 and cache.stats().rejected_write_backs == 1
        assert cache.write_back("What is 2+2?", "4") is not None


def test_restart_keeps_everything_written_by_another_process(db_url, embedder):
    subprocess.run([sys.executable, str(WRITER), db_url, "5"], check=True, capture_output=True, timeout=120)
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8)) as cache:
        assert cache.stats().entries == 5
        assert cache.lookup("What is fact number 3 about the moon?").hit.answer == "Fact 3: the moon is far away."
        assert cache.lookup("what is fact number 4 about the moon").hit is not None


def test_killed_writer_leaves_a_consistent_store(db_url, embedder, tmp_path):
    proc = subprocess.Popen([sys.executable, str(WRITER), db_url, "-1"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    path = db_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        orphans = conn.execute(
            "SELECT count(*) FROM memcache_entries e WHERE NOT EXISTS (SELECT 1 FROM memcache_keys k WHERE k.entry_id = e.id)"
        ).fetchone()[0]
        dangling = conn.execute(
            "SELECT count(*) FROM memcache_keys k WHERE NOT EXISTS (SELECT 1 FROM memcache_entries e WHERE e.id = k.entry_id)"
        ).fetchone()[0]
        written = conn.execute("SELECT count(*) FROM memcache_entries").fetchone()[0]
    assert orphans == 0 and dangling == 0 and written >= 1
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8)) as cache:
        assert cache.stats().entries == written
        assert cache.lookup("What is fact number 0 about the moon?").hit is not None


def test_concurrent_threads_share_torch_encode_calls(db_url):
    embedder = SentenceTransformerEmbedder(backend="torch")
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.75), strong_model=MODEL) as cache:
        cache.write_back("What is the capital of Italy?", "Rome")
        questions = [f"What is the capital of Italy? Variant {i}" for i in range(32)]
        before = embedder.encode_calls
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(lambda q: cache.lookup(q), questions))
    assert all(r.decision.entry_id is not None for r in results)
    assert embedder.encode_calls - before < len(questions)  # batched by the worker


def test_concurrent_threads_encode_side_by_side_with_onnx_runtime(cache, embedder, monkeypatch):
    encoder = embedder.encoder
    assert encoder.backend == "onnx" and encoder.concurrent_calls
    side_runs = []
    side = encoder._side()  # made on first use; wrapped here to count the runs it takes
    monkeypatch.setattr(encoder, "_side_session", SimpleNamespace(run=lambda *a: side_runs.append(1) or side.run(*a)))
    cache.write_back("What is the capital of Italy?", "Rome")
    questions = [f"What is the capital of Italy? Variant {i}" for i in range(32)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda q: cache.lookup(q), questions))
    assert all(r.decision.entry_id is not None for r in results)
    assert side_runs  # calls that found another running took the one-thread session, not a queue
    alone = np.stack([embedder.encode_batch([q])[0] for q in questions])
    together = np.stack(list(ThreadPoolExecutor(max_workers=8).map(lambda q: embedder.embed([q])[0], questions)))
    assert np.allclose(alone, together, atol=1e-5)  # either session gives the same vectors


async def test_concurrent_asyncio_callers(db_url, embedder, stub_llm, llm_kwargs):
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.9), strong_model=MODEL) as cache:
        topics = [
            "octopuses",
            "glaciers",
            "tax law",
            "violins",
            "espresso",
            "volcanoes",
            "chess",
            "tulips",
            "submarines",
            "honeybees",
            "origami",
            "comets",
            "sourdough",
            "falconry",
            "opera",
            "cacti",
            "bitcoin",
            "sumo wrestling",
            "lighthouses",
            "penguins",
        ]
        questions = [f"Give me one fun fact about {topic}." for topic in topics]  # distinct: no cross-hits at 0.9
        before = embedder.encode_calls
        first = await asyncio.gather(
            *(cache.acompletion(messages=[{"role": "user", "content": q}], **llm_kwargs) for q in questions)
        )
        assert [r.choices[0].message.content for r in first] == [f"Answer to: {q}" for q in questions]
        assert embedder.encode_calls - before < 2 * len(questions)
        again = await asyncio.gather(
            *(cache.acompletion(messages=[{"role": "user", "content": q}], **llm_kwargs) for q in questions)
        )
        assert all(cache_info(r).outcome == "hit" for r in again)
        assert [r.choices[0].message.content for r in again] == [r.choices[0].message.content for r in first]


def test_streaming_miss_then_streamed_hit(cache, llm_kwargs):
    question = "Explain photosynthesis in one sentence."
    stream = ask(cache, question, llm_kwargs, stream=True)
    assert stream.cache_info.outcome == "miss"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == f"Answer to: {question}"
    replay = ask(cache, question, llm_kwargs, stream=True)
    assert replay.cache_info.outcome == "hit"
    chunks = list(replay)
    assert len(chunks) > 2 and chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


async def test_async_streaming_miss_and_hit(cache, llm_kwargs):
    question = "Name three primary colours."
    stream = await cache.acompletion(messages=[{"role": "user", "content": question}], stream=True, **llm_kwargs)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    replay = await cache.acompletion(messages=[{"role": "user", "content": question}], stream=True, **llm_kwargs)
    assert replay.cache_info.outcome == "hit"
    assert "".join([c.choices[0].delta.content or "" async for c in replay]) == text


def test_partial_or_abandoned_streams_write_nothing(cache, llm_kwargs):
    with pytest.raises(EscalationError):
        for _ in ask(cache, "CUT-STREAM tell me a long story about dragons and knights", llm_kwargs, stream=True):
            pass
    stream = ask(cache, "Tell me a long story about pirates and treasure maps", llm_kwargs, stream=True)
    for _ in stream:
        break
    stream.close()
    assert cache.stats().entries == 0


@pytest.mark.parametrize("prompt", ["FAIL-500 what is up", "FAIL-429 what is up", "SLOW what is up"])
def test_llm_failures_propagate_and_write_nothing(cache, llm_kwargs, prompt):
    with pytest.raises(EscalationError) as info:
        ask(cache, prompt, {**llm_kwargs, "timeout": 1})
    assert info.value.__cause__ is not None
    assert "\n" not in str(info.value) and len(str(info.value)) < 400  # one line; the rest is in __cause__
    assert cache.stats().entries == 0


def test_truncated_answer_is_returned_but_not_stored(cache, llm_kwargs):
    response = ask(cache, "TRUNCATE describe the ocean", llm_kwargs)
    assert response.choices[0].finish_reason == "length"
    assert cache_info(response).stored is False and cache.stats().entries == 0


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": ""}],
        [{"role": "user", "content": "   \n\t"}],
        [{"role": "user", "content": 12345}],
        [{"role": "system", "content": "only a system prompt"}],
        [{"role": "user", "content": "x" * 40_000}],
        [{"role": "user", "content": "broken \udcff text"}],
        "not a list",
    ],
    ids=["empty", "whitespace", "non-string", "no-user-turn", "oversized", "invalid-utf8", "not-messages"],
)
def test_bad_input_is_refused_and_changes_nothing(cache, stub_llm, llm_kwargs, messages):
    calls = len(stub_llm.calls)
    with pytest.raises(InvalidRequestError):
        cache.completion(messages=messages, **llm_kwargs)
    assert len(stub_llm.calls) == calls and cache.stats().entries == 0 and cache.stats().lookups == 0


@pytest.mark.parametrize("model", ["", "   "])
def test_an_empty_model_name_is_refused_not_replaced_by_the_default(cache, stub_llm, llm_kwargs, model):
    calls = len(stub_llm.calls)
    with pytest.raises(InvalidRequestError, match="model must be a non-empty string"):
        cache.completion(messages=[{"role": "user", "content": "Which model answers?"}], model=model, **llm_kwargs)
    with pytest.raises(InvalidRequestError, match="model must be a non-empty string"):
        cache.lookup("Which model answers?", model=model)
    assert len(stub_llm.calls) == calls and cache.stats().entries == 0 and cache.stats().lookups == 0


@pytest.mark.parametrize("bad", [None, 7, b"bytes", "", "  "])
def test_bad_lookup_and_write_back_arguments(cache, bad):
    with pytest.raises(InvalidRequestError):
        cache.lookup(bad)
    with pytest.raises(InvalidRequestError):
        cache.write_back("fine question", bad)
    assert cache.stats().entries == 0


@pytest.mark.parametrize("url", ["not a url", "sqlite:////nonexistent/dir/x.db", "nosuchdriver://x"])
def test_bad_store_url_is_a_store_error(url, embedder):
    with pytest.raises(StoreError):
        MemCache(url, embedder=embedder)


def test_bad_configuration_is_a_config_error(db_url, embedder):
    for kwargs in ({"max_false_hit_rate": 0}, {"ttl": -1}, {"max_query_chars": 0}):
        with pytest.raises(ConfigError):
            MemCache(db_url, embedder=embedder, **kwargs)
    assert not Path(db_url.removeprefix("sqlite:///")).exists()  # refused before anything was created
    with MemCache(db_url, embedder=embedder) as cache:
        with pytest.raises(ConfigError):
            cache.completion(messages=[{"role": "user", "content": "hi"}])


def test_decorator_sync_and_async(cache):
    calls = []

    @cache.cached(model="answer")  # a closure (it captures `calls`): it needs a name of its own
    def answer(prompt: str, style: str = "plain") -> str:
        calls.append(prompt)
        return f"{style}: an answer about {prompt}"

    assert (
        answer("How do vaccines work?")
        == answer("how do vaccines work")
        == "plain: an answer about How do vaccines work?"
    )
    assert answer("How do vaccines work?", style="poem").startswith("poem")
    assert len(calls) == 2

    @cache.cached(tenant="t2", model="async_answer")
    async def async_answer(prompt: str) -> str:
        calls.append(prompt)
        return "async answer"

    async def run():
        return [await async_answer("What is quantum tunnelling?"), await async_answer("what is quantum tunnelling")]

    assert asyncio.run(run()) == ["async answer", "async answer"]
    assert len(calls) == 3


def test_calibrated_policy_learns_from_paid_answers_and_survives_restart(db_url, embedder):
    policy = CalibratedPolicy(0.05, seed=0)
    with MemCache(db_url, embedder=embedder, policy=policy) as cache:
        for i in range(40):
            result = cache.lookup(f"What is the weather like in city number {i}?")
            cache.write_back(result, "Weather answer")
        assert policy.labels == 39  # every paid answer after the first had a nearest entry
        assert cache.stats().labels == 39
    restarted = CalibratedPolicy(0.05, seed=0)
    with MemCache(db_url, embedder=embedder, policy=restarted) as cache:
        cache.lookup("warm-up question")
        assert restarted.labels == 39


def test_cli_ask_stats_forget(tmp_path, stub_llm, cli):
    env = {"MEMCACHE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    base = []  # the command line, in-process (the `cli` fixture)
    ask = base + [
        "ask",
        "What is the largest planet?",
        "--model",
        MODEL,
        "--api-base",
        stub_llm.base_url,
        "--api-key",
        "k",
    ]
    first = cli(ask, env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "Answer to: What is the largest planet?" and "[miss" in first.stderr
    second = cli(ask, env)
    assert "[hit" in second.stderr
    stats = cli(base + ["stats", "--json"], env)
    assert '"entries": 1' in stats.stdout
    dump = tmp_path / "dump.jsonl"
    exported = cli(base + ["export", str(dump)], env)
    assert "exported 1 entries" in exported.stdout
    forget = cli(base + ["forget", "--default-tenant"], env)
    assert "deleted 1 entries" in forget.stdout
    imported = cli(base + ["import", str(dump)], env)
    assert "imported 1 query keys" in imported.stdout
    assert "[hit" in cli(ask, env).stderr
    snap = tmp_path / "index.snap"
    written = cli(base + ["snapshot", str(snap)], env)
    assert f"written to {snap}" in written.stdout and snap.exists()
    with_snap = cli(ask + ["--snapshot", str(snap)], env)
    assert "[hit" in with_snap.stderr, with_snap.stderr
    bad = cli(base + ["ask", "   ", "--model", MODEL], env)
    assert bad.returncode == 2 and "empty" in bad.stderr


def test_regression_concurrent_write_backs_of_one_answer_make_one_entry(cache):
    """Concurrent identical write-backs once made duplicate entries and a KeyError in the stats."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        entries = list(pool.map(lambda _: cache.write_back("What is the speed of sound?", "343 m/s"), range(32)))
    assert len({e.id for e in entries}) == 1
    assert cache.stats().entries == 1 and cache.stats().keys == 1


def test_capacity_evicts_least_recently_used(db_url, embedder):
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8), max_entries=20) as cache:
        ids = [cache.write_back(f"Question number {i} about zebras?", f"answer {i}").id for i in range(20)]
        assert cache.lookup("Question number 0 about zebras?").hit.exact  # 0 is now recently used
        cache.write_back("A brand new question about penguins?", "penguins")
        assert cache.stats().entries == 19  # evicted down to 95% of 20
        assert cache.get(ids[0]) is not None
        assert cache.get(ids[1]) is None and cache.get(ids[2]) is None  # the oldest unused went first
        assert cache.lookup("Question number 1 about zebras?").hit.answer != "answer 1"
    with pytest.raises(ConfigError):
        MemCache(db_url, embedder=embedder, max_entries=0)


def test_export_then_import_into_a_new_store(cache, tmp_path, embedder):
    cache.write_back("Who painted the Mona Lisa?", "Leonardo da Vinci", tenant="art", payload='{"x": 1}')
    cache.write_back("Who is the painter of the Mona Lisa?", "Leonardo da Vinci", tenant="art")
    cache.write_back("What is 2+2?", "4")
    path = tmp_path / "export.jsonl"
    assert cache.export_jsonl(path) == 2
    with MemCache(f"sqlite:///{tmp_path / 'copy.db'}", embedder=embedder, policy=ThresholdPolicy(0.8)) as copy:
        assert copy.import_jsonl(path) == 3
        hit = copy.lookup("Who painted the Mona Lisa?", tenant="art", model=MODEL).hit
        assert hit.answer == "Leonardo da Vinci" and hit.payload == '{"x": 1}' and hit.exact
        assert copy.lookup("who painted the mona lisa", tenant="other", model=MODEL).hit is None
        assert copy.stats().entries == 2 and copy.stats().keys == 3 and copy.stats().labels == 0
        assert copy.import_jsonl(path) == 3 and copy.stats().keys == 3  # importing twice adds nothing
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"answer": "no scope"}\n')
        with pytest.raises(InvalidRequestError):
            copy.import_jsonl(bad)
