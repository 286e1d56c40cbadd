"""A sentence-transformers model run by ONNX Runtime (the default CPU encoder) or OpenVINO.

Why: the single-query encode is the floor of every semantic lookup, and ONNX Runtime runs
all-MiniLM-L6-v2 several times faster than PyTorch on a CPU, with the same vectors
(docs/BENCHMARKS.md). The route: export the model's transformer once with
`torch.onnx.export` into a per-user cache directory, then run it with `onnxruntime` and the
model's own `tokenizer.json`, pooling and normalizing in NumPy. sentence-transformers' own
ONNX backend needs optimum, which does not install beside the sentence-transformers and
transformers releases this project uses. After the export, encoding imports neither torch
nor sentence-transformers.

The export is written to a temporary file and renamed into place, so processes starting at
once each see either no file or a whole one; a damaged file is exported again.
OpenVINO (`OpenVinoEncoder`) runs the same export, on request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memcache.errors import ConfigError, EmbeddingError

log = logging.getLogger("memcache")

EXPORT_VERSION = 1  # part of the cache key: a change to the export's graph re-exports
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CACHE_ENV = "MEMCACHE_CACHE_DIR"
THREADS_ENV = "MEMCACHE_EMBEDDING_THREADS"


def session_threads() -> int | None:
    """Threads of the encoder's main session: $MEMCACHE_EMBEDDING_THREADS, else the runtime's
    default (every physical core). Processes sharing a machine (`memcache serve --workers N`)
    each take their share, or their spinning threads fight over the cores."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{THREADS_ENV} must be a whole number of threads, at least 1 (got {value!r})")
    return int(value)


