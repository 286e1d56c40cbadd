"""LiteLLM cache backend: `litellm.cache = MemCacheLiteLLMCache(...)`, then `completion(..., caching=True)`.

LiteLLM asks its `Cache` object for a stored response before a call and hands it the response
after one. This subclass answers from `MemCache` (scoped, calibrated) instead of a key-value
store, and writes back only answers that pass memcache's verification. Hits come back the
LiteLLM way, `response._hidden_params["cache_hit"] is True`, plus
`response._hidden_params["memcache"]`, the `CacheInfo` with similarity and confidence.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

from memcache.cache import MemCache
from memcache.errors import ConfigError, MemcacheError
from memcache.llm import verified_text
from memcache.scope import TRANSPORT_PARAMS
from memcache.types import CacheInfo, LookupResult

try:
    from litellm import ModelResponse
    from litellm.caching.caching import Cache, LiteLLMCacheType
    from litellm.litellm_core_utils.model_param_helper import ModelParamHelper
except ImportError as exc:  # pragma: no cover - litellm is a core dependency
    raise ConfigError("litellm is not installed; pip install litellm") from exc

_PENDING_LIMIT = 10_000
_NOT_SCOPE = frozenset({"messages", "model"}) | TRANSPORT_PARAMS


class MemCacheLiteLLMCache(Cache):
    """A `litellm.Cache` served by memcache.

    Args:
        cache: the MemCache to use; built from `memcache_kwargs` when None.
        tenant: tenant of every call; calls made through the LiteLLM proxy with a virtual key
            use that key (hashed) instead, so keys never share answers.
        memcache_kwargs: passed to `MemCache(...)` when `cache` is None.
    """

    def __init__(self, cache: MemCache | None = None, *, tenant: str | None = None, **memcache_kwargs: Any) -> None:
        if cache is not None and memcache_kwargs:
            raise ConfigError("pass either cache= or MemCache keyword arguments, not both")
        super().__init__(type=LiteLLMCacheType.LOCAL, supported_call_types=["completion", "acompletion"])
        self.memcache = cache if cache is not None else MemCache(**memcache_kwargs)
        self.tenant = tenant
        self._answer_params = ModelParamHelper.get_all_llm_api_params()
        self._pending: OrderedDict[tuple[str, str], LookupResult] = OrderedDict()
        self._pending_lock = threading.Lock()

    # -- translation --------------------------------------------------------------------------

    def _call(self, kwargs: dict[str, Any]) -> tuple[Any, str, str | None, dict[str, Any]]:
        params = {k: v for k, v in kwargs.items() if k in self._answer_params and k not in _NOT_SCOPE and v is not None}
        metadata = kwargs.get("metadata") or {}
        key = metadata.get("user_api_key") if isinstance(metadata, dict) else None
        tenant = f"key-{hashlib.sha256(str(key).encode()).hexdigest()[:16]}" if key else self.tenant
        return kwargs.get("messages"), str(kwargs.get("model")), tenant, params

    @staticmethod
    def _hit_dict(result: LookupResult) -> dict[str, Any]:
        hit = result.hit
        info = CacheInfo("hit", hit.similarity, hit.confidence, hit.entry_id, hit.exact)
        return {
            "id": f"chatcmpl-memcache-{hit.entry_id}",
            "object": "chat.completion",
            "created": 0,
            "model": result.scope.model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": hit.answer}}],
            "_hidden_params": {"memcache": info, "cache_hit": True},
        }

    def _remember(self, result: LookupResult) -> None:
        with self._pending_lock:
            self._pending[(result.scope.key, result.query)] = result
            while len(self._pending) > _PENDING_LIMIT:
                self._pending.popitem(last=False)

    def _take(self, messages: Any, model: str, tenant: str | None, params: dict[str, Any]) -> LookupResult | None:
        query, scope = self.memcache._parse(messages, model, tenant, params)
        with self._pending_lock:
            return self._pending.pop((scope.key, query), None)

    # -- litellm.Cache ------------------------------------------------------------------------

    def supports_async(self) -> bool:
        return True

    def get_cache(self, dynamic_cache_object=None, **kwargs: Any):
        if self.should_use_cache(**kwargs) is not True:
            return None
        messages, model, tenant, params = self._call(kwargs)
        try:
            result = self.memcache.lookup(messages, model=model, tenant=tenant, **params)
        except MemcacheError:
            return None  # a request memcache cannot scope is simply not cached; LiteLLM calls the model
        if result.hit is not None:
            return self._hit_dict(result)
        self._remember(result)
        return None

    async def async_get_cache(self, dynamic_cache_object=None, **kwargs: Any):
        if self.should_use_cache(**kwargs) is not True:
            return None
        messages, model, tenant, params = self._call(kwargs)
        try:
            result = await self.memcache.alookup(messages, model=model, tenant=tenant, **params)
        except MemcacheError:
            return None
        if result.hit is not None:
            return self._hit_dict(result)
        self._remember(result)
        return None

    def _write_args(self, response: Any, kwargs: dict[str, Any]):
        if isinstance(response, (str, bytes)):  # LiteLLM's async path hands over the response as JSON
            try:
                response = json.loads(response)
            except ValueError:
                return None
        if isinstance(response, dict):
            response = ModelResponse(**response)
        text = verified_text(response)
        if text is None or self.should_use_cache(**kwargs) is not True:
            return None
        messages, model, tenant, params = self._call(kwargs)
        try:
            request = self._take(messages, model, tenant, params) or messages
        except MemcacheError:
            return None
        return request, text, {"model": model, "tenant": tenant, "source_model": model, **params}

    def add_cache(self, result: Any, **kwargs: Any) -> None:
        args = self._write_args(result, kwargs)
        if args is not None:
            request, text, write_kwargs = args
            self.memcache.write_back(request, text, **write_kwargs)

    async def async_add_cache(self, result: Any, dynamic_cache_object=None, **kwargs: Any) -> None:
        args = self._write_args(result, kwargs)
        if args is not None:
            request, text, write_kwargs = args
            await self.memcache.awrite_back(request, text, **write_kwargs)
