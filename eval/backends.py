"""Does an encoder change decisions? One stream replayed with each encoder, outcome by outcome.

    python -m memcache.eval.backends ../shared/data/clinc150.jsonl [--splits test,oos] [--seed 0]

Encoders: `torch`, `onnx` (the default CPU encoder), `openvino` (the same export run by OpenVINO)
and `int8` (the ONNX export with weights quantized by `onnxruntime.quantization.quantize_dynamic`,
tried and not adopted: docs/EVAL.md).
Prints each replay's figures, the single-query encode p50, and the share of queries whose
outcome (hit, miss, audit) equals the first encoder's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from memcache.embedding import SentenceTransformerEmbedder, default_model_path
from memcache.eval.commands import load_stream
from memcache.eval.metrics import summarize
from memcache.eval.replay import MemoEmbedder, replay_intents, shuffled
from memcache.onnx_encoder import OnnxEncoder
from memcache.policy import CalibratedPolicy

SHOWN = ("hits", "wrong_hits", "false_hit_rate", "correct_hit_rate", "strong_calls", "audits")


def embedder_for(name: str, scratch: Path) -> SentenceTransformerEmbedder:
    if name != "int8":
        return SentenceTransformerEmbedder(backend=name)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = OnnxEncoder(default_model_path())
    target = scratch / "onnx" / fp32.path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(fp32.path), str(target), weight_type=QuantType.QInt8)
    embedder = SentenceTransformerEmbedder(backend="onnx")
    embedder._encoder = OnnxEncoder(default_model_path(), cache_dir=scratch)
    return embedder


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--splits", default="test,oos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bound", type=float, default=0.02)
    parser.add_argument("--encoders", default="torch,onnx,int8")
    parser.add_argument("--limit", type=int, default=None, help="the shuffle's first N queries only")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    stream = load_stream(args.data, "intents", args.splits, "text", "label")
    texts = [q.text for q in shuffled(stream.items, args.seed)[: args.limit]]
    report, outcomes = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.encoders.split(","):
            embedder = embedder_for(name, Path(scratch))
            single = []
            for text in texts[:300]:
                start = time.perf_counter()
                embedder.encode_batch([text])
                single.append((time.perf_counter() - start) * 1000.0)
            memo = MemoEmbedder(embedder)
            memo.prefill(texts)
            policy = CalibratedPolicy(args.bound, seed=args.seed)
            records = replay_intents(stream.items, policy=policy, embedder=memo, seed=args.seed, limit=args.limit)
            outcomes[name] = [r.outcome for r in records]
            first = outcomes[next(iter(outcomes))]
            summary = summarize(records, max_false_hit_rate=args.bound)
            report[name] = {
                **{key: summary[key] for key in SHOWN},
                "single_encode_p50_ms": statistics.median(single),
                "same_outcome": sum(a == b for a, b in zip(first, outcomes[name])) / len(first),
            }
            print(name, json.dumps(report[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
