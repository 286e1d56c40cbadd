"""The proxy through the official openai client, uvicorn on 127.0.0.1, upstream the loopback stub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
import uvicorn  # noqa: E402
from policies import AuditEveryHit  # noqa: E402

from memcache import CalibratedPolicy, MemCache, ThresholdPolicy  # noqa: E402
from memcache.adapters.proxy import ProxyConfig, Upstream, create_app, open_cache  # noqa: E402

AUTH = {"Authorization": "Bearer sk-team-a"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(db_url, embedder, stub_llm, policy, cheap: bool = False):
    """(base URL, cache) of a proxy on 127.0.0.1 whose upstream is the loopback stub; `cheap`:
    with a cheap model configured too (the operator's setting)."""
    # a generous timeout: fifty clients at once on two busy cores once took 6 s for one stub answer
    upstream = {"api_base": stub_llm.base_url, "api_key": "sk-upstream", "num_retries": 0, "timeout": 30}
    config = ProxyConfig(
        models={"gpt-test": Upstream("openai/stub-strong", upstream)},
        keys={"sk-team-a": "team-a", "sk-team-b": "team-b"},
        cheap=Upstream("openai/stub-cheap", upstream) if cheap else None,
    )
    paths = {"cheap_model": "openai/stub-cheap", "cheap_options": upstream} if cheap else {}
    with MemCache(db_url, embedder=embedder, policy=policy, **paths) as cache:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(cache, config), host="127.0.0.1", port=port, log_level="warning")
        )
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


@pytest.fixture(scope="module", params=["strong only", "with a cheap model"])
def guarded_proxy(request, tmp_path_factory, embedder, stub_llm):
    """A proxy for the checks on what a client may send: they hold whichever paths it serves.
    One per module and kind: every request these tests send is refused, so none leaves a trace."""
    db_url = f"sqlite:///{tmp_path_factory.mktemp('guarded') / 'memcache.db'}"
    with serving(db_url, embedder, stub_llm, ThresholdPolicy(0.8), cheap=request.param != "strong only") as running:
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
        metrics = httpx.get(f"{base}/metrics", headers=AUTH).text
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
    with client(base).chat.completions.with_streaming_response.create(
        model="gpt-test", messages=messages, stream=True
    ) as r:
        assert r.headers["x-memcache-cache"] == "miss"
        text = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
    assert text == "Answer to: List three kinds of clouds."
    with client(base).chat.completions.with_streaming_response.create(
        model="gpt-test", messages=messages, stream=True
    ) as r:
        assert r.headers["x-memcache-cache"] == "hit"
        assert "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices) == text
    assert cache.stats().entries == 1


def test_client_disconnect_mid_stream_stores_nothing(proxy):
    base, cache = proxy
    body = {
        "model": "gpt-test",
        "stream": True,
        "messages": [{"role": "user", "content": "DRIP tell me a slow story about a lighthouse keeper and the sea"}],
    }
    with httpx.Client(timeout=10) as http:
        with http.stream(
            "POST", f"{base}/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-team-a"}
        ) as response:
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
            topics = [
                "volcanoes",
                "jazz music",
                "tax returns",
                "knitting",
                "black holes",
                "sourdough bread",
                "chess openings",
                "marathon training",
                "tulip bulbs",
                "python decorators",
            ]
            questions = [f"Give me one tip about {topics[i % 10]}." for i in range(50)]
            responses = await asyncio.gather(
                *(
                    aclient.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": q}])
                    for q in questions
                )
            )
            return questions, responses

    questions, responses = asyncio.run(run())
    assert [r.choices[0].message.content for r in responses] == [f"Answer to: {q}" for q in questions]
    assert cache.stats().entries == 10


def test_models_health_metrics_and_errors(proxy):
    base, _ = proxy
    with httpx.Client() as http:
        assert http.get(f"{base}/healthz").json() == {"status": "ok"}
        assert http.get(f"{base}/v1/models").status_code == 401  # /v1/models and /metrics take a key too
        assert http.get(f"{base}/metrics").status_code == 401
        auth = AUTH
        assert [m["id"] for m in http.get(f"{base}/v1/models", headers=auth).json()["data"]] == ["gpt-test"]
        bad = http.post(f"{base}/v1/chat/completions", headers=auth, json={"model": "gpt-test", "messages": []})
        assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
        unknown = http.post(
            f"{base}/v1/chat/completions",
            headers=auth,
            json={"model": "other", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert unknown.status_code == 404
        upstream_down = http.post(
            f"{base}/v1/chat/completions",
            headers=auth,
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "FAIL-500 hi"}]},
        )
        assert upstream_down.status_code == 502
        ask(base, "How many moons does Mars have?")
        ask(base, "How many moons does Mars have?")
        text = http.get(f"{base}/metrics", headers=auth).text
    assert "memcache_hits_total 1" in text and "memcache_misses_total 1" in text
    assert 'memcache_request_seconds_bucket{outcome="hit",le="+Inf"} 1' in text
    assert "memcache_false_hit_rate_bound" in text


