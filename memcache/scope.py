"""What makes two requests comparable: the query text, and a scope that must match exactly.

A stored answer may only be served to a request with the same tenant, model, answer-changing
parameters, system prompt and earlier turns. The scope key hashes all of them; the store and
the index partition by it, so a search can never rank an entry of another scope.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from memcache.errors import InvalidRequestError
from memcache.types import Scope

DEFAULT_TENANT = "default"

# Keyword arguments that change how a call is made, not what it answers.
TRANSPORT_PARAMS = frozenset(
    {
        "stream", "stream_options", "timeout", "request_timeout", "api_key", "api_base", "base_url",
        "api_version", "organization", "user", "metadata", "mock_response", "num_retries",
        "max_retries", "extra_headers", "headers", "custom_llm_provider", "caching", "cache",
        "litellm_logging_obj", "logger_fn", "drop_params", "fallbacks", "client", "proxy_url",
    }
)


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used for the exact-repeat path."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _digest(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def check_text(text: Any, *, what: str, max_chars: int) -> str:
    """Return `text` if it is a usable query, else raise InvalidRequestError."""
    if isinstance(text, (bytes, bytearray)):
        raise InvalidRequestError(f"{what} must be str, got bytes; decode it as UTF-8 first")
    if not isinstance(text, str):
        raise InvalidRequestError(f"{what} must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"{what} is not valid UTF-8 (lone surrogate at {exc.start})") from exc
    if not text.strip():
        raise InvalidRequestError(f"{what} is empty or whitespace only")
    if len(text) > max_chars:
        raise InvalidRequestError(
            f"{what} has {len(text)} characters, over the limit of {max_chars}; "
            "raise max_query_chars or send a shorter prompt"
        )
    return text


def _content_text(content: Any, *, what: str) -> tuple[str, list[Any]]:
    """Split message content into its text and its non-text parts (images, audio, ...)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts, others = [], []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                texts.append(part.get("text", ""))
            else:
                others.append(part)
        if not all(isinstance(t, str) for t in texts):
            raise InvalidRequestError(f"{what} has a text part that is not a string")
        return "\n".join(texts), others
    raise InvalidRequestError(f"{what} content must be a string or a list of parts, got {type(content).__name__}")


def split_messages(messages: Any, *, max_chars: int) -> tuple[str, list[Mapping[str, Any]], list[Any]]:
    """Return (last user text, messages before it, non-text parts of the last user turn).

    Raises InvalidRequestError for anything that is not an OpenAI-style message list
    with a non-empty user turn.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {'role', 'content'} dicts")
    last_user = None
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise InvalidRequestError(f"messages[{i}] must be a dict with a 'role' key")
        if message["role"] == "user":
            last_user = i
    if last_user is None:
        raise InvalidRequestError("messages has no user turn; the last user message is what gets cached")
    text, extra_parts = _content_text(messages[last_user].get("content"), what=f"messages[{last_user}]")
    total = sum(len(json.dumps(m.get("content"), ensure_ascii=False, default=repr)) for m in messages)
    if total > max_chars:
        raise InvalidRequestError(
            f"messages hold {total} characters, over the limit of {max_chars}; raise max_query_chars"
        )
    check_text(text, what="the last user message", max_chars=max_chars)
    return text, list(messages[:last_user]), extra_parts


def build_scope(
    *,
    tenant: str | None,
    model: str,
    params: Mapping[str, Any],
    earlier: Sequence[Mapping[str, Any]] = (),
    extra_parts: Sequence[Any] = (),
    namespace: str | None = None,
) -> Scope:
    """Fingerprint everything that must match for a stored answer to be reusable.

    System and developer messages form the system fingerprint; all other earlier turns
    (and any non-text parts of the query turn) form the context fingerprint.
    Unknown parameters count as answer-changing, which can only cost hits, never leak.
    """
    tenant = DEFAULT_TENANT if tenant is None else tenant
    if not isinstance(tenant, str) or not tenant or len(tenant) > 255:
        raise InvalidRequestError("tenant must be a non-empty string of at most 255 characters (or None)")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model must be a non-empty string")
    system = [m.get("content") for m in earlier if m.get("role") in ("system", "developer")]
    context = [dict(m) for m in earlier if m.get("role") not in ("system", "developer")]
    answer_params = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and v is not None}
    params_fp = _digest(answer_params)
    system_fp = _digest(system)
    context_fp = _digest([context, list(extra_parts)])
    key = _digest([namespace or "", tenant, model, params_fp, system_fp, context_fp])
    return Scope(
        tenant=tenant,
        model=model,
        params_fingerprint=params_fp,
        system_fingerprint=system_fp,
        context_fingerprint=context_fp,
        key=key,
    )
