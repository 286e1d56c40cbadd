"""The memory: this process's view of the store, and finding answers in it.

The store is the truth; everything here is derived from it and can be rebuilt: the key registry
and exact-repeat table, the vector index, the entries' centroids and check records, a cache of
recently served answers. Other processes' writes and deletes arrive through the store's change
sequence (`sync`). Every answer read for serving is checked against the scope it is served to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np

from memcache.centroids import EntryCentroids
from memcache.embedding import resolve_device
from memcache.errors import ConfigError
from memcache.index import FaissIndex, VectorIndex
from memcache.schema import text_hash
from memcache.scope import normalize
from memcache.store import Store, StoredAnswer, StoredKey, utcnow
from memcache.types import CacheEntry, Candidate, EntryStats, Label, Scope

ANSWER_CACHE_SIZE = 10_000  # answers of recently served entries kept in memory (a hit then needs no store read)
GAP_WAIT_S = 30.0  # how long a missing change id is waited for before it counts as rolled back
log = logging.getLogger("memcache")
Batch = dict[str, tuple[list[int], list[np.ndarray]]]


class ExactForms:
    """(scope key, exact-form hash) -> the newest live key of that text in that scope.

    Two entries of one scope can hold the same query (an answer written again, differently):
    an exact repeat is served from the newest, and the older one takes over when the newest
    is deleted, as a rebuild from the store would have it.
    """

    def __init__(self) -> None:
        self._newest: dict[tuple[str, str], int] = {}
        self._older: dict[tuple[str, str], set[int]] = {}  # rare: the other live keys of a form

    def get(self, form: tuple[str, str]) -> int | None:
        return self._newest.get(form)

    def add(self, form: tuple[str, str], key_id: int) -> None:
        current = self._newest.setdefault(form, key_id)
        if current != key_id:
            self._newest[form] = max(current, key_id)
            self._older.setdefault(form, set()).add(min(current, key_id))

    def remove(self, form: tuple[str, str], key_id: int) -> None:
        older = self._older.get(form)
        if older is not None:
            older.discard(key_id)
        if self._newest.get(form) == key_id:
            if older:
                self._newest[form] = max(older)
                older.discard(self._newest[form])
            else:
                del self._newest[form]
        if older is not None and not older:
            del self._older[form]


class KeyRecord(NamedTuple):
    """One stored query as this process knows it."""

    entry_id: int
    scope_key: str
    text_hash: str  # of the query's exact-repeat form (`memcache.scope.normalize`)


@dataclass(frozen=True)
class Written:
    """What `Memory.add` stored: the entry, and the new key's id (None when the query was a key already)."""

    entry: CacheEntry
    key_id: int | None


def _batch_vector(batch: Batch, key: StoredKey) -> bool:
    """Queue a stored key's vector for its scope's next index add; False if it has none."""
    if key.embedding is None:
        return False
    ids, vectors = batch.setdefault(key.scope_key, ([], []))
    ids.append(key.key_id)
    vectors.append(key.embedding)
    return True


