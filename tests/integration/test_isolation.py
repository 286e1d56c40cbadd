"""No answer crosses a tenant or a scope: regressions of the adversarial pass on the real stack
(MiniLM, FAISS, SQLite and PostgreSQL, LiteLLM over loopback HTTP)."""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from policies import AuditEveryHit
from test_multi_instance import Peer, seen_within

from memcache import CalibratedPolicy, ConfigError, InvalidRequestError, MemCache, ThresholdPolicy, cache_info
from memcache.index import SNAPSHOT_MAGIC

QA, ANSWER_A = "What is the VPN address for the Berlin office?", "vpn-berlin.acme.example"
QB, ANSWER_B = "Which port does the build server listen on?", "Port 8443 at globex."


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'memcache.db'}"
    return request.getfixturevalue("pg_url")


def cache_at(url, embedder, **kwargs):
    return MemCache(url, embedder=embedder, policy=kwargs.pop("policy", ThresholdPolicy(0.9)), **kwargs)


def test_ids_never_come_back_after_a_delete(url, embedder):
    with cache_at(url, embedder) as cache:
        first = cache.write_back(QA, ANSWER_A, tenant="acme")
        assert cache.forget(tenant="acme") == 1
        second = cache.write_back(QB, ANSWER_B, tenant="globex")
        assert second.id > first.id and cache.get(first.id) is None


def test_invalidate_the_newest_then_store_again_serves_the_next_repeat(url, embedder):
    """The release before paid the strong model again on each of the next four repeats."""
    with cache_at(url, embedder, policy=ThresholdPolicy(0.9)) as cache:
        entry = cache.write_back(QA, ANSWER_A, tenant="acme")
        assert cache.invalidate(entry.id)
        cache.write_back(QA, "vpn2-berlin.acme.example", tenant="acme")
        cache.sync()  # replaying this process's own drop must not drop the new entry
        for _ in range(4):
            hit = cache.lookup(QA, tenant="acme").hit
            assert hit is not None and hit.answer == "vpn2-berlin.acme.example"


def test_entry_of_finds_a_prompt_in_its_own_scope_only(url, embedder):
    with cache_at(url, embedder) as cache:
        entry = cache.write_back(QA, ANSWER_A, tenant="acme", temperature=0)
        assert cache.entry_of("  " + QA.replace(" ", "   "), tenant="acme", temperature=0) == entry.id
        assert cache.entry_of(QA, tenant="globex", temperature=0) is None  # another tenant
        assert cache.entry_of(QA, tenant="acme", temperature=0.7) is None  # other parameters
        assert cache.entry_of(QB, tenant="acme", temperature=0) is None
        before = cache.counters()
        assert cache.invalidate(cache.entry_of(QA, tenant="acme", temperature=0))
        assert cache.entry_of(QA, tenant="acme", temperature=0) is None and cache.counters() == before
        with pytest.raises(InvalidRequestError):
            cache.entry_of("")


def test_a_snapshot_of_before_a_forget_never_serves_the_new_tenant(url, embedder, tmp_path):
    snapshot = tmp_path / "index.snap"
    with cache_at(url, embedder, snapshot=snapshot) as a:
        a.write_back(QA, ANSWER_A, tenant="acme")
    with cache_at(url, embedder) as b:  # no snapshot: written after it
        b.forget(tenant="acme")
        b.write_back(QB, ANSWER_B, tenant="globex")
    with cache_at(url, embedder, snapshot=snapshot) as a:
        assert a.lookup(QA, tenant="acme").hit is None
        assert a.lookup(QB, tenant="globex").hit.answer == ANSWER_B


def test_forget_then_write_in_another_process(url, embedder):
    with cache_at(url, embedder, sync_interval=0.5) as local:
        local.write_back(QA, ANSWER_A, tenant="acme")
        peer = Peer(url)
        try:
            assert peer("forget acme") == "1"
            peer(f"write globex|{QB}|{ANSWER_B}")
            for _ in range(20):  # inside and past the sync window
                hit = local.lookup(QA, tenant="acme").hit
                assert hit is None or hit.answer == ANSWER_A  # stale at most, never globex's
            seen_within(lambda: local.lookup(QB, tenant="globex").hit is not None, seconds=2.0)
            assert local.lookup(QA, tenant="acme").hit is None
            assert peer(f"lookup globex|{QB}") == ANSWER_B
        finally:
            peer.close()


