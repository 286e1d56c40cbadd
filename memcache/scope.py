"""What makes two requests comparable: the query text, and a scope that must match exactly.

A stored answer may only be served to a request with the same tenant, model, answer-changing
parameters, system prompt and conversation: every message but the text of the last user turn,
those after it included (tool results, an assistant prefill, a trailing instruction). The scope
key hashes all of them, by value; the store and the index partition by it, so a search can never
rank an entry of another scope.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from memcache.errors import InvalidRequestError
from memcache.types import Scope

# The tenant of requests that name none. No caller can name it (a tenant is a non-empty string),
# so `tenant=None` never shares answers with a tenant called "default".
DEFAULT_TENANT = ""
MAX_NESTING = 64  # deepest nesting of lists and dicts accepted in messages and parameters

# Keyword arguments that change how a call is made, not what it answers.
TRANSPORT_PARAMS = frozenset(
    {
        "stream",
        "stream_options",
        "timeout",
        "request_timeout",
        "api_key",
        "api_base",
        "base_url",
        "api_version",
        "organization",
        "user",
        "metadata",
        "mock_response",
        "num_retries",
        "max_retries",
        "extra_headers",
        "headers",
        "custom_llm_provider",
        "caching",
        "cache",
        "litellm_logging_obj",
        "logger_fn",
        "drop_params",
        "fallbacks",
        "client",
        "proxy_url",
    }
)
_INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})  # control, format (zero-width), separators


def normalize(text: str) -> str:
    """The exact-repeat path's form of a query: the same text up to whitespace (and NFC).

    No case or compatibility folding: "print('A  B')" is not "print('a b')", and "10²" is not
    "102". Such variants go through the policy like any paraphrase.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def canonical(value: Any, *, what: str, depth: int = 0) -> Any:
    """`value` as JSON-ready data that tells values apart by what they hold, not by `repr`.

    Plain JSON data maps to itself. Arrays count by dtype, shape and bytes; pydantic model
    classes by their full JSON schema, instances by their fields; dataclasses by their fields;
    other objects by `__memcache_key__()`, or they are refused: two objects with equal reprs
    must not share an answer.

    Raises:
        InvalidRequestError: nesting deeper than MAX_NESTING, or a value that cannot be told apart.
    """
    if depth > MAX_NESTING:
        raise InvalidRequestError(f"{what} is nested more than {MAX_NESTING} levels deep")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else ["float", repr(value)]
    if isinstance(value, Mapping):
        if all(isinstance(key, str) for key in value):
            return {key: canonical(item, what=what, depth=depth + 1) for key, item in value.items()}
        pairs = [
            [canonical(k, what=what, depth=depth + 1), canonical(v, what=what, depth=depth + 1)]
            for k, v in value.items()
        ]
        return ["dict", sorted(pairs, key=lambda pair: json.dumps(pair[0], sort_keys=True))]
    if isinstance(value, (list, tuple)):
        return [canonical(item, what=what, depth=depth + 1) for item in value]
    if isinstance(value, (set, frozenset)):
        items = [canonical(item, what=what, depth=depth + 1) for item in value]
        return ["set", sorted(items, key=lambda item: json.dumps(item, sort_keys=True))]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ["bytes", hashlib.sha256(bytes(value)).hexdigest()]
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        if data.dtype.hasobject:
            return ["ndarray", list(data.shape), canonical(data.tolist(), what=what, depth=depth + 1)]
        return ["ndarray", data.dtype.str, list(data.shape), hashlib.sha256(data.tobytes()).hexdigest()]
    if isinstance(value, np.generic):
        return ["scalar", value.dtype.str, canonical(value.item(), what=what, depth=depth + 1)]
    if isinstance(value, enum.Enum):
        return ["enum", _qualified(type(value)), canonical(value.value, what=what, depth=depth + 1)]
    key = getattr(value, "__memcache_key__", None)
    if callable(key) and not isinstance(value, type):
        return ["key", _qualified(type(value)), canonical(key(), what=what, depth=depth + 1)]
    if isinstance(value, type) and callable(getattr(value, "model_json_schema", None)):  # pydantic model class
        return ["schema", _qualified(value), canonical(value.model_json_schema(), what=what, depth=depth + 1)]
    if callable(getattr(value, "model_dump", None)) and not isinstance(value, type):  # pydantic model instance
        return ["model", _qualified(type(value)), canonical(value.model_dump(mode="json"), what=what, depth=depth + 1)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: canonical(getattr(value, f.name), what=what, depth=depth + 1) for f in dataclasses.fields(value)
        }
        return ["dataclass", _qualified(type(value)), fields]
    raise InvalidRequestError(
        f"{what} holds a {_qualified(type(value))}, which memcache cannot tell apart by value; pass plain data "
        "(text, numbers, lists, dicts, arrays), a dataclass or a pydantic model, or give the class a "
        "__memcache_key__() method that returns plain data"
    )


def _qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def digest(value: Any, *, what: str) -> str:
    """A short hash of `value` by value (see `canonical`)."""
    blob = json.dumps(canonical(value, what=what), sort_keys=True, ensure_ascii=False)
    try:
        data = blob.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"{what} holds text that is not valid UTF-8 (a lone surrogate)") from exc
    return hashlib.sha256(data).hexdigest()[:32]