def cache_root() -> Path:
    """Where exports live: $MEMCACHE_CACHE_DIR, else $XDG_CACHE_HOME/memcache, else ~/.cache/memcache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "memcache"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class UnsupportedModel(EmbeddingError):
    """The model is not one the export can run (the embedder keeps it on torch, quietly)."""


class ModelLayout:
    """What the ONNX path needs to know about a local sentence-transformers model folder.

    Only plain transformer + pooling (mean or CLS) + normalize models qualify; anything else
    (a dense layer, max pooling, a model that is not a local folder) stays on torch.
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        config = _read_json(self.folder / "sentence_bert_config.json")
        pooling = _read_json(self.folder / "1_Pooling" / "config.json")
        modules = _read_json(self.folder / "modules.json") or []  # {} when missing or unreadable
        kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules] if isinstance(modules, list) else []
        self.max_length = int(config.get("max_seq_length") or 512)
        self.dimension = int(pooling.get("word_embedding_dimension") or 0)
        self.mean = bool(pooling.get("pooling_mode_mean_tokens"))
        cls = bool(pooling.get("pooling_mode_cls_token"))
        others = any(pooling.get(k) for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens"))
        self.why_not = None
        if not (self.folder / "tokenizer.json").exists() or not (self.folder / "config.json").exists():
            self.why_not = "not a local model folder with tokenizer.json"
        elif kinds[:2] != ["Transformer", "Pooling"] or not set(kinds[2:]) <= {"Normalize"}:
            self.why_not = f"modules {kinds} are not transformer + pooling (+ normalize)"
        elif self.mean == cls or others or not self.dimension:
            self.why_not = "pooling is not plain mean or CLS"

    def cache_key(self) -> str:
        """Changes when the weights or the export change: the folder, the weights' size and time."""
        weights = sorted(self.folder.glob("*.safetensors")) + sorted(self.folder.glob("pytorch_model.bin"))
        parts = [str(self.folder.resolve()), str(EXPORT_VERSION)]
        parts += [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def export(layout: ModelLayout, target: Path) -> None:
    """Export the transformer to `target` through a temporary file and an atomic rename."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    print(f"memcache: preparing the ONNX encoder once in {target.parent} (a few seconds)", file=sys.stderr)
    transformers_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(layout.folder)).eval()

    class HiddenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    sample = torch.ones((2, 8), dtype=torch.long)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(handle)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                HiddenStates(),
                (sample, sample, torch.zeros_like(sample)),
                temporary,
                input_names=list(INPUTS),
                output_names=["hidden"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "hidden")},
                opset_version=17,
                dynamo=False,
            )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _parses(path: Path) -> bool:
    """Whether `path` holds a whole, well-formed ONNX model (a truncated or garbled file does not)."""
    try:
        import onnx

        onnx.checker.check_model(onnx.load(str(path), load_external_data=False))
        return True
    except Exception:
        return False


class OnnxEncoder:
    """Encodes texts with an exported model run by ONNX Runtime; thread-safe (its sessions are).

    The runtime is the one part a subclass replaces (`_import_runtime`, `_load`, `_hidden`): the
    export, the tokenizer, the passes and the pooling are shared.

    Calls from several threads run side by side (`concurrent_calls`): a call that starts while
    another is running uses a second session of one thread, so concurrent callers each get a
    core instead of sharing one session's threads. For one question at a time that beats
    batching them: on two cores two one-thread runs in parallel encode about a quarter more
    questions per second than one two-thread run of both (docs/DECISIONS.md). A lone call keeps
    the session that uses every core, the fastest for one question.
    """

    backend = "onnx"
    concurrent_calls = True  # callers encode in their own threads rather than queue for a batch

    def __init__(self, model_folder: str, cache_dir: Path | None = None, pass_size: int = 16) -> None:
        from tokenizers import Tokenizer

        self._runtime = self._import_runtime()  # ImportError before any export work
        self.layout = ModelLayout(model_folder)
        if self.layout.why_not:
            raise UnsupportedModel(f"the {self.backend} backend cannot run {model_folder!r}: {self.layout.why_not}")
        self.path = (cache_dir or cache_root()) / "onnx" / f"{self.layout.cache_key()}.onnx"
        self.dimension = self.layout.dimension
        self.pass_size = pass_size
        self.threads = session_threads()  # a bad setting fails here, not as a damaged export
        tokenizer = Tokenizer.from_file(str(self.layout.folder / "tokenizer.json"))
        tokenizer.enable_truncation(self.layout.max_length)
        tokenizer.enable_padding()
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()  # padding/truncation settings are shared state
        self._inputs: set[str] = set()
        self._running = 0  # calls in flight, to send a concurrent one to the one-thread session
        self._running_lock = threading.Lock()
        self._side_lock = threading.Lock()
        self._open()

    @staticmethod
    def _import_runtime() -> Any:
        import onnxruntime

        return onnxruntime

    def _open(self) -> None:
        """Load the export, exporting it first if it is missing, and once more if it is damaged.

        A file that parses as an ONNX model is not damaged: if the runtime cannot load it, the
        runtime is at fault, and the file (shared with other processes and backends) is kept.
        """
        for attempt in (1, 2):
            if not self.path.exists():
                try:
                    export(self.layout, self.path)
                except Exception as exc:  # torch, transformers or onnx missing or failing
                    raise EmbeddingError(f"could not export {self.layout.folder} to ONNX: {exc}") from exc
            try:
                self._load()
                return
            except Exception as exc:
                if attempt == 2 or _parses(self.path):
                    raise EmbeddingError(f"{self.backend} could not load the ONNX export {self.path}: {exc}") from exc
                log.warning("the ONNX export %s could not be loaded (%s); exporting it again", self.path, exc)
                self.path.unlink(missing_ok=True)

    def _load(self) -> None:
        self._session = self._new_session(threads=self.threads)
        self._side_session = None  # made by the first call that runs beside another (`_side`)
        self._inputs = {i.name for i in self._session.get_inputs()}

    def _side(self) -> Any:
        """The one-thread session, made once, when calls first overlap: a process that never
        encodes from two threads at once (the command line) neither waits for it nor holds it."""
        with self._side_lock:
            if self._side_session is None:
                self._side_session = self._new_session(threads=1)
            return self._side_session

    def _new_session(self, threads: int | None) -> Any:
        options = self._runtime.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        return self._runtime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _hidden(self, feeds: dict[str, np.ndarray], alongside: bool = False) -> np.ndarray:
        """The transformer's last hidden states (batch, tokens, width) for one pass; `alongside`:
        other calls are running, so this one takes the one-thread session."""
        return (self._side() if alongside else self._session).run(None, feeds)[0]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of `texts`, in order. Texts run in passes of `pass_size`, sorted by length,
        so short questions are not padded to the longest one in a large call."""
        with self._tokenizer_lock:
            encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lengths = np.array([sum(e.attention_mask) for e in encodings])
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        with self._running_lock:
            alongside = self._running > 0
            self._running += 1
        try:
            for lo in range(0, len(order), self.pass_size):
                chosen = order[lo : lo + self.pass_size]
                out[chosen] = self._encode_pass([encodings[i] for i in chosen], int(lengths[chosen].max()), alongside)
        finally:
            with self._running_lock:
                self._running -= 1
        return out

    def _encode_pass(self, encodings: list, length: int, alongside: bool = False) -> np.ndarray:
        ids = np.array([e.ids[:length] for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask[:length] for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._hidden({k: v for k, v in feeds.items() if k in self._inputs}, alongside)
        if self.layout.mean:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        else:
            pooled = hidden[:, 0]
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.ascontiguousarray(pooled / np.clip(norms, 1e-12, None), dtype=np.float32)


class OpenVinoEncoder(OnnxEncoder):
    """The same export run by OpenVINO's CPU runtime (`backend="openvino"`, the `[openvino]` extra).

    Why offer it: OpenVINO is tuned for Intel CPUs, where it may beat ONNX Runtime; on this
    project's AMD machine it was slower (docs/EVAL.md), so it is a choice, not the default.
    Inference precision is pinned to float32: on CPUs with bf16 units OpenVINO would otherwise
    compute in bf16, and the vectors would drift from every other backend's. An infer request
    is not thread-safe, so each thread gets its own.
    """

    backend = "openvino"
    concurrent_calls = False  # one latency-tuned stream: concurrent callers are batched by the embedder

    @staticmethod
    def _import_runtime() -> Any:
        import openvino

        return openvino

    def _load(self) -> None:
        core = self._runtime.Core()
        settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads is not None:
            settings["INFERENCE_NUM_THREADS"] = self.threads
        self._compiled = core.compile_model(core.read_model(str(self.path)), "CPU", settings)
        self._inputs = {port.get_any_name() for port in self._compiled.inputs}
        self._requests = threading.local()

    def _hidden(self, feeds: dict[str, np.ndarray], alongside: bool = False) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        return np.asarray(request.infer(feeds)[0])