def test_metrics_report_the_traffic_shifts_a_calibrated_policy_detected(db_url, embedder, stub_llm):
    with serving(db_url, embedder, stub_llm, CalibratedPolicy(0.02)) as (base, cache):
        text = httpx.get(f"{base}/metrics", headers=AUTH).text
        assert "memcache_shifts_detected_total 0" in text and "memcache_shift_hold_remaining 0" in text
        cache.policy.shifts_detected.append(812)  # as `CalibratedPolicy._on_shift` records one
        cache.policy.resume_hold(270)  # ... and starts a hold
        text = httpx.get(f"{base}/metrics", headers=AUTH).text
        assert "memcache_shifts_detected_total 1" in text and "memcache_shift_hold_remaining 270" in text


def test_config_file(tmp_path):
    path = tmp_path / "memcache.toml"
    path.write_text(
        'database_url = "sqlite:///x.db"\n[models.fast]\nmodel = "openai/gpt-4o-mini"\napi_base = "http://h/v1"\n'
        '[keys]\n"sk-1" = "team-1"\n'
    )
    config = ProxyConfig.from_file(path)
    assert config.models["fast"] == Upstream("openai/gpt-4o-mini", {"api_base": "http://h/v1"})
    assert config.keys == {"sk-1": "team-1"} and config.shadow_audits
    path.write_text("shadow_audits = false\n")
    assert not ProxyConfig.from_file(path).shadow_audits and ProxyConfig.from_file(path).cheap is None
    path.write_text('[cheap]\nmodel = "openai/gpt-4o-mini"\napi_base = "http://c/v1"\n')
    assert ProxyConfig.from_file(path).cheap == Upstream("openai/gpt-4o-mini", {"api_base": "http://c/v1"})
    path.write_text('cheap_model = "openai/gpt-4o-mini"\n')
    assert ProxyConfig.from_file(path).cheap == Upstream("openai/gpt-4o-mini")
    assert ProxyConfig.from_file(path).judge is None
    path.write_text('[judge]\nmodel = "openai/gpt-4o-mini"\napi_base = "http://j/v1"\n')
    assert ProxyConfig.from_file(path).judge == Upstream("openai/gpt-4o-mini", {"api_base": "http://j/v1"})
    path.write_text('judge_model = "openai/gpt-4o-mini"\n')
    assert ProxyConfig.from_file(path).judge == Upstream("openai/gpt-4o-mini")
    from memcache import ConfigError

    unset = "[cheap]\nmodel = 'openai/m'\napi_key_env = 'MEMCACHE_TEST_UNSET_KEY'\n"
    both = "cheap_model = 'openai/m'\n[cheap]\nmodel = 'openai/m'\n"
    reserved = "allow_params = ['tenant']\n"  # refused by the file, before `serve --workers` starts any worker
    for bad in (
        "colour = 'blue'\n",
        "shadow_audits = 'no'\n",
        "[cheap]\napi_base = 'http://c'\n",
        unset,
        both,
        "judge_model = 'openai/m'\n[judge]\nmodel = 'openai/m'\n",
        "judge_model = ''\n",
        reserved,
    ):
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
            assert (
                http.post("/v1/chat/completions", json=body, headers={"X-Memcache-Tenant": "a"}).headers[
                    "x-memcache-cache"
                ]
                == "miss"
            )
            assert (
                http.post("/v1/chat/completions", json=body, headers={"X-Memcache-Tenant": "a"}).headers[
                    "x-memcache-cache"
                ]
                == "hit"
            )
            assert (
                http.post("/v1/chat/completions", json=body, headers={"X-Memcache-Tenant": "b"}).headers[
                    "x-memcache-cache"
                ]
                == "miss"
            )


# -- a hostile client: the proxy forwards only what the operator allowed --------------------------