class Memory:
    """The in-process view of the store: lookups and write-backs go through it.

    Args:
        store: the source of truth.
        index: a vector index to fill; None builds a `FaissIndex` (a `TorchIndex` on CUDA).
        device: where a default index lives ("auto": CUDA when torch sees one).
        sync_interval: seconds between checks of the store's change sequence (None: never).
        snapshot: an index snapshot to start from instead of rebuilding.
        progress: a progress bar while a large index is rebuilt.
    """

    def __init__(
        self,
        store: Store,
        *,
        index: VectorIndex | None = None,
        device: str = "auto",
        sync_interval: float | None = 0.5,
        snapshot: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        self.store = store
        self.device = device
        self.sync_interval = sync_interval
        self.snapshot = Path(snapshot) if snapshot is not None else None
        self.progress = progress
        self._index = index
        self._lock = threading.RLock()
        self.loaded = False
        self._exact = ExactForms()
        self._keys: dict[int, KeyRecord] = {}
        self._scope_keys: Counter[str] = Counter()  # live keys per scope
        self._keys_of_entry: dict[int, tuple[int, ...]] = {}  # tuples: most entries have one key
        self.centroids = EntryCentroids()  # key-vector sums of entries with two keys or more
        self._entry_stats: dict[int, EntryStats] = {}  # entries checked at least once (the policy's only use)
        # entry id -> its stored answer, least recently served first; dropped when the entry
        # changes here or in another process (then within `sync_interval`)
        self._answers: OrderedDict[int, StoredAnswer] = OrderedDict()
        self._change_cursor = 0  # every change with an id <= this has been applied (or given up on)
        self._changes_applied: set[int] = set()  # applied ids above the cursor
        self._change_gaps: dict[int, float] = {}  # unseen ids below applied ones: when first noticed
        self._last_sync = 0.0
        self._drops = 0  # calls of drop_derived: a write registers its key only if none came between

    # -- start-up ---------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the derived state from the store (or a snapshot and what changed since), once."""
        if self.loaded:
            return
        with self._lock:
            if self.loaded:
                return
            expired = self.store.expired_entry_ids()
            if expired:
                self.store.delete_entries(expired)
            # changes after this point are replayed by sync(); applying one twice is harmless
            self._change_cursor = self.store.last_change_id()
            self._last_sync = time.monotonic()
            checks = self.store.entry_reliability()
            snapshot = self._open_snapshot()
            self._register_stored_keys(vectors=snapshot is None)
            if snapshot is not None:
                self._reconcile(snapshot)
            self._load_centroids()
            for entry_id, checked, failed in checks:
                keys_of = self._keys_of_entry.get(entry_id)
                if keys_of is not None:
                    self._entry_stats[entry_id] = EntryStats(entry_id, len(keys_of), checked, failed)
            self.loaded = True

    def _register_stored_keys(self, *, vectors: bool) -> None:
        """Register every stored key and (without a snapshot) index its vector."""
        keys = self.store.iter_keys(embeddings=vectors)
        if self.progress:
            from tqdm import tqdm

            total = self.store.counts()[1]
            keys = tqdm(keys, total=total, desc="rebuilding index", unit="key", disable=total < 10_000)
        batch: Batch = {}
        pending = 0
        for key in keys:
            self._register(key.key_id, KeyRecord(key.entry_id, key.scope_key, key.normalized_hash))
            pending += _batch_vector(batch, key)
            if (
                pending >= 1_000_000
            ):  # one add per scope where memory allows: an HNSW graph built in one pass ranks better
                self._add_vectors(batch)
                batch, pending = {}, 0
        self._add_vectors(batch)

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
            self.centroids.set_sum(entry_id, total, counts[entry_id])

    def _earlier_keys_sum(self, entry_id: int, new_key: int) -> tuple[np.ndarray, int] | None:
        """(sum, number) of an entry's key vectors other than `new_key`, read from the store."""
        others = [k for k in self._keys_of_entry.get(entry_id, ()) if k != new_key]
        vectors = [key.embedding for key in self.store.keys_by_id(others) if key.embedding is not None]
        return (np.sum(vectors, axis=0, dtype=np.float32), len(vectors)) if vectors else None

    @property
    def index(self) -> VectorIndex | None:
        """The vector index (None until something is indexed)."""
        return self._index

    # -- snapshots ----------------------------------------------------------------------------

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
                self.snapshot,
                index.dimension,
                width,
            )
            return None
        self._index = index
        return index

    def _reconcile(self, index: FaissIndex) -> None:
        """Make a loaded snapshot match the store: drop keys deleted since, and keys the snapshot
        files under another scope than the store does; add what is missing."""
        stored_scope = {key_id: key.scope_key for key_id, key in self._keys.items()}
        indexed = index.scopes()
        stale = {key_id for key_id, scope_key in indexed.items() if stored_scope.get(key_id) != scope_key}
        if stale - (indexed.keys() - stored_scope.keys()):
            log.warning("index snapshot %s files keys under other scopes than the store; re-adding them", self.snapshot)
        index.remove(stale)
        missing = sorted(stored_scope.keys() - (indexed.keys() - stale))
        for start in range(0, len(missing), 10_000):
            batch: Batch = {}
            for key in self.store.keys_by_id(missing[start : start + 10_000]):
                _batch_vector(batch, key)
            self._add_vectors(batch)

    def save_snapshot(self, path: str | Path | None = None) -> Path | None:
        """Write the index to `path` (default: the `snapshot` path); None when nothing is indexed."""
        target = Path(path) if path is not None else self.snapshot
        if target is None:
            raise ConfigError("no snapshot path: pass one, or construct MemCache(snapshot=...)")
        self.load()
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
        ones is waited for (it may still commit) and skipped after `GAP_WAIT_S` (a rolled-back write).
        """
        self.load()
        with self._lock:
            self._last_sync = time.monotonic()
            changes = [c for c in self.store.changes_since(self._change_cursor) if c.id not in self._changes_applied]
            new_keys = [c.key_id for c in changes if c.kind in ("key", "move") and c.key_id not in self._keys]
            stored = {key.key_id: key for key in self.store.keys_by_id(new_keys)}
            # entries checked elsewhere, and entries new here (checked before their key arrived?)
            checked = {c.entry_id for c in changes if c.kind == "check"}
            checked |= {key.entry_id for key in stored.values() if key.entry_id not in self._keys_of_entry}
            moved_to: set[int] = set()
            for change in changes:
                if change.kind == "drop":
                    self.drop_derived([change.entry_id], ())
                elif change.kind == "move" and change.key_id in self._keys:
                    self._move_key(change.key_id, change.entry_id)
                    moved_to.add(change.entry_id)
                elif change.key_id in stored:
                    key = stored[change.key_id]
                    self._add_key(
                        key.key_id, KeyRecord(key.entry_id, key.scope_key, key.normalized_hash), key.embedding
                    )
                self._changes_applied.add(change.id)
            self._recount(moved_to)
            for entry_id, checks, failures in self.store.entry_reliability(checked) if checked else ():
                self._set_checks(entry_id, checks, failures)
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
            elif following in self._change_gaps and now - self._change_gaps[following] > GAP_WAIT_S:
                del self._change_gaps[following]
            else:
                break
            self._change_cursor = following

    def sync_due(self) -> bool:
        return self.sync_interval is not None and time.monotonic() - self._last_sync >= self.sync_interval

    # -- the key registry and the index ---------------------------------------------------------

    def _add_vectors(self, batch: Batch) -> None:
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

    def _add_key(self, key_id: int, key: KeyRecord, vector: np.ndarray | None) -> None:
        """Index and register one stored key, written here or by another process (hold the lock).
        Once only: a sync may register a key between its writer's commit and the writer's own call."""
        if key_id in self._keys:
            return
        if vector is not None:
            self._index_for(len(vector)).add(key.scope_key, [key_id], vector[None, :])
        self._answers.pop(key.entry_id, None)  # a new key may have moved the entry's expiry
        self._register(key_id, key)
        n_keys = len(self._keys_of_entry[key.entry_id])
        if vector is not None:
            self.centroids.add_key(key.entry_id, vector, n_keys, lambda: self._earlier_keys_sum(key.entry_id, key_id))
        stats = self._entry_stats.get(key.entry_id)
        if stats is not None:
            self._entry_stats[key.entry_id] = replace(stats, n_keys=n_keys)

    def _register(self, key_id: int, key: KeyRecord) -> None:
        self._exact.add((key.scope_key, key.text_hash), key_id)
        if key_id not in self._keys:
            self._scope_keys[key.scope_key] += 1
        self._keys[key_id] = key
        keys_of = self._keys_of_entry.get(key.entry_id, ())
        if key_id not in keys_of:
            self._keys_of_entry[key.entry_id] = (*keys_of, key_id)

    def _move_key(self, key_id: int, entry_id: int) -> None:
        """Register a known key under another entry (hold the lock; `_recount` the entry after)."""
        key = self._keys[key_id]
        if key.entry_id == entry_id:
            return
        left = tuple(k for k in self._keys_of_entry.get(key.entry_id, ()) if k != key_id)
        if left:
            self._keys_of_entry[key.entry_id] = left
        else:
            self._keys_of_entry.pop(key.entry_id, None)
        self._register(key_id, key._replace(entry_id=entry_id))

    def _recount(self, entry_ids: Iterable[int]) -> None:
        """Sum again the key vectors of entries that gained keys by a merge (hold the lock)."""
        for entry_id in entry_ids:
            self._answers.pop(entry_id, None)  # its expiry may have moved
            self.centroids.drop(entry_id)
            n_keys = len(self._keys_of_entry.get(entry_id, ()))
            if n_keys > 1:
                known = self._earlier_keys_sum(entry_id, -1)
                if known is not None:
                    self.centroids.set_sum(entry_id, *known)
            stats = self._entry_stats.get(entry_id)
            if stats is not None:
                self._entry_stats[entry_id] = replace(stats, n_keys=n_keys)

    def entry_of(self, key_id: int) -> int | None:
        """The entry of a live key, or None."""
        key = self._keys.get(key_id)
        return None if key is None else key.entry_id

    def scope_size(self, scope_key: str) -> int:
        """How many live keys the scope has here: its stored questions."""
        return self._scope_keys.get(scope_key, 0)

    def key_count(self, entry_id: int) -> int:
        """How many live keys an entry has here (0: unknown or gone)."""
        return len(self._keys_of_entry.get(entry_id, ()))

    @property
    def entry_stats(self) -> Mapping[int, EntryStats]:
        """What the policy knows of the entries checked at least once."""
        return self._entry_stats

    @property
    def entries(self) -> int:
        """Entries this process knows of."""
        return len(self._keys_of_entry)

    def _set_checks(self, entry_id: int, checks: int, failures: int) -> None:
        """Take an entry's check counts as the store had them (hold the lock). Counts only grow,
        so the reading with more checks is the newer: this process's own label and another
        process's, read by a sync, may arrive in either order."""
        keys_of = self._keys_of_entry.get(entry_id)
        stats = self._entry_stats.get(entry_id)
        if keys_of is not None and (stats is None or checks > stats.checks):
            self._entry_stats[entry_id] = EntryStats(entry_id, len(keys_of), checks, failures)

    # -- finding answers ------------------------------------------------------------------------

    def exact_entry(self, scope_key: str, query: str) -> int | None:
        """The entry stored for the same text (up to whitespace) in this scope, or None."""
        key_id = self._exact.get((scope_key, text_hash(normalize(query))))
        key = None if key_id is None else self._keys.get(key_id)  # deleted meanwhile: a miss
        return None if key is None else key.entry_id

    def candidates(self, scope_key: str, vector: np.ndarray, k: int) -> list[Candidate]:
        """The `k` nearest live keys of the scope, with their entries' centroid measures."""
        if self._index is None:
            return []
        sims, ids = self._index.search(scope_key, vector[None, :], k)
        out = []
        for sim, key_id in zip(sims[0].tolist(), ids[0].tolist()):
            key = self._keys.get(key_id)
            if key is not None:
                out.append(Candidate(key_id, key.entry_id, sim))
        return self.centroids.annotate(out, vector)

    def answer(self, entry_id: int, scope_key: str) -> StoredAnswer | None:
        """The answer of an entry that exists, has not expired, and belongs to `scope_key`.

        Served from the in-memory answer cache when there; an expiry seen there is checked
        against the store before the entry is deleted (another process may have extended it).
        An entry of another scope is never served, whatever this process's maps say: the scope
        guard logs it and drops the entry from this process's derived state.
        """
        with self._lock:
            row = self._answers.get(entry_id)
            if row is not None:
                self._answers.move_to_end(entry_id)
        if row is None or _expired(row):
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
            self.drop_derived([entry_id], ())
            return None
        if _expired(row):
            self.delete([entry_id])
            return None
        return row

    # -- writing and deleting -------------------------------------------------------------------

    def add(
        self,
        scope: Scope,
        query: str,
        answer: str,
        vector: np.ndarray,
        *,
        source_model: str,
        payload: str | None = None,
        label: Label | None = None,
        expires_at: datetime | None = None,
        same_as: int | None = None,
    ) -> Written:
        """Write an answer (and its label) to the store, then index the query's key; the judged
        entry's check counts are taken as the store has them after the label. `same_as`: an
        entry judged to say the same as `answer`, which the key joins (see `MemCache.write_back`)."""
        exact_form = text_hash(normalize(query))
        drops = self._drops
        written = self.store.add_answer(
            scope=scope,
            query=query,
            normalized_hash=exact_form,
            embedding=vector,
            answer=answer,
            source_model=source_model,
            expires_at=expires_at,
            payload=payload,
            label=label,
            same_as=same_as,
        )
        with self._lock:
            if label is not None and written.checked is not None:
                self._set_checks(label.entry_id, *written.checked)
            self._answers.pop(written.entry_id, None)  # its expiry may have moved
            # an existing key is registered by whoever stored it; a new one only if its entry was
            # not deleted between the store's commit and here (the delete found no key to drop),
            # under the entry the store has it in now (a merge may have moved it meanwhile)
            entry_id = written.entry_id
            if written.new_key and self._drops != drops:
                now = self.store.keys_by_id([written.key_id])
                entry_id = now[0].entry_id if now else None
            if written.new_key and entry_id is not None:
                self._add_key(written.key_id, KeyRecord(entry_id, scope.key, exact_form), vector)
        entry = CacheEntry(
            id=written.entry_id,
            scope_key=scope.key,
            tenant=scope.tenant,
            answer=answer if written.answer is None else written.answer,
            source_model=source_model,
            created_at=utcnow(),
            last_hit_at=None,
            hit_count=0,
            verified=True,
            expires_at=expires_at,
            queries=(query,),
        )
        return Written(entry, written.key_id if written.new_key else None)

    def merge(self, keep: int, drop: int, scope_key: str) -> bool:
        """Make `drop` part of `keep` in the store and here (`Store.merge_entries`); False where
        the store found either gone, expired or of another scope, and nothing changed."""
        self.load()
        merged = self.store.merge_entries(keep, drop, scope_key)
        if merged is None:
            return False
        with self._lock:
            for key_id in merged.moved:
                if key_id in self._keys:  # else a sync registers it under `keep` from the store
                    self._move_key(key_id, keep)
            self._recount([keep])
        self.drop_derived([drop], merged.deleted)
        with self._lock:  # the checks added up in the store (more than here, unless the other had none)
            for entry_id, checks, failures in self.store.entry_reliability([keep]):
                self._set_checks(entry_id, checks, failures)
        return True

    def delete(self, entry_ids: Iterable[int]) -> int:
        """Delete entries and their keys from the store and from this process; returns how many existed."""
        entry_ids = list(entry_ids)
        self.load()
        deleted, key_ids = self.store.delete_entries(entry_ids)
        self.drop_derived(entry_ids, key_ids)
        return deleted

    def evict(self, keep: int) -> int:
        """Delete the least recently used entries (last hit, else creation) down to `keep`; returns how many."""
        excess = self.entries - keep
        return self.delete(self.store.least_recently_used(excess)) if excess > 0 else 0

    def drop_derived(self, entry_ids: Sequence[int], key_ids: Iterable[int]) -> None:
        """Forget entries in this process only (the store has already changed, or never had them).

        The keys dropped are `key_ids` and every key registered here for those entries: a key
        that another process added while the entry was being deleted is in one list only.
        """
        with self._lock:
            self._drops += 1
            key_ids = {*key_ids, *(k for e in entry_ids for k in self._keys_of_entry.get(e, ()))}
            if self._index is not None:
                self._index.remove(key_ids)
            for entry_id in entry_ids:
                self._keys_of_entry.pop(entry_id, None)
                self.centroids.drop(entry_id)
                self._entry_stats.pop(entry_id, None)
                self._answers.pop(entry_id, None)
            for key_id in key_ids:
                key = self._keys.pop(key_id, None)
                if key is not None:
                    self._exact.remove((key.scope_key, key.text_hash), key_id)
                    self._scope_keys[key.scope_key] -= 1
                    if not self._scope_keys[key.scope_key]:
                        del self._scope_keys[key.scope_key]


def _expired(row: StoredAnswer) -> bool:
    return row.expires_at is not None and row.expires_at <= utcnow()