def check_text(text: Any, *, what: str, max_chars: int) -> str:
    """Return `text` if it is a usable query or answer, else raise InvalidRequestError."""
    if isinstance(text, (bytes, bytearray)):
        raise InvalidRequestError(f"{what} must be str, got bytes; decode it as UTF-8 first")
    if not isinstance(text, str):
        raise InvalidRequestError(f"{what} must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"{what} is not valid UTF-8 (lone surrogate at {exc.start})") from exc
    if not any(unicodedata.category(char) not in _INVISIBLE for char in text):
        raise InvalidRequestError(f"{what} is empty or has no visible characters")
    if len(text) > max_chars:
        raise InvalidRequestError(
            f"{what} has {len(text)} characters, over the limit of {max_chars}; "
            "raise max_query_chars or send a shorter prompt"
        )
    return text


def _check_name(value: Any, *, what: str, max_chars: int | None, printable: bool) -> str:
    """A tenant or model name: non-empty text, valid UTF-8, without NUL (a store cannot keep it);
    a tenant is also printable and at most 255 characters (a model may be a long parameter string,
    as LangChain's is)."""
    if not isinstance(value, str) or not value.strip() or (max_chars is not None and len(value) > max_chars):
        limit = "" if max_chars is None else f" of at most {max_chars} characters"
        raise InvalidRequestError(f"{what} must be a non-empty string{limit}")
    if "\x00" in value or (printable and any(unicodedata.category(char) == "Cc" for char in value)):
        raise InvalidRequestError(f"{what} must be printable text (no control characters such as NUL)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"{what} is not valid UTF-8 (a lone surrogate)") from exc
    return value


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


@dataclass(frozen=True)
class Conversation:
    """A chat request cut where memcache cuts it.

    `query` is the text of the last user turn (what gets embedded); `earlier` the messages
    before it, `after` those after it (tool calls and results, an assistant prefill, a trailing
    system message), and `query_extras` the last user turn's non-text parts and other keys
    (such as `name`): all of those belong to the scope.
    """

    query: str
    earlier: tuple[Mapping[str, Any], ...] = ()
    after: tuple[Mapping[str, Any], ...] = ()
    query_extras: tuple[Any, ...] = ()


def split_messages(messages: Any, *, max_chars: int) -> Conversation:
    """Cut OpenAI-style messages at the last user turn.

    Raises InvalidRequestError for anything that is not a message list with a visible user
    turn, that nests deeper than MAX_NESTING, or that holds more than `max_chars` characters.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {'role', 'content'} dicts")
    last_user = None
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise InvalidRequestError(f"messages[{i}] must be a dict with a 'role' key")
        total += len(json.dumps(canonical(message, what=f"messages[{i}]"), ensure_ascii=False))
        if message["role"] == "user":
            last_user = i
    if last_user is None:
        raise InvalidRequestError("messages has no user turn; the last user message is what gets cached")
    if total > max_chars:
        raise InvalidRequestError(
            f"messages hold {total} characters, over the limit of {max_chars}; raise max_query_chars"
        )
    turn = messages[last_user]
    text, parts = _content_text(turn.get("content"), what=f"messages[{last_user}]")
    check_text(text, what="the last user message", max_chars=max_chars)
    others = {key: value for key, value in turn.items() if key not in ("role", "content")}
    return Conversation(
        query=text,
        earlier=tuple(messages[:last_user]),
        after=tuple(messages[last_user + 1 :]),
        query_extras=(*parts, others) if others else tuple(parts),
    )


def _instruction(message: Mapping[str, Any]) -> Any:
    """A system or developer message as the scope sees it: the two roles are one instruction
    channel (OpenAI maps one to the other by model), so the role is left out; a `name` counts."""
    if set(message) <= {"role", "content"}:
        return message.get("content")
    return {key: value for key, value in message.items() if key != "role"}


def build_scope(
    *,
    tenant: str | None,
    model: str,
    params: Mapping[str, Any],
    earlier: Sequence[Mapping[str, Any]] = (),
    extra_parts: Sequence[Any] = (),
    after: Sequence[Mapping[str, Any]] = (),
    namespace: str | None = None,
) -> Scope:
    """Fingerprint everything that must match for a stored answer to be reusable.

    System and developer messages before the query form the system fingerprint; all other
    earlier turns, the non-text parts and other keys of the query turn, and every message after
    it form the context fingerprint. Unknown parameters count as answer-changing, which can only
    cost hits, never leak.
    """
    tenant = DEFAULT_TENANT if tenant is None else _check_name(tenant, what="tenant", max_chars=255, printable=True)
    _check_name(model, what="model", max_chars=None, printable=False)
    system = [_instruction(m) for m in earlier if m.get("role") in ("system", "developer")]
    context = [dict(m) for m in earlier if m.get("role") not in ("system", "developer")]
    answer_params = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and v is not None}
    params_fp = digest(answer_params, what="the parameters")
    system_fp = digest(system, what="the system prompt")
    conversation = [context, list(extra_parts), [dict(m) for m in after]] if after else [context, list(extra_parts)]
    context_fp = digest(conversation, what="the conversation")
    key = digest([namespace or "", tenant, model, params_fp, system_fp, context_fp], what="the scope")
    return Scope(
        tenant=tenant,
        model=model,
        params_fingerprint=params_fp,
        system_fingerprint=system_fp,
        context_fingerprint=context_fp,
        key=key,
    )


def parse_request(
    request: Any, *, model: str, tenant: str | None, params: Mapping[str, Any], max_chars: int
) -> tuple[str, Scope]:
    """(the text to embed, the scope) of a prompt string or an OpenAI-style message list."""
    if isinstance(request, (str, bytes)) or not isinstance(request, Sequence):
        turn = Conversation(check_text(request, what="the query", max_chars=max_chars))
    else:
        turn = split_messages(request, max_chars=max_chars)
    scope = build_scope(
        tenant=tenant, model=model, params=params, earlier=turn.earlier, extra_parts=turn.query_extras, after=turn.after
    )
    return turn.query, scope
