"""An OpenAI-compatible caching proxy: point any OpenAI client at it and change no code.

    memcache serve --config memcache.toml --port 8000

`POST /v1/chat/completions` (JSON or SSE stream) answers from memory or through LiteLLM,
`GET /v1/models`, `GET /healthz`, `GET /metrics` (Prometheus text). The tenant is the API key
(each key its own scope); with keys configured, unknown keys are refused, on every route but
`/healthz`. Without configured keys, an `X-Memcache-Tenant` header names the tenant instead
(for proxies behind your own auth). Every response says what the cache did in
`X-Memcache-Cache` (hit/miss/audit), `X-Memcache-Similarity`, `X-Memcache-Confidence` and
`X-Memcache-Entry` (an opaque token, stable per entry); `X-Memcache-Path` says who answered
(memory, cheap or strong: see `[cheap]` in the config); `X-Memcache-Audited: true` marks an
answer that the upstream model checks in the background (a shadow audit).

A client chooses the model name and the answer-changing parameters (`FORWARDED_PARAMS`), nothing
else: where the call goes, with which key, and any test or transport field are the operator's.
A body field outside that list is refused with a 400 that names it (`allow_params` in the
config lets more through). Bodies are bounded in size and nesting before they are parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memcache.cache import MemCache, cache_info
from memcache.errors import ConfigError, EscalationError, InvalidRequestError, MemcacheError
from memcache.judge import LLMJudge
from memcache.onnx_encoder import THREADS_ENV
from memcache.scope import build_scope
from memcache.types import CacheInfo, PolicyStatus, saving_micro_usd

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigError.missing_extra("server", "fastapi") from exc

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
EXPORTED_COUNTERS = (  # calls and spend per path, the saving, and entries merged (see `Stats`)
    "strong_calls", "spend_micro_usd", "cheap_calls", "cheap_answers", "cheap_spend_micro_usd", "judge_calls",
    "judge_spend_micro_usd", "saving_micro_usd", "merged_entries",
)  # fmt: skip
MAX_BODY_BYTES = 8 * 1024 * 1024  # default bound on a request body (images as data URLs fit)
MAX_BODY_NESTING = 64  # deepest nesting of lists and objects in a body (memcache.scope.MAX_NESTING)
PUBLISH_EVERY_S = 1.0  # how often a worker of `serve --workers` publishes its figures for the others' scrapes
log = logging.getLogger("memcache.proxy")

_JSON_TYPES = {
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}
# Body fields a client may send besides `model` and `messages`: the OpenAI parameters that shape
# the answer (or how it is delivered: stream), each with the JSON types it may take.
FORWARDED_PARAMS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("temperature", "top_p", "presence_penalty", "frequency_penalty"), ("number",)),
    **dict.fromkeys(("n", "max_tokens", "max_completion_tokens", "seed", "top_logprobs"), ("integer",)),
    **dict.fromkeys(("logprobs", "parallel_tool_calls", "stream"), ("boolean",)),
    **dict.fromkeys(("tools", "functions", "modalities"), ("array",)),
    **dict.fromkeys(
        ("logit_bias", "response_format", "stream_options", "prediction", "audio", "web_search_options"), ("object",)
    ),
    **dict.fromkeys(("user", "reasoning_effort", "service_tier"), ("string",)),
    "stop": ("string", "array"),
    **dict.fromkeys(("tool_choice", "function_call"), ("string", "object")),
}
_STRING_LITERAL = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


@dataclass(frozen=True)
class Upstream:
    """Where a client-facing model name goes: a LiteLLM model and its call arguments."""

    model: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxyConfig:
    """What `memcache serve --config FILE` reads (TOML).

    ```toml
    database_url = "sqlite:///memcache.db"
    max_false_hit_rate = 0.02
    snapshot = "memcache.index"     # optional: index snapshot loaded on start, written on exit
    shadow_audits = true            # serve an audited hit while upstream checks it (false: wait for upstream)
    metrics_key = "sk-metrics"      # optional: the key GET /metrics takes (default: any client key)
    allow_params = []               # body fields clients may send beyond FORWARDED_PARAMS (off by default)
    max_body_bytes = 8388608        # larger request bodies get 413
    [models.gpt-4o-mini]            # the name clients send
    model = "openai/gpt-4o-mini"    # the LiteLLM model it maps to; other keys are LiteLLM arguments:
    api_base = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"  # the upstream key, read from this variable (or api_key = "...")
    [cheap]                         # optional: a cheap model that may answer from the nearest stored
    model = "openai/gpt-4o-mini"    # answers before the strong model is paid; its own LiteLLM arguments
    api_key_env = "OPENAI_API_KEY"  # (or, with no arguments, cheap_model = "openai/gpt-4o-mini" at the top)
    [judge]                         # optional: a model that says whether two answers agree (LLMJudge);
    model = "openai/gpt-4o-mini"    # without it answers must be equal text (ExactJudge); or judge_model = "..."
    [keys]                          # API key -> tenant; when present, other keys are refused
    "sk-team-a" = "team-a"
    ```
    """

    database_url: str | None = None
    max_false_hit_rate: float = 0.02
    embedding_model: str | None = None
    snapshot: str | None = None
    shadow_audits: bool = True
    models: Mapping[str, Upstream] = field(default_factory=dict)
    cheap: Upstream | None = None
    judge: Upstream | None = None
    keys: Mapping[str, str] = field(default_factory=dict)
    metrics_key: str | None = None
    allow_params: frozenset[str] = frozenset()
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        reserved = self.allow_params & {"model", "messages", "tenant"}
        if reserved:
            raise ConfigError(f"allow_params cannot name {sorted(reserved)}: the proxy sets those itself")

    @classmethod
    def from_file(cls, path: str | Path) -> ProxyConfig:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read proxy config {path}: {exc}") from exc
        unknown = set(data) - {
            "database_url",
            "max_false_hit_rate",
            "embedding_model",
            "snapshot",
            "shadow_audits",
            "models",
            "cheap",
            "cheap_model",
            "judge",
            "judge_model",
            "keys",
            "metrics_key",
            "allow_params",
            "max_body_bytes",
        }
        if unknown:
            raise ConfigError(f"{path}: unknown settings {sorted(unknown)}")
        if not isinstance(data.get("shadow_audits", True), bool):
            raise ConfigError(f"{path}: shadow_audits must be true or false")
        allow = data.get("allow_params", [])
        if not isinstance(allow, list) or not all(isinstance(name, str) for name in allow):
            raise ConfigError(f"{path}: allow_params must be a list of body field names")
        max_body = data.get("max_body_bytes", MAX_BODY_BYTES)
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1024:
            raise ConfigError(f"{path}: max_body_bytes must be a whole number of bytes, at least 1024")
        models = {name: _upstream(path, name, spec) for name, spec in data.get("models", {}).items()}
        return cls(
            database_url=data.get("database_url"),
            max_false_hit_rate=float(data.get("max_false_hit_rate", 0.02)),
            embedding_model=data.get("embedding_model"),
            snapshot=data.get("snapshot"),
            shadow_audits=data.get("shadow_audits", True),
            models=models,
            cheap=_optional_model(path, data, "cheap"),
            judge=_optional_model(path, data, "judge"),
            keys={str(k): str(v) for k, v in data.get("keys", {}).items()},
            metrics_key=data.get("metrics_key"),
            allow_params=frozenset(allow),
            max_body_bytes=max_body,
        )


def _optional_model(path: str | Path, data: Mapping[str, Any], role: str) -> Upstream | None:
    """`[cheap]` or `[judge]` (a model and its LiteLLM arguments), or `cheap_model = "provider/name"`
    (`judge_model`) for short."""
    short = f"{role}_model"
    if role in data and short in data:
        raise ConfigError(f"{path}: set either {short} or a [{role}] table, not both")
    if short in data:
        if not isinstance(data[short], str) or not data[short]:
            raise ConfigError(f'{path}: {short} must be a LiteLLM model name, e.g. "openai/gpt-4o-mini"')
        return Upstream(data[short])
    return _upstream(path, role, data[role], table=role) if role in data else None


def _upstream(path: str | Path, name: str, spec: Any, table: str | None = None) -> Upstream:
    """One `[models.NAME]` (or `[cheap]`) table: `model`, an optional `api_key_env`, and LiteLLM arguments."""
    table = table or f"models.{name}"
    if not isinstance(spec, dict) or "model" not in spec:
        raise ConfigError(f'{path}: [{table}] needs model = "provider/name"')
    spec = dict(spec)
    variable = spec.pop("api_key_env", None)
    if variable is not None:
        if "api_key" in spec:
            raise ConfigError(f"{path}: [{table}] sets both api_key and api_key_env; keep one")
        if not os.environ.get(str(variable)):
            raise ConfigError(f"{path}: [{table}] reads its key from ${variable}, which is not set")
        spec["api_key"] = os.environ[str(variable)]
    return Upstream(spec.pop("model"), spec)


def entry_token(cache: MemCache, entry_id: int | None) -> str | None:
    """An opaque, stable name of an entry for clients: store ids are sequential and say how
    much others have stored; this keyed hash says nothing."""
    if entry_id is None:
        return None
    return hmac.new(cache.store.store_id.encode(), str(entry_id).encode(), hashlib.sha256).hexdigest()[:20]


def _nesting(raw: bytes) -> int:
    """How deeply a JSON text nests lists and objects, read without parsing it."""
    structure = _STRING_LITERAL.sub(b"", raw).translate(None, b" \t\r\n0123456789.eE+-truefalsn,:")
    steps = np.frombuffer(structure, dtype=np.uint8)
    depth = np.cumsum(np.isin(steps, (ord("["), ord("{"))).astype(np.int64) - np.isin(steps, (ord("]"), ord("}"))))
    return int(depth.max()) if len(depth) else 0


def _check_params(body: Mapping[str, Any], allowed: frozenset[str]) -> str | None:
    """Why a body's fields cannot be forwarded, or None when they can."""
    for name, value in body.items():
        if name in allowed:
            continue
        kinds = FORWARDED_PARAMS.get(name)
        if kinds is None:
            return (
                f"{name!r} is not a field this proxy forwards; routing, credentials and test fields are set "
                "by the operator (allow_params in the proxy config lets more through)"
            )
        if value is not None and not any(_JSON_TYPES[kind](value) for kind in kinds):
            return f"{name!r} must be {' or '.join(kinds)}, got {type(value).__name__}"
    return None


