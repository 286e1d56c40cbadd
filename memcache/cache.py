"""`MemCache`: the one entry class, and the only module that knows the whole flow.

scope -> exact repeat -> embed -> search in scope -> policy decides -> hit, or escalate
-> verify -> write back (store first, then index) -> the paid answer becomes a policy label.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from memcache import llm
from memcache.centroids import EntryCentroids
from memcache.embedding import Embedder, SentenceTransformerEmbedder, resolve_device
from memcache.hindsight import HindsightWindow
from memcache.errors import ConfigError, InvalidRequestError, StoreError
from memcache.index import FaissIndex, VectorIndex
from memcache.judge import ExactJudge, Judge
from memcache.policy import CalibratedPolicy, Policy
from memcache.scope import Conversation, build_scope, check_text, digest, normalize, split_messages
from memcache.store import Store, StoredAnswer, StoredKey, text_hash, utcnow
from memcache.types import (
    CacheEntry,
    CacheHit,
    CacheInfo,
    Candidate,
    Decision,
    EntryStats,
    Label,
    LookupResult,
    Scope,
    Stats,
)

DEFAULT_DATABASE_URL = "sqlite:///memcache.db"
DEFAULT_SCOPE_MODEL = "default"
ANSWER_CACHE_SIZE = 10_000  # answers of recently served entries kept in memory (a hit then needs no store read)
AUDIT_WORKERS = 8  # threads for shadow audits' strong calls: a slow model cannot starve lookups
MAX_PENDING_AUDITS = 256  # past this many unfinished shadow audits, an audit makes its caller wait again
Request = str | Sequence[Mapping[str, Any]]
Verifier = Callable[[str, str], bool]
log = logging.getLogger("memcache")


MAX_SECONDS = 100 * 365 * 86_400  # past this an expiry date would not fit a datetime


def _check_seconds(value: Any, name: str, *, allow_zero: bool, hint: str) -> None:
    """A duration in seconds: a finite number, > 0 (or >= 0), under a century; None passes."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} is in seconds and must be a finite number ({hint})")
    if value < 0 or (value == 0 and not allow_zero) or value > MAX_SECONDS:
        low = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} is in seconds and must be {low} and at most {MAX_SECONDS:,} ({hint})")


def _check_count(value: Any, name: str, *, minimum: int, hint: str = "", optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}" + (f" ({hint})" if hint else ""))


