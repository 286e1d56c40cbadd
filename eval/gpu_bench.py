"""The GPU path in under five minutes: embedding throughput, lookups/s at 1M entries, single-query hit p50.

    python -m memcache.eval.gpu_bench [--pairs ../shared/data/qqp_pairs_dev.jsonl] [--entries 1000000]

Needs a CUDA device; `--device cpu` runs the same steps on the CPU (the test suite does, small,
so the script cannot rot on machines without a GPU). Queries are real Quora questions when
`--pairs` is given, else generated sentences; the 1M stored keys are real question vectors
plus synthetic neighbours as in `memcache bench`. Prints one JSON object and a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _questions(pairs: str | None, count: int) -> list[str]:
    if pairs and Path(pairs).exists():
        from memcache.eval.data import load_pairs

        texts = list(dict.fromkeys(t for p in load_pairs(pairs) for t in (p.a, p.b)))
        if len(texts) >= count:
            return texts[:count]
    topics = ("account", "password", "invoice", "delivery", "refund", "subscription", "warranty", "login")
    verbs = ("change", "reset", "cancel", "track", "update", "download", "renew", "close")
    return [f"how do I {verbs[i % 8]} my {topics[(i // 8) % 8]} number {i}?" for i in range(count)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=None)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--real", type=int, default=50_000, help="real questions encoded and stored")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the throughput run")
    parser.add_argument("--queries", type=int, default=500, help="single queries timed for the hit p50")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)

    import torch

    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device visible to torch (pass --device cpu for a dry run)")
    from memcache.cache import MemCache
    from memcache.embedding import SentenceTransformerEmbedder
    from memcache.eval.bench import fill_store, interleaved_throughput, paired, served_by, with_synthetic_keys
    from memcache.gpu_index import faiss_gpu_knn
    from memcache.policy import ThresholdPolicy

    card = torch.cuda.get_device_name(0) if on_gpu else "CPU (dry run)"
    embedder = SentenceTransformerEmbedder(device=args.device, batch_size=256)
    texts = _questions(args.pairs, args.real + 4_000)
    stored, asked = texts[: args.real], texts[args.real :]
    embedder.encode_batch(stored[:512])  # warm-up: CUDA context, kernels
    start = time.perf_counter()
    vectors = np.vstack([embedder.encode_batch(stored[i : i + 1024]) for i in range(0, len(stored), 1024)])
    encode_per_s = len(stored) / (time.perf_counter() - start)

    keys, key_vectors = with_synthetic_keys(stored, vectors, args.entries)
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'gpu.db'}"
        fill_s = fill_store(url, keys, key_vectors)
        cache = MemCache(url, embedder=embedder, policy=ThresholdPolicy(0.0), device=args.device, sync_interval=None)
        start = time.perf_counter()
        cache.warm_up()
        load_s = time.perf_counter() - start
        lookup = served_by(cache)
        encode = lambda text: embedder.encode_batch([text])  # noqa: E731 - the floor
        hit, floor = paired(lookup, asked[: args.queries], encode)
        bench_args = argparse.Namespace(rounds=1, seconds=args.seconds)
        rates = interleaved_throughput(lookup, asked, (1, 32, 128), bench_args)
        result = {
            "card": card,
            "index": type(cache.index).__name__,
            "faiss_gpu_kernel": faiss_gpu_knn() is not None,
            "entries": args.entries,
            "encode_per_s_batch_1024": encode_per_s,
            "fill_s": fill_s,
            "load_s": load_s,
            "floor_p50_ms": statistics.median(floor),
            "hit_p50_ms": statistics.median(hit),
            "hit_p99_ms": float(np.percentile(hit, 99)),
            "hit_p50_ratio": statistics.median(hit) / statistics.median(floor),
            "lookups_per_s": rates,
        }
        cache.close()
    print(json.dumps(result, indent=2))
    print(
        f"| {card} | {result['index']} | {args.entries:,} | {encode_per_s:,.0f} | {result['floor_p50_ms']:.2f} | "
        f"{result['hit_p50_ms']:.2f} | {result['hit_p50_ratio']:.2f}x | "
        + " / ".join(f"{rates[c]:,.0f}" for c in (1, 32, 128))
        + " |"
    )
    return result


if __name__ == "__main__":
    main()