class Metrics:
    """Counters and a latency histogram, rendered as Prometheus text.

    With `shared_dir` (the workers of `memcache serve --workers N`) each worker publishes its
    figures there (`publish`, about every second) and a scrape, whichever worker answers it,
    renders all of them summed: the counters Prometheus sees never jump from one worker's to
    another's. The false-hit estimate and the shift hold are the highest any worker reports.
    """

    def __init__(self, shared_dir: Path | None = None) -> None:
        self._lock = threading.Lock()
        self.shared_dir = shared_dir
        self._published_as = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"  # one file per worker
        self.requests = 0
        self.outcomes = {"hit": 0, "miss": 0, "audit": 0}
        self.audited_hits = 0  # hits served while the upstream model checks them
        self.errors = 0
        self.buckets = {outcome: [0] * (len(LATENCY_BUCKETS) + 1) for outcome in self.outcomes}
        self.sums = dict.fromkeys(self.outcomes, 0.0)

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def observe(self, info: CacheInfo, seconds: float) -> None:
        outcome = info.outcome
        with self._lock:
            self.outcomes[outcome] += 1
            self.audited_hits += info.audited
            index = next((i for i, edge in enumerate(LATENCY_BUCKETS) if seconds <= edge), len(LATENCY_BUCKETS))
            self.buckets[outcome][index] += 1
            self.sums[outcome] += seconds

    def _figures(self, status: PolicyStatus, counters: Mapping[str, int]) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "errors": self.errors,
                "audited_hits": self.audited_hits,
                "outcomes": dict(self.outcomes),
                "buckets": {outcome: list(counts) for outcome, counts in self.buckets.items()},
                "sums": dict(self.sums),
                "counters": dict(counters),
                "shifts_detected": status.shifts_detected,
                "shift_hold_remaining": status.shift_hold_remaining,
                "false_hit_rate_estimate": status.estimated_false_hit_rate,
            }

    def publish(self, status: PolicyStatus, counters: Mapping[str, int]) -> None:
        """Write this worker's figures where the other workers' scrapes read them (replaced whole)."""
        if self.shared_dir is None:
            return
        target = self.shared_dir / self._published_as
        temporary = target.with_name(f"{target.name}.tmp")
        temporary.write_text(json.dumps(self._figures(status, counters)))
        os.replace(temporary, target)

    def _gathered(self, status: PolicyStatus, counters: Mapping[str, int]) -> dict[str, Any]:
        """This process's figures, or with `shared_dir` every worker's, summed."""
        if self.shared_dir is None:
            return self._figures(status, counters)
        try:
            self.publish(status, counters)
        except OSError as exc:  # this scrape still answers, from this worker's own figures
            log.warning("could not publish this worker's metrics: %s", exc)
            return self._figures(status, counters)
        every = []
        for path in sorted(self.shared_dir.glob("*.json")):
            try:
                every.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # a worker's file is only ever replaced whole; skip the odd one
                continue
        return _summed(every)

    def render(self, status: PolicyStatus, counters: Mapping[str, int] | None = None) -> str:
        """Prometheus text; the shift figures (changes the policy saw, would-be hits it still holds)
        only where it watches for changes."""
        figures = self._gathered(status, counters or {})
        counted = dict(figures["counters"])
        if counted:
            saving = saving_micro_usd(counted["lookups"], counted["strong_calls"], counted["spend_micro_usd"],
                                      counted["cheap_spend_micro_usd"], counted.get("judge_spend_micro_usd", 0))  # fmt: skip
            if saving is not None:
                counted["saving_micro_usd"] = saving
        estimate, shifts, hold = (
            figures["false_hit_rate_estimate"], figures["shifts_detected"], figures["shift_hold_remaining"]
        )  # fmt: skip
        lines = [
            "# TYPE memcache_requests_total counter",
            f"memcache_requests_total {figures['requests']}",
            "# TYPE memcache_errors_total counter",
            f"memcache_errors_total {figures['errors']}",
        ]
        for outcome, plural in (("hit", "hits"), ("miss", "misses"), ("audit", "audits")):
            lines += [
                f"# TYPE memcache_{plural}_total counter",
                f"memcache_{plural}_total {figures['outcomes'][outcome]}",
            ]
        lines += [
            "# TYPE memcache_audited_hits_total counter",
            f"memcache_audited_hits_total {figures['audited_hits']}",
            "# TYPE memcache_false_hit_rate_estimate gauge",
            f"memcache_false_hit_rate_estimate {'NaN' if estimate is None else estimate}",
            "# TYPE memcache_false_hit_rate_bound gauge",
            f"memcache_false_hit_rate_bound {status.max_false_hit_rate}",
        ]
        for name in EXPORTED_COUNTERS:
            if name in counted:
                kind = "gauge" if name == "saving_micro_usd" else "counter"
                suffix = "" if kind == "gauge" else "_total"
                lines += [f"# TYPE memcache_{name}{suffix} {kind}", f"memcache_{name}{suffix} {counted[name]}"]
        if shifts is not None:
            lines += ["# TYPE memcache_shifts_detected_total counter", f"memcache_shifts_detected_total {shifts}"]
        if hold is not None:
            lines += ["# TYPE memcache_shift_hold_remaining gauge", f"memcache_shift_hold_remaining {hold}"]
        lines.append("# TYPE memcache_request_seconds histogram")
        for outcome, counts in figures["buckets"].items():
            running = 0
            for edge, count in zip((*LATENCY_BUCKETS, "+Inf"), counts):
                running += count
                lines.append(f'memcache_request_seconds_bucket{{outcome="{outcome}",le="{edge}"}} {running}')
            lines.append(f'memcache_request_seconds_sum{{outcome="{outcome}"}} {figures["sums"][outcome]}')
            lines.append(f'memcache_request_seconds_count{{outcome="{outcome}"}} {running}')
        return "\n".join(lines) + "\n"


