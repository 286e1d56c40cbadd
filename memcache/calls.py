"""The flows behind `MemCache.lookup`, `completion` and the `cached` decorator.

Each is one flow for the sync and the async twin (see `memcache.flow`): look up, serve what
memory holds (a shadow audit's check runs in the background), or pay the strong model and
write its verified answer back.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from memcache import cheap, checks, flow, llm
from memcache.embedding import AsyncEmbedder
from memcache.errors import ConfigError, EscalationError, InvalidRequestError, StoreError
from memcache.types import CacheHit, CacheInfo, CheapVerdict, Decision, LookupResult

if TYPE_CHECKING:
    from memcache.cache import MemCache

# what the cheap model's call shares with the strong one's when no `cheap_options` were given
CONNECTION_KWARGS = ("api_base", "base_url", "api_key", "api_version", "timeout", "extra_headers")
log = logging.getLogger("memcache")


def lookup_flow(cache: MemCache, request, model, tenant, params, *, asynchronous: bool) -> flow.Flow[LookupResult]:
    """`MemCache.lookup`, written once: store and index work off the event loop when async."""
    query, scope = cache._parse(request, model, tenant, params)
    step = cache._off_loop if asynchronous else flow.now
    if not cache._ready:
        yield step(cache.warm_up)
    if cache.memory.sync_due():
        yield step(cache.sync)
    exact = yield step(_exact_hit, cache, scope.key, query)
    if exact is not None:
        return LookupResult(exact, Decision("hit", exact.entry_id, 1.0, 1.0), scope, query)
    if asynchronous and isinstance(cache.embedder, AsyncEmbedder):
        vectors = yield lambda: cache.embedder.aembed([query])
    else:
        vectors = yield step(cache.embedder.embed, [query])
    return (yield step(cache.controller.decide, query, scope, vectors[0]))


def _exact_hit(cache: MemCache, scope_key: str, query: str) -> CacheHit | None:
    """The same text up to whitespace, stored in this scope: served without the embedding model."""
    entry_id = cache.memory.exact_entry(scope_key, query)
    row = None if entry_id is None else cache.memory.answer(entry_id, scope_key)
    if row is None:
        return None
    cache.controller.count_hit(entry_id, exact=True)
    return CacheHit(row.answer, entry_id, 1.0, 1.0, exact=True, payload=row.payload)


def served_flow(cache: MemCache, result: LookupResult, *, asynchronous: bool) -> flow.Flow[CacheHit | None]:
    """The answer to serve: a hit, or an audit served while it is checked (a miss needs no thread hop)."""
    if result.hit is not None or result.decision.action != "audit":
        return result.hit
    return (yield (cache._off_loop if asynchronous else flow.now)(cache.shadow_hit, result))


def completion_flow(
    cache: MemCache, messages, model, tenant, kwargs, *, asynchronous: bool, result: LookupResult | None = None
) -> flow.Flow[Any]:
    """`MemCache.completion`, written once; from `result` when the caller has looked up already
    (the command line serves a hit without importing LiteLLM)."""
    stream = _streams(messages, kwargs)
    model = cache.strong_model if model is None else model
    if model is None:
        raise ConfigError(
            "no model: pass model=... or construct MemCache(strong_model=...) "
            "(on the command line: --model, or MEMCACHE_STRONG_MODEL)"
        )
    if result is None:
        result = yield from lookup_flow(cache, messages, model, tenant, kwargs, asynchronous=asynchronous)
    served = yield from served_flow(cache, result, asynchronous=asynchronous)
    replay = llm.AsyncCacheStream if asynchronous else llm.CacheStream
    checked = {k: v for k, v in kwargs.items() if k not in ("stream", "stream_options")}
    verdict = None
    if served is None and cache.cheap_model:
        connection = {k: v for k, v in checked.items() if k in CONNECTION_KWARGS}
        verdict = yield from cheap_flow(cache, result, messages, connection, asynchronous=asynchronous)
    if served is not None or (verdict is not None and verdict.served):
        audited = result.hit is None if served is not None else verdict.action == "audit"
        if audited:  # checked on a worker thread, so it outlives the caller's event loop
            ask = functools.partial(_check, cache, model, list(messages), checked)
            cache.controller.audit_later(ask, writer(cache, result, model, False, verdict), result.decision.entry_id)
        info = info_of(result, served=served, cheap=verdict)
        name, answer = (model, served.answer) if served is not None else (cache.cheap_model, verdict.answer)
        return replay(llm.hit_chunks(name, answer), info) if stream else llm.hit_response(name, answer, info)
    call = llm.acompletion if asynchronous else llm.completion
    response = yield lambda: call(model, list(messages), **kwargs)
    cache.controller.record_call("strong", llm.cost_micro_usd(response), llm.usage_tokens(response))
    write = writer(cache, result, model, asynchronous, verdict)
    if stream:
        return replay(response, info_of(result), write)
    text = llm.verified_text(response)
    stored = text is not None and (yield lambda: write(text))
    return llm.attach(response, info_of(result, stored=stored))


def cheap_flow(cache: MemCache, result: LookupResult, messages, options, *, asynchronous: bool):
    """Ask the cheap model where the controller takes the cheap path: its verdict, or None where
    the path is not taken. A failed call, an abstain or a reply that does not parse escalates
    (verdict "escalate"); the caller then asks the strong model, and nothing of the reply is kept."""
    pairs = yield (cache._off_loop if asynchronous else flow.now)(cache.cheap_pairs, result)
    if not pairs:
        return None
    prompt = cheap.cheap_messages(messages, pairs)
    options = cache.cheap_options if cache.cheap_options is not None else options
    response = yield _cheap_call(cache.cheap_model, prompt, options, asynchronous)  # None: the call failed
    cache.controller.record_call("cheap", llm.cost_micro_usd(response), llm.usage_tokens(response))
    text = llm.verified_text(response)
    return (yield (cache._off_loop if asynchronous else flow.now)(cache.read_cheap_reply, result, pairs, text))


def _cheap_call(model: str, messages: list, options: Mapping[str, Any], asynchronous: bool) -> Callable[[], Any]:
    """A step calling the cheap model that returns None instead of raising: the strong model answers."""
    if asynchronous:

        async def ask():
            try:
                return await llm.acompletion(model, messages, role="cheap", **options)
            except EscalationError as exc:
                log.warning("%s; asking the strong model", exc)
                return None

        return ask

    def ask_now():
        try:
            return llm.completion(model, messages, role="cheap", **options)
        except EscalationError as exc:
            log.warning("%s; asking the strong model", exc)
            return None

    return ask_now


def _write_paid(cache: MemCache, result: LookupResult, text: str, model: str, verdict: CheapVerdict | None) -> bool:
    """Write back an answer the caller already has; a failure to store it is logged, not
    raised, so a paid answer is never lost to a store error (a NUL byte on PostgreSQL, say)."""
    try:
        return cache.write_back(result, text, source_model=model, cheap=verdict) is not None
    except (StoreError, InvalidRequestError) as exc:
        log.warning("the answer was returned but not stored: %s", exc)
        return False


def writer(
    cache: MemCache, result: LookupResult, model: str, asynchronous: bool, verdict: CheapVerdict | None = None
) -> Callable[[str], Any]:
    """`text -> stored?` for a paid answer: in this thread, or (a coroutine) off the event loop."""
    if asynchronous:
        return lambda text: cache._run(_write_paid, cache, result, text, model, verdict)
    return lambda text: _write_paid(cache, result, text, model, verdict)


def _check(cache: MemCache, model: str, messages: list, kwargs: dict) -> str | None:
    """A shadow audit's strong call: the verified text of one answer, counted and priced."""
    response = llm.completion(model, messages, **kwargs)
    cache.controller.record_call("strong", llm.cost_micro_usd(response), llm.usage_tokens(response))
    return llm.verified_text(response)


