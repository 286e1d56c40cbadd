"""An OpenAI-compatible caching proxy: point any OpenAI client at it and change no code.

    memcache serve --config memcache.toml --port 8000

`POST /v1/chat/completions` (JSON or SSE stream) answers from memory or through LiteLLM,
`GET /v1/models`, `GET /healthz`, `GET /metrics` (Prometheus text). The tenant is the API key
(each key its own scope); with keys configured, unknown keys are refused. Without configured
keys, an `X-Memcache-Tenant` header names the tenant instead (for proxies behind your own auth). Every response says
what the cache did in `X-Memcache-Cache` (hit/miss/audit), `X-Memcache-Similarity`,
`X-Memcache-Confidence` and `X-Memcache-Entry`; `X-Memcache-Audited: true` marks a hit that
the upstream model checks in the background (a shadow audit).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memcache.cache import MemCache, cache_info
from memcache.errors import ConfigError, EscalationError, InvalidRequestError
from memcache.types import CacheInfo

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigError.missing_extra("server", "fastapi") from exc

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
    [models.gpt-4o-mini]            # the name clients send
    model = "openai/gpt-4o-mini"    # the LiteLLM model it maps to
    api_base = "https://api.openai.com/v1"
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
    keys: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> "ProxyConfig":
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read proxy config {path}: {exc}") from exc
        unknown = set(data) - {
            "database_url", "max_false_hit_rate", "embedding_model", "snapshot", "shadow_audits", "models", "keys",
        }
        if unknown:
            raise ConfigError(f"{path}: unknown settings {sorted(unknown)}")
        if not isinstance(data.get("shadow_audits", True), bool):
            raise ConfigError(f"{path}: shadow_audits must be true or false")
        models = {}
        for name, spec in data.get("models", {}).items():
            if not isinstance(spec, dict) or "model" not in spec:
                raise ConfigError(f"{path}: [models.{name}] needs model = \"provider/name\"")
            spec = dict(spec)
            models[name] = Upstream(spec.pop("model"), spec)
        return cls(
            database_url=data.get("database_url"),
            max_false_hit_rate=float(data.get("max_false_hit_rate", 0.02)),
            embedding_model=data.get("embedding_model"),
            snapshot=data.get("snapshot"),
            shadow_audits=data.get("shadow_audits", True),
            models=models,
            keys={str(k): str(v) for k, v in data.get("keys", {}).items()},
        )


class Metrics:
    """Counters and a latency histogram, rendered as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
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

    def render(
        self, false_hit_estimate: float | None, bound: float, shifts_detected: int | None = None,
        shift_hold_remaining: int | None = None,
    ) -> str:
        """Prometheus text; the shift figures (changes the policy saw, would-be hits it still holds)
        only where it watches for changes."""
        with self._lock:
            lines = [
                "# TYPE memcache_requests_total counter", f"memcache_requests_total {self.requests}",
                "# TYPE memcache_errors_total counter", f"memcache_errors_total {self.errors}",
            ]
            for outcome, plural in (("hit", "hits"), ("miss", "misses"), ("audit", "audits")):
                lines += [f"# TYPE memcache_{plural}_total counter", f"memcache_{plural}_total {self.outcomes[outcome]}"]
            lines += [
                "# TYPE memcache_audited_hits_total counter", f"memcache_audited_hits_total {self.audited_hits}",
                "# TYPE memcache_false_hit_rate_estimate gauge",
                f"memcache_false_hit_rate_estimate {'NaN' if false_hit_estimate is None else false_hit_estimate}",
                "# TYPE memcache_false_hit_rate_bound gauge", f"memcache_false_hit_rate_bound {bound}",
            ]
            if shifts_detected is not None:
                lines += ["# TYPE memcache_shifts_detected_total counter", f"memcache_shifts_detected_total {shifts_detected}"]
            if shift_hold_remaining is not None:
                lines += ["# TYPE memcache_shift_hold_remaining gauge", f"memcache_shift_hold_remaining {shift_hold_remaining}"]
            lines.append("# TYPE memcache_request_seconds histogram")
            for outcome, counts in self.buckets.items():
                running = 0
                for edge, count in zip((*LATENCY_BUCKETS, "+Inf"), counts):
                    running += count
                    lines.append(f'memcache_request_seconds_bucket{{outcome="{outcome}",le="{edge}"}} {running}')
                lines.append(f'memcache_request_seconds_sum{{outcome="{outcome}"}} {self.sums[outcome]}')
                lines.append(f'memcache_request_seconds_count{{outcome="{outcome}"}} {running}')
        return "\n".join(lines) + "\n"


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def _headers(info: CacheInfo | None) -> dict[str, str]:
    if info is None:
        return {}
    headers = {"X-Memcache-Cache": info.outcome, "X-Memcache-Confidence": f"{info.confidence:.4f}"}
    if info.similarity is not None:
        headers["X-Memcache-Similarity"] = f"{info.similarity:.4f}"
    if info.entry_id is not None:
        headers["X-Memcache-Entry"] = str(info.entry_id)
    if info.audited:  # served while the upstream model checks it
        headers["X-Memcache-Audited"] = "true"
    return headers