def post(base, body, key="sk-team-a"):
    """POST a chat completion: `body` as a dict (sent as JSON) or raw bytes."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{base}/v1/chat/completions", headers=headers, content=content, timeout=10)


@pytest.fixture
def attacker():
    from stub_llm import StubLLM

    server = StubLLM(lambda prompt: "ATTACKER ANSWER").start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "field, value",
    [
        ("api_base", None),
        ("base_url", None),
        ("mock_response", "canned answer"),
        ("api_key", "sk-stolen"),
        ("tenant", "team-b"),
        ("timeout", 1),
        ("headers", {"x": "y"}),
        ("extra_headers", {"x": "y"}),
        ("custom_llm_provider", "openai"),
        ("num_retries", 5),
        ("metadata", {"a": 1}),
        ("caching", False),
    ],
)
def test_routing_credential_and_test_fields_are_refused_and_nothing_is_called_or_stored(
    guarded_proxy, attacker, stub_llm, field, value
):
    base, cache = guarded_proxy
    calls = len(stub_llm.calls)
    body = {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "What is the admin password?"}],
        field: attacker.base_url if value is None else value,
    }
    response = post(base, body)
    assert response.status_code == 400 and repr(field) in response.json()["error"]["message"]
    assert attacker.calls == [] and len(stub_llm.calls) == calls and cache.stats().entries == 0


USER_HI = '"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    "raw",
    [
        f'{{"model": "gpt-test", {USER_HI}, "stream": "false"}}',
        f'{{"model": "gpt-test", {USER_HI}, "temperature": "hot"}}',
        f'{{"model": "gpt-test", {USER_HI}, "n": true}}',
        '{"model": "gpt-test", "messages": "hi"}',
        f'{{"model": 5, {USER_HI}}}',
        '{{"model": "gpt-test", "messages": [{{"role": "user", "content": [{{"type": "text", "text": "hi"}}, '
        '{{"type": "data", "d": {}1{}}}]}}]}}'.format("[" * 990, "]" * 990),
        '{"model": "gpt-test", "messages": [{"role": "system", "content": "x \\udcff"}, {"role": "user", "content": "hi"}]}',
        '{"model": "gpt-test", "messages": [{"role": "user", "content": "\\u200b\\u200b"}]}',
        '{{"model": "gpt-test", {}, "tools": {}{}}}'.format(USER_HI, "[" * 5000, "]" * 5000),
        f'{{"model": "gpt-test", {USER_HI}, "temperature": NaN}}',
        f'{{"model": "gpt-test", {USER_HI}, "top_p": -Infinity}}',
    ],
    ids=[
        "stream-string",
        "temperature-string",
        "n-bool",
        "messages-string",
        "model-number",
        "deep-content",
        "lone-surrogate",
        "invisible-query",
        "deep-anywhere",
        "temperature-nan",
        "top-p-infinity",
    ],
)
def test_no_500_from_a_clients_body(guarded_proxy, stub_llm, raw):
    base, cache = guarded_proxy
    calls = len(stub_llm.calls)
    response = post(base, raw.encode())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert len(stub_llm.calls) == calls and cache.stats().entries == 0


def test_bodies_are_bounded_before_they_are_parsed(db_url, embedder, stub_llm):
    from fastapi.testclient import TestClient

    with MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8)) as cache:
        app = create_app(cache, ProxyConfig(models={"m": Upstream("openai/stub")}, max_body_bytes=4096))
        with TestClient(app) as http:
            big = {"model": "m", "messages": [{"role": "user", "content": "x" * 10_000}]}
            assert http.post("/v1/chat/completions", json=big).status_code == 413
            assert http.post("/v1/chat/completions", content=b"{not json").status_code == 400


def test_operator_switches_allowed_fields_key_from_env_and_metrics_key(
    db_url, embedder, stub_llm, tmp_path, monkeypatch
):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("UPSTREAM_KEY", "sk-from-env")
    path = tmp_path / "memcache.toml"
    path.write_text(
        f'metrics_key = "sk-metrics"\nallow_params = ["num_retries"]\n[models.m]\nmodel = "openai/stub"\n'
        f'api_base = "{stub_llm.base_url}"\napi_key_env = "UPSTREAM_KEY"\n[keys]\n"sk-a" = "a"\n'
    )
    config = ProxyConfig.from_file(path)
    assert config.models["m"].kwargs["api_key"] == "sk-from-env" and "api_key_env" not in config.models["m"].kwargs
    with (
        MemCache(db_url, embedder=embedder, policy=ThresholdPolicy(0.8)) as cache,
        TestClient(create_app(cache, config)) as http,
    ):
        body = {"model": "m", "messages": [{"role": "user", "content": "Where is the office?"}], "num_retries": 0}
        first = http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-a"})
        assert first.status_code == 200 and stub_llm.calls[-1]["messages"][-1]["content"] == "Where is the office?"
        again = http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-a"})
        token = again.headers["x-memcache-entry"]
        assert again.headers["x-memcache-cache"] == "hit" and token != "1" and len(token) == 20  # opaque, not the id
        assert http.get("/metrics", headers={"Authorization": "Bearer sk-a"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer sk-metrics"}).status_code == 200
    monkeypatch.delenv("UPSTREAM_KEY")
    from memcache import ConfigError

    with pytest.raises(ConfigError, match="UPSTREAM_KEY"):
        ProxyConfig.from_file(path)


def test_a_nul_byte_on_postgresql_still_answers_the_client(pg_url, embedder, stub_llm):
    with serving(pg_url, embedder, stub_llm, ThresholdPolicy(0.8)) as (base, cache):
        response = post(base, {"model": "gpt-test", "messages": [{"role": "user", "content": "Say \u0000 twice"}]})
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"].startswith(
            "Answer to"
        )
        assert cache.stats().entries == 0


def test_serve_with_two_workers_shares_the_port_and_the_store(tmp_path, stub_llm, cli):
    """`memcache serve --workers 2`: two processes behind one port, each with its own model, on
    one store; what one stores the other serves, and each flushes its counters when stopped."""
    url = f"sqlite:///{tmp_path / 'memcache.db'}"
    config = tmp_path / "memcache.toml"
    config.write_text(
        f'database_url = "{url}"\n[models.gpt-test]\nmodel = "openai/stub-strong"\n'
        f'api_base = "{stub_llm.base_url}"\napi_key = "sk-upstream"\nnum_retries = 0\n[keys]\n"sk-team-a" = "team-a"\n'
    )
    port = free_port()
    command = [sys.executable, "-m", "memcache.cli", "serve", "--config", str(config), "--port", str(port)]
    server = subprocess.Popen([*command, "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while sum("Application startup complete" in line for line in lines) < 2:
            assert server.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        headers, first = ask(base, "What is the capital of Spain?")
        assert headers["x-memcache-cache"] == "miss"
        time.sleep(1.5)  # past both workers' sync interval
        for _ in range(12):  # a new connection each: the kernel hands them to either worker
            headers, again = ask(base, "What is the capital of  Spain? ")  # an exact repeat
            assert headers["x-memcache-cache"] == "hit"
            assert again.choices[0].message.content == first.choices[0].message.content
        time.sleep(1.5)  # each worker publishes its figures every second
        for _ in range(4):  # whichever worker answers a scrape, it counts every worker's requests
            metrics = httpx.get(f"{base}/metrics", headers=AUTH).text
            assert "memcache_requests_total 13\n" in metrics and "memcache_hits_total 12\n" in metrics
        calls = len(stub_llm.calls)
        for _ in range(4):  # each worker refuses what a client may not choose, and a broken body
            routed = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "api_base": "http://x/v1"}
            assert httpx.post(f"{base}/v1/chat/completions", json=routed, headers=AUTH).status_code == 400
            broken = httpx.post(f"{base}/v1/chat/completions", content=b'{"model": "gpt-test", "messages": 5}',
                                headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
            assert broken.status_code == 400
        assert len(stub_llm.calls) == calls
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        reader.join(timeout=10)
    output = "".join(lines)
    assert server.returncode == 0, output[-3000:]
    assert output.count("Started server process") == 2 and output.count("Application shutdown complete") == 2
    assert "leaked semaphore" not in output  # tqdm's default lock outlived the workers once
    stats = json.loads(cli(["stats", "--json", "--database-url", url]).stdout)
    assert stats["entries"] == 1 and stats["lifetime"]["lookups"] == 13 and stats["lifetime"]["strong_calls"] == 1
    with sqlite3.connect(tmp_path / "memcache.db") as db:  # a worker that looked up shares its shift test
        shares = db.execute("SELECT count(*) FROM memcache_meta WHERE name LIKE 'shift_counts:%'").fetchone()[0]
    assert 1 <= shares <= 2 and "shift counts" not in output


def test_workers_must_be_a_positive_number(cli):
    result = cli(["serve", "--workers", "0"])
    assert result.returncode == 2 and "workers must be a whole number of processes" in result.stderr


def test_the_operators_judge_joins_reworded_answers(db_url, stub_llm, llm_kwargs):
    """`[judge]` in the config: the proxy's cache judges paid answers with that model through
    LiteLLM, so a reworded answer to a paraphrase joins the first answer's entry."""
    with open_cache(ProxyConfig(database_url=db_url, judge=Upstream("openai/judge", llm_kwargs))) as cache:
        first = cache.write_back("How do I reset my password?", "Answer: open Settings, then Security.")
        result = cache.lookup("How can I reset my password?")
        assert result.hit is None  # nothing certified yet: a miss
        joined = cache.write_back(result, "Answer: go to Security in Settings.")
        assert joined.id == first.id and stub_llm.calls[-1]["model"] == "judge"
