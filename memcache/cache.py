"""`MemCache`: the one entry class, a thin facade over memory, controller and oracle.

scope -> exact repeat -> embed -> search in scope -> the controller decides -> hit, or the oracle
(the strong model) answers -> verify -> write back (store first, then index) -> the paid answer
becomes a label. `memcache.memory` finds answers, `memcache.controller` decides and learns,
`memcache.llm` calls the models; this module wires them and keeps the public API.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from memcache import calls, checks, flow, transfer
from memcache.calls import cache_info
from memcache.cheap import MemoryPair
from memcache.cheap_gate import CheapGate
from memcache.controller import Controller
from memcache.embedding import Embedder, SentenceTransformerEmbedder
from memcache.errors import ConfigError
from memcache.index import FaissIndex, VectorIndex
from memcache.judge import ExactJudge, Judge
from memcache.memory import Memory
from memcache.policy import CalibratedPolicy, Policy, PolicyStatus
from memcache.scope import build_scope, check_text, parse_request
from memcache.store import Store, utcnow
from memcache.types import CacheEntry, CacheHit, CheapVerdict, Decision, LookupResult, Stats

__all__ = ["MemCache", "cache_info"]

DEFAULT_DATABASE_URL = "sqlite:///memcache.db"
DEFAULT_SCOPE_MODEL = "default"
MAX_ANSWER_CHARS = 1_000_000
Request = str | Sequence[Mapping[str, Any]]
Messages = Sequence[Mapping[str, Any]]
Name = str | None
Verifier = Callable[[str, str], bool]
log = logging.getLogger("memcache")


def _default_policy(calibration: str | Path | None, max_false_hit_rate: float, seed: int | None) -> Policy:
    if calibration is not None:
        return CalibratedPolicy.from_file(calibration, max_false_hit_rate=max_false_hit_rate, seed=seed)
    return CalibratedPolicy(max_false_hit_rate, seed=seed)


class MemCache:
    """Semantic cache with a bound on wrong hits and verified write-back.

    Args:
        database_url: SQLAlchemy URL of the store (the source of truth); default: a SQLite file
            `memcache.db` in the working directory.
        embedding_model: sentence-transformers model name or path; None: the packaged all-MiniLM-L6-v2.
        strong_model: LiteLLM model `completion` calls when the caller names none.
        cheap_model: LiteLLM model that may answer a miss from the nearest stored answers before
            the strong model is paid (see `memcache.cheap`); None: no cheap path.
        cheap_options: keyword arguments for the cheap model's calls (api_base, api_key, ...);
            None: the connection arguments of the strong call.
        max_false_hit_rate: bound on wrong hits / hits, e.g. 0.02 for at most 2%.
        calibration: a calibration file from `memcache calibrate` to start the policy from.
        embedder / index / store / policy / judge / cheap_gate: built parts to use instead of the
            defaults (a `CheapGate` without `cheap_model` opens the cheap path to `cheap_pairs`).
        verify: `verify(query, answer) -> bool`; an answer it rejects is never written back.
        ttl: seconds an entry may be served after it was written; None keeps it forever.
        max_query_chars: longest accepted prompt (characters over all messages).
        hindsight_window: recent paid queries asked again of today's index for fresh labels (0: off).
        relabel_in_background: ask them on a thread; False runs it inline (reproducible replays).
        shadow_audits: where memcache calls the strong model itself, serve an audited would-be hit
            at once and let the strong model check it in the background (False: the caller waits).
        device: "auto" (CUDA if available), "cpu", "cuda", ... for the default embedder and index.
        embedding_backend: "auto" (ONNX Runtime on the CPU, torch on CUDA), "onnx", "openvino"
            (CPU, the `[openvino]` extra) or "torch", for the default embedder; None reads
            MEMCACHE_EMBEDDING_BACKEND.
        seed: seed for the policy's audit coin (reproducible replays).
        progress: show a progress bar while a large index is rebuilt from the store.
        sync_interval: seconds between checks of what other processes wrote or deleted (None: never).
        max_entries: capacity; past it the least recently used entries go, down to 95% of it.
        snapshot: an index snapshot loaded on start instead of a rebuild, and written by `close`.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        embedding_model: str | None = None,
        strong_model: str | None = None,
        cheap_model: str | None = None,
        cheap_options: Mapping[str, Any] | None = None,
        max_false_hit_rate: float = 0.02,
        calibration: str | Path | None = None,
        embedder: Embedder | None = None,
        index: VectorIndex | None = None,
        store: Store | None = None,
        policy: Policy | None = None,
        judge: Judge | None = None,
        cheap_gate: CheapGate | None = None,
        verify: Verifier | None = None,
        ttl: float | None = None,
        max_query_chars: int = 32_000,
        hindsight_window: int = 4000,
        relabel_in_background: bool = True,
        shadow_audits: bool = True,
        device: str = "auto",
        embedding_backend: str | None = None,
        seed: int | None = None,
        progress: bool = False,
        sync_interval: float | None = 0.5,
        max_entries: int | None = None,
        snapshot: str | Path | None = None,
    ) -> None:
        checks.cache_settings(database_url, max_query_chars, hindsight_window, max_entries, ttl, sync_interval, verify)
        if policy is not None and calibration is not None:
            raise ConfigError("pass either policy= or calibration=, not both")
        if policy is None:  # built first: a bad bound must fail before a store file is created
            policy = _default_policy(calibration, max_false_hit_rate, seed)
        if cheap_gate is None and cheap_model is not None:
            cheap_gate = CheapGate(max_false_hit_rate, seed=seed)
        self.strong_model, self.max_query_chars, self.ttl, self.verify = strong_model, max_query_chars, ttl, verify
        self.cheap_model, self.cheap_options = cheap_model, None if cheap_options is None else dict(cheap_options)
        self.max_entries, self.policy = max_entries, policy
        if embedder is None:
            embedder = SentenceTransformerEmbedder(embedding_model, device=device, backend=embedding_backend)
        self.embedder = embedder
        self.store = store if store is not None else Store(database_url or DEFAULT_DATABASE_URL)  # "" refused above
        self.memory = Memory(
            self.store, index=index, device=device, sync_interval=sync_interval, snapshot=snapshot, progress=progress
        )
        self.controller = Controller(
            policy, self.memory, judge if judge is not None else ExactJudge(), hindsight_window=hindsight_window,
            relabel_in_background=relabel_in_background, shadow_audits=shadow_audits, cheap_gate=cheap_gate,
        )  # fmt: skip
        self._ready_lock, self._ready = threading.Lock(), False
        self._executor: ThreadPoolExecutor | None = None

    # -- start-up and following other processes ------------------------------------------------

    def warm_up(self) -> None:
        """Load the index (from the snapshot, or the store) and the policy's labels now, not on the first lookup."""
        if self._ready:
            return
        with self._ready_lock:
            if not self._ready:
                self.memory.load()
                self.controller.restore()
                self._ready = True

    @property
    def index(self) -> VectorIndex | None:
        """The in-memory vector index (None until something is indexed): for inspection."""
        return self.memory.index

    def save_snapshot(self, path: str | Path | None = None) -> Path | None:
        """Write the index to `path` (default: the `snapshot` path) so a restart loads it
        instead of rebuilding; returns the path, or None when nothing is indexed yet."""
        self.warm_up()
        return self.memory.save_snapshot(path)

    def sync(self) -> int:
        """Apply what other processes wrote or deleted since the last sync, and learn the labels
        they paid for; returns the changes applied to the memory."""
        self.warm_up()
        applied = self.memory.sync()
        self.controller.follow_labels()
        return applied

    # -- lookup -----------------------------------------------------------------------------

    def _parse(self, request: Request, model: str | None, tenant: str | None, params: Mapping[str, Any]):
        if model is None:  # an empty name is refused by the scope, not replaced by the default
            model = self.strong_model or DEFAULT_SCOPE_MODEL
        return parse_request(request, model=model, tenant=tenant, params=params, max_chars=self.max_query_chars)

    def lookup(self, request: Request, *, model: Name = None, tenant: Name = None, **params: Any) -> LookupResult:
        """Find a stored answer for `request` (a prompt string or OpenAI-style messages).

        Returns a LookupResult whose `hit` is set when an answer may be served. Otherwise
        call the model yourself and pass the result with the answer to `write_back`.

        Raises:
            InvalidRequestError: empty, non-string, oversized or malformed input.
        """
        return flow.run(calls.lookup_flow(self, request, model, tenant, params, asynchronous=False))

    async def alookup(
        self, request: Request, *, model: Name = None, tenant: Name = None, **params: Any
    ) -> LookupResult:
        """Async `lookup`: embedding is awaited, store and index work runs off the event loop."""
        return await flow.arun(calls.lookup_flow(self, request, model, tenant, params, asynchronous=True))

    def shadow_hit(self, result: LookupResult) -> CacheHit | None:
        """The stored answer an audit may serve while the strong model checks it, else None.

        Serve it only if the strong model is still asked, off the user's path, and its answer
        passed to `write_back(result, answer)`: the audit costs its paid call either way, and the
        audited sample is then exactly what users are served (see `Controller.shadow_hit`).
        """
        return self.controller.shadow_hit(result)

    def cheap_pairs(self, result: LookupResult) -> list[MemoryPair] | None:
        """The pairs of the scope a cheap model should read (prompt: `memcache.cheap.cheap_messages`),
        or None where this lookup does not take the cheap path."""
        return self.controller.cheap_pairs(result)

    def read_cheap_reply(self, result: LookupResult, pairs: list[MemoryPair], text: object) -> CheapVerdict:
        """The verdict on a cheap reply. Unless it is "serve", pass the strong model's answer to
        `write_back(result, answer, cheap=verdict)`: it is stored, and it labels the reply."""
        return self.controller.read_cheap(result, pairs, text)

    # -- write-back -------------------------------------------------------------------------

    def write_back(
        self, request: LookupResult | Request, answer: str, *, model: Name = None, tenant: Name = None,
        source_model: Name = None, paid: bool = True, payload: Name = None, cheap: CheapVerdict | None = None,
        **params: Any,
    ) -> CacheEntry | None:  # fmt: skip
        """Store a verified answer for a request (a LookupResult from `lookup`, or a prompt/messages).

        With `paid=True` (an answer the model was just paid for) it also becomes a policy
        label: was the nearest stored entry's answer the same? `cheap`: the verdict on a cheap
        reply to the same request, which the answer then labels. `payload` is opaque text kept
        with a new entry and returned on hits (adapters store full responses there). Returns
        the entry, or None when the `verify` callable rejected the answer.

        Raises:
            InvalidRequestError: the answer is empty or not a string, or the request is malformed.
        """
        if isinstance(request, LookupResult):
            result = request
        else:
            query, scope = self._parse(request, model, tenant, params)
            result = LookupResult(None, Decision("miss", None, float("-inf"), 0.0), scope, query)
        check_text(answer, what="the answer", max_chars=max(self.max_query_chars, MAX_ANSWER_CHARS))
        if self.verify is not None and not self.verify(result.query, answer):
            self.controller.count("rejected_write_backs")
            return None
        self.warm_up()
        vector = result.embedding if result.embedding is not None else self.embedder.embed([result.query])[0]
        paid = paid and result.hit is None
        label = self.controller.label(result, answer) if paid else None
        same_as = self.controller.same_entry(result, answer, label) if paid else None
        expires = utcnow() + timedelta(seconds=self.ttl) if self.ttl is not None else None
        source = source_model or result.scope.model
        written = self.memory.add(result.scope, result.query, answer, vector, source_model=source, payload=payload,
                                  label=label, expires_at=expires, same_as=same_as)  # fmt: skip
        self.controller.count("write_backs")
        if paid:  # taught only once the answer and its label are safely stored
            self.controller.learn(label, written.key_id, result.scope.key, vector)
        if cheap is not None:
            self.controller.learn_cheap(cheap, result.query, answer)
        self._evict_if_full()
        return written.entry

    async def awrite_back(self, request: LookupResult | Request, answer: str, **kwargs: Any) -> CacheEntry | None:
        """Async `write_back`, run off the event loop."""
        return await self._run(functools.partial(self.write_back, request, answer, **kwargs))

    def _evict_if_full(self) -> None:
        if self.max_entries is not None and self.memory.entries > self.max_entries:
            self.controller.flush()  # last-hit times must be current before choosing what to evict
            self.memory.evict(int(self.max_entries * 0.95))

    # -- completion -------------------------------------------------------------------------

    def completion(self, *, messages: Messages, model: Name = None, tenant: Name = None, **kwargs: Any):
        """LiteLLM `completion` with memory: serve a confident hit, else call the strong model.

        All LiteLLM keyword arguments pass through. Returns LiteLLM's response (or a stream
        of chunks with `stream=True`); `memcache.cache_info(response)` tells hit or miss,
        similarity, confidence and entry id.

        Raises:
            InvalidRequestError: malformed messages. EscalationError: the strong model failed
                (nothing is written back).
        """
        return flow.run(calls.completion_flow(self, messages, model, tenant, kwargs, asynchronous=False))

    async def acompletion(self, *, messages: Messages, model: Name = None, tenant: Name = None, **kwargs: Any):
        """Async `completion`, with the same arguments and results."""
        return await flow.arun(calls.completion_flow(self, messages, model, tenant, kwargs, asynchronous=True))

    # -- decorator --------------------------------------------------------------------------

    def cached(self, func: Callable | None = None, *, model: Name = None, tenant: Name = None):
        """Decorate a function `fn(prompt_or_messages, *args, **kwargs) -> str`, sync or async.

        The function is the strong model: it runs on a miss and its answer is written back;
        on an audit it runs too (in the background, after the stored answer was returned,
        with `shadow_audits`). Its other arguments are part of the scope, by value (an argument
        memcache cannot tell apart by value is refused). The scope's model name is `model`, or
        the function's module and qualified name (`memcache.checks.function_name`); a closure, a
        lambda or a partial needs `model=`.

        Raises:
            ConfigError: no `model=` for a function without a stable name.
        """
        return calls.cached(self, func, model=model, tenant=tenant)

    # -- management -------------------------------------------------------------------------

    def invalidate(self, entry_id: int) -> bool:
        """Delete one entry and all its keys; True if it existed.

        Raises:
            InvalidRequestError: `entry_id` is not a positive 64-bit integer.
        """
        checks.entry_id(entry_id)
        self.warm_up()
        return self.memory.delete([entry_id]) > 0

    def forget(self, *, tenant: str | None) -> int:
        """Delete everything stored for `tenant` (None: the requests that named no tenant);
        returns the number of entries deleted."""
        scope = build_scope(tenant=tenant, model=DEFAULT_SCOPE_MODEL, params={})  # validates the name
        self.warm_up()
        return self.memory.delete(self.store.entry_ids_of_tenant(scope.tenant))

    async def aforget(self, *, tenant: str | None) -> int:
        """Async `forget`, run off the event loop."""
        return await self._run(functools.partial(self.forget, tenant=tenant))

    def entry_of(self, request: Request, *, model: Name = None, tenant: Name = None, **params: Any) -> int | None:
        """The id of the entry stored for exactly this request (the same text up to whitespace,
        in the same scope), or None; no embedding and no counters. With `invalidate`, it deletes
        the answer a prompt would be served from an exact repeat of.

        Raises:
            InvalidRequestError: empty, non-string, oversized or malformed input.
        """
        query, scope = self._parse(request, model, tenant, params)
        self.warm_up()
        return self.memory.exact_entry(scope.key, query)

    def get(self, entry_id: int) -> CacheEntry | None:
        """One stored entry with all its query keys, or None.

        Raises:
            InvalidRequestError: `entry_id` is not a positive 64-bit integer.
        """
        return self.store.get_entry(checks.entry_id(entry_id))

    def export_jsonl(self, path: str | Path, *, progress: bool = False) -> int:
        """Write every entry (scope, answer, all its queries) as one JSON line; returns the count."""
        self.flush()
        return transfer.export_jsonl(self.memory, path, progress=progress)

    def import_jsonl(self, path: str | Path, *, progress: bool = False, batch: int = 256) -> int:
        """Add the entries of an `export_jsonl` file, re-embedded with this cache's model; they
        teach the policy nothing. Returns the query keys read. Every line is checked before
        anything is written; a malformed one raises InvalidRequestError."""
        items = transfer.read_export(path, max_chars=self.max_query_chars)
        self.warm_up()
        return transfer.import_queries(self.memory, items, self.embedder.embed, batch=batch, progress=progress)

    def flush(self) -> None:
        """Write buffered hit counters to the store (also done by `stats` and `close`)."""
        self.controller.flush()

    def policy_status(self) -> PolicyStatus:
        """The policy's bound, estimate, claim check and shift hold (no store access)."""
        return self.controller.status()

    def counters(self) -> dict[str, int]:
        """This process's lookup, hit, call and spend counters, read without the store (for scrapes)."""
        return self.controller.counters()

    def stats(self) -> Stats:
        """Counters of this process, the store's lifetime counters, and its totals."""
        self.flush()
        return self.controller.stats()

    # -- background work and closing ----------------------------------------------------------

    def wait_for_learning(self) -> None:
        """Block until background learning is done: shadow audits on worker threads, then the
        hindsight relabel they may have started. (Audits of an async `cached` function run on
        its event loop: `await_learning` waits for those too.)"""
        self.controller.wait()

    async def await_learning(self) -> None:
        """Async `wait_for_learning`, which also waits for shadow audits on this event loop."""
        await self.controller.await_tasks()
        await self._run(self.controller.wait)

    def close(self) -> None:
        """Finish background learning, flush hit counters, write the index snapshot (if
        configured) and release the store's connections."""
        try:
            self.controller.close()
            if self.memory.snapshot is not None and self._ready and isinstance(self.memory.index, FaissIndex):
                self.memory.save_snapshot()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            self.store.close()

    def __enter__(self) -> MemCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _off_loop(self, fn: Callable, *args: Any) -> Callable[[], Any]:
        """A step that runs `fn(*args)` on a worker thread (store and index work never blocks the loop)."""
        return lambda: self._run(fn, *args)

    async def _run(self, fn: Callable, *args: Any) -> Any:
        if self._executor is None:
            with self._ready_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="memcache")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