def test_invalidating_while_another_thread_writes_back(url, embedder):
    errors: list[BaseException] = []
    with cache_at(url, embedder, policy=ThresholdPolicy(0.8)) as cache:
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                tenant = f"t{i % 3}"
                cache.write_back(
                    f"Question {i % 7} about the quarterly report?", f"{tenant} answer {i % 7}", tenant=tenant
                )
                i += 1

        def invalidator() -> None:
            while not stop.is_set():
                for entry_id in cache.store.least_recently_used(2):
                    cache.invalidate(entry_id)

        def reader() -> None:
            while not stop.is_set():
                for t in range(3):
                    hit = cache.lookup("Question 3 about the quarterly report?", tenant=f"t{t}").hit
                    assert hit is None or hit.answer.startswith(f"t{t} ")

        def guarded(fn):
            def run():
                try:
                    fn()
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    errors.append(exc)
                    stop.set()

            return run

        threads = [threading.Thread(target=guarded(f)) for f in (writer, invalidator, reader, reader)]
        for thread in threads:
            thread.start()
        stop.wait(3.0)
        stop.set()
        for thread in threads:
            thread.join()
        cache.sync()
        assert cache.index is None or cache.index.ids() <= {k.key_id for k in cache.store.iter_keys(embeddings=False)}
    assert not errors, errors[0]


def test_a_delete_between_a_writes_commit_and_its_indexing_leaves_no_dead_key(url, embedder):
    """The interleaving the test above hits by chance under load: the entry is deleted after
    the store committed the new key but before this process indexed it."""
    with cache_at(url, embedder, policy=ThresholdPolicy(0.8)) as cache:
        cache.write_back("Where is the quarterly report?", "In the shared drive.")
        commit = cache.store.add_answer

        def commit_then_deleted(**kwargs):
            written = commit(**kwargs)
            cache.invalidate(written.entry_id)  # another thread's delete, finished in the gap
            return written

        cache.store.add_answer = commit_then_deleted
        cache.write_back("Who approves travel expenses?", "Your manager.")
        cache.store.add_answer = commit
        stored = {k.key_id for k in cache.store.iter_keys(embeddings=False)}
        assert len(stored) == 1 and cache.index.ids() == stored
        assert cache.memory.entries == 1
        assert cache.lookup("Who approves travel expenses?").hit is None
        assert cache.lookup("Where is the quarterly report?").hit.answer == "In the shared drive."


def test_a_delete_racing_a_write_into_its_entry_waits_for_the_write(url, embedder):
    """On every try of a write-back, after it read the entry of its answer and before it inserts
    its key, other writers delete that entry and store the same answer again. All three tries
    failed on the foreign key (a StoreError; on a busy SQLite store about once in a thousand
    writes): SQLite read outside the write's transaction, and PostgreSQL did not lock the entry
    it read. Now the others wait for the write."""
    from sqlalchemy import event

    answer, question = "In the shared drive.", "Where can I find the quarterly report?"
    with cache_at(url, embedder, policy=ThresholdPolicy(0.8)) as cache:
        cache.write_back("Where is the quarterly report?", answer)
        scope = cache.lookup(question).scope
        writer, others = threading.get_ident(), []

        def replace_entry(entry_id: int) -> None:
            cache.store.delete_entries([entry_id])
            vector = embedder.embed(["Quarterly report location?"])[0]
            cache.store.add_answer(scope=scope, query="Quarterly report location?", normalized_hash="other",
                                   embedding=vector, answer=answer, source_model="test")  # fmt: skip

        def others_first(conn, cursor, statement, parameters, context, executemany):
            if threading.get_ident() == writer and statement.startswith("INSERT INTO memcache_keys"):
                entry_id = parameters["entry_id"] if isinstance(parameters, dict) else parameters[0]
                other = threading.Thread(target=replace_entry, args=(entry_id,))
                other.start()
                other.join(0.5)  # they commit now, or wait for this write's transaction
                others.append(other)

        event.listen(cache.store.engine, "before_cursor_execute", others_first)
        try:
            written = cache.write_back(question, answer)
        finally:
            event.remove(cache.store.engine, "before_cursor_execute", others_first)
        for other in others:
            other.join()
        assert written is not None
        cache.sync()  # the others wrote outside this process's memory
        stored = {k.key_id for k in cache.store.iter_keys(embeddings=False)}
        assert cache.index.ids() == stored