def _summed(every: list[dict[str, Any]]) -> dict[str, Any]:
    """Workers' figures as one: counts added, the estimate and the hold the highest reported."""

    def reported(name: str, combine) -> Any:  # None where no worker reports it
        values = [f[name] for f in every if f[name] is not None]
        return combine(values) if values else None

    outcomes = {outcome: sum(f["outcomes"][outcome] for f in every) for outcome in every[0]["outcomes"]}
    return {
        "requests": sum(f["requests"] for f in every),
        "errors": sum(f["errors"] for f in every),
        "audited_hits": sum(f["audited_hits"] for f in every),
        "outcomes": outcomes,
        "buckets": {o: [sum(column) for column in zip(*(f["buckets"][o] for f in every))] for o in outcomes},
        "sums": {o: sum(f["sums"][o] for f in every) for o in outcomes},
        "counters": {n: sum(f["counters"].get(n, 0) for f in every) for n in {n for f in every for n in f["counters"]}},
        "shifts_detected": reported("shifts_detected", sum),
        "shift_hold_remaining": reported("shift_hold_remaining", max),
        "false_hit_rate_estimate": reported("false_hit_rate_estimate", max),
    }


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    """An OpenAI-style error object."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


class _Refused(Exception):
    """A client error found while reading a request: becomes `response`, nothing else happens."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def _headers(cache: MemCache, info: CacheInfo | None) -> dict[str, str]:
    if info is None:
        return {}
    headers = {"X-Memcache-Cache": info.outcome, "X-Memcache-Confidence": f"{info.confidence:.4f}"}
    if info.similarity is not None:
        headers["X-Memcache-Similarity"] = f"{info.similarity:.4f}"
    if info.entry_id is not None:
        headers["X-Memcache-Entry"] = entry_token(cache, info.entry_id)
    if info.audited:  # served while the upstream model checks it
        headers["X-Memcache-Audited"] = "true"
    headers["X-Memcache-Path"] = info.path
    return headers