def create_app(cache: MemCache, config: ProxyConfig | None = None) -> FastAPI:
    """The proxy as an ASGI app around an open MemCache (run it with uvicorn)."""
    config = config or ProxyConfig()
    metrics = Metrics()
    app = FastAPI(title="memcache proxy")

    def tenant_of(request: Request) -> str | JSONResponse:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if config.keys:
            if key not in config.keys:
                return _error(401, "unknown API key", "invalid_request_error")
            return config.keys[key]
        if request.headers.get("x-memcache-tenant"):  # trusted deployments without keys name the tenant
            return request.headers["x-memcache-tenant"]
        return f"key-{hashlib.sha256(key.encode()).hexdigest()[:16]}" if key else "default"

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = list(config.models) or ([cache.strong_model] if cache.strong_model else [])
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "memcache"} for n in names]}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        policy = cache.policy  # policy attributes only: a scrape does not touch the store
        shifts = getattr(policy, "shifts_detected", None)
        return PlainTextResponse(metrics.render(
            getattr(policy, "bound", None), policy.max_false_hit_rate, None if shifts is None else len(shifts),
            getattr(policy, "hold_remaining", None),
        ))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        started = time.perf_counter()
        metrics.count("requests")
        tenant = tenant_of(request)
        if isinstance(tenant, JSONResponse):
            return tenant
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON", "invalid_request_error")
        if not isinstance(body, dict) or "messages" not in body or "model" not in body:
            return _error(400, "a chat completion needs 'model' and 'messages'", "invalid_request_error")
        name = body.pop("model")
        messages = body.pop("messages")
        if config.models and name not in config.models:
            return _error(404, f"model {name!r} is not served here; see GET /v1/models", "invalid_request_error")
        upstream = config.models.get(name, Upstream(name))
        stream = bool(body.get("stream"))
        body.pop("stream_options", None)
        try:
            response = await cache.acompletion(
                messages=messages, model=upstream.model, tenant=tenant, **body, **dict(upstream.kwargs)
            )
        except InvalidRequestError as exc:
            metrics.count("errors")
            return _error(400, str(exc), "invalid_request_error")
        except EscalationError as exc:
            metrics.count("errors")
            return _error(502, str(exc), "upstream_error")
        info = cache_info(response)
        if not stream:
            metrics.observe(info, time.perf_counter() - started)
            payload = response.model_dump(exclude={"_hidden_params"})
            payload["model"] = name
            return JSONResponse(payload, headers=_headers(info))

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in response:
                    data = chunk.model_dump(exclude_none=True)
                    data["model"] = name
                    yield f"data: {json.dumps(data)}\n\n".encode()
            except EscalationError as exc:
                yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'upstream_error'}})}\n\n".encode()
            yield b"data: [DONE]\n\n"
            metrics.observe(info, time.perf_counter() - started)

        return StreamingResponse(events(), media_type="text/event-stream", headers=_headers(info))

    return app


def serve(config_path: str | None, host: str, port: int) -> None:
    """Run the proxy with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError.missing_extra("server", "uvicorn") from exc
    config = ProxyConfig.from_file(config_path) if config_path else ProxyConfig()
    with MemCache(config.database_url, embedding_model=config.embedding_model,
                  max_false_hit_rate=config.max_false_hit_rate, snapshot=config.snapshot,
                  shadow_audits=config.shadow_audits, progress=True) as cache:
        cache.warm_up()  # the first request should not wait for the index
        uvicorn.run(create_app(cache, config), host=host, port=port, log_level="info")