def test_concurrent_forgets_and_writes_are_retried_not_raised(url, embedder):
    with cache_at(url, embedder) as cache:
        vectors = embedder.embed([f"Where is office number {i}?" for i in range(8)])

        def churn(worker: int) -> None:
            for round_ in range(15):
                for i in range(8):
                    cache.write_back(f"Where is office number {i}?", f"Floor {i}", tenant=f"w{(worker + i) % 3}")
                cache.forget(tenant=f"w{(worker + round_) % 3}")

        assert vectors.shape[0] == 8
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(churn, range(4)))


def _swap_partitions(path) -> None:
    """Rewrite a snapshot with its partitions' scope keys swapped (a damaged or forged file)."""
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[len(SNAPSHOT_MAGIC) : len(SNAPSHOT_MAGIC) + 8])[0]
    start = len(SNAPSHOT_MAGIC) + 8
    manifest = json.loads(raw[start : start + length])
    parts = manifest["partitions"]
    parts[0]["scope_key"], parts[1]["scope_key"] = parts[1]["scope_key"], parts[0]["scope_key"]
    header = json.dumps(manifest).encode()
    path.write_bytes(SNAPSHOT_MAGIC + struct.pack("<Q", len(header)) + header + raw[start + length :])


def test_a_snapshot_with_swapped_partitions_never_serves_another_tenant(db_url, embedder, tmp_path):
    snapshot = tmp_path / "index.snap"
    with cache_at(db_url, embedder, snapshot=snapshot, policy=ThresholdPolicy(-1.0)) as cache:
        cache.write_back(QA, ANSWER_A, tenant="acme")
        cache.write_back(QB, ANSWER_B, tenant="globex")
    _swap_partitions(snapshot)
    with cache_at(db_url, embedder, snapshot=snapshot, policy=ThresholdPolicy(-1.0)) as cache:
        for tenant, answer in (("acme", ANSWER_A), ("globex", ANSWER_B)):
            hit = cache.lookup("Something else entirely, about lunch?", tenant=tenant).hit  # the policy serves anything
            assert hit is not None and hit.answer == answer


@pytest.mark.parametrize("damage", ["dimension", "huge-partition", "flipped-flag", "huge-header", "not-json"])
def test_damaged_snapshots_are_ignored_with_a_log_line(damage, db_url, embedder, tmp_path, caplog):
    snapshot = tmp_path / "index.snap"
    with cache_at(db_url, embedder, snapshot=snapshot) as cache:
        cache.write_back(QA, ANSWER_A, tenant="acme")
    raw = snapshot.read_bytes()
    start = len(SNAPSHOT_MAGIC) + 8
    length = struct.unpack("<Q", raw[len(SNAPSHOT_MAGIC) : start])[0]
    manifest = json.loads(raw[start : start + length])
    if damage == "dimension":
        manifest["dimension"] = 128
    elif damage == "huge-partition":
        manifest["partitions"][0]["bytes"] = 2**40
    elif damage == "flipped-flag":
        manifest["partitions"][0]["approximate"] = True
    header = b"{not json" if damage == "not-json" else json.dumps(manifest).encode()
    size = 2**62 if damage == "huge-header" else len(header)
    snapshot.write_bytes(SNAPSHOT_MAGIC + struct.pack("<Q", size) + header + raw[start + length :])
    with caplog.at_level(logging.WARNING, logger="memcache"), cache_at(db_url, embedder, snapshot=snapshot) as cache:
        assert cache.lookup(QA, tenant="acme").hit.answer == ANSWER_A
    assert "rebuilding from the store" in caplog.text