async def _read_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, bounded in size and nesting before it is parsed."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _Refused(_error(413, f"the body is larger than this proxy accepts ({limit} bytes)"))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(_error(413, f"the body is larger than this proxy accepts ({limit} bytes)"))
        chunks.append(chunk)
    raw = b"".join(chunks)
    if _nesting(raw) > MAX_BODY_NESTING:
        raise _Refused(_error(400, f"the body nests lists and objects more than {MAX_BODY_NESTING} deep"))
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise _Refused(_error(400, "the body is not JSON (NaN and Infinity are not JSON numbers)")) from None
    if not isinstance(body, dict) or "messages" not in body or "model" not in body:
        raise _Refused(_error(400, "a chat completion needs 'model' and 'messages'"))
    if not isinstance(body["model"], str) or not isinstance(body["messages"], list):
        raise _Refused(_error(400, "'model' must be a string and 'messages' an array"))
    return body


def _not_json(constant: str) -> Any:
    """Python's reader takes NaN and Infinity; JSON has no such numbers, and forwarded upstream they
    would be sent on as text no API accepts."""
    raise ValueError(f"{constant} is not a JSON number")


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


class _Proxy:
    """The routes' logic around one MemCache and its config; client errors raise `_Refused`."""

    def __init__(self, cache: MemCache, config: ProxyConfig, metrics: Metrics) -> None:
        self.cache, self.config, self.metrics = cache, config, metrics

    def tenant_of(self, request: Request) -> str | None:
        """The configured key's tenant; without keys, X-Memcache-Tenant or a hash of the key."""
        key = _bearer(request)
        if self.config.keys:
            if key not in self.config.keys:
                raise _Refused(_error(401, "unknown API key"))
            return self.config.keys[key]
        named = request.headers.get("x-memcache-tenant")
        if named:  # trusted deployments without keys name the tenant
            build_scope(tenant=named, model="check", params={})  # a bad name is a 400, not a 500
            return named
        return f"key-{hashlib.sha256(key.encode()).hexdigest()[:16]}" if key else None

    def guarded(self, handler):
        """Client errors become their response; nothing a client sends becomes a 500."""

        @functools.wraps(handler)
        async def run(request: Request):
            try:
                return await handler(request)
            except _Refused as refused:
                return refused.response
            except InvalidRequestError as exc:
                self.metrics.count("errors")
                return _error(400, str(exc))

        return run

    async def models(self, request: Request) -> dict[str, Any]:
        self.tenant_of(request)
        names = list(self.config.models) or ([self.cache.strong_model] if self.cache.strong_model else [])
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "memcache"} for n in names]}

    async def prometheus(self, request: Request) -> PlainTextResponse:
        if self.config.metrics_key is not None:
            if not hmac.compare_digest(_bearer(request), self.config.metrics_key):
                raise _Refused(_error(401, "GET /metrics takes the metrics key"))
        else:
            self.tenant_of(request)
        counters = self.cache.counters()  # a scrape does not touch the store
        return PlainTextResponse(self.metrics.render(self.cache.policy_status(), counters))

    def publish(self) -> None:
        """This worker's figures, for the scrapes the other workers answer (`Metrics.publish`)."""
        self.metrics.publish(self.cache.policy_status(), self.cache.counters())

    async def chat(self, request: Request):
        started = time.perf_counter()
        self.metrics.count("requests")
        tenant = self.tenant_of(request)
        body = await _read_body(request, self.config.max_body_bytes)
        name, messages = body.pop("model"), body.pop("messages")
        refused = _check_params(body, self.config.allow_params)
        if refused is not None:
            self.metrics.count("errors")
            return _error(400, refused)
        if self.config.models and name not in self.config.models:
            return _error(404, f"model {name!r} is not served here; see GET /v1/models", param="model")
        upstream = self.config.models.get(name, Upstream(name))
        body.pop("stream_options", None)
        try:
            response = await self.cache.acompletion(
                messages=messages, model=upstream.model, tenant=tenant, **{**body, **dict(upstream.kwargs)}
            )
        except EscalationError as exc:
            self.metrics.count("errors")
            return _error(502, str(exc), "upstream_error")
        except InvalidRequestError:
            raise
        except MemcacheError as exc:  # the store or the embedding model failed: the server's fault
            self.metrics.count("errors")
            log.error("request failed: %s", exc)
            return _error(503, "the cache is unavailable; try again", "server_error")
        return self._respond(response, name, bool(body.get("stream")), started)

    def _respond(self, response: Any, name: str, stream: bool, started: float):
        info = cache_info(response)
        headers = _headers(self.cache, info)
        if not stream:
            self.metrics.observe(info, time.perf_counter() - started)
            payload = response.model_dump(exclude={"_hidden_params"})
            payload["model"] = name
            return JSONResponse(payload, headers=headers)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in response:
                    data = chunk.model_dump(exclude_none=True)
                    data["model"] = name
                    yield f"data: {json.dumps(data)}\n\n".encode()
            except EscalationError as exc:
                yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'upstream_error'}})}\n\n".encode()
            yield b"data: [DONE]\n\n"
            self.metrics.observe(info, time.perf_counter() - started)

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def create_app(
    cache: MemCache, config: ProxyConfig | None = None, *, shared_metrics: Path | None = None, owns_cache: bool = False
) -> FastAPI:
    """The proxy as an ASGI app around an open MemCache (run it with uvicorn). For a worker of
    `memcache serve --workers N` (`worker_app`): `shared_metrics`, the folder where the workers'
    figures meet (see `Metrics`); `owns_cache`, close the cache when the app stops."""
    proxy = _Proxy(cache, config or ProxyConfig(), Metrics(shared_metrics))
    if not proxy.config.keys:
        log.warning("no [keys] configured: every client is served, and names its tenant in X-Memcache-Tenant")
    if not proxy.config.models:
        log.warning("no [models] configured: clients may ask for any LiteLLM model name, with the server's credentials")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        publisher = asyncio.create_task(_publish_every(proxy, PUBLISH_EVERY_S)) if shared_metrics else None
        try:
            yield
        finally:
            if publisher is not None:
                publisher.cancel()
            if owns_cache:
                await asyncio.to_thread(cache.close)  # learning finished, counters flushed, snapshot written
            if shared_metrics is not None:
                proxy.publish()  # the last figures stay for the scrapes of the workers still running

    app = FastAPI(title="memcache proxy", lifespan=lifespan)
    app.get("/healthz")(_healthz)
    app.get("/v1/models")(proxy.guarded(proxy.models))
    app.get("/metrics")(proxy.guarded(proxy.prometheus))
    app.post("/v1/chat/completions")(proxy.guarded(proxy.chat))
    return app


