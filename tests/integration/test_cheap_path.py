"""The cheap path on the real stack: MiniLM, FAISS, SQLite, LiteLLM's and openai's HTTP clients
against a loopback server that plays two models by name (a cheap one and a strong one)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import pytest
from stub_llm import StubLLM, two_models

from memcache import MemCache, ThresholdPolicy, cache_info
from memcache.cheap_gate import GATE_FEATURES, CheapGate

STRONG, CHEAP = "openai/strong-model", "openai/cheap-model"


@pytest.fixture(scope="module")
def server():
    stub = StubLLM(respond=two_models).start()
    yield stub
    stub.stop()


@pytest.fixture
def options(server):
    return {"api_base": server.base_url, "api_key": "sk-test", "num_retries": 0, "timeout": 5}


def trained_gate(**settings) -> CheapGate:
    """A gate that learned, from 1,000 stored labels, that replies whose pair is close are right
    and replies whose pair is far are wrong: it serves the first kind."""
    gate = CheapGate(0.02, seed=0, **settings)
    rows = []
    for i in range(1000):
        close = i % 2 == 0
        s = 0.55 + 0.45 * (i % 97) / 97 if close else 0.35 * (i % 89) / 89
        features = [s, 0.1, 1.0, -0.1, -9.21, 0.0, 1.0, 0.0, s, 0.1]  # a fresh hit policy's log-odds
        rows.append((features, close, None))
    gate.load(rows)
    assert gate.threshold is not None
    return gate


def half_price_gate() -> CheapGate:
    """An unproven gate whose cheap calls cost half a strong call and get no free replies: the
    learning budget has room for one unserved reply per 25 lookups."""
    return CheapGate(0.02, cost_ratio=0.5, learning_budget=0.02, learn_replies=0, seed=0)


def cheap_calls(stub: StubLLM) -> list[dict]:
    return [call for call in stub.calls if call.get("model") == "cheap-model"]


def open_cache(db_url, embedder, options, gate=None, **kwargs) -> MemCache:
    return MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(1.0), strong_model=STRONG, cheap_model=CHEAP,
                    cheap_options=options, cheap_gate=gate, **kwargs)  # fmt: skip


def ask(cache, text, options, **kwargs):
    return cache.completion(messages=[{"role": "user", "content": text}], **options, **kwargs)


def test_an_unproven_cheap_model_is_asked_and_escalated_and_its_label_is_kept(db_url, embedder, server, options):
    with open_cache(db_url, embedder, options) as cache:
        first = ask(cache, "What is the capital of France?", options)
        assert cache_info(first).path == "strong" and not cheap_calls(server)  # nothing stored in scope yet
        second = ask(cache, "what's France's capital city?", options)
        info = cache_info(second)
        assert info.path == "strong" and info.stored
        assert second.choices[0].message.content == "Answer to: what's France's capital city?"
        prompt = cheap_calls(server)[-1]["messages"]
        assert "What is the capital of France?" in prompt[0]["content"] and prompt[-1]["role"] == "user"
        labels = list(cache.store.iter_cheap_labels())
        assert len(labels) == 1 and labels[0][1] is False and len(labels[0][0]) == len(GATE_FEATURES)
        stats = cache.stats()
        assert (stats.cheap_calls, stats.cheap_answers, stats.strong_calls) == (1, 0, 2)
        assert (stats.strong_tokens, stats.cheap_tokens, stats.unpriced_calls) == (20, 10, 3)  # the stub's usage
        assert stats.spend_micro_usd == 0 and stats.saving_micro_usd is None  # names LiteLLM cannot price
    with open_cache(db_url, embedder, options) as cache:  # the cheap path's labels survive a restart
        cache.warm_up()
        assert cache.controller.cheap_gate.labels == 1
        assert cache.stats().lifetime["cheap_calls"] == 1


def test_the_hits_a_learning_policy_served_count_toward_the_gates_warm_up(db_url, embedder, options):
    with MemCache(db_url, embedder=embedder, strong_model=STRONG, cheap_model=CHEAP, cheap_options=options) as cache:
        gate, policy = cache.controller.cheap_gate, cache.controller.learning
        assert gate.target == cache.stats().cheap_target == pytest.approx(0.75 * 0.02)
        for _ in range(policy.warmup_hits):  # as if the policy had served its warm-up's hits
            policy.warm_up.count_hit(None)
        assert gate.target == cache.stats().cheap_target == pytest.approx(0.02)


def test_the_learning_budget_grows_with_every_lookup_hits_included(db_url, embedder, server, options):
    # a cheap call at half a strong call's price and no free replies: each reply the gate does not
    # serve (it has learned nothing, so it serves none) is paid for by 2% of 25 lookups
    gate = half_price_gate()
    with open_cache(db_url, embedder, options, gate) as cache:

        def repeats(n: int) -> None:  # exact repeats: hits the strong model never saw, each a lookup
            for _ in range(n):
                assert cache_info(ask(cache, "What is the capital of France?", options)).path == "memory"

        ask(cache, "What is the capital of France?", options)
        ask(cache, "what's France's capital city?", options)  # lookup 2: one reply would cost 0.5 > 2% x 2
        assert cache.stats().cheap_calls == 0
        repeats(24)
        ask(cache, "which city is the capital of France", options)  # lookup 27: 0.5 <= 2% x 27, asked
        ask(cache, "tell me the capital of France", options)  # lookup 28: a second would cost 1.0 > 0.56
        assert cache.stats().cheap_calls == 1
        repeats(25)
        ask(cache, "France's capital is which city?", options)  # lookup 54: 1.0 <= 1.08
        stats = cache.stats()
        assert (stats.lookups, stats.cheap_calls, stats.cheap_answers) == (54, 2, 0)
        assert stats.cheap_calls * 0.5 <= 0.02 * stats.lookups  # what the unserved replies cost: within 2%


def test_replies_in_flight_count_against_the_learning_budget(db_url, embedder, server, options):
    # six misses at once, each cheap reply taking 0.5 s: all six ask the gate before any reply is
    # read, and the budget (2% of 27 to 32 lookups at half a strong call's price) has room for one
    gate = half_price_gate()
    with open_cache(db_url, embedder, options, gate) as cache:
        for _ in range(26):  # a stored answer, then 25 exact repeats: 26 lookups
            ask(cache, "What is the capital of France?", options)

        async def at_once():
            texts = [f"CHEAP-DELAY which city is France's capital, asked {n} times?" for n in range(6)]
            return await asyncio.gather(
                *(cache.acompletion(messages=[{"role": "user", "content": t}], **options) for t in texts)
            )

        assert all(cache_info(r).path == "strong" for r in asyncio.run(at_once()))
        stats = cache.stats()
        assert (stats.lookups, stats.cheap_calls) == (32, 1)
        assert stats.cheap_calls * 0.5 <= 0.02 * stats.lookups


def test_a_reply_with_no_pair_left_to_pass_costs_no_budget(db_url, embedder, server, options):
    # a cheap call at half a strong call's price: after 25 lookups the budget has room for one reply
    gate = half_price_gate()
    server.calls.clear()
    with open_cache(db_url, embedder, options, gate, ttl=3) as cache:
        for _ in range(25):  # a stored answer, then 24 exact repeats
            ask(cache, "What is the capital of France?", options)
        time.sleep(3.2)  # it expires, but is still the nearest key in the index
        ask(cache, "what's France's capital city?", options)  # lookup 26: the reply would read no pair
        assert not cheap_calls(server)
        ask(cache, "which city is the capital of France", options)  # lookup 27: the room is still there
        assert len(cheap_calls(server)) == 1


def test_the_learning_budget_carries_over_a_restart(db_url, embedder, server, options):
    server.calls.clear()
    with open_cache(db_url, embedder, options, half_price_gate()) as cache:
        for _ in range(30):  # a stored answer, then 29 exact repeats: room for one reply, none asked
            ask(cache, "What is the capital of France?", options)
        assert not cheap_calls(server)
    with open_cache(db_url, embedder, options, half_price_gate()) as cache:  # its first lookup: 0.5 > 2% x 1
        ask(cache, "what's France's capital city?", options)  # ... but the store's 31st: asked
        assert len(cheap_calls(server)) == 1
        ask(cache, "which city is the capital of France", options)  # the room is spent: not asked
        assert len(cheap_calls(server)) == 1
    with open_cache(db_url, embedder, options, half_price_gate()) as cache:  # and a restart does not refill it
        ask(cache, "tell me the capital of France", options)
        assert len(cheap_calls(server)) == 1


def test_the_cheap_prompt_carries_only_the_requests_scope(db_url, embedder, server, options):
    with open_cache(db_url, embedder, options) as cache:
        ask(cache, "What is my account number?", options, tenant="alice")
        ask(cache, "What is my account number?", options, tenant="bob")
        server.calls.clear()
        ask(cache, "tell me my account number", options, tenant="bob")
        system = cheap_calls(server)[-1]["messages"][0]["content"]
        assert system.count("Request:") == 1  # bob's one entry; alice's identical question is not there
        assert cache.store.get_entry(1).tenant == "alice" and "[2]" not in system


@pytest.mark.parametrize("marker", ["CHEAP-ABSTAIN", "CHEAP-GARBAGE", "CHEAP-FAIL"])
def test_abstains_garbage_and_errors_escalate_and_store_nothing_of_the_reply(db_url, embedder, server, options, marker):
    with open_cache(db_url, embedder, options, gate=trained_gate()) as cache:
        ask(cache, f"How do I reset my password? {marker}", options)
        before = cache.stats().entries
        response = ask(cache, f"how can I reset my password {marker}", options)
        assert cache_info(response).path == "strong"
        assert response.choices[0].message.content == f"Answer to: how can I reset my password {marker}"
        assert cache.stats().entries == before + 1  # the strong answer, nothing else
        assert list(cache.store.iter_cheap_labels()) == []  # no reply to label
        assert cache.stats().cheap_calls == 1 and cache.stats().cheap_answers == 0


def test_a_trusted_cheap_answer_is_served_and_not_written_back(db_url, embedder, server, options):
    with open_cache(db_url, embedder, options, gate=trained_gate(max_audit_rate=0.0, min_audit_rate=0.0)) as cache:
        stored = ask(cache, "How do I reset my password?", options).choices[0].message.content
        response = ask(cache, "how can I reset my password", options)
        info = cache_info(response)
        assert info.path == "cheap" and info.outcome == "miss" and not info.audited and info.entry_id == 1
        assert response.choices[0].message.content == stored
        assert cache.stats().entries == 1 and cache.stats().keys == 1  # not verified: not stored
        chunks = list(ask(cache, "how do i reset the password", options, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == stored

        async def asynchronous():
            return await cache.acompletion(messages=[{"role": "user", "content": "password reset how?"}], **options)

        assert asyncio.run(asynchronous()).choices[0].message.content == stored
        stats = cache.stats()
        assert (stats.cheap_calls, stats.cheap_answers, stats.strong_calls) == (3, 3, 1)


def test_an_audited_cheap_answer_is_checked_by_the_strong_model_and_teaches_the_gate(db_url, embedder, server, options):
    gate = trained_gate(max_audit_rate=1.0, min_audit_rate=1.0)
    with open_cache(db_url, embedder, options, gate=gate) as cache:
        ask(cache, "How do I reset my password?", options)
        labels_before = gate.labels
        response = ask(cache, "how can I reset my password", options)
        info = cache_info(response)
        assert info.path == "cheap" and info.audited
        cache.wait_for_learning()
        features, correct, claimed = list(cache.store.iter_cheap_labels())[-1]
        assert correct is False and claimed == pytest.approx(info.confidence)  # the stub's strong answer differs
        assert gate.labels == labels_before + 1 and gate.claim_ratio > 1.0
        assert cache.stats().entries == 2  # the strong model's answer, verified, is what was stored


def test_spend_is_priced_per_path_and_the_saving_is_reported(db_url, embedder, server, options, cli):
    gate = trained_gate(max_audit_rate=0.0, min_audit_rate=0.0)
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(1.0), strong_model="openai/gpt-4o",
                  cheap_model="openai/gpt-4o-mini", cheap_options=options, cheap_gate=gate) as cache:  # fmt: skip
        ask(cache, "How do I reset my password?", options)
        assert cache_info(ask(cache, "how can I reset my password", options)).path == "cheap"
        stats = cache.stats()
        assert 0 < stats.cheap_spend_micro_usd < stats.spend_micro_usd and stats.unpriced_calls == 0
        # two lookups at the strong model's price, less one strong and one cheap call
        assert stats.saving_micro_usd == stats.spend_micro_usd - stats.cheap_spend_micro_usd > 0
    shown = cli(["stats", "--database-url", db_url]).stdout
    assert "cheap_answers" in shown and f"saving_micro_usd             {stats.saving_micro_usd}" in shown


def test_the_decorator_takes_the_cheap_path(db_url, embedder, server, options):
    calls = []
    with open_cache(db_url, embedder, options, gate=trained_gate(max_audit_rate=0.0, min_audit_rate=0.0)) as cache:

        @cache.cached(model="support-bot")
        def answer(prompt: str) -> str:
            calls.append(prompt)
            return f"bot: {prompt}"

        assert answer("How do I close my account?") == "bot: How do I close my account?"
        assert answer("how can I close my account") == "bot: How do I close my account?"  # the cheap model's
        assert calls == ["How do I close my account?"] and len(cheap_calls(server)) >= 1


def test_the_proxy_says_which_path_answered(db_url, embedder, server, options):
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    import httpx

    from memcache.adapters.proxy import ProxyConfig, Upstream, create_app

    config = ProxyConfig(models={"gpt-test": Upstream(STRONG, options)}, keys={"sk-a": "team-a"},
                         cheap=Upstream(CHEAP, options))  # fmt: skip
    gate = trained_gate(max_audit_rate=0.0, min_audit_rate=0.0)
    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(1.0), cheap_model=CHEAP,
                  cheap_options=dict(options), cheap_gate=gate) as cache, _serving(create_app(cache, config)) as base:  # fmt: skip
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-a", max_retries=0)

        def ask_proxy(text):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=[{"role": "user", "content": text}]
            )
            return raw.headers, raw.parse()

        headers, first = ask_proxy("Where is my parcel?")
        assert headers["x-memcache-path"] == "strong"
        headers, second = ask_proxy("where's my parcel")
        assert (
            headers["x-memcache-path"] == "cheap"
            and second.choices[0].message.content == first.choices[0].message.content
        )
        text = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer sk-a"}).text
        assert "memcache_cheap_answers_total 1" in text and "memcache_cheap_calls_total 1" in text
        assert cache.counters()["cheap_answers"] == 1


@contextlib.contextmanager
def _serving(app):
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_eval_replays_the_cheap_path_with_the_simulated_model(eval_cli, data_dir, tmp_path):
    data = str(data_dir / "clinc150.jsonl")
    common = [data, "--splits", "test", "--where", "domain=banking,travel", "--seed", "0"]
    result = eval_cli(
        ["eval", *common, "--limit", "200", "--cheap-accuracy", "0.9", "--json", str(tmp_path / "cheap.json")]
    )
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "cheap.json").read_text())
    assert run["queries"] == 200 and run["cheap_calls"] > 0 and run["cheap_accuracy"] == 0.9
    assert run["cost"] == pytest.approx(run["strong_calls"] + 0.05 * run["cheap_calls"])
    served = run["hits"] + run["cheap_answers"]
    assert 0.0 <= run["false_answer_rate"] <= 1.0 and run["cheap_answer_rate"] == run["cheap_answers"] / 200
    assert served >= run["hits"]
    plain = eval_cli(["eval", *common, "--limit", "60", "--json", str(tmp_path / "plain.json")])
    assert plain.returncode == 0 and "cost" not in json.loads((tmp_path / "plain.json").read_text())


def test_eval_with_real_models_goes_through_litellm(cli, server, tmp_path):
    rows = [
        {"text": text.format(thing), "label": thing, "split": "test"}
        for thing in ("password", "address", "card", "parcel", "refund")
        for text in ("How do I change my {}?", "how can i change my {}", "I want to change my {}", "change {} how?")
    ]
    data = tmp_path / "intents.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    result = cli(["eval", str(data), "--strong-model", STRONG, "--cheap-model", CHEAP, "--api-base", server.base_url,
                  "--api-key", "sk-test", "--judge-model", "openai/judge-model", "--json", str(tmp_path / "real.json")])  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "real.json").read_text())
    assert run["queries"] == 20 and run["cheap_model"] == CHEAP and run["cheap_calls"] > 0
    assert run["strong_calls"] >= 0.5 and run["cost"] == pytest.approx(run["strong_calls"] + 0.05 * run["cheap_calls"])
    assert {call.get("model") for call in server.calls} >= {"cheap-model", "strong-model", "judge-model"}


def test_ask_takes_the_cheap_path_from_the_command_line(cli, server, db_url):
    common = ["--database-url", db_url, "--model", STRONG, "--cheap-model", CHEAP, "--api-base", server.base_url]
    assert cli(["ask", "How do I change my address?", *common]).returncode == 0
    server.calls.clear()
    result = cli(["ask", "how can i change my address", *common])
    assert result.returncode == 0 and "path=strong" in result.stderr  # asked, not yet trusted: escalated
    assert [call["model"] for call in server.calls] == ["cheap-model", "strong-model"]
