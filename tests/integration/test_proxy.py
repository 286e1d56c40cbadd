"""The proxy through the official openai client, uvicorn on 127.0.0.1, upstream the loopback stub."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
import uvicorn  # noqa: E402

from memcache import CalibratedPolicy, MemCache, ThresholdPolicy  # noqa: E402
from memcache.adapters.proxy import ProxyConfig, Upstream, create_app  # noqa: E402
from policies import AuditEveryHit  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(db_url, embedder, stub_llm, policy):
    """(base URL, cache) of a proxy on 127.0.0.1 whose upstream is the loopback stub."""
    upstream = {"api_base": stub_llm.base_url, "api_key": "sk-upstream", "num_retries": 0, "timeout": 5}
    config = ProxyConfig(
        models={"gpt-test": Upstream("openai/stub-strong", upstream)},
        keys={"sk-team-a": "team-a", "sk-team-b": "team-b"},
    )
    with MemCache(db_url, embedder=embedder, policy=policy) as cache:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(cache, config), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}", cache
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def proxy(db_url, embedder, stub_llm):
    with serving(db_url, embedder, stub_llm, ThresholdPolicy(0.8)) as running:
        yield running


def client(base, key="sk-team-a"):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


def ask(base, text, key="sk-team-a"):
    raw = client(base, key).chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": text}]
    )
    return raw.headers, raw.parse()


def test_miss_then_hit_with_headers(proxy):
    base, _ = proxy
    headers, first = ask(base, "What is the capital of Spain?")
    assert headers["x-memcache-cache"] == "miss" and first.model == "gpt-test"
    headers, again = ask(base, "what's the capital of spain")
    assert headers["x-memcache-cache"] == "hit"
    assert float(headers["x-memcache-similarity"]) > 0.8 and "x-memcache-confidence" in headers
    assert again.choices[0].message.content == first.choices[0].message.content


def test_audited_hit_is_served_and_checked_upstream(db_url, embedder, stub_llm):
    with serving(db_url, embedder, stub_llm, AuditEveryHit(0.8)) as (base, cache):
        _, first = ask(base, "What is the capital of Portugal?")
        calls = len(stub_llm.calls)
        headers, served = ask(base, "what's the capital of portugal")
        assert headers["x-memcache-cache"] == "hit" and headers["x-memcache-audited"] == "true"
        assert served.choices[0].message.content == first.choices[0].message.content
        cache.wait_for_learning()
        assert len(stub_llm.calls) == calls + 1 and cache.stats().labels == 1
        metrics = httpx.get(f"{base}/metrics").text
        assert "memcache_audited_hits_total 1" in metrics and "memcache_hits_total 1" in metrics


def test_keys_are_tenants_and_unknown_keys_are_refused(proxy):
    base, _ = proxy
    ask(base, "What is our VPN address?", key="sk-team-a")
    headers, _ = ask(base, "What is our VPN address?", key="sk-team-b")
    assert headers["x-memcache-cache"] == "miss"
    with pytest.raises(openai.AuthenticationError):
        ask(base, "What is our VPN address?", key="sk-stranger")


def test_streamed_miss_and_streamed_hit(proxy):
    base, cache = proxy
    messages = [{"role": "user", "content": "List three kinds of clouds."}]
    with client(base).chat.completions.with_streaming_response.create(model="gpt-test", messages=messages, stream=True) as r:
        assert r.headers["x-memcache-cache"] == "miss"
        text = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
    assert text == "Answer to: List three kinds of clouds."
    with client(base).chat.completions.with_streaming_response.create(model="gpt-test", messages=messages, stream=True) as r:
        assert r.headers["x-memcache-cache"] == "hit"
        assert "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices) == text
    assert cache.stats().entries == 1


def test_client_disconnect_mid_stream_stores_nothing(proxy):
    base, cache = proxy
    body = {"model": "gpt-test", "stream": True,
            "messages": [{"role": "user", "content": "DRIP tell me a slow story about a lighthouse keeper and the sea"}]}
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", f"{base}/v1/chat/completions", json=body,
                         headers={"Authorization": "Bearer sk-team-a"}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break  # one chunk, then hang up
    time.sleep(3)  # let the upstream stream run past where it would have finished
    assert cache.stats().entries == 0


def test_fifty_concurrent_clients(proxy):
    base, cache = proxy

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-team-a", max_retries=0) as aclient:
            topics = ["volcanoes", "jazz music", "tax returns", "knitting", "black holes",
                      "sourdough bread", "chess openings", "marathon training", "tulip bulbs", "python decorators"]
            questions = [f"Give me one tip about {topics[i % 10]}." for i in range(50)]
            responses = await asyncio.gather(*(
                aclient.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": q}])
                for q in questions
            ))
            return questions, responses

    questions, responses = asyncio.run(run())
    assert [r.choices[0].message.content for r in responses] == [f"Answer to: {q}" for q in questions]
    assert cache.stats().entries == 10


def test_models_health_metrics_and_errors(proxy):
    base, _ = proxy
    with httpx.Client() as http:
        assert http.get(f"{base}/healthz").json() == {"status": "ok"}
        assert [m["id"] for m in http.get(f"{base}/v1/models").json()["data"]] == ["gpt-test"]
        auth = {"Authorization": "Bearer sk-team-a"}
        bad = http.post(f"{base}/v1/chat/completions", headers=auth, json={"model": "gpt-test", "messages": []})
        assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
        unknown = http.post(f"{base}/v1/chat/completions", headers=auth,
                            json={"model": "other", "messages": [{"role": "user", "content": "hi"}]})
        assert unknown.status_code == 404
        upstream_down = http.post(f"{base}/v1/chat/completions", headers=auth,
                                  json={"model": "gpt-test", "messages": [{"role": "user", "content": "FAIL-500 hi"}]})
        assert upstream_down.status_code == 502
        ask(base, "How many moons does Mars have?")
        ask(base, "How many moons does Mars have?")
        text = http.get(f"{base}/metrics").text
    assert "memcache_hits_total 1" in text and "memcache_misses_total 1" in text
    assert 'memcache_request_seconds_bucket{outcome="hit",le="+Inf"} 1' in text
    assert "memcache_false_hit_rate_bound" in text


def test_metrics_report_the_traffic_shifts_a_calibrated_policy_detected(db_url, embedder, stub_llm):
    with serving(db_url, embedder, stub_llm, CalibratedPolicy(0.02)) as (base, cache):
        text = httpx.get(f"{base}/metrics").text
        assert "memcache_shifts_detected_total 0" in text and "memcache_shift_hold_remaining 0" in text
        cache.policy.shifts_detected.append(812)  # as `CalibratedPolicy._on_shift` records one
        cache.policy.resume_hold(270)  # ... and starts a hold
        text = httpx.get(f"{base}/metrics").text
        assert "memcache_shifts_detected_total 1" in text and "memcache_shift_hold_remaining 270" in text


def test_config_file(tmp_path):
    path = tmp_path / "memcache.toml"
    path.write_text('database_url = "sqlite:///x.db"\n[models.fast]\nmodel = "openai/gpt-4o-mini"\napi_base = "http://h/v1"\n'
                    '[keys]\n"sk-1" = "team-1"\n')
    config = ProxyConfig.from_file(path)
    assert config.models["fast"] == Upstream("openai/gpt-4o-mini", {"api_base": "http://h/v1"})
    assert config.keys == {"sk-1": "team-1"} and config.shadow_audits
    path.write_text("shadow_audits = false\n")
    assert not ProxyConfig.from_file(path).shadow_audits
    from memcache import ConfigError

    for bad in ("colour = 'blue'\n", "shadow_audits = 'no'\n"):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            ProxyConfig.from_file(path)


def test_tenant_header_without_configured_keys(db_url, embedder, stub_llm):
    from fastapi.testclient import TestClient

    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8)) as cache:
        upstream = Upstream("openai/stub-strong", {"api_base": stub_llm.base_url, "api_key": "k", "num_retries": 0})
        app = create_app(cache, ProxyConfig(models={"m": upstream}))
        with TestClient(app) as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "Where is the office?"}]}
            assert http.post("/v1/chat/completions", json=body, headers={"X-Memcache-Tenant": "a"}).headers["x-memcache-cache"] == "miss"
            assert http.post("/v1/chat/completions", json=body, headers={"X-Memcache-Tenant": "a"}).headers["x-memcache-cache"] == "hit"
            assert http.post("/v1/chat/completions", json=body, headers={"X-Memcache-Tenant": "b"}).headers["x-memcache-cache"] == "miss"
