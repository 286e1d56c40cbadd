"""Calls to the strong model through LiteLLM, and what counts as an answer worth keeping.

LiteLLM is imported on first call (it fetches a price table at import unless
LITELLM_LOCAL_MODEL_COST_MAP=True). Failures are re-raised as EscalationError with the
LiteLLM exception as `__cause__`; nothing is written back after a failure.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from memcache.errors import EscalationError
from memcache.types import CacheInfo

NORMAL_FINISH = frozenset({"stop", "end_turn", "eos"})
MAX_ERROR_CHARS = 300
log = logging.getLogger("memcache")


def _litellm():
    """LiteLLM, imported on first use: with its price table read locally unless the user chose
    otherwise, and without its debug banners (memcache reports provider errors in one line)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def _call_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What LiteLLM is called with. `caching=False`: memcache is the cache, and a `litellm.cache`
    the application set elsewhere must not answer for the strong model (its answer would be
    written back and audits checked against it). A server named by `api_base`, with no key given
    or set, gets a placeholder key: LiteLLM's OpenAI client refuses to call without one, and a
    local server needs none."""
    kwargs = {**kwargs, "caching": False}
    if kwargs.get("api_base") and not kwargs.get("api_key") and not os.environ.get("OPENAI_API_KEY"):
        kwargs["api_key"] = "no-key"
    return kwargs


def _failed(model: str, exc: Exception, role: str = "strong") -> EscalationError:
    """One line for the user (LiteLLM's texts can run to a traceback and a long bug-report URL);
    the whole exception stays as `__cause__` and in the debug log."""
    log.debug("%s model %r failed", role, model, exc_info=exc)
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if len(first) > MAX_ERROR_CHARS:
        first = first[: MAX_ERROR_CHARS - 1] + "…"
    return EscalationError(f"{role} model {model!r} failed: {first}")


def completion(model: str, messages: list, *, role: str = "strong", **kwargs: Any):
    """LiteLLM's `completion`; `role` names the model in errors ("strong" or "cheap")."""
    try:
        return _litellm().completion(model=model, messages=messages, **_call_kwargs(kwargs))
    except Exception as exc:
        raise _failed(model, exc, role) from exc


async def acompletion(model: str, messages: list, *, role: str = "strong", **kwargs: Any):
    try:
        return await _litellm().acompletion(model=model, messages=messages, **_call_kwargs(kwargs))
    except Exception as exc:
        raise _failed(model, exc, role) from exc


def cost_micro_usd(response: Any) -> int:
    """What LiteLLM priced a completed call at, in millionths of a dollar (0 where it could not:
    a stream, a model missing from its price table)."""
    hidden = getattr(response, "_hidden_params", None)
    cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
    return round(float(cost) * 1e6) if isinstance(cost, (int, float)) else 0


def usage_tokens(response: Any) -> int:
    """Tokens the provider counted for a completed call (prompt and completion; 0 where none)."""
    total = getattr(getattr(response, "usage", None), "total_tokens", None)
    return total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else 0


def verified_text(response: Any) -> str | None:
    """The answer text if the response is one complete, normal answer; else None.

    Rejected: several choices, a finish_reason other than a normal stop (length,
    content_filter, tool_calls), tool calls, and empty content.
    """
    choices = getattr(response, "choices", None) or []
    if len(choices) != 1:
        return None
    choice = choices[0]
    message = getattr(choice, "message", None)
    if choice.finish_reason not in NORMAL_FINISH or message is None or getattr(message, "tool_calls", None):
        return None
    content = message.content
    return content if isinstance(content, str) and content.strip() else None


def attach(response: Any, info: CacheInfo) -> Any:
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict):
        hidden["memcache"] = info
        hidden["cache_hit"] = info.outcome == "hit"
    return response


def hit_response(model: str, answer: str, info: CacheInfo):
    """A LiteLLM ModelResponse carrying a stored answer."""
    litellm = _litellm()
    response = litellm.ModelResponse(
        model=model,
        choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
    )
    return attach(response, info)


def _pieces(answer: str) -> list[str]:
    return re.findall(r"\s*\S+", answer) or [answer]


def hit_chunks(model: str, answer: str) -> Iterator[Any]:
    """Replay a stored answer as LiteLLM stream chunks, word by word, ending with finish_reason=stop."""
    from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

    pieces = _pieces(answer)
    for i, piece in enumerate(pieces):
        yield ModelResponseStream(
            model=model,
            choices=[StreamingChoices(index=0, delta=Delta(content=piece, role="assistant" if i == 0 else None))],
        )
    yield ModelResponseStream(model=model, choices=[StreamingChoices(index=0, delta=Delta(), finish_reason="stop")])


class StreamAssembler:
    """Collects stream chunks into the final text; `text()` is None unless the stream ended normally."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._finish: str | None = None
        self._tool_calls = False
        self._choices: set[int] = set()

    def add(self, chunk: Any) -> None:
        for choice in getattr(chunk, "choices", None) or []:
            self._choices.add(getattr(choice, "index", 0) or 0)
            delta = getattr(choice, "delta", None)
            if delta is not None:
                if getattr(delta, "content", None):
                    self._parts.append(delta.content)
                if getattr(delta, "tool_calls", None):
                    self._tool_calls = True
            if getattr(choice, "finish_reason", None):
                self._finish = choice.finish_reason

    def text(self) -> str | None:
        if self._finish not in NORMAL_FINISH or self._tool_calls or len(self._choices) > 1:
            return None
        text = "".join(self._parts)
        return text if text.strip() else None


class _Stream:
    """What both stream twins share: the info, the assembly of the text, the completion hook,
    and error translation; each twin only iterates its own way."""

    def __init__(self, chunks: Any, info: CacheInfo, on_complete: Callable[[str], Any] | None = None) -> None:
        self._chunks = chunks
        self.cache_info = info
        self._on_complete = on_complete
        self._assembler = StreamAssembler()

    def _seen(self, chunk: Any) -> Any:
        self._assembler.add(chunk)
        return chunk

    def _completion(self) -> Any:
        """What `on_complete` returns for a stream that ended normally (None otherwise)."""
        text = self._assembler.text()
        return None if text is None or self._on_complete is None else self._on_complete(text)

    @staticmethod
    def _failed(exc: Exception) -> EscalationError:
        return EscalationError(f"strong model stream failed: {exc}")

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)  # the chunks are LiteLLM's stream or a replay
        if close:
            close()


class CacheStream(_Stream):
    """A stream of LiteLLM chunks with `cache_info`; calls `on_complete(text)` only if it ends normally.

    A consumer that stops early, or an error mid-stream, leaves nothing written.
    """

    def __iter__(self) -> Iterator[Any]:
        try:
            for chunk in self._chunks:
                yield self._seen(chunk)
        except Exception as exc:
            raise self._failed(exc) from exc
        self._completion()


class AsyncCacheStream(_Stream):
    """Async twin of CacheStream; `on_complete` is awaited. The chunks may be a plain iterable
    (a stored answer replayed)."""

    async def __aiter__(self) -> AsyncIterator[Any]:
        chunks = self._chunks if isinstance(self._chunks, AsyncIterable) else _async_iter(self._chunks)
        try:
            async for chunk in chunks:
                yield self._seen(chunk)
        except Exception as exc:
            raise self._failed(exc) from exc
        done = self._completion()
        if done is not None:
            await done


async def _async_iter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item