def test_the_scope_guard_refuses_an_entry_of_another_scope(db_url, embedder, caplog):
    with cache_at(db_url, embedder, policy=ThresholdPolicy(-1.0)) as cache:
        a = cache.write_back(QA, ANSWER_A, tenant="acme")
        cache.write_back(QB, ANSWER_B, tenant="globex")
        keys = cache.memory._keys
        globex_key = next(k for k, key in keys.items() if key.entry_id != a.id)
        keys[globex_key] = keys[globex_key]._replace(entry_id=a.id)  # a stale map: globex's key -> acme's entry
        with caplog.at_level(logging.ERROR, logger="memcache"):
            assert cache.lookup(QB, tenant="globex").hit is None
        assert "scope guard" in caplog.text


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.lookup("hi", tenant="bad \udcff"),
        lambda c: c.lookup("hi", model="m\udcff"),
        lambda c: c.lookup([{"role": "system", "content": "x \udcff"}, {"role": "user", "content": "hi"}]),
        lambda c: c.lookup(
            [
                {"role": "user", "content": "a \udcff"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "hi"},
            ]
        ),
        lambda c: c.lookup("hi", stop=["\udcff"]),
        lambda c: c.lookup("hi", tenant="a\x00b"),
        lambda c: c.lookup("\x00\x00\x00"),
        lambda c: c.lookup("\u200b\u200c\u200d\ufeff"),
        lambda c: c.write_back("\u200b", "an answer"),
        lambda c: c.lookup([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"deep": _deep(990)}]}]),
        lambda c: c.lookup("hi", tools=_deep(5000)),
        lambda c: c.invalidate(2**70),
        lambda c: c.invalidate("7"),
        lambda c: c.get("x"),
        lambda c: c.forget(tenant=""),
    ],
)
def test_bad_input_is_a_typed_error_and_stores_nothing(call, db_url, embedder):
    with cache_at(db_url, embedder) as cache:
        with pytest.raises(InvalidRequestError):
            call(cache)
        assert cache.stats().entries == 0


