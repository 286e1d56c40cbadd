"""Exact vector search on a GPU: one matrix per scope in device memory, one matrix product per search.

`MemCache` uses it instead of `FaissIndex` when its device resolves to CUDA. Exact, so
recall@1 is 1.0 at any size; a million 384-dim keys take 1.5 GB of GPU memory. With a GPU
build of faiss installed (`faiss.knn_gpu` present) the product and top-k run in faiss's
brute-force kernel on the same tensors; otherwise in torch (matmul + topk). Same interface
as FaissIndex: search only ranks keys of its own scope.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from memcache.errors import ConfigError, InvalidRequestError


@dataclass
class _Matrix:
    vectors: object  # torch tensor (capacity, dimension) on the device
    ids: np.ndarray  # row -> key id, first `size` rows live
    size: int = 0
    rows: dict[int, int] = field(default_factory=dict)  # key id -> row


def faiss_gpu_knn():
    """`faiss.knn_gpu` wired for torch tensors when the installed faiss has GPUs, else None."""
    try:
        import faiss

        if not hasattr(faiss, "knn_gpu") or faiss.get_num_gpus() < 1:
            return None
        import faiss.contrib.torch_utils  # noqa: F401 - lets faiss functions take torch tensors

        resources = faiss.StandardGpuResources()
        return lambda queries, keys, k: faiss.knn_gpu(resources, queries, keys, k, metric=faiss.METRIC_INNER_PRODUCT)
    except ImportError:
        return None


class TorchIndex:
    """Exact inner-product search with one torch matrix per scope key.

    Args:
        dimension: vector width.
        device: torch device, e.g. "cuda", "cuda:1" (or "cpu", for tests).
        use_faiss: use `faiss.knn_gpu` when the installed faiss has GPU support.
    """

    def __init__(self, dimension: int, *, device: str = "cuda", use_faiss: bool = True) -> None:
        import torch

        if dimension < 1:
            raise ConfigError("dimension must be >= 1")
        self._torch = torch
        self.dimension = dimension
        self.device = torch.device(device)
        self._knn = faiss_gpu_knn() if use_faiss and self.device.type == "cuda" else None
        self._scopes: dict[str, _Matrix] = {}
        self._scope_of: dict[int, str] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._scope_of)

    def add(self, scope_key: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        ids_list = [int(i) for i in ids]
        if len(ids_list) != len(vectors):
            raise InvalidRequestError(f"{len(ids_list)} ids for {len(vectors)} vectors: pass one id per vector")
        with self._lock:
            fresh = [i for i, key_id in enumerate(ids_list) if key_id not in self._scope_of]
            if not fresh:
                return
            part = self._scopes.get(scope_key)
            if part is None:
                part = self._scopes[scope_key] = self._new_matrix(len(fresh))
            self._reserve(part, part.size + len(fresh))
            rows = slice(part.size, part.size + len(fresh))
            part.vectors[rows] = self._torch.from_numpy(vectors[fresh]).to(self.device)
            for offset, i in enumerate(fresh):
                key_id = ids_list[i]
                part.ids[part.size + offset] = key_id
                part.rows[key_id] = part.size + offset
                self._scope_of[key_id] = scope_key
            part.size += len(fresh)

    def _new_matrix(self, capacity: int) -> _Matrix:
        capacity = max(1024, capacity)
        vectors = self._torch.empty((capacity, self.dimension), dtype=self._torch.float32, device=self.device)
        return _Matrix(vectors, np.full(capacity, -1, dtype=np.int64))

    def _reserve(self, part: _Matrix, needed: int) -> None:
        capacity = len(part.ids)
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        grown = self._torch.empty((capacity, self.dimension), dtype=self._torch.float32, device=self.device)
        grown[: part.size] = part.vectors[: part.size]
        part.vectors = grown
        part.ids = np.concatenate([part.ids, np.full(capacity - len(part.ids), -1, dtype=np.int64)])

    def remove(self, ids: Iterable[int]) -> None:
        """Remove by moving each scope's last row into the hole: O(1) per id, no rebuild."""
        with self._lock:
            for key_id in ids:
                scope_key = self._scope_of.pop(int(key_id), None)
                if scope_key is None:
                    continue
                part = self._scopes[scope_key]
                row, last = part.rows.pop(int(key_id)), part.size - 1
                if row != last:
                    moved = int(part.ids[last])
                    part.vectors[row] = part.vectors[last]
                    part.ids[row] = moved
                    part.rows[moved] = row
                part.ids[last] = -1
                part.size -= 1
                if part.size == 0:
                    del self._scopes[scope_key]

    def search(self, scope_key: str, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (similarities, ids), each (n, k); missing neighbours have id -1, similarity -inf."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        n = len(vectors)
        out_s = np.full((n, max(k, 0)), -np.inf, np.float32)
        out_i = np.full((n, max(k, 0)), -1, np.int64)
        with self._lock:
            part = self._scopes.get(scope_key)
            if part is None or k < 1:
                return out_s, out_i
            fetch = min(k, part.size)
            queries = self._torch.from_numpy(vectors).to(self.device)
            keys = part.vectors[: part.size]
            if self._knn is not None:
                sims, rows = self._knn(queries, keys, fetch)
            else:
                sims, rows = self._torch.topk(queries @ keys.T, fetch, dim=1)
            sims, rows = sims.cpu().numpy(), rows.cpu().numpy()
            out_s[:, :fetch], out_i[:, :fetch] = sims, part.ids[rows]
        return out_s, out_i

    def ids(self) -> set[int]:
        with self._lock:
            return set(self._scope_of)

    def scope_sizes(self) -> dict[str, int]:
        with self._lock:
            return {key: part.size for key, part in self._scopes.items()}
