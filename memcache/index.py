"""Vector search with ids, partitioned by scope so a search only ever ranks its own scope.

Scores are cosine similarity (inner product of unit vectors; higher = closer). Each scope
gets its own FAISS partition: exact (flat) while small, HNSW once it passes
`approximate_after` vectors. Removal is immediate for flat partitions; HNSW partitions keep
a tombstone set, over-fetch past it, and are rebuilt once tombstones pass a quarter. A rebuild
caused by one more key (or one more delete) runs on a background thread while the old graph
keeps serving, then catches up with what changed meanwhile and takes its place: building 50k
keys takes seconds, which no write-back or lookup should wait for.

`save` / `FaissIndex.load` write and read a snapshot (one file, replaced atomically), so a
restart at millions of keys loads the built graphs instead of rebuilding them from the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from memcache.errors import ConfigError, InvalidRequestError, SnapshotError

SNAPSHOT_MAGIC = b"MEMCACHE-INDEX-1\n"
BULK = 10_000  # an add this large is a bulk load: built at once, on every core


class VectorIndex(Protocol):
    """Search, add and remove vectors by integer id, inside a scope."""

    def add(self, scope_key: str, ids: Sequence[int], vectors: np.ndarray) -> None: ...

    def remove(self, ids: Iterable[int]) -> None: ...

    def search(self, scope_key: str, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class _Partition:
    index: object
    approximate: bool = False
    ids: set[int] = field(default_factory=set)
    tombstones: set[int] = field(default_factory=set)
    builder: threading.Thread | None = None  # a replacement being built in the background

    @property
    def live(self) -> int:
        return len(self.ids)


def _faiss():
    import faiss

    return faiss


class _SharedLock:
    """Many searches at once, or one change (add, remove, swap) alone. Lookups go first: a
    change waits until no search runs, and a plain `shared()` search never waits for a change
    that is waiting (one with `yield_to_changes=True` does, see below).

    Why: FAISS indexes may be searched from several threads at once (the search releases the
    GIL) but not changed while searched. With one plain lock, a batch search (the hindsight
    relabel asks thousands of queries again) held every lookup for its whole length, up to
    seconds (docs/DECISIONS.md; `memcache.eval.relabel_bench`).
    Changes come from write-backs, after a paid model call. `FaissIndex.search` of several
    vectors (the relabel's pieces, see `memcache.hindsight`) takes the lock with
    `yield_to_changes=True`, so a waiting change gets in between two pieces instead of waiting
    for the whole window (reacquiring at once would otherwise win every race against the
    woken change). Not reentrant.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._changes_waiting = 0

    @contextlib.contextmanager
    def shared(self, *, yield_to_changes: bool = False):
        with self._cond:
            while self._writing or (yield_to_changes and self._changes_waiting):
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._changes_waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._changes_waiting -= 1
                if not self._changes_waiting:  # searches that yield to changes may go on,
                    self._cond.notify_all()  # also when this wait was interrupted
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class FaissIndex:
    """FAISS inner-product partitions, one per scope key.

    Args:
        dimension: vector width.
        approximate_after: a partition switches from exact flat search to HNSW past this size.
        hnsw_m / ef_search / ef_construction: HNSW graph parameters. The defaults (16 / 256 /
            100) were chosen by measurement on a million keys: a graph grown as the index grows
            it still finds the true nearest key almost always at efSearch 256, not at 128, and
            builds in half the time of M 32 / efConstruction 200 (docs/DECISIONS.md).
        omp_threads: FAISS OpenMP threads (process-wide), or None to leave them alone. One
            thread is the default because lookups search one query at a time, and FAISS's
            spinning OpenMP pool otherwise fights torch's for the cores (on two cores an
            encode and a search took nearly twice as long with two threads; docs/DECISIONS.md).
    """

    def __init__(
        self,
        dimension: int,
        *,
        approximate_after: int = 50_000,
        hnsw_m: int = 16,
        ef_search: int = 256,
        ef_construction: int = 100,
        omp_threads: int | None = 1,
    ) -> None:
        if dimension < 1:
            raise ConfigError("dimension must be >= 1")
        if approximate_after < 1:
            raise ConfigError("approximate_after must be >= 1")
        self.dimension = dimension
        self.approximate_after = approximate_after
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.ef_construction = ef_construction
        self.omp_threads = omp_threads
        if omp_threads is not None:
            _faiss().omp_set_num_threads(omp_threads)
        self._partitions: dict[str, _Partition] = {}
        self._scope_of: dict[int, str] = {}
        self._lock = _SharedLock()

    def __len__(self) -> int:
        return len(self._scope_of)

    def _new_flat(self):
        faiss = _faiss()
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))

    def _new_hnsw(self):
        faiss = _faiss()
        hnsw = faiss.IndexHNSWFlat(self.dimension, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = self.ef_search
        hnsw.hnsw.efConstruction = self.ef_construction
        return faiss.IndexIDMap2(hnsw)

    def add(self, scope_key: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        ids_arr = np.asarray(ids, dtype=np.int64)
        if len(ids_arr) != len(vectors):
            raise InvalidRequestError(f"{len(ids_arr)} ids for {len(vectors)} vectors: pass one id per vector")
        with self._lock.exclusive():
            fresh = [i for i, key_id in enumerate(ids_arr.tolist()) if key_id not in self._scope_of]
            if not fresh:  # no empty partition: a search of one would ask FAISS for 0 neighbours
                return
            part = self._partitions.get(scope_key)
            if part is None:
                part = self._partitions[scope_key] = _Partition(self._new_flat())
            ids_arr, vectors = ids_arr[fresh], vectors[fresh]
            with self._all_cores(len(ids_arr)):
                part.index.add_with_ids(vectors, ids_arr)
            for key_id in ids_arr.tolist():
                part.ids.add(key_id)
                self._scope_of[key_id] = scope_key
            if not part.approximate and part.live > self.approximate_after:
                if len(ids_arr) >= BULK:  # start-up, import: build now, in one pass
                    self._rebuild(part, approximate=True)
                else:
                    self._rebuild_in_background(scope_key, part, approximate=True)

    def remove(self, ids: Iterable[int]) -> None:
        with self._lock.exclusive():
            touched: set[str] = set()
            for key_id in ids:
                scope_key = self._scope_of.pop(int(key_id), None)
                if scope_key is None:
                    continue
                part = self._partitions[scope_key]
                part.ids.discard(int(key_id))
                if part.approximate:
                    part.tombstones.add(int(key_id))
                else:
                    part.index.remove_ids(np.asarray([key_id], dtype=np.int64))
                touched.add(scope_key)
            for scope_key in touched:
                part = self._partitions[scope_key]
                if part.live == 0:
                    del self._partitions[scope_key]
                elif part.approximate and len(part.tombstones) > part.live / 4:
                    self._rebuild_in_background(scope_key, part, approximate=part.live > self.approximate_after)

    def _rebuild_in_background(self, scope_key: str, part: _Partition, *, approximate: bool) -> None:
        if part.builder is None:  # hold the lock, exclusive
            part.builder = threading.Thread(
                target=self._build, args=(scope_key, part, approximate), name="memcache-index-build", daemon=True
            )
            part.builder.start()

    def _build(self, scope_key: str, part: _Partition, approximate: bool) -> None:
        with self._lock.shared():
            ids, vectors = self._live_vectors(part)
        index = self._filled_index(ids, vectors, approximate=approximate)
        with self._lock.exclusive():
            part.builder = None
            if self._partitions.get(scope_key) is not part:
                return  # the scope was emptied meanwhile
            built = set(ids.tolist())
            added = np.asarray([key_id for key_id in part.ids if key_id not in built], dtype=np.int64)
            if len(added):
                index.add_with_ids(part.index.reconstruct_batch(added), added)
            part.index, part.approximate = index, approximate
            part.tombstones = built - part.ids  # removed while the graph was being built
            if not approximate and part.tombstones:
                part.index.remove_ids(np.fromiter(part.tombstones, dtype=np.int64))
                part.tombstones = set()

    def wait_for_builds(self, timeout: float | None = None) -> None:
        """Block until background rebuilds have finished (for tests, benchmarks, snapshots)."""
        while True:
            with self._lock.shared():
                builders = [p.builder for p in self._partitions.values() if p.builder is not None]
            if not builders:
                return
            for builder in builders:
                builder.join(timeout)
            if timeout is not None:
                return

    def _rebuild(self, part: _Partition, *, approximate: bool) -> None:
        """Replace a partition's index now, under the exclusive lock (bulk loads)."""
        part.index = self._filled_index(*self._live_vectors(part), approximate=approximate)
        part.approximate = approximate
        part.tombstones.clear()

    def _live_vectors(self, part: _Partition) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of a partition's live keys, read back from its index (hold the lock)."""
        ids = np.fromiter(part.ids, dtype=np.int64, count=len(part.ids))
        vectors = part.index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dimension), np.float32)
        return ids, vectors

    def _filled_index(self, ids: np.ndarray, vectors: np.ndarray, *, approximate: bool):
        """A new HNSW or flat index holding `vectors` under `ids`."""
        index = self._new_hnsw() if approximate else self._new_flat()
        if len(ids):
            with self._all_cores(len(ids)):
                index.add_with_ids(vectors, ids)
        return index

    @contextlib.contextmanager
    def _all_cores(self, count: int):
        """Bulk graph builds (restarts, HNSW switch-overs) use every core, then lookups go back
        to `omp_threads`: a 1M-key HNSW build takes half the time on 2 cores."""
        if self.omp_threads is None or count < BULK:
            yield
            return
        faiss = _faiss()
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(self.omp_threads)

    def search(self, scope_key: str, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (similarities, ids), each (n, k); missing neighbours have id -1, similarity -inf.

        A search of several vectors at once is background work (a lookup asks one): it lets a
        change that is waiting go first, where a one-vector search never waits for one.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        n = len(vectors)
        with self._lock.shared(yield_to_changes=n > 1):
            part = self._partitions.get(scope_key)
            fetch = 0 if part is None else min(k + len(part.tombstones), part.index.ntotal)
            if fetch < 1:
                return np.full((n, max(k, 0)), -np.inf, np.float32), np.full((n, max(k, 0)), -1, np.int64)
            sims, ids = part.index.search(vectors, fetch)
            tombstones = part.tombstones
        if tombstones:
            keep = ~np.isin(ids, list(tombstones))
            out_s = np.full((n, k), -np.inf, np.float32)
            out_i = np.full((n, k), -1, np.int64)
            for row in range(n):
                s, i = sims[row][keep[row]][:k], ids[row][keep[row]][:k]
                out_s[row, : len(s)], out_i[row, : len(i)] = s, i
            return out_s, out_i
        if fetch < k:
            sims = np.pad(sims, ((0, 0), (0, k - fetch)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, k - fetch)), constant_values=-1)
        sims[ids < 0] = -np.inf
        return sims, ids

    def scope_sizes(self) -> dict[str, int]:
        with self._lock.shared():
            return {key: part.live for key, part in self._partitions.items()}

    def ids(self) -> set[int]:
        """Every live id."""
        with self._lock.shared():
            return set(self._scope_of)

    def scopes(self) -> dict[int, str]:
        """Every live id and the scope it is filed under."""
        with self._lock.shared():
            return dict(self._scope_of)

    def save(self, path: str | os.PathLike, meta: dict | None = None) -> None:
        """Write every partition to `path` (written beside it, then renamed over it: a crash
        leaves the old snapshot or the new one). `meta` is stored with it, for the caller."""
        faiss = _faiss()
        with self._lock.shared():
            parts = list(self._partitions.items())
            blobs = [faiss.serialize_index(part.index) for _, part in parts]
            manifest = {
                "dimension": self.dimension,
                "meta": meta or {},
                "partitions": [
                    {
                        "scope_key": key,
                        "approximate": part.approximate,
                        "tombstones": sorted(part.tombstones),
                        "bytes": int(blob.nbytes),
                    }
                    for (key, part), blob in zip(parts, blobs)
                ],
            }
        header = json.dumps(manifest).encode("utf-8")
        tmp = f"{os.fspath(path)}.tmp-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "wb") as handle:
            handle.write(SNAPSHOT_MAGIC + struct.pack("<Q", len(header)) + header)
            for blob in blobs:
                handle.write(memoryview(blob))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @staticmethod
    def read_meta(path: str | os.PathLike) -> dict:
        """The `meta` a snapshot was saved with, without loading its partitions."""
        with open(path, "rb") as handle:
            return _read_manifest(handle).get("meta", {})

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> FaissIndex:
        """Rebuild a FaissIndex from `save`'s file; keyword arguments as for the constructor.

        Raises:
            ValueError: the file is not a snapshot, or is truncated.
        """
        faiss = _faiss()
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            manifest = _read_manifest(handle)
            dimension = manifest.get("dimension")
            if not isinstance(dimension, int) or not 0 < dimension <= 65_536:
                raise SnapshotError(f"{path}: bad dimension {dimension!r}")
            index = cls(dimension, **kwargs)
            for spec in manifest.get("partitions", []):
                index._load_partition(faiss, handle, spec, size - handle.tell(), path)
        return index

    def _load_partition(self, faiss, handle, spec: dict, left: int, path) -> None:
        """Read one partition of a snapshot; anything that does not add up is a ValueError."""
        length, approximate = spec.get("bytes"), spec.get("approximate")
        if not isinstance(length, int) or not 0 < length <= left or not isinstance(approximate, bool):
            raise SnapshotError(f"{path} is truncated or damaged (a partition of {length!r} bytes, {left} left)")
        blob = np.frombuffer(handle.read(length), dtype=np.uint8)
        inner = faiss.deserialize_index(blob)
        if not isinstance(inner, faiss.IndexIDMap2) or inner.d != self.dimension:
            raise SnapshotError(f"{path} is damaged (a partition is not a {self.dimension}-wide id map)")
        graph = faiss.downcast_index(inner.index)
        if approximate != isinstance(graph, faiss.IndexHNSWFlat):
            raise SnapshotError(f"{path} is damaged (a partition's kind does not match its manifest)")
        part = _Partition(inner, approximate=approximate)
        if approximate:
            graph.hnsw.efSearch = self.ef_search
        part.tombstones = {int(t) for t in spec.get("tombstones", [])}
        part.ids = set(faiss.vector_to_array(inner.id_map).tolist()) - part.tombstones
        scope_key = spec.get("scope_key")
        if not isinstance(scope_key, str) or scope_key in self._partitions or part.ids & self._scope_of.keys():
            raise SnapshotError(f"{path} is damaged (a scope or an id appears twice)")
        if part.ids:
            self._partitions[scope_key] = part
            for key_id in part.ids:
                self._scope_of[key_id] = scope_key


def _read_manifest(handle) -> dict:
    if handle.read(len(SNAPSHOT_MAGIC)) != SNAPSHOT_MAGIC:
        raise SnapshotError("not a memcache index snapshot")
    raw = handle.read(8)
    if len(raw) != 8:
        raise SnapshotError("the snapshot is truncated")
    (length,) = struct.unpack("<Q", raw)
    if length > 1 << 30:
        raise SnapshotError("the snapshot's header is damaged")
    manifest = json.loads(handle.read(length).decode("utf-8"))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("meta", {}), dict):
        raise SnapshotError("the snapshot's header is damaged")
    return manifest
