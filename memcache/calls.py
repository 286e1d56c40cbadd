"""The flows behind `MemCache.lookup`, `completion` and the `cached` decorator.

Each is one flow for the sync and the async twin (see `memcache.flow`): look up, serve what
memory holds (a shadow audit's check runs in the background), or pay the strong model and
write its verified answer back.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from memcache import checks, flow, llm
from memcache.embedding import AsyncEmbedder
from memcache.errors import ConfigError, InvalidRequestError
from memcache.types import CacheHit, CacheInfo, Decision, LookupResult

if TYPE_CHECKING:
    from memcache.cache import MemCache


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
    model = model or cache.strong_model
    if not model:
        raise ConfigError(
            "no model: pass model=... or construct MemCache(strong_model=...) "
            "(on the command line: --model, or MEMCACHE_STRONG_MODEL)"
        )
    if result is None:
        result = yield from lookup_flow(cache, messages, model, tenant, kwargs, asynchronous=asynchronous)
    served = yield from served_flow(cache, result, asynchronous=asynchronous)
    replay = llm.AsyncCacheStream if asynchronous else llm.CacheStream
    if served is not None:
        if result.hit is None:  # checked on a worker thread, so it outlives the caller's event loop
            checked = {k: v for k, v in kwargs.items() if k not in ("stream", "stream_options")}
            ask = functools.partial(_check, cache, model, list(messages), checked)
            cache.controller.audit_later(ask, cache._writer(result, model, False), result.decision.entry_id)
        info = info_of(result, served=served)
        return (
            replay(llm.hit_chunks(model, served.answer), info)
            if stream
            else llm.hit_response(model, served.answer, info)
        )
    call = llm.acompletion if asynchronous else llm.completion
    response = yield lambda: call(model, list(messages), **kwargs)
    cache.controller.record_strong_call(llm.cost_micro_usd(response))
    write = cache._writer(result, model, asynchronous)
    if stream:
        return replay(response, info_of(result), write)
    text = llm.verified_text(response)
    stored = text is not None and (yield lambda: write(text))
    return llm.attach(response, info_of(result, stored=stored))


def _check(cache: MemCache, model: str, messages: list, kwargs: dict) -> str | None:
    """A shadow audit's strong call: the verified text of one answer, counted and priced."""
    response = llm.completion(model, messages, **kwargs)
    cache.controller.record_strong_call(llm.cost_micro_usd(response))
    return llm.verified_text(response)


def cached(cache: MemCache, func: Callable | None, *, model: str | None, tenant: str | None):
    """`MemCache.cached`: the decorator, or the decorated function when `func` is given."""

    def decorate(fn: Callable) -> Callable:
        name = model or checks.function_name(fn)

        def steps(request, args: tuple, kwargs: dict, asynchronous: bool) -> flow.Flow[Any]:
            def call():  # the function is the strong model: each run is a strong call
                cache.controller.record_strong_call(0)
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
    write = cache._writer(result, name, asynchronous)
    if served is not None:
        if result.hit is None:  # the function checks the hit in the background
            audit = cache.controller.aaudit_later if asynchronous else cache.controller.audit_later
            audit(call, write, result.decision.entry_id)
        return served.answer
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


def info_of(result: LookupResult, *, served: CacheHit | None = None, stored: bool = False) -> CacheInfo:
    """What a response says the cache did."""
    d = result.decision
    similarity = d.similarity if np.isfinite(d.similarity) else None
    if served is not None:
        return CacheInfo("hit", similarity, d.confidence, d.entry_id, served.exact, audited=result.hit is None)
    return CacheInfo(d.action, similarity, d.confidence, d.entry_id, stored=stored)


def _streams(messages: Any, kwargs: Mapping[str, Any]) -> bool:
    """Check what a completion call must hold; returns whether it streams."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidRequestError("messages must be a list of {'role', 'content'} dicts, as for LiteLLM")
    stream = kwargs.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError(f"stream must be true or false, got {stream!r}")
    return bool(stream)
