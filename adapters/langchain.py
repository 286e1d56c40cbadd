"""LangChain cache: `set_llm_cache(MemCacheSemanticCache(...))` or `ChatModel(cache=...)`.

LangChain hands a cache `prompt` (for chat models, `dumps(messages)`) and `llm_string` (the
model and its parameters). Here the last human turn is what gets embedded, and llm_string,
system prompt and earlier turns form the scope, so "how old is he?" after two different
conversations never shares an answer. Generations are stored whole (as LangChain's own JSON)
and returned as they were: message type, content, metadata.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

from memcache.adapters._pending import PendingLookups
from memcache.cache import MemCache
from memcache.errors import ConfigError
from memcache.types import CacheHit

try:
    from langchain_core._api import LangChainBetaWarning
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.load import dumps, loads
    from langchain_core.messages import AIMessage, AIMessageChunk
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigError.missing_extra("langchain", "langchain-core") from exc

_ROLES = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "function",
    "chat": "user",
    "developer": "developer",
}
# only these classes are rebuilt from stored JSON: a store must not be able to construct anything else
_ALLOWED = [Generation, GenerationChunk, ChatGeneration, ChatGenerationChunk, AIMessage, AIMessageChunk]


def _messages(prompt: str) -> list[dict[str, Any]] | None:
    """OpenAI-style messages from LangChain's serialized chat prompt, or None for a plain prompt."""
    if not prompt.startswith("[{"):
        return None
    try:
        items = json.loads(prompt)
    except ValueError:
        return None
    messages = []
    for item in items:
        kwargs = item.get("kwargs", {}) if isinstance(item, dict) else {}
        kind = kwargs.get("type") or (item.get("id") or ["?"])[-1].removesuffix("Message").lower()
        role = kwargs.get("role") if kind == "chat" and kwargs.get("role") else _ROLES.get(kind, kind)
        message = {"role": role, "content": kwargs.get("content", "")}
        for extra in ("tool_calls", "tool_call_id", "name"):
            if kwargs.get(extra):
                message[extra] = kwargs[extra]
        messages.append(message)
    return messages


class MemCacheSemanticCache(BaseCache):
    """A LangChain `BaseCache` backed by `MemCache`.

    Args:
        cache: the MemCache to use; built from `memcache_kwargs` when None.
        tenant: scope of everything this adapter stores; `clear()` forgets exactly this tenant.
        memcache_kwargs: passed to `MemCache(...)` when `cache` is None.
    """

    def __init__(self, cache: MemCache | None = None, *, tenant: str | None = None, **memcache_kwargs: Any) -> None:
        if cache is not None and memcache_kwargs:
            raise ConfigError("pass either cache= or MemCache keyword arguments, not both")
        self.cache = cache if cache is not None else MemCache(**memcache_kwargs)
        self.tenant = tenant
        self._pending = PendingLookups()

    # -- translation --------------------------------------------------------------------------

    @staticmethod
    def _request(prompt: str) -> tuple[Any, bool]:
        messages = _messages(prompt)
        return (messages, True) if messages is not None else (prompt, False)

    @staticmethod
    def _generations(hit: CacheHit, chat: bool) -> list[Generation]:
        if hit.payload:
            with warnings.catch_warnings():  # `loads` is a beta API; the warning is ours to carry, not the user's
                warnings.simplefilter("ignore", LangChainBetaWarning)
                return loads(hit.payload, allowed_objects=_ALLOWED)
        if chat:
            return [ChatGeneration(message=AIMessage(content=hit.answer))]
        return [Generation(text=hit.answer)]

    @staticmethod
    def _text(return_val: RETURN_VAL_TYPE) -> str | None:
        """The answer text to index and compare: the single generation's text."""
        if len(return_val) != 1:
            return None  # n > 1 completions are not one answer; they are not cached
        text = return_val[0].text
        return text if isinstance(text, str) and text.strip() else None

    # -- BaseCache ----------------------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        request, chat = self._request(prompt)
        result = self.cache.lookup(request, model=llm_string, tenant=self.tenant)
        if result.hit is not None:
            return self._generations(result.hit, chat)
        self._pending.put((prompt, llm_string), result)
        return None

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        request, chat = self._request(prompt)
        result = await self.cache.alookup(request, model=llm_string, tenant=self.tenant)
        if result.hit is not None:
            return self._generations(result.hit, chat)
        self._pending.put((prompt, llm_string), result)
        return None

    def _write_args(self, prompt: str, llm_string: str, return_val: Sequence[Generation]):
        text = self._text(return_val)
        if text is None:
            return None
        result = self._pending.pop((prompt, llm_string))
        # an update without a preceding miss (a direct call) is stored but has no lookup to learn from
        request = result if result is not None else self._request(prompt)[0]
        return request, text, {"model": llm_string, "tenant": self.tenant, "payload": dumps(list(return_val))}

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        args = self._write_args(prompt, llm_string, return_val)
        if args is not None:
            request, text, kwargs = args
            self.cache.write_back(request, text, **kwargs)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        args = self._write_args(prompt, llm_string, return_val)
        if args is not None:
            request, text, kwargs = args
            await self.cache.awrite_back(request, text, **kwargs)

    def clear(self, **kwargs: Any) -> None:
        """Forget everything stored under this adapter's tenant."""
        self.cache.forget(tenant=self.tenant)

    async def aclear(self, **kwargs: Any) -> None:
        await self.cache.aforget(tenant=self.tenant)