async def _publish_every(proxy: _Proxy, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            proxy.publish()
        except OSError as exc:  # the next round tries again; a scrape here still renders
            log.warning("could not publish this worker's metrics: %s", exc)


async def _healthz() -> dict[str, str]:
    return {"status": "ok"}


CONFIG_ENV = "MEMCACHE_PROXY_CONFIG"  # how `memcache serve --workers N` hands its config to each worker
METRICS_ENV = "MEMCACHE_PROXY_METRICS_DIR"  # ... and the folder where the workers' figures meet


def open_cache(config: ProxyConfig) -> MemCache:
    """The proxy's MemCache as its config describes it, loaded (the first request should not
    wait for the index)."""
    cache = MemCache(
        config.database_url,
        embedding_model=config.embedding_model,
        max_false_hit_rate=config.max_false_hit_rate,
        snapshot=config.snapshot,
        shadow_audits=config.shadow_audits,
        cheap_model=None if config.cheap is None else config.cheap.model,
        cheap_options=None if config.cheap is None else dict(config.cheap.kwargs),
        judge=None if config.judge is None else LLMJudge(config.judge.model, **config.judge.kwargs),
        progress=True,
    )
    try:
        cache.warm_up()
    except BaseException:
        cache.close()
        raise
    return cache


def worker_app() -> FastAPI:
    """One worker of `memcache serve --workers N` (a uvicorn app factory, run in each worker
    process): its own MemCache on the shared store, closed when the worker stops. The workers
    follow each other's writes and labels through the store, as any processes on one store do."""
    from tqdm import tqdm

    # A thread lock for progress bars: tqdm's default is also a multiprocessing semaphore, which a
    # worker leaks when uvicorn ends it by re-raising the stop signal (after the cache is closed).
    tqdm.set_lock(threading.RLock())
    path = os.environ.get(CONFIG_ENV) or None
    config = ProxyConfig.from_file(path) if path else ProxyConfig()
    shared = os.environ.get(METRICS_ENV)
    return create_app(open_cache(config), config, shared_metrics=Path(shared) if shared else None, owns_cache=True)


def serve(config_path: str | None, host: str, port: int, workers: int = 1) -> None:
    """Run the proxy with uvicorn until interrupted: in this process, or in `workers` processes
    that share the port and the store."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError.missing_extra("server", "uvicorn") from exc
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a whole number of processes, at least 1 (got {workers!r})")
    config = ProxyConfig.from_file(config_path) if config_path else ProxyConfig()  # a bad config fails here, once
    if workers > 1:
        os.environ[CONFIG_ENV] = str(Path(config_path).resolve()) if config_path else ""
        os.environ.setdefault(THREADS_ENV, str(max(1, (os.cpu_count() or 1) // workers)))  # a share of the cores each
        with tempfile.TemporaryDirectory(prefix="memcache-metrics-") as shared:
            os.environ[METRICS_ENV] = shared
            target = f"{__name__}:worker_app"
            uvicorn.run(target, factory=True, workers=workers, host=host, port=port, log_level="info")
        return
    with open_cache(config) as cache:
        uvicorn.run(create_app(cache, config), host=host, port=port, log_level="info")