def _entry_id(value: Any) -> int:
    """An entry id as a caller passes it: a positive 64-bit integer."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise InvalidRequestError(f"an entry id is a positive 64-bit integer, got {value!r}")
    return value


def _batch_vector(batch: dict[str, tuple[list[int], list[np.ndarray]]], key: StoredKey) -> bool:
    """Queue a stored key's vector for its scope's next index add; False if it has none."""
    if key.embedding is None:
        return False
    ids, vectors = batch.setdefault(key.scope_key, ([], []))
    ids.append(key.key_id)
    vectors.append(key.embedding)
    return True


def _start_unless_running(current: threading.Thread | None, target: Callable[[], None], name: str) -> threading.Thread:
    """`current` while it still runs, else a new daemon thread on `target`: one job of a kind at a time."""
    if current is not None and current.is_alive():
        return current
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _stable_name(fn: Callable) -> str:
    """The scope name of a decorated function: `module.qualname`, where that names it alone.

    Functions defined inside another function add their defaults, by value: siblings made by one
    factory differ only there. A closure, a lambda or a partial has nothing stable to add (what
    it captured is not part of its name), so it needs an explicit name.
    """
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str) or "<lambda>" in qualname or getattr(fn, "__closure__", None):
        raise ConfigError(
            f"{qualname or fn!r} has no name that tells it apart from its siblings across restarts (a closure, "
            "a lambda or a partial); decorate it with @cache.cached(model='a-name-of-its-own')"
        )
    name = f"{fn.__module__}.{qualname}"
    if "<locals>" in qualname:
        try:
            name += "#" + digest([fn.__defaults__, fn.__kwdefaults__], what=f"the defaults of {qualname}")
        except InvalidRequestError as exc:
            raise ConfigError(f"{exc}; or decorate it with @cache.cached(model='a-name-of-its-own')") from exc
    return name


def cache_info(response: Any) -> CacheInfo | None:
    """The CacheInfo of a response or stream returned by `MemCache.completion`, or None."""
    info = getattr(response, "cache_info", None)
    if isinstance(info, CacheInfo):
        return info
    hidden = getattr(response, "_hidden_params", None)
    return hidden.get("memcache") if isinstance(hidden, dict) else None


class MemCache:
    """Semantic cache with calibrated hits and verified write-back.

    Args:
        database_url: SQLAlchemy URL of the store (the source of truth). Default: a SQLite
            file `memcache.db` in the working directory.
        embedding_model: sentence-transformers model name or path; None for the packaged
            all-MiniLM-L6-v2.
        strong_model: LiteLLM model used by `completion` when the caller names none.
        max_false_hit_rate: bound on wrong hits / hits, e.g. 0.02 for at most 2%.
        calibration: path of a calibration file from `memcache calibrate` to start from.
        embedder / index / store / policy / judge: pass built parts to replace the defaults.
        verify: `verify(query, answer) -> bool`; an answer it rejects is never written back.
        ttl: seconds an entry may be served after it was written; None keeps it forever.
        max_query_chars: longest accepted prompt (characters over all messages).
        neighbours: how many in-scope keys the policy sees per lookup.
        hindsight_window: how many recent paid keys are asked again of the current index
            (each with itself left out) to refresh the policy's labels; 0 turns it off.
            See `memcache.hindsight`. Used when the policy has `set_hindsight`.
        relabel_in_background: ask the window again on a background thread (default), so no
            write-back waits for it (~0.4 s at 3,000 keys here, seconds in a 1M-key HNSW
            scope). False runs it inline, which makes replays exactly reproducible.
        shadow_audits: where memcache calls the strong model itself (`completion`,
            `acompletion`, `cached`, the proxy), an audited would-be hit is served at once and
            the strong model checks it in the background (default). False makes the caller
            wait for the strong model's answer instead. Either way an audit is one paid call
            and one label; see `shadow_hit` for callers of `lookup`. `close()` waits for
            unfinished checks (`await_learning()` for those of async `cached` functions).
        device: "auto" (CUDA if available), "cpu", "cuda", ... for the default embedder and
            index: on CUDA the index is an exact `TorchIndex` in GPU memory (with faiss's GPU
            kernel when a GPU build of faiss is installed), else a `FaissIndex` on the CPU.
        seed: seed for the policy's audit coin (reproducible replays).
        progress: show a progress bar while the index is rebuilt from the store.
        sync_interval: seconds between checks of the store's change sequence, so that what other
            processes write back or delete reaches this one's index (a lookup checks when the
            last check is older than this; 0.5 s keeps others' writes visible within 1 s).
            None turns it off (a single process).
        max_entries: capacity; past it the least recently used entries (by last hit, else
            creation) are deleted down to 95% of it. None: unbounded.
        snapshot: path of an index snapshot: loaded on start instead of rebuilding the index
            from the store (what changed since is read from the store), and written by `close`
            and `save_snapshot`. Worth it past ~100k keys, where a rebuild takes minutes.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        embedding_model: str | None = None,
        strong_model: str | None = None,
        max_false_hit_rate: float = 0.02,
        calibration: str | Path | None = None,
        embedder: Embedder | None = None,
        index: VectorIndex | None = None,
        store: Store | None = None,
        policy: Policy | None = None,
        judge: Judge | None = None,
        verify: Verifier | None = None,
        ttl: float | None = None,
        max_query_chars: int = 32_000,
        neighbours: int = 10,
        hindsight_window: int = 4000,
        relabel_in_background: bool = True,
        shadow_audits: bool = True,
        device: str = "auto",
        seed: int | None = None,
        progress: bool = False,
        sync_interval: float | None = 0.5,
        max_entries: int | None = None,
        snapshot: str | Path | None = None,
    ) -> None:
        if policy is not None and calibration is not None:
            raise ConfigError("pass either policy= or calibration=, not both")
        if database_url is not None and (not isinstance(database_url, str) or not database_url.strip()):
            raise ConfigError("database_url must be a SQLAlchemy URL such as 'sqlite:///memcache.db' (or None for that)")
        _check_count(max_query_chars, "max_query_chars", minimum=1)
        _check_count(neighbours, "neighbours", minimum=1)
        _check_count(hindsight_window, "hindsight_window", minimum=0, hint="0 turns hindsight labels off")
        _check_count(max_entries, "max_entries", minimum=1, hint="or None for no limit", optional=True)
        _check_seconds(ttl, "ttl", allow_zero=False, hint="or None for no expiry")
        _check_seconds(sync_interval, "sync_interval", allow_zero=True, hint="or None to turn syncing off")
        if verify is not None and not callable(verify):
            raise ConfigError("verify must be a callable verify(query, answer) -> bool")
        self.strong_model = strong_model
        self.max_query_chars = max_query_chars
        self.neighbours = neighbours
        self.ttl = ttl
        self.verify = verify
        self.progress = progress
        self.device = device
        if policy is None:  # built first: a bad bound must fail before a store file is created
            policy = (
                CalibratedPolicy.from_file(calibration, max_false_hit_rate=max_false_hit_rate, seed=seed)
                if calibration is not None
                else CalibratedPolicy(max_false_hit_rate, seed=seed)
            )
        self.policy = policy
        self._hindsight = HindsightWindow(hindsight_window if hasattr(policy, "set_hindsight") else 0)
        self.relabel_in_background = relabel_in_background
        self._relabeler: threading.Thread | None = None
        self.shadow_audits = shadow_audits
        self._audits: set[Future] = set()  # shadow audits' strong calls still running (threads)
        self._audit_tasks: set[asyncio.Task] = set()  # ... and on an event loop (async `cached`)
        self._audit_pool: ThreadPoolExecutor | None = None
        self.embedder = embedder if embedder is not None else SentenceTransformerEmbedder(embedding_model, device=device)
        self.store = store if store is not None else Store(DEFAULT_DATABASE_URL if database_url is None else database_url)
        self.judge = judge if judge is not None else ExactJudge()
        self._index = index
        self._lock = threading.RLock()
        self._loaded = False
        self._shifts_recorded = 0  # the policy's traffic-shift alarms whose hold the store knows of
        self._exact: dict[tuple[str, str], int] = {}  # (scope key, normalized-text hash) -> key id
        self._keys: dict[int, tuple[int, str, str]] = {}  # key id -> (entry id, scope key, text hash)
        self._keys_of_entry: dict[int, tuple[int, ...]] = {}  # tuples: most entries have one key
        self._centroids = EntryCentroids()  # key-vector sums of entries with two keys or more
        self._entry_stats: dict[int, EntryStats] = {}  # entries checked at least once (the policy's only use)
        self._pending_hits: dict[int, tuple[int, datetime]] = {}
        self._flusher: threading.Thread | None = None
        # entry id -> its stored answer, least recently served first; dropped when the entry
        # changes here or in another process (then within `sync_interval`)
        self._answers: OrderedDict[int, StoredAnswer] = OrderedDict()
        self._executor: ThreadPoolExecutor | None = None
        self.sync_interval = sync_interval
        self.max_entries = max_entries
        self.snapshot = Path(snapshot) if snapshot is not None else None
        self._change_cursor = 0  # every change with an id <= this has been applied (or given up on)
        self._changes_applied: set[int] = set()  # applied ids above the cursor
        self._change_gaps: dict[int, float] = {}  # unseen ids below applied ones: when first noticed
        self._last_sync = 0.0
        self._counters = dict.fromkeys(
            ("lookups", "hits", "exact_hits", "misses", "audits", "write_backs", "rejected_write_backs"), 0
        )

    # -- start-up ---------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        """Rebuild the derived state (index, exact table, entry stats) from the store, once."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            expired = self.store.expired_entry_ids()
            if expired:
                self.store.delete_entries(expired)
            # changes after this point are replayed by sync(); applying one twice is harmless
            self._change_cursor = self.store.last_change_id()
            self._last_sync = time.monotonic()
            checks = {entry_id: (c, f) for entry_id, c, f in self.store.entry_reliability()}
            snapshot = self._open_snapshot()
            keys = self.store.iter_keys(embeddings=snapshot is None)
            if self.progress:
                from tqdm import tqdm

                total = self.store.counts()[1]
                keys = tqdm(keys, total=total, desc="rebuilding index", unit="key", disable=total < 10_000)
            batch: dict[str, tuple[list[int], list[np.ndarray]]] = {}
            pending = 0
            for key in keys:
                self._register_key(key.key_id, key.entry_id, key.scope_key, key.normalized_hash)
                pending += _batch_vector(batch, key)
                if pending >= 1_000_000:  # one add per scope where memory allows: HNSW built in one
                    # pass ranks better (recall@1 0.997 vs 0.947 at 1M keys added in 50k batches)
                    self._flush_vectors(batch)
                    batch, pending = {}, 0
            self._flush_vectors(batch)
            if snapshot is not None:
                self._reconcile(snapshot)
            self._load_centroids()
            for entry_id, (c, f) in checks.items():
                keys_of = self._keys_of_entry.get(entry_id)
                if keys_of is not None:
                    self._entry_stats[entry_id] = EntryStats(entry_id, len(keys_of), c, f)
            if hasattr(self.policy, "load_audit_claims"):  # before the labels: their refit uses these
                self.policy.load_audit_claims(self.store.iter_audit_claims(limit=getattr(self.policy, "recent_window", None)))
            labels = list(self.store.iter_labels(limit=getattr(self.policy, "max_labels", None)))
            if labels and hasattr(self.policy, "load_labels"):
                self.policy.load_labels(labels)
            if hasattr(self.policy, "resume_hold"):
                self.policy.resume_hold(self.store.shift_hold_left())
            self._shifts_recorded = len(getattr(self.policy, "shifts_detected", ()))
            self._loaded = True

    def _load_centroids(self) -> None:
        """Sum the key vectors of every entry with two keys or more (read again from the store:
        a snapshot start reads no vectors, and a rebuild does not know the counts until the end)."""
        multi = [key_id for keys in self._keys_of_entry.values() if len(keys) > 1 for key_id in keys]
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for start in range(0, len(multi), 10_000):
            for key in self.store.keys_by_id(multi[start : start + 10_000]):
                if key.embedding is not None and key.key_id in self._keys:
                    sums[key.entry_id] = sums.get(key.entry_id, 0.0) + key.embedding.astype(np.float32)
                    counts[key.entry_id] = counts.get(key.entry_id, 0) + 1
        for entry_id, total in sums.items():
            self._centroids.set_sum(entry_id, total, counts[entry_id])

    def _earlier_keys_sum(self, entry_id: int, new_key: int) -> tuple[np.ndarray, int] | None:
        """(sum, number) of an entry's key vectors other than `new_key`, read from the store."""
        others = [k for k in self._keys_of_entry.get(entry_id, ()) if k != new_key]
        vectors = [key.embedding for key in self.store.keys_by_id(others) if key.embedding is not None]
        return (np.sum(vectors, axis=0, dtype=np.float32), len(vectors)) if vectors else None

    def warm_up(self) -> None:
        """Build the index now (from the snapshot, or the store) rather than on the first lookup."""
        self._ensure_loaded()

    @property
    def index(self) -> VectorIndex | None:
        """The in-memory vector index (None until something is indexed): for inspection."""
        return self._index

    def _open_snapshot(self) -> FaissIndex | None:
        """The index saved at `snapshot` when it belongs to this store, else None (rebuild).

        A snapshot of another store, of another vector width, or damaged in any way is logged
        and ignored: the store can always rebuild the index.
        """
        if self.snapshot is None or self._index is not None or not self.snapshot.exists():
            return None
        try:
            if FaissIndex.read_meta(self.snapshot).get("store_id") != self.store.store_id:
                log.warning("index snapshot %s belongs to another store; rebuilding from the store", self.snapshot)
                return None
            index = FaissIndex.load(self.snapshot)
        except Exception as exc:  # noqa: BLE001 - a damaged file of any kind means: rebuild
            log.warning("index snapshot %s is unreadable (%s); rebuilding from the store", self.snapshot, exc)
            return None
        width = self.store.vector_dimension()
        if width is not None and width != index.dimension:
            log.warning(
                "index snapshot %s holds %d-wide vectors, the store %d-wide; rebuilding from the store",
                self.snapshot, index.dimension, width,
            )
            return None
        self._index = index
        return index

    def _reconcile(self, index: FaissIndex) -> None:
        """Make a loaded snapshot match the store: drop keys deleted since, and keys the snapshot
        files under another scope than the store does; add what is missing."""
        stored_scope = {key_id: key[1] for key_id, key in self._keys.items()}
        indexed = index.scopes()
        stale = {key_id for key_id, scope_key in indexed.items() if stored_scope.get(key_id) != scope_key}
        if stale - (indexed.keys() - stored_scope.keys()):
            log.warning("index snapshot %s files keys under other scopes than the store; re-adding them", self.snapshot)
        index.remove(stale)
        missing = sorted(stored_scope.keys() - (indexed.keys() - stale))
        for start in range(0, len(missing), 10_000):
            batch: dict[str, tuple[list[int], list[np.ndarray]]] = {}
            for key in self.store.keys_by_id(missing[start : start + 10_000]):
                _batch_vector(batch, key)
            self._flush_vectors(batch)

    def save_snapshot(self, path: str | Path | None = None) -> Path | None:
        """Write the index to `path` (default: the `snapshot` path) so a restart loads it
        instead of rebuilding; returns the path, or None when nothing is indexed yet."""
        target = Path(path) if path is not None else self.snapshot
        if target is None:
            raise ConfigError("no snapshot path: pass one, or construct MemCache(snapshot=...)")
        self._ensure_loaded()
        if self._index is None:
            return None
        if not isinstance(self._index, FaissIndex):
            raise ConfigError(f"{type(self._index).__name__} cannot be snapshotted; only FaissIndex can")
        self._index.save(target, meta={"store_id": self.store.store_id})
        return target

    # -- following other processes ------------------------------------------------------------

    def sync(self) -> int:
        """Apply what other processes wrote or deleted since the last sync; returns changes applied.

        Ids from the store's sequence can commit out of order, so an id missing below applied
        ones is waited for (it may still commit) and skipped after 30 s (a rolled-back write).
        """
        self._ensure_loaded()
        with self._lock:
            self._last_sync = time.monotonic()
            changes = [c for c in self.store.changes_since(self._change_cursor) if c.id not in self._changes_applied]
            new_keys = [c.key_id for c in changes if c.kind == "key" and c.key_id not in self._keys]
            stored = {key.key_id: key for key in self.store.keys_by_id(new_keys)}
            for change in changes:
                if change.kind == "drop":
                    self._forget_entries([change.entry_id], ())
                elif change.key_id in stored:
                    key = stored[change.key_id]
                    self._add_key(key.key_id, key.entry_id, key.scope_key, key.normalized_hash, key.embedding)
                self._changes_applied.add(change.id)
            self._advance_cursor()
            return len(changes)

    def _advance_cursor(self) -> None:
        if not self._changes_applied:
            return
        now = time.monotonic()
        for missing in range(self._change_cursor + 1, max(self._changes_applied)):
            if missing not in self._changes_applied:
                self._change_gaps.setdefault(missing, now)
        while True:
            following = self._change_cursor + 1
            if following in self._changes_applied:
                self._changes_applied.discard(following)
            elif following in self._change_gaps and now - self._change_gaps[following] > 30.0:
                del self._change_gaps[following]
            else:
                break
            self._change_cursor = following

    def _sync_due(self) -> bool:
        return self.sync_interval is not None and time.monotonic() - self._last_sync >= self.sync_interval

    def _maybe_sync(self) -> None:
        if self._sync_due():
            self.sync()

    def _flush_vectors(self, batch: dict[str, tuple[list[int], list[np.ndarray]]]) -> None:
        for scope_key, (ids, vectors) in batch.items():
            self._index_for(len(vectors[0])).add(scope_key, ids, np.stack(vectors))

    def _index_for(self, dimension: int) -> VectorIndex:
        if self._index is None:
            if resolve_device(self.device).startswith("cuda"):
                from memcache.gpu_index import TorchIndex

                self._index = TorchIndex(dimension, device=resolve_device(self.device))
            else:
                self._index = FaissIndex(dimension)
        return self._index

    def _add_key(
        self, key_id: int, entry_id: int, scope_key: str, normalized_hash: str, vector: np.ndarray | None
    ) -> None:
        """Index and register one stored key, written here or by another process (hold the lock)."""
        if vector is not None:
            self._index_for(len(vector)).add(scope_key, [key_id], vector[None, :])
        self._answers.pop(entry_id, None)  # a new key may have moved the entry's expiry
        self._register_key(key_id, entry_id, scope_key, normalized_hash)
        if vector is not None:
            n_keys = len(self._keys_of_entry[entry_id])
            self._centroids.add_key(entry_id, vector, n_keys, lambda: self._earlier_keys_sum(entry_id, key_id))
        stats = self._entry_stats.get(entry_id)
        if stats is not None:
            self._entry_stats[entry_id] = replace(stats, n_keys=len(self._keys_of_entry[entry_id]))

    def _register_key(self, key_id: int, entry_id: int, scope_key: str, normalized_hash: str) -> None:
        self._exact[(scope_key, normalized_hash)] = key_id
        self._keys[key_id] = (entry_id, scope_key, normalized_hash)
        keys_of = self._keys_of_entry.get(entry_id, ())
        if key_id not in keys_of:
            self._keys_of_entry[entry_id] = (*keys_of, key_id)

    # -- parsing ----------------------------------------------------------------------------

    def _parse(self, request: Request, model: str | None, tenant: str | None, params: Mapping[str, Any]):
        if isinstance(request, (str, bytes)) or not isinstance(request, Sequence):
            turn = Conversation(check_text(request, what="the query", max_chars=self.max_query_chars))
        else:
            turn = split_messages(request, max_chars=self.max_query_chars)
        scope = build_scope(
            tenant=tenant, model=model or self.strong_model or DEFAULT_SCOPE_MODEL, params=params,
            earlier=turn.earlier, extra_parts=turn.query_extras, after=turn.after,
        )
        return turn.query, scope

    # -- lookup -----------------------------------------------------------------------------

    def lookup(self, request: Request, *, model: str | None = None, tenant: str | None = None, **params: Any) -> LookupResult:
        """Find a stored answer for `request` (a prompt string or OpenAI-style messages).

        Returns a LookupResult whose `hit` is set when an answer may be served. Otherwise
        call the model yourself and pass the result with the answer to `write_back`.

        Raises:
            InvalidRequestError: empty, non-string, oversized or malformed input.
        """
        query, scope = self._parse(request, model, tenant, params)
        self._ensure_loaded()
        self._maybe_sync()
        exact = self._exact_hit(scope.key, query)
        if exact is not None:
            return LookupResult(exact, Decision("hit", exact.entry_id, 1.0, 1.0), scope, query)
        vector = self.embedder.embed([query])[0]
        return self._decide(query, scope, vector)

    async def alookup(self, request: Request, *, model: str | None = None, tenant: str | None = None, **params: Any) -> LookupResult:
        """Async `lookup`: embedding is awaited, store and index work runs off the event loop."""
        query, scope = self._parse(request, model, tenant, params)
        if not self._loaded:
            await self._run(self._ensure_loaded)
        if self._sync_due():
            await self._run(self.sync)
        exact = await self._run(self._exact_hit, scope.key, query)
        if exact is not None:
            return LookupResult(exact, Decision("hit", exact.entry_id, 1.0, 1.0), scope, query)
        aembed = getattr(self.embedder, "aembed", None)
        vectors = await aembed([query]) if aembed else await self._run(self.embedder.embed, [query])
        return await self._run(self._decide, query, scope, vectors[0])

    def _exact_hit(self, scope_key: str, query: str) -> CacheHit | None:
        key_id = self._exact.get((scope_key, text_hash(normalize(query))))
        key = None if key_id is None else self._keys.get(key_id)  # deleted meanwhile: a miss
        if key is None:
            return None
        entry_id = key[0]
        row = self._live_answer(entry_id, scope_key)
        if row is None:
            return None
        self._count_hit(entry_id, exact=True)
        return CacheHit(row[0], entry_id, 1.0, 1.0, exact=True, payload=row[1])

    def _candidates(self, scope_key: str, vector: np.ndarray) -> list[Candidate]:
        if self._index is None:
            return []
        sims, ids = self._index.search(scope_key, vector[None, :], self.neighbours)
        out = []
        for sim, key_id in zip(sims[0].tolist(), ids[0].tolist()):
            key = self._keys.get(key_id)
            if key is not None:
                out.append(Candidate(key_id, key[0], sim))
        return self._centroids.annotate(out, vector)

    def _decide(self, query: str, scope, vector: np.ndarray) -> LookupResult:
        candidates = self._candidates(scope.key, vector)
        decision = self.policy.decide(candidates, self._entry_stats)
        self._record_shift_hold()
        hit = None
        if decision.action == "hit":
            row = self._live_answer(decision.entry_id, scope.key)
            if row is None:  # expired or deleted since it was indexed
                decision = replace(decision, action="miss")
            else:
                self._count_hit(decision.entry_id, exact=False)
                hit = CacheHit(row[0], decision.entry_id, decision.similarity, decision.confidence, payload=row[1])
        with self._lock:
            self._counters["lookups"] += hit is None
            self._counters["misses"] += decision.action == "miss"
            self._counters["audits"] += decision.action == "audit"
        return LookupResult(hit, decision, scope, query, embedding=vector)

    def _record_shift_hold(self) -> None:
        """Store the hold the policy started at a traffic shift, so a restart resumes it.

        One store write per alarm (alarms are at least `ShiftDetector.cooldown` lookups apart).
        """
        shifts = len(getattr(self.policy, "shifts_detected", ()))
        if shifts == self._shifts_recorded:
            return
        with self._lock:
            if shifts == self._shifts_recorded:
                return
            self._shifts_recorded = shifts
        self.store.start_shift_hold(getattr(self.policy, "shift_hold_audits", 0))

    def shadow_hit(self, result: LookupResult) -> CacheHit | None:
        """The stored answer an audit may serve while the strong model checks it, else None.

        None unless `result` is an audit that is not held (`Decision.held`) and `shadow_audits`
        is on (and the entry still lives), and while `MAX_PENDING_AUDITS` checks are unfinished
        (a slow model then makes callers wait, instead of a queue growing). A caller of `lookup`
        that serves it should still ask the strong model and pass its answer to
        `write_back(result, answer)`, off the user's path: the audit costs its paid call either
        way, but the user does not wait for it, and the audited sample is exactly what users
        are served. The served answer counts as a hit (and as an audit).
        """
        decision = result.decision
        if not self.shadow_audits or result.hit is not None or decision.action != "audit" or decision.held:
            return None
        if decision.entry_id is None or len(self._audits) + len(self._audit_tasks) >= MAX_PENDING_AUDITS:
            return None
        row = self._live_answer(decision.entry_id, result.scope.key)
        if row is None:
            return None
        self._count_hit(decision.entry_id, exact=False, new_lookup=False)  # the lookup was counted as an audit
        return CacheHit(row[0], decision.entry_id, decision.similarity, decision.confidence, payload=row[1])

    async def _ashadow_hit(self, result: LookupResult) -> CacheHit | None:
        """`shadow_hit` off the event loop; a miss (the common case) needs no thread hop."""
        return await self._run(self.shadow_hit, result) if result.decision.action == "audit" else None

    def _live_answer(self, entry_id: int, scope_key: str) -> tuple[str, str | None] | None:
        """(answer, payload) of an entry that exists, has not expired, and belongs to `scope_key`.

        Served from the in-memory answer cache when there; an expiry seen there is checked
        against the store before the entry is deleted (another process may have extended it).
        An entry of another scope is never served, whatever this process's maps say: the guard
        logs it and drops the entry from this process's derived state (the store is the truth).
        """
        with self._lock:
            row = self._answers.get(entry_id)
            if row is not None:
                self._answers.move_to_end(entry_id)
        if row is None or self._expired(row):
            row = self.store.answer_of(entry_id)
            if row is None:
                return None
            with self._lock:
                if entry_id in self._keys_of_entry:  # not deleted while it was read
                    self._answers[entry_id] = row
                    if len(self._answers) > ANSWER_CACHE_SIZE:
                        self._answers.popitem(last=False)
        if row.scope_key != scope_key:
            log.error("scope guard: entry %s is stored under another scope than the request's; not served", entry_id)
            self._forget_entries([entry_id], ())
            return None
        if self._expired(row):
            self.invalidate(entry_id)
            return None
        return row.answer, row.payload

    @staticmethod
    def _expired(row: StoredAnswer) -> bool:
        return row.expires_at is not None and row.expires_at <= utcnow()

    def _count_hit(self, entry_id: int, *, exact: bool, new_lookup: bool = True) -> None:
        with self._lock:
            self._counters["lookups"] += new_lookup
            self._counters["hits"] += 1
            self._counters["exact_hits"] += exact
            count, _ = self._pending_hits.get(entry_id, (0, None))
            self._pending_hits[entry_id] = (count + 1, utcnow())
            if len(self._pending_hits) >= 256:  # off the lookup's path: the write would otherwise
                # land in one unlucky hit's latency
                self._flusher = _start_unless_running(self._flusher, self.flush, "memcache-hit-counters")

    def flush(self) -> None:
        """Write buffered hit counters to the store (also done by `stats` and `close`)."""
        with self._lock:
            pending, self._pending_hits = self._pending_hits, {}
        self.store.record_hits(pending)

    # -- write-back -------------------------------------------------------------------------

    def write_back(
        self,
        request: LookupResult | Request,
        answer: str,
        *,
        model: str | None = None,
        tenant: str | None = None,
        source_model: str | None = None,
        paid: bool = True,
        payload: str | None = None,
        **params: Any,
    ) -> CacheEntry | None:
        """Store a verified answer for a request (a LookupResult from `lookup`, or a prompt/messages).

        With `paid=True` (an answer the model was just paid for) it also becomes a policy
        label: was the nearest stored entry's answer the same? `payload` is opaque text kept
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
        check_text(answer, what="the answer", max_chars=max(self.max_query_chars, 1_000_000))
        if self.verify is not None and not self.verify(result.query, answer):
            with self._lock:
                self._counters["rejected_write_backs"] += 1
            return None
        self._ensure_loaded()
        vector = result.embedding
        if vector is None:
            vector = self.embedder.embed([result.query])[0]
        paid = paid and result.hit is None
        label = self._label(result, answer) if paid else None
        entry, key_id = self._store_answer(result, answer, vector, source_model or result.scope.model, payload, label)
        if label is not None:  # taught only once the answer and its label are safely stored
            self._learn(label, key_id)
        if paid and key_id is not None and self._hindsight.add(key_id, result.scope.key, vector):
            self._start_relabel()
        self._evict_if_full()
        return entry

    def _evict_if_full(self) -> None:
        if self.max_entries is None or len(self._keys_of_entry) <= self.max_entries:
            return
        self.flush()  # last-hit times must be current before choosing what to evict
        excess = len(self._keys_of_entry) - int(self.max_entries * 0.95)
        self._drop(self.store.least_recently_used(excess))

    async def awrite_back(self, request: LookupResult | Request, answer: str, **kwargs: Any) -> CacheEntry | None:
        """Async `write_back`, run off the event loop."""
        return await self._run(functools.partial(self.write_back, request, answer, **kwargs))

    def _label(self, result: LookupResult, answer: str) -> Label | None:
        """Turn a paid answer into a label: would the nearest entry (not served) have been right?"""
        decision = result.decision
        if decision.entry_id is None or not decision.features:
            return None
        reference = self.store.answer_of(decision.entry_id)
        if reference is None or reference.scope_key != result.scope.key:
            return None
        agreed = bool(self.judge.same_answer(result.query, answer, reference.answer))
        claimed = decision.confidence if decision.action == "audit" else None
        return Label(tuple(decision.features), agreed, decision.entry_id, claimed)

    def _learn(self, label: Label, key_id: int | None) -> None:
        if label.claimed_confidence is not None and hasattr(self.policy, "observe_audit"):
            self.policy.observe_audit(label.claimed_confidence, label.correct)  # before the refit `observe` may run
        if self._hindsight.size:  # the key lets a later hindsight label replace this one
            self.policy.observe(label.features, label.correct, key=key_id)
        else:
            self.policy.observe(label.features, label.correct)
        with self._lock:
            keys_of = self._keys_of_entry.get(label.entry_id)
            if keys_of is not None:
                stats = self._entry_stats.get(label.entry_id) or EntryStats(label.entry_id, len(keys_of))
                self._entry_stats[label.entry_id] = replace(
                    stats, checks=stats.checks + 1, failures=stats.failures + (not label.correct)
                )

    def _start_relabel(self) -> None:
        if not self.relabel_in_background:
            self._relabel()
            return
        with self._lock:  # while one still asks, the next due point asks again with what came since
            self._relabeler = _start_unless_running(self._relabeler, self._relabel, "memcache-hindsight")

    def wait_for_learning(self) -> None:
        """Block until background learning is done: shadow audits on worker threads, then the
        hindsight relabel they may have started. (Audits of an async `cached` function run on
        its event loop: `await_learning` waits for those too.)"""
        with self._lock:
            audits = list(self._audits)
        wait_for_futures(audits)
        relabeler = self._relabeler
        if relabeler is not None:
            relabeler.join()

    async def await_learning(self) -> None:
        """Async `wait_for_learning`, which also waits for shadow audits on this event loop."""
        await asyncio.gather(*list(self._audit_tasks), return_exceptions=True)
        await self._run(self.wait_for_learning)

    def _relabel(self) -> None:
        """Ask the hindsight window again of today's index and hand the labels to the policy."""
        index = self._index
        if index is None:
            return

        def entry_of(key_id: int) -> int | None:
            key = self._keys.get(key_id)
            return None if key is None else key[0]

        examples = self._hindsight.examples(index.search, entry_of, self.neighbours, self._centroids)
        with self._lock:
            entries = dict(self._entry_stats)
        self.policy.set_hindsight(examples, entries)

    def _store_answer(
        self, result: LookupResult, answer: str, vector: np.ndarray, source_model: str, payload: str | None,
        label: Label | None, *, expires_at: datetime | None = None,
    ) -> tuple[CacheEntry, int | None]:
        """Write the answer (and its label) to the store, then index the key.

        Returns the entry and the new key's id (None when the query was already a key)."""
        scope = result.scope
        norm_hash = text_hash(normalize(result.query))
        expires = expires_at or (utcnow() + timedelta(seconds=self.ttl) if self.ttl is not None else None)
        written = self.store.add_answer(
            scope=scope, query=result.query, normalized_hash=norm_hash, embedding=vector,
            answer=answer, source_model=source_model, expires_at=expires, payload=payload, label=label,
        )
        with self._lock:
            self._answers.pop(written.entry_id, None)  # its expiry may have moved
            if written.new_key:  # an existing key is registered by whoever stored it
                self._add_key(written.key_id, written.entry_id, scope.key, norm_hash, vector)
            self._counters["write_backs"] += 1
        entry = CacheEntry(
            id=written.entry_id, scope_key=scope.key, tenant=scope.tenant, answer=answer,
            source_model=source_model, created_at=utcnow(), last_hit_at=None, hit_count=0,
            verified=True, expires_at=expires, queries=(result.query,),
        )
        return entry, written.key_id if written.new_key else None

    # -- completion -------------------------------------------------------------------------

    def _info(self, result: LookupResult, *, served: CacheHit | None = None, stored: bool = False) -> CacheInfo:
        d = result.decision
        similarity = d.similarity if np.isfinite(d.similarity) else None
        if served is not None:
            return CacheInfo("hit", similarity, d.confidence, d.entry_id, served.exact, audited=result.hit is None)
        return CacheInfo(d.action, similarity, d.confidence, d.entry_id, stored=stored)

    @staticmethod
    def _require_messages(messages: Any, kwargs: Mapping[str, Any]) -> bool:
        """Check what a completion call must hold; returns whether it streams."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise InvalidRequestError("messages must be a list of {'role', 'content'} dicts, as for LiteLLM")
        stream = kwargs.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise InvalidRequestError(f"stream must be true or false, got {stream!r}")
        return bool(stream)

    def _model_for(self, model: str | None) -> str:
        model = model or self.strong_model
        if not model:
            raise ConfigError("no model: pass model=... or construct MemCache(strong_model=...)")
        return model

    def completion(self, *, messages: Sequence[Mapping[str, Any]], model: str | None = None, tenant: str | None = None, **kwargs: Any):
        """LiteLLM `completion` with memory: serve a confident hit, else call the strong model.

        All LiteLLM keyword arguments pass through. Returns LiteLLM's response (or a stream
        of chunks with `stream=True`); `memcache.cache_info(response)` tells hit or miss,
        similarity, confidence and entry id.

        Raises:
            InvalidRequestError: malformed messages. EscalationError: the strong model failed
                (nothing is written back).
        """
        stream = self._require_messages(messages, kwargs)
        model = self._model_for(model)
        result = self.lookup(messages, model=model, tenant=tenant, **kwargs)
        served = result.hit or self.shadow_hit(result)
        if served is not None:
            if result.hit is None:
                self._check_later(result, model, messages, kwargs)
            info = self._info(result, served=served)
            if stream:
                return llm.CacheStream(llm.hit_chunks(model, served.answer), info)
            return llm.hit_response(model, served.answer, info)
        response = llm.completion(model, list(messages), **kwargs)
        if stream:
            return llm.CacheStream(response, self._info(result), lambda text: self._write_paid(result, text, model))
        text = llm.verified_text(response)
        stored = text is not None and self._write_paid(result, text, model)
        return llm.attach(response, self._info(result, stored=stored))

    async def acompletion(self, *, messages: Sequence[Mapping[str, Any]], model: str | None = None, tenant: str | None = None, **kwargs: Any):
        """Async `completion`, with the same arguments and results."""
        stream = self._require_messages(messages, kwargs)
        model = self._model_for(model)
        result = await self.alookup(messages, model=model, tenant=tenant, **kwargs)
        served = result.hit or await self._ashadow_hit(result)
        if served is not None:
            if result.hit is None:  # checked on a worker thread, so it outlives the caller's event loop
                self._check_later(result, model, messages, kwargs)
            info = self._info(result, served=served)
            if stream:
                return llm.AsyncCacheStream(llm.hit_chunks(model, served.answer), info)
            return llm.hit_response(model, served.answer, info)
        response = await llm.acompletion(model, list(messages), **kwargs)
        if stream:
            return llm.AsyncCacheStream(
                response, self._info(result), lambda text: self._run(self._write_paid, result, text, model)
            )
        text = llm.verified_text(response)
        stored = text is not None and await self._run(self._write_paid, result, text, model)
        return llm.attach(response, self._info(result, stored=stored))

    def _write_paid(self, result: LookupResult, text: str, model: str) -> bool:
        """Write back an answer the caller already has; a failure to store it is logged, not
        raised, so a paid answer is never lost to a store error (a NUL byte on PostgreSQL, say)."""
        try:
            return self.write_back(result, text, source_model=model) is not None
        except (StoreError, InvalidRequestError) as exc:
            log.warning("the answer was returned but not stored: %s", exc)
            return False

    def _check_later(self, result: LookupResult, model: str, messages: Sequence[Mapping[str, Any]], kwargs: dict) -> None:
        """The shadow audit of a completion: the same request, answered in one piece."""
        checked = {k: v for k, v in kwargs.items() if k not in ("stream", "stream_options")}
        self._audit_later(lambda: llm.verified_text(llm.completion(model, list(messages), **checked)), result, model)

    def _audit_later(self, ask: Callable[[], str | None], result: LookupResult, model: str) -> None:
        """Run a shadow audit's strong call on an audit thread; its answer is written back as usual."""

        def run() -> None:
            try:
                text = ask()
                if isinstance(text, str) and text.strip():
                    self._write_paid(result, text, model)
            except Exception as exc:  # the user already has an answer; a failed audit writes nothing
                log.warning("shadow audit of entry %s failed, nothing written back: %s", result.decision.entry_id, exc)

        with self._lock:
            if self._audit_pool is None:
                self._audit_pool = ThreadPoolExecutor(max_workers=AUDIT_WORKERS, thread_name_prefix="memcache-audit")
            future = self._audit_pool.submit(run)
            self._audits.add(future)

        def done(finished: Future) -> None:
            with self._lock:
                self._audits.discard(finished)

        future.add_done_callback(done)

    def _aaudit_later(self, ask: Callable[[], Any], result: LookupResult, model: str) -> None:
        """Like `_audit_later`, for a coroutine strong model: a task on the caller's event loop."""

        async def run() -> None:
            try:
                text = await ask()
                if isinstance(text, str) and text.strip():
                    await self._run(self._write_paid, result, text, model)
            except Exception as exc:
                log.warning("shadow audit of entry %s failed, nothing written back: %s", result.decision.entry_id, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._audit_tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._audit_tasks.discard)

    # -- decorator --------------------------------------------------------------------------

    def cached(self, func: Callable | None = None, *, model: str | None = None, tenant: str | None = None):
        """Decorate a function `fn(prompt_or_messages, *args, **kwargs) -> str`, sync or async.

        The function is the strong model: it runs on a miss and its answer is written back;
        on an audit it runs too (in the background, after the stored answer was returned,
        with `shadow_audits`). Its other arguments are part of the scope, by value (see
        `memcache.scope.canonical`: an argument memcache cannot tell apart by value is refused).
        The scope's model name is `model`, or the function's module and qualified name (see
        `_stable_name`); a closure, a lambda or a partial needs `model=`.

        Raises:
            ConfigError: no `model=` for a function without a stable name.
        """

        def decorate(fn: Callable) -> Callable:
            name = model or _stable_name(fn)

            def scope_params(args: tuple, kwargs: dict) -> dict[str, Any]:
                return {"fn_args": list(args), "fn_kwargs": kwargs}

            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(request: Request, *args: Any, **kwargs: Any):
                    result = await self.alookup(request, model=name, tenant=tenant, **scope_params(args, kwargs))
                    served = result.hit or await self._ashadow_hit(result)
                    if served is not None:
                        if result.hit is None:
                            self._aaudit_later(lambda: fn(request, *args, **kwargs), result, name)
                        return served.answer
                    answer = await fn(request, *args, **kwargs)
                    if isinstance(answer, str) and answer.strip():
                        await self._run(self._write_paid, result, answer, name)
                    return answer

                return async_wrapper

            @functools.wraps(fn)
            def wrapper(request: Request, *args: Any, **kwargs: Any):
                result = self.lookup(request, model=name, tenant=tenant, **scope_params(args, kwargs))
                served = result.hit or self.shadow_hit(result)
                if served is not None:
                    if result.hit is None:
                        self._audit_later(lambda: fn(request, *args, **kwargs), result, name)
                    return served.answer
                answer = fn(request, *args, **kwargs)
                if isinstance(answer, str) and answer.strip():
                    self._write_paid(result, answer, name)
                return answer

            return wrapper

        return decorate(func) if func is not None else decorate

    # -- management -------------------------------------------------------------------------

    def invalidate(self, entry_id: int) -> bool:
        """Delete one entry and all its keys; True if it existed.

        Raises:
            InvalidRequestError: `entry_id` is not a positive 64-bit integer.
        """
        return self._drop([_entry_id(entry_id)]) > 0

    def forget(self, *, tenant: str | None) -> int:
        """Delete everything stored for `tenant` (None: the requests that named no tenant);
        returns the number of entries deleted."""
        scope = build_scope(tenant=tenant, model=DEFAULT_SCOPE_MODEL, params={})  # validates the name
        return self._drop(self.store.entry_ids_of_tenant(scope.tenant))

    async def aforget(self, *, tenant: str | None) -> int:
        """Async `forget`, run off the event loop."""
        return await self._run(functools.partial(self.forget, tenant=tenant))

    def _drop(self, entry_ids: Iterable[int]) -> int:
        entry_ids = list(entry_ids)
        self._ensure_loaded()
        deleted, key_ids = self.store.delete_entries(entry_ids)
        self._forget_entries(entry_ids, key_ids)
        return deleted

    def _forget_entries(self, entry_ids: Iterable[int], key_ids: Iterable[int]) -> None:
        """Drop entries and their keys from the derived state (index, exact table, stats).

        The keys are `key_ids` and every key registered here for those entries: a key that
        another process added while the entry was being deleted is in one list only.
        """
        entry_ids = list(entry_ids)
        with self._lock:
            key_ids = {*key_ids, *(k for e in entry_ids for k in self._keys_of_entry.get(e, ()))}
            if self._index is not None:
                self._index.remove(key_ids)
            for entry_id in entry_ids:
                self._keys_of_entry.pop(entry_id, None)
                self._centroids.drop(entry_id)
                self._entry_stats.pop(entry_id, None)
                self._answers.pop(entry_id, None)
            for key_id in key_ids:
                key = self._keys.pop(key_id, None)
                if key is not None:
                    self._exact.pop((key[1], key[2]), None)

    def export_jsonl(self, path: str | Path, *, progress: bool = False) -> int:
        """Write every entry (scope, answer, all its queries) as one JSON line; returns the count."""
        self.flush()
        rows = self.store.iter_export_rows()
        if progress:
            from tqdm import tqdm

            rows = tqdm(rows, total=self.store.counts()[0], desc="exporting", unit="entry")
        count = 0
        with Path(path).open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        return count

    def import_jsonl(self, path: str | Path, *, progress: bool = False, batch: int = 256) -> int:
        """Add the entries of an `export_jsonl` file (queries are re-embedded with this cache's model).

        Imported answers are not paid answers: they teach the policy nothing. Returns the
        number of query keys read (keys already stored are kept once). Every line is checked
        before anything is written; a malformed one raises InvalidRequestError.
        """
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InvalidRequestError(f"cannot read {path}: {exc}") from exc
        items = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                scope = Scope(**row["scope"])
                answer, queries = row["answer"], list(row["queries"])
                expires = row.get("expires_at")
                expires_at = datetime.fromisoformat(expires) if expires else None
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidRequestError(f"{path}:{number} is not an exported memcache entry: {exc}") from exc
            for query in queries:
                check_text(query, what=f"{path}:{number} query", max_chars=self.max_query_chars)
                items.append((scope, query, answer, row.get("payload"), row.get("source_model") or scope.model, expires_at))
        self._ensure_loaded()
        chunks = range(0, len(items), batch)
        if progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="importing", unit="batch")
        written = 0
        for start in chunks:
            part = items[start : start + batch]
            vectors = self.embedder.embed([query for _, query, *_ in part])
            for (scope, query, answer, payload, source_model, expires_at), vector in zip(part, vectors):
                request = LookupResult(None, Decision("miss", None, float("-inf"), 0.0), scope, query, embedding=vector)
                self._store_answer(request, answer, vector, source_model, payload, None, expires_at=expires_at)
                written += 1
        return written

    def get(self, entry_id: int) -> CacheEntry | None:
        """One stored entry with all its query keys, or None.

        Raises:
            InvalidRequestError: `entry_id` is not a positive 64-bit integer.
        """
        return self.store.get_entry(_entry_id(entry_id))

    def stats(self) -> Stats:
        """Counters of this process and totals of the store."""
        self.flush()
        entries, keys, labels = self.store.counts()
        with self._lock:
            c = dict(self._counters)
        shifts = getattr(self.policy, "shifts_detected", None)
        return Stats(
            entries=entries, keys=keys, labels=labels,
            max_false_hit_rate=self.policy.max_false_hit_rate,
            estimated_false_hit_rate=getattr(self.policy, "bound", None),
            claim_ratio=getattr(self.policy, "claim_ratio", None),
            shifts_detected=None if shifts is None else len(shifts),
            shift_hold_remaining=getattr(self.policy, "hold_remaining", None),
            **c,
        )

    def close(self) -> None:
        """Flush hit counters, write the index snapshot (if configured) and release the store's connections."""
        try:
            if self._flusher is not None:
                self._flusher.join()
            self.wait_for_learning()
            self.flush()
            if self.snapshot is not None and self._loaded and isinstance(self._index, FaissIndex):
                self.save_snapshot()
        finally:
            for pool in (self._executor, self._audit_pool):
                if pool is not None:
                    pool.shutdown(wait=False)
            self.store.close()

    def __enter__(self) -> "MemCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _run(self, fn: Callable, *args: Any) -> Any:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="memcache")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
