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
import uuid
from typing import Any

from memcache.adapters._pending import PendingLookups
from memcache.cache import MemCache
from memcache.errors import ConfigError, InvalidRequestError
from memcache.llm import verified_text
from memcache.scope import TRANSPORT_PARAMS
from memcache.types import CacheInfo, LookupResult

try:
    from litellm import ModelResponse
    from litellm.caching.caching import Cache, LiteLLMCacheType
    from litellm.litellm_core_utils.model_param_helper import ModelParamHelper
except ImportError as exc:  # pragma: no cover - litellm is a core dependency
    raise ConfigError("litellm is not installed; pip install litellm") from exc

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
        self._pending = PendingLookups()

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
            "id": f"chatcmpl-memcache-{uuid.uuid4().hex[:24]}",  # no store id reaches the caller's clients
            "object": "chat.completion",
            "created": 0,
            "model": result.scope.model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": hit.answer}}],
            "_hidden_params": {"memcache": info, "cache_hit": True},
        }

    @staticmethod
    def _pending_key(messages: Any, model: str, tenant: str | None, params: dict[str, Any]) -> str:
        """The same call seen by get_cache and add_cache, as one string."""
        return json.dumps([messages, model, tenant, params], sort_keys=True, default=repr)

    # -- litellm.Cache ------------------------------------------------------------------------

    def supports_async(self) -> bool:
        return True

    def get_cache(self, dynamic_cache_object=None, **kwargs: Any):
        if self.should_use_cache(**kwargs) is not True:
            return None
        messages, model, tenant, params = self._call(kwargs)
        try:
            result = self.memcache.lookup(messages, model=model, tenant=tenant, **params)
        except InvalidRequestError:
            return None  # a request memcache cannot scope is simply not cached; LiteLLM calls the model
        if result.hit is not None:
            return self._hit_dict(result)
        self._pending.put(self._pending_key(messages, model, tenant, params), result)
        return None

    async def async_get_cache(self, dynamic_cache_object=None, **kwargs: Any):
        if self.should_use_cache(**kwargs) is not True:
            return None
        messages, model, tenant, params = self._call(kwargs)
        try:
            result = await self.memcache.alookup(messages, model=model, tenant=tenant, **params)
        except InvalidRequestError:
            return None
        if result.hit is not None:
            return self._hit_dict(result)
        self._pending.put(self._pending_key(messages, model, tenant, params), result)
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
        request = self._pending.pop(self._pending_key(messages, model, tenant, params)) or messages
        return request, text, {"model": model, "tenant": tenant, "source_model": model, **params}

    def add_cache(self, result: Any, **kwargs: Any) -> None:
        args = self._write_args(result, kwargs)
        if args is not None:
            request, text, write_kwargs = args
            try:
                self.memcache.write_back(request, text, **write_kwargs)
            except InvalidRequestError:
                pass  # a request memcache cannot scope is not cached, as in get_cache

    async def async_add_cache(self, result: Any, dynamic_cache_object=None, **kwargs: Any) -> None:
        args = self._write_args(result, kwargs)
        if args is not None:
            request, text, write_kwargs = args
            try:
                await self.memcache.awrite_back(request, text, **write_kwargs)
            except InvalidRequestError:
                pass  # a request memcache cannot scope is not cached, as in async_get_cache