def _deep(levels: int):
    value: object = "x"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": math.nan},
        {"ttl": 1e12},
        {"ttl": 0},
        {"sync_interval": math.nan},
        {"sync_interval": -1},
        {"database_url": ""},
        {"max_false_hit_rate": "0.02"},
        {"max_entries": 0},
        {"max_query_chars": 2.5},
    ],
)
def test_bad_settings_are_a_config_error(kwargs, embedder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        MemCache(embedder=embedder, **kwargs)
    assert not (tmp_path / "memcache.db").exists()  # nothing was created


def test_a_nul_byte_on_postgresql_returns_the_paid_answer_and_stores_nothing(pg_url, embedder, stub_llm, llm_kwargs):
    with cache_at(pg_url, embedder) as cache:
        calls = len(stub_llm.calls)
        response = cache.completion(
            messages=[{"role": "user", "content": "Spell the null byte: \x00 please"}],
            model="openai/stub",
            **llm_kwargs,
        )
        assert response.choices[0].message.content.startswith("Answer to:") and len(stub_llm.calls) == calls + 1
        assert not cache_info(response).stored and cache.stats().entries == 0


def test_stream_must_be_a_boolean(db_url, embedder, stub_llm, llm_kwargs):
    with cache_at(db_url, embedder) as cache:
        calls = len(stub_llm.calls)
        with pytest.raises(InvalidRequestError, match="stream"):
            cache.completion(
                messages=[{"role": "user", "content": "hi"}], model="openai/stub", stream="false", **llm_kwargs
            )
        assert len(stub_llm.calls) == calls


def test_decorated_closures_need_their_own_names_and_arguments_count_by_value(db_url, embedder):
    with cache_at(db_url, embedder, policy=ThresholdPolicy(0.9)) as cache:

        def factory(greeting: str):
            def reply(question: str) -> str:
                return f"{greeting}, {question}"

            return reply

        with pytest.raises(ConfigError, match="model="):
            cache.cached(factory("hello"))
        with pytest.raises(ConfigError, match="model="):
            cache.cached(lambda q: q)
        hello, bye = cache.cached(model="hello")(factory("hello")), cache.cached(model="bye")(factory("bye"))
        assert hello("What time is it?") == "hello, What time is it?"
        assert bye("What time is it?") == "bye, What time is it?"

        def make(level: int):
            def rate(question: str, level: int = level) -> str:  # no closure: siblings differ by their defaults
                return f"level {level}: {question}"

            return rate

        low, high = cache.cached(make(1)), cache.cached(make(2))
        assert low("How risky is this?") == "level 1: How risky is this?"
        assert high("How risky is this?") == "level 2: How risky is this?"

        @cache.cached(model="summarize-array")
        def summarize(question: str, data) -> str:
            return f"sum {float(np.sum(data))}"

        data = np.zeros(100_000)
        assert summarize("What is the total?", data) == "sum 0.0"
        changed = data.copy()
        changed[50_000] = 1.0
        assert summarize("What is the total?", changed) == "sum 1.0"

        class Same:
            def __repr__(self) -> str:
                return "Same()"

        with pytest.raises(InvalidRequestError, match="cannot tell apart"):
            summarize("What is the total?", Same())

        @dataclass(frozen=True)
        class Query:
            region: str

        @cache.cached(model="by-region")
        def sales(question: str, query: Query) -> str:
            return f"sales in {query.region}"

        assert sales("How were sales?", Query("north")) == "sales in north"
        assert sales("How were sales?", Query("south")) == "sales in south"


def test_the_same_text_up_to_whitespace_only_is_an_exact_repeat(db_url, embedder):
    with cache_at(db_url, embedder, policy=ThresholdPolicy(1.0)) as cache:
        cache.write_back("print('A  B')", "A  B")
        cache.write_back("What is 102 + 1?", "103")
        assert cache.lookup("print('A  B') ").hit.exact
        variant = cache.lookup("print('a b')")
        assert variant.hit is None or not variant.hit.exact
        exponent = cache.lookup("What is 10² + 1?")
        assert exponent.hit is None or not exponent.hit.exact


QUESTIONS = [
    "Is the deploy green?",
    "What is the weather in Oslo?",
    "Summarize the incident report.",
    "Which plan includes SSO?",
    "How do I reset my password?",
    "What did the customer ask for?",
    "Translate the greeting.",
    "What is the total on the invoice?",
    "Who is on call tonight?",
    "Can I merge this pull request?",
]


def _schema(kind: str) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "Answer",
            "schema": {"type": "object", "properties": {"value": {"type": kind}}, "required": ["value"]},
        },
    }


def _pairs():
    """(request A, request B) pairs of lookup arguments that differ in one answer-changing part."""
    for i in range(110):
        q = QUESTIONS[i % len(QUESTIONS)]
        user = [{"role": "user", "content": q}]
        call = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": f"c{i}", "type": "function", "function": {"name": "status", "arguments": "{}"}}],
        }
        yield {"request": q, "tenant": f"acme-{i}"}, {"request": q, "tenant": f"acme-{i}x"}
        yield (
            {"request": user + [call, {"role": "tool", "tool_call_id": f"c{i}", "content": "72F sunny"}]},
            {"request": user + [call, {"role": "tool", "tool_call_id": f"c{i}", "content": f"-{i}F blizzard"}]},
        )
        yield {"request": user + [call, {"role": "tool", "tool_call_id": f"c{i}", "content": "ok"}]}, {"request": user}
        yield (
            {"request": user + [{"role": "assistant", "content": "Yes, "}]},
            {"request": user + [{"role": "assistant", "content": f"No {i}, "}]},
        )
        yield {"request": user, "temperature": 0.0}, {"request": user, "temperature": round(0.1 * (i % 9 + 1), 1)}
        yield {"request": user, "seed": i}, {"request": user, "seed": i + 1}
        yield (
            {"request": user, "response_format": _schema("integer")},
            {"request": user, "response_format": _schema("string")},
        )
        yield (
            {"request": [{"role": "system", "content": f"Policy v{i}"}] + user},
            {"request": [{"role": "system", "content": f"Policy v{i + 1}"}] + user},
        )
        yield (
            {
                "request": [{"role": "user", "content": f"About ticket {i}"}, {"role": "assistant", "content": "ok"}]
                + user
            },
            {
                "request": [
                    {"role": "user", "content": f"About ticket {i + 1}"},
                    {"role": "assistant", "content": "ok"},
                ]
                + user
            },
        )
        yield {"request": user, "model": f"model-{i}"}, {"request": user, "model": f"model-{i}b"}
        yield {"request": q, "fn_args": [i]}, {"request": q, "fn_args": [i + 0.5]}


