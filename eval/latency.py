"""Hit and miss latency of `MemCache.lookup` at a given store size, beside the embedding model's own floor.

    python -m memcache.eval.latency ../shared/data/qqp_pairs_dev.jsonl --entries 10000

Fills a fresh SQLite cache with real questions, then times (median and p99 over repeats):
the model's single-query encode (the floor), an exact repeat, a semantic hit, and a miss.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from memcache.cache import MemCache
from memcache.embedding import SentenceTransformerEmbedder
from memcache.policy import ThresholdPolicy
from memcache.eval.data import load_pairs
from memcache.eval.replay import MemoEmbedder


def _paired(fn, items, floor_fn) -> tuple[list[float], list[float]]:
    """Time `fn(item)` and the floor `floor_fn(item)` alternately, so drift hits both alike."""
    measured, floor = [], []
    for item in items:
        for sink, call in ((floor, floor_fn), (measured, fn)):
            start = time.perf_counter()
            call(item)
            sink.append((time.perf_counter() - start) * 1000.0)
    return measured, floor


def _row(name: str, samples: list[float], floor: float | None) -> str:
    p50, p99 = statistics.median(samples), float(np.percentile(samples, 99))
    ratio = "" if floor is None else f"{p50 / floor:6.2f}x"
    return f"{name:28s} {p50:9.3f} {p99:9.3f} {ratio}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", help="Quora pairs JSONL (source of real questions)")
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args(argv)
    pairs = load_pairs(args.pairs)
    questions = list(dict.fromkeys(p.a for p in pairs))[: args.entries]
    stored = set(questions)
    paraphrases = [p.b for p in pairs if p.duplicate and p.a in stored and p.b not in stored][: args.repeats]
    unrelated = [p.b for p in pairs if not p.duplicate and p.b not in stored][: args.repeats]
    embedder = SentenceTransformerEmbedder()
    bulk = MemoEmbedder(embedder)
    bulk.prefill(questions)
    with tempfile.TemporaryDirectory() as directory:
        cache = MemCache(f"sqlite:///{Path(directory) / 'bench.db'}", embedder=bulk, policy=ThresholdPolicy(0.0))
        start = time.perf_counter()
        for i, q in enumerate(questions):
            cache.write_back(q, f"answer {i}", paid=False)
        fill_s = time.perf_counter() - start
        cache.embedder = embedder  # from here on every lookup encodes with the real model
        encode = lambda text: embedder.encode_batch([text])  # noqa: E731 - the model alone: the floor
        exact, floor_exact = _paired(cache.lookup, random.Random(0).sample(questions, args.repeats), encode)
        hit, floor_hit = _paired(cache.lookup, paraphrases, encode)
        cache.policy = ThresholdPolicy(1.0)  # nothing clears a cut-off of 1.0: every lookup is a miss
        miss, floor_miss = _paired(cache.lookup, unrelated, encode)
        cache.close()
    print(f"entries {len(questions)} (filled in {fill_s:.1f} s), repeats {len(paraphrases)}")
    print(f"{'':28s} {'p50 ms':>9s} {'p99 ms':>9s} {'p50/floor':>9s}  (floor timed alternately with each row)")
    print(_row("encode one query (floor)", floor_exact + floor_hit + floor_miss, None))
    print(_row("exact repeat (no encode)", exact, statistics.median(floor_exact)))
    print(_row("semantic hit", hit, statistics.median(floor_hit)))
    print(_row("miss (lookup only)", miss, statistics.median(floor_miss)))


if __name__ == "__main__":
    main()