def cached(cache: MemCache, func: Callable | None, *, model: str | None, tenant: str | None):
    """`MemCache.cached`: the decorator, or the decorated function when `func` is given."""

    def decorate(fn: Callable) -> Callable:
        name = model or checks.function_name(fn)

        def steps(request, args: tuple, kwargs: dict, asynchronous: bool) -> flow.Flow[Any]:
            def call():  # the function is the strong model: each run is a strong call
                cache.controller.record_call("strong", 0, 0)
                return fn(request, *args, **kwargs)

            params = {"fn_args": list(args), "fn_kwargs": kwargs}
            return _cached_flow(cache, call, request, params, name, tenant, asynchronous=asynchronous)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(request, *args: Any, **kwargs: Any):
                return await flow.arun(steps(request, args, kwargs, True))

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(request, *args: Any, **kwargs: Any):
            return flow.run(steps(request, args, kwargs, False))

        return wrapper

    return decorate(func) if func is not None else decorate


def _cached_flow(cache: MemCache, call, request, params, name, tenant, *, asynchronous: bool) -> flow.Flow[Any]:
    result = yield from lookup_flow(cache, request, name, tenant, params, asynchronous=asynchronous)
    served = yield from served_flow(cache, result, asynchronous=asynchronous)
    verdict = None
    if served is None and cache.cheap_model:
        messages = [{"role": "user", "content": request}] if isinstance(request, str) else list(request)
        verdict = yield from cheap_flow(cache, result, messages, {}, asynchronous=asynchronous)
    write = writer(cache, result, name, asynchronous, verdict)
    if served is not None or (verdict is not None and verdict.served):
        if (result.hit is None) if served is not None else verdict.action == "audit":
            audit = cache.controller.aaudit_later if asynchronous else cache.controller.audit_later
            audit(call, write, result.decision.entry_id)  # the function checks the answer in the background
        return served.answer if served is not None else verdict.answer
    answer = yield call
    if isinstance(answer, str) and answer.strip():
        yield lambda: write(answer)
    return answer


def cache_info(response: Any) -> CacheInfo | None:
    """The CacheInfo of a response or stream returned by `MemCache.completion`, or None."""
    info = getattr(response, "cache_info", None)
    if isinstance(info, CacheInfo):
        return info
    hidden = getattr(response, "_hidden_params", None)
    return hidden.get("memcache") if isinstance(hidden, dict) else None


def info_of(
    result: LookupResult, *, served: CacheHit | None = None, stored: bool = False, cheap: CheapVerdict | None = None
) -> CacheInfo:
    """What a response says the cache did (with `cheap`: a served cheap answer, its confidence
    the cheap path's, its entry the pair the cheap model said it used)."""
    d = result.decision
    similarity = d.similarity if np.isfinite(d.similarity) else None
    if served is not None:
        return CacheInfo("hit", similarity, d.confidence, d.entry_id, served.exact, audited=result.hit is None,
                         path="memory")  # fmt: skip
    if cheap is not None:
        return CacheInfo("miss", similarity, cheap.confidence, cheap.entry_id, audited=cheap.action == "audit",
                         path="cheap")  # fmt: skip
    return CacheInfo(d.action, similarity, d.confidence, d.entry_id, stored=stored)


def _streams(messages: Any, kwargs: Mapping[str, Any]) -> bool:
    """Check what a completion call must hold; returns whether it streams."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidRequestError("messages must be a list of {'role', 'content'} dicts, as for LiteLLM")
    stream = kwargs.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError(f"stream must be true or false, got {stream!r}")
    return bool(stream)
