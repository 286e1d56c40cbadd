"""The ONNX Runtime encoder: torch's vectors, an export cache that survives races and damage,
and a fallback to torch that says why; OpenVINO running the same export."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from memcache import ConfigError, EmbeddingError, MemCache, SentenceTransformerEmbedder
from memcache.embedding import TorchEncoder, _build_encoder, default_model_path
from memcache.eval import backends
from memcache.onnx_encoder import ModelLayout, OnnxEncoder, OpenVinoEncoder, cache_root

QUESTIONS = [
    "how do I reset my password",
    "What's the weather like in Paris tomorrow?",
    "transfer $200 from checking to savings",
    "can you tell me a joke",
    "i need to book a flight to boston next friday, preferably in the morning " * 3,
]
CHILD = """
import json, sys
from memcache.onnx_encoder import OnnxEncoder
from memcache.embedding import default_model_path
encoder = OnnxEncoder(default_model_path(), cache_dir=__import__("pathlib").Path(sys.argv[1]))
print(json.dumps(encoder.encode(["how do I reset my password"])[0][:4].tolist()))
"""


def test_default_cpu_backend_is_onnx_and_matches_torch(embedder, data_dir):
    assert embedder.backend_in_use == "onnx"
    rows = [json.loads(line)["text"] for line in (data_dir / "clinc150.jsonl").open()][:200] + QUESTIONS
    torch_vectors = TorchEncoder(default_model_path(), "cpu", 16).encode(rows)
    onnx_vectors = embedder.encode_batch(rows)
    assert onnx_vectors.dtype == np.float32 and onnx_vectors.shape == torch_vectors.shape == (len(rows), 384)
    assert (onnx_vectors * torch_vectors).sum(axis=1).min() > 0.99999
    one_by_one = np.vstack([embedder.encode_batch([text]) for text in QUESTIONS])  # padding changes nothing
    assert np.allclose(one_by_one, onnx_vectors[-len(QUESTIONS) :], atol=1e-5)


def test_processes_starting_at_once_share_one_export(tmp_path):
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err.decode()[-1500:] for _, err in outputs]
    first, second = (json.loads(out) for out, _ in outputs)
    assert first == pytest.approx(second, abs=1e-6)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [f"{ModelLayout(default_model_path()).cache_key()}.onnx"]
    assert "preparing the ONNX encoder once" in outputs[0][1].decode() + outputs[1][1].decode()


@pytest.mark.parametrize("runner", [OnnxEncoder, OpenVinoEncoder])
def test_the_threads_setting_sizes_the_main_session_and_a_bad_one_is_refused(runner, embedder, monkeypatch):
    if runner is OpenVinoEncoder:
        pytest.importorskip("openvino")
    monkeypatch.setenv("MEMCACHE_EMBEDDING_THREADS", "1")
    encoder = runner(default_model_path())  # the session's shared export
    if runner is OnnxEncoder:
        assert encoder._session.get_session_options().intra_op_num_threads == 1
    else:
        assert int(encoder._compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert np.allclose(encoder.encode(QUESTIONS[:2]), embedder.embed(QUESTIONS[:2]), atol=1e-5)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("MEMCACHE_EMBEDDING_THREADS", bad)
        with pytest.raises(ConfigError, match="MEMCACHE_EMBEDDING_THREADS must be a whole number"):
            runner(default_model_path())


def test_only_overlapping_calls_make_the_one_thread_session(embedder):
    encoder = OnnxEncoder(default_model_path())  # the shared export, a fresh pair of sessions
    for text in ("one", "after", "another"):
        encoder.encode([text])
    assert encoder._side_session is None  # a lone caller (the command line) never pays for it
    start = threading.Barrier(4)

    def overlapping(text: str) -> np.ndarray:
        start.wait()
        return encoder.encode([text] * 64)[0]

    threads = [threading.Thread(target=overlapping, args=(f"question {i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert encoder._side_session is not None
    assert np.allclose(encoder.encode(["question 1"])[0], embedder.embed(["question 1"])[0], atol=1e-5)


def test_a_damaged_export_is_exported_again(tmp_path, caplog):
    layout = ModelLayout(default_model_path())
    damaged = tmp_path / "onnx" / f"{layout.cache_key()}.onnx"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"\x08\x07half an export")
    with caplog.at_level(logging.WARNING, logger="memcache"):
        encoder = OnnxEncoder(default_model_path(), cache_dir=tmp_path)
    assert "exporting it again" in caplog.text
    assert damaged.stat().st_size > 1_000_000 and not list(damaged.parent.glob("*.tmp"))
    assert encoder.encode(["hello"]).shape == (1, 384)


def test_a_whole_export_that_a_runtime_cannot_load_is_kept(embedder, tmp_path, capsys):
    """A runtime failing on a sound file is the runtime's fault: the export, shared by every process
    and backend, is neither deleted nor made again."""
    embedder.encode_batch(["make sure the shared export exists"])
    shared = cache_root() / "onnx" / f"{ModelLayout(default_model_path()).cache_key()}.onnx"
    kept = tmp_path / "onnx" / shared.name
    kept.parent.mkdir(parents=True)
    kept.write_bytes(shared.read_bytes())
    before = kept.stat()

    class BrokenRuntime(OnnxEncoder):
        backend = "broken"

        def _load(self) -> None:
            raise RuntimeError("this runtime cannot run opset 17")

    with pytest.raises(EmbeddingError, match="broken could not load the ONNX export .*opset 17"):
        BrokenRuntime(default_model_path(), cache_dir=tmp_path)
    after = kept.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert "preparing the ONNX encoder" not in capsys.readouterr().err


def test_without_onnxruntime_auto_falls_back_to_torch_with_one_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with caplog.at_level(logging.INFO, logger="memcache"):
        encoder = _build_encoder(default_model_path(), "cpu", "auto", 16)
    assert encoder.backend == "torch" and encoder.encode(["hello"]).shape == (1, 384)
    assert [r.getMessage() for r in caplog.records] == [
        "onnxruntime is not installed (pip install onnxruntime); embedding with torch"
    ]
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        _build_encoder(default_model_path(), "cpu", "onnx", 16)


def test_a_model_the_export_cannot_run_stays_on_torch(tmp_path, caplog):
    folder = tmp_path / "model"
    folder.mkdir()
    for item in Path(default_model_path()).iterdir():  # the same model with a max-pooling head
        if item.is_file():
            (folder / item.name).symlink_to(item)
    (folder / "1_Pooling").mkdir()
    pooling = json.loads((Path(default_model_path()) / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({**pooling, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True})
    )
    assert "not plain mean or CLS" in ModelLayout(str(folder)).why_not
    with caplog.at_level(logging.DEBUG, logger="memcache"):
        assert _build_encoder(str(folder), "cpu", "auto", 16).backend == "torch"
    assert "embedding with torch" in caplog.text


def test_the_backend_is_chosen_by_argument_or_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMCACHE_EMBEDDING_BACKEND", "torch")
    assert SentenceTransformerEmbedder().backend_in_use == "torch"
    assert SentenceTransformerEmbedder(backend="onnx").backend_in_use == "onnx"
    with MemCache(f"sqlite:///{tmp_path / 'm.db'}", embedding_backend="onnx") as cache:
        assert cache.embedder.backend_in_use == "onnx"
    monkeypatch.setenv("MEMCACHE_EMBEDDING_BACKEND", "tensorflow")
    with pytest.raises(ConfigError, match="auto, onnx, openvino, torch"):
        SentenceTransformerEmbedder()
    with pytest.raises(ConfigError, match="runs on the CPU"):
        _build_encoder(default_model_path(), "cuda", "onnx", 16)


def test_the_encoder_comparison_replays_one_stream_per_encoder(data_dir, capsys):
    report = backends.main(
        [str(data_dir / "clinc150.jsonl"), "--splits", "test", "--encoders", "onnx,int8", "--limit", "150"]
    )
    assert report["onnx"]["same_outcome"] == 1.0 and 0 < report["int8"]["same_outcome"] <= 1.0
    assert report["int8"]["single_encode_p50_ms"] > 0 and "int8 {" in capsys.readouterr().out


def test_openvino_runs_the_same_export_with_the_same_vectors(embedder, data_dir, tmp_path):
    rows = [json.loads(line)["text"] for line in (data_dir / "clinc150.jsonl").open()][:200] + QUESTIONS
    encoder = _build_encoder(default_model_path(), "cpu", "openvino", 16)
    assert isinstance(encoder, OpenVinoEncoder) and encoder.path == embedder.encoder.path  # one export for both
    vectors = encoder.encode(rows)
    assert vectors.dtype == np.float32 and vectors.shape == (len(rows), 384)
    assert (vectors * embedder.encode_batch(rows)).sum(axis=1).min() > 0.99999  # float32, not bf16

    results: dict[int, np.ndarray] = {}  # threads each get their own infer request

    def encode_in_thread(i: int) -> None:
        results[i] = encoder.encode(rows[i * 20 : i * 20 + 20])

    threads = [threading.Thread(target=encode_in_thread, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert np.allclose(np.vstack([results[i] for i in range(4)]), vectors[:80], atol=1e-5)

    with MemCache(f"sqlite:///{tmp_path / 'm.db'}", embedding_backend="openvino") as cache:
        assert cache.embedder.backend_in_use == "openvino"
        cache.write_back("how do I reset my password", "Settings > Security > Reset.", model="m", paid=False)
        question = "I forgot my password, how can I reset it?"
        result = cache.lookup(question, model="m")
        expected = float(
            embedder.encode_batch([question])[0] @ embedder.encode_batch(["how do I reset my password"])[0]
        )
        assert len(result.candidates) == 1 and result.decision.similarity == pytest.approx(expected, abs=1e-4)


def test_openvino_by_name_without_openvino_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ConfigError, match=r'pip install "memcache\[openvino\]"'):
        _build_encoder(default_model_path(), "cpu", "openvino", 16)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        _build_encoder(default_model_path(), "cuda", "openvino", 16)