def test_a_thousand_generated_pairs_never_share_an_answer(url, embedder):
    from memcache.eval.replay import MemoEmbedder

    memo = MemoEmbedder(embedder)
    memo.prefill(QUESTIONS)
    pairs = list(_pairs())
    assert len(pairs) >= 1000
    with MemCache(url, embedder=memo, policy=ThresholdPolicy(-1.0), hindsight_window=0) as cache:
        served = 0
        for n, (first, second) in enumerate(pairs):
            first, second = dict(first), dict(second)
            cache.write_back(first.pop("request"), f"answer {n}", **first)
            result = cache.lookup(second.pop("request"), **second)
            served += result.hit is not None and result.hit.answer == f"answer {n}"
        assert served == 0
        same = dict(pairs[0][0])  # the check can fail: the same request is served
        assert cache.lookup(same.pop("request"), **same).hit is not None


def test_a_scopes_size_counts_its_live_questions_here_and_in_another_process(url, embedder):
    """What the policy's young-scope rule reads: each tenant's own count, kept through deletes."""
    with cache_at(url, embedder) as cache:
        for n in range(3):
            cache.write_back(f"{QA} ({n})", ANSWER_A, tenant="acme")
        written = cache.write_back(QB, ANSWER_B, tenant="globex")
        acme, globex = (cache.lookup(QA, tenant=t).scope.key for t in ("acme", "globex"))
        assert (cache.memory.scope_size(acme), cache.memory.scope_size(globex)) == (3, 1)
        with cache_at(url, embedder) as other:  # another process's memory, read from the store
            other.lookup(QB, tenant="globex")  # memory is read on first use
            assert (other.memory.scope_size(acme), other.memory.scope_size(globex)) == (3, 1)
        assert cache.invalidate(written.id)
        assert (cache.memory.scope_size(acme), cache.memory.scope_size(globex)) == (3, 0)
        assert cache.forget(tenant="acme") == 1
        assert cache.memory.scope_size(acme) == 0


def test_each_scopes_audits_are_counted_so_its_warm_up_resumes_after_a_restart(url, embedder):
    """What a scope's own warm-up resumes from: the audits its hits had, kept by the store."""
    with cache_at(url, embedder, policy=AuditEveryHit(0.5)) as cache:
        cache.write_back(QA, ANSWER_A, tenant="acme")
        cache.write_back(QB, ANSWER_B, tenant="globex")
        for n, (question, answer, tenant) in enumerate([(QA, ANSWER_A, "acme")] * 3 + [(QB, ANSWER_B, "globex")]):
            result = cache.lookup(f"{question} ({n})", tenant=tenant)
            assert result.decision.action == "audit"
            cache.write_back(result, answer)  # the strong model's answer: a label with the claim it checked
        acme, globex = (cache.lookup(QA, tenant=t).scope.key for t in ("acme", "globex"))
        assert cache.store.audits_per_scope() == {acme: 3, globex: 1}
    policy = CalibratedPolicy(0.02, max_audit_rate=0.2)
    with cache_at(url, embedder, policy=policy) as reopened:
        reopened.lookup(QA, tenant="acme")  # the policy is given what the store kept on first use
        assert (policy.scope_served(acme), policy.scope_served(globex)) == (15, 5)  # at least audits / 0.2
        assert policy.served == 20
