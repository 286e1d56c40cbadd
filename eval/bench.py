"""`memcache bench`: the cache against its limits, each figure beside a reference from the same run.

- floor: the embedding model's own single-query encode, timed alternately with each lookup;
- hit and exact-repeat latency (p50/p99) at each store size, as a ratio to that floor;
- lookups/s with 1, 8 and 32 concurrent callers (micro-batched embedding);
- cold start in a fresh process: rebuild from the store, and load from an index snapshot,
  with the resident memory each adds per entry;
- recall@1 of the index against exact search;
- GPTCache (from PyPI) with the same model, data and machine: hit latency and lookups/s;
- `memcache ask` in a fresh process (`memcache.eval.cli_bench`): exact repeat and miss.

Stored keys are real Quora questions embedded by the real model; past `--real` of them the
store is filled with synthetic keys (a real question's vector plus noise, at cosine ~0.75 to
it), because encoding a million questions on a CPU takes about an hour. Every lookup is a
real question encoded by the real model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from memcache.cache import MemCache
from memcache.embedding import SentenceTransformerEmbedder
from memcache.eval import cli_bench
from memcache.eval.bulk import BulkRow, bulk_insert
from memcache.eval.data import load_pairs
from memcache.policy import ThresholdPolicy
from memcache.schema import text_hash
from memcache.scope import build_scope, normalize
from memcache.store import Store

SCOPE = build_scope(tenant=None, model="bench", params={}, earlier=[], extra_parts=[])
NOISE = 0.045  # per-dimension noise of synthetic keys: cosine ~0.75 to the real vector they copy


def rss_mb() -> float:
    """Resident memory of this process (Linux /proc), in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def percentile(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(samples, q))


def _encode_all(embedder: SentenceTransformerEmbedder, texts: Sequence[str], batch: int = 512) -> np.ndarray:
    from tqdm import tqdm

    chunks = [embedder.encode_batch(texts[i : i + batch]) for i in tqdm(range(0, len(texts), batch), desc="encoding")]
    return np.vstack(chunks).astype(np.float32)


class Workload:
    """Real questions to store and to ask, with their vectors (encoded once, in bulk)."""

    def __init__(self, pairs_path: str, real: int, repeats: int, embedder: SentenceTransformerEmbedder) -> None:
        pairs = load_pairs(pairs_path)
        self.stored = list(dict.fromkeys(p.a for p in pairs))[:real]
        stored = set(self.stored)
        self.paraphrases = list(
            dict.fromkeys(p.b for p in pairs if p.duplicate and p.a in stored and p.b not in stored)
        )[:repeats]
        asked = set(self.paraphrases)
        self.unseen = list(dict.fromkeys(p.b for p in pairs if p.b not in stored and p.b not in asked))[:2_000]
        self.vectors = _encode_all(embedder, self.stored)
        self.paraphrase_vectors = _encode_all(embedder, self.paraphrases)

    def keys(self, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
        """n stored keys: the real questions first, then synthetic neighbours of them."""
        return with_synthetic_keys(self.stored[:n], self.vectors[:n], n, seed)


def with_synthetic_keys(
    texts: Sequence[str], vectors: np.ndarray, n: int, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """Real keys padded to n with synthetic neighbours: a random real vector plus noise, unit length."""
    extra = max(0, n - len(texts))
    if not extra:
        return list(texts), vectors
    rng = np.random.default_rng(seed)
    noisy = vectors[rng.integers(0, len(vectors), extra)]
    noisy = noisy + rng.normal(scale=NOISE, size=noisy.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return list(texts) + [f"synthetic question {i}" for i in range(extra)], np.vstack([vectors, noisy])


def fill_store(url: str, texts: Sequence[str], vectors: np.ndarray, chunk: int = 20_000) -> float:
    """Bulk-load one key per entry into a new store; returns seconds."""
    from tqdm import tqdm

    store = Store(url)
    start = time.perf_counter()
    for lo in tqdm(range(0, len(texts), chunk), desc=f"filling {len(texts):,} entries", unit="chunk"):
        bulk_insert(
            store,
            [
                BulkRow(SCOPE, text, text_hash(normalize(text)), vectors[i], f"answer {i}")
                for i, text in enumerate(texts[lo : lo + chunk], lo)
            ],
        )
    store.close()
    return time.perf_counter() - start


class DimensionOnly:
    """An embedder that is never called: cold-start children time the store and index only."""

    def embed(self, texts):
        raise AssertionError("cold start must not embed")


def cold_start_child(url: str, snapshot: str | None, save_to: str | None) -> dict:
    """Open the cache in this fresh process and time the load (run via `--child`)."""
    before = rss_mb()
    start = time.perf_counter()
    cache = MemCache(url, embedder=DimensionOnly(), policy=ThresholdPolicy(0.0), snapshot=snapshot, sync_interval=None)
    cache.warm_up()
    seconds = time.perf_counter() - start
    after = rss_mb()
    out = {"seconds": seconds, "rss_before_mb": before, "rss_after_mb": after, "keys": len(cache.index)}
    if save_to:
        start = time.perf_counter()
        cache.save_snapshot(save_to)
        out["save_seconds"] = time.perf_counter() - start
        out["snapshot_mb"] = os.path.getsize(save_to) / 2**20
    cache.snapshot = None
    cache.close()
    return out


def run_child(url: str, snapshot: str | None = None, save_to: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "memcache.eval.bench", "--child", url]
    cmd += ["--child-snapshot", snapshot] if snapshot else []
    cmd += ["--child-save", save_to] if save_to else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def served_by(cache: MemCache) -> Callable[[str], str]:
    """A lookup in the benchmark's scope that must be served (every timed lookup is a hit)."""

    def lookup(query: str) -> str:
        hit = cache.lookup(query, model=SCOPE.model).hit
        if hit is None:
            raise AssertionError(f"the benchmark expected a hit for {query!r}")
        return hit.answer

    return lookup


def alternating(items: Sequence, calls: Sequence[Callable], block: int = 25) -> list[list[float]]:
    """Time each of `calls` on every item (ms) in alternating blocks, so drift of a noisy
    machine hits all alike. Blocks, not single calls: the lookup encodes on the embedder's
    worker thread and the floor on this one, and a thread pool that spins for a while after
    each call slows a call from the other thread that comes right after it."""
    times: list[list[float]] = [[] for _ in calls]
    for lo in range(0, len(items), block):
        for sink, call in zip(times, calls):
            for item in items[lo : lo + block]:
                start = time.perf_counter()
                call(item)
                sink.append((time.perf_counter() - start) * 1000.0)
    return times


def paired(fn: Callable, items: Sequence, floor_fn: Callable, block: int = 25) -> tuple[list[float], list[float]]:
    """(times of `fn`, times of `floor_fn`), alternating (see `alternating`)."""
    floor, measured = alternating(items, (floor_fn, fn), block)
    return measured, floor


def timed_until(done: threading.Event, call: Callable[[], object], pause: float) -> list[float]:
    """Milliseconds of `call()`, repeated (at least once) until `done` is set, `pause` seconds
    apart: what a caller on the hot path waits while other threads do background work."""
    samples: list[float] = []
    while not samples or not done.is_set():
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000.0)
        time.sleep(pause)
    return samples


def throughput(lookup: Callable[[str], object], queries: Sequence[str], callers: int, seconds: float) -> float:
    """Lookups per second with `callers` threads, each asking distinct questions for `seconds`."""
    counts = [0] * callers
    stop = time.perf_counter() + seconds
    barrier = threading.Barrier(callers + 1)

    def worker(w: int) -> None:
        barrier.wait()
        i = w
        while time.perf_counter() < stop:
            lookup(queries[i % len(queries)])
            counts[w] += 1
            i += callers

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(callers)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def interleaved_throughput(lookup: Callable, queries: Sequence[str], levels: Sequence[int], args) -> dict[int, float]:
    """Median lookups/s per caller count over rounds that each visit every count, so a slow
    spell of a noisy machine lands on all counts alike."""
    samples: dict[int, list[float]] = {c: [] for c in levels}
    for _ in range(args.rounds):
        for c in levels:
            samples[c].append(throughput(lookup, queries, c, args.seconds))
    return {c: statistics.median(v) for c, v in samples.items()}


def encoder_batching(embedder: SentenceTransformerEmbedder, texts: Sequence[str], rounds: int = 21) -> float:
    """Texts/s of the model encoding 32 texts per call over 1 per call, alternating: the most
    that micro-batching 32 callers can gain on this machine (the encoder is compute-bound)."""
    batched, single = [], []
    for r in range(rounds):
        chunk = list(texts[(r * 32) % len(texts) :][:32])
        start = time.perf_counter()
        embedder.encode_batch(chunk)
        batched.append(len(chunk) / (time.perf_counter() - start))
        start = time.perf_counter()
        for text in chunk[:4]:
            embedder.encode_batch([text])
        single.append(4 / (time.perf_counter() - start))
    return statistics.median(batched) / statistics.median(single)


def recall_at_1(cache: MemCache, queries: np.ndarray, vectors: np.ndarray) -> float:
    """Share of queries whose top-1 from the index is as similar as the exact top-1."""
    sims, _ = cache.index.search(SCOPE.key, queries, 1)
    exact = np.max(queries @ vectors.T, axis=1)
    return float(np.mean(sims[:, 0] >= exact - 1e-5))


def torch_encoder(embedder) -> Callable[[str], object]:
    """Single-query encode of the embedder's model by torch on the CPU (built once)."""
    from memcache.embedding import shared_encoder

    encoder = shared_encoder(embedder.model_name, "cpu", "torch", embedder.inner_batch_size)
    return lambda text: encoder.encode([text])


def bench_size(n: int, work: Workload, embedder, args, directory: Path) -> dict:
    texts, vectors = work.keys(n)
    url = f"sqlite:///{directory / f'bench_{n}.db'}"
    snap = str(directory / f"bench_{n}.snap")
    fill_s = fill_store(url, texts, vectors)
    print(f"[{n:,}] filled store in {fill_s:.0f} s; cold starts in fresh processes ...", flush=True)
    rebuild = run_child(url, save_to=snap)
    from_snapshot = run_child(url, snapshot=snap)
    cache = MemCache(url, embedder=embedder, policy=ThresholdPolicy(0.0), snapshot=snap, sync_interval=None)
    cache.warm_up()
    cache.snapshot = None  # the benchmark must not rewrite it on close
    encode = lambda text: embedder.encode_batch([text])  # noqa: E731 - the model alone: the floor
    rng = np.random.default_rng(1)
    popular = rng.integers(0, min(n, len(work.stored)), 30)  # repeats are of popular questions
    exact_q = [texts[i] for i in rng.choice(popular, args.repeats)]
    lookup = served_by(cache)
    exact, floor_e = paired(lookup, exact_q, encode)
    # torch's single-query encode of the same model: what a cache that embeds with PyTorch pays
    # (GPTCache's SBERT, LangChain's and RedisVL's sentence-transformers embeddings)
    hit, floor_h, torch_h = alternating(work.paraphrases, (lookup, encode, torch_encoder(embedder)))
    floor = statistics.median(floor_e + floor_h)
    rates = interleaved_throughput(lookup, work.unseen, (1, 8, 32), args)
    ceiling = encoder_batching(embedder, work.unseen, rounds=7 * args.rounds)
    result = {
        "entries": n,
        "real_keys": min(n, len(work.stored)),
        "fill_s": fill_s,
        "approximate": n > cache.index.approximate_after,
        "floor_p50_ms": floor,
        "floor_p99_ms": percentile(floor_e + floor_h, 99),
        "hit_p50_ms": statistics.median(hit),
        "hit_p99_ms": percentile(hit, 99),
        "hit_p50_ratio": statistics.median(hit) / statistics.median(floor_h),
        "hit_p99_ratio": percentile(hit, 99) / percentile(floor_h, 99),
        "backend": embedder.backend_in_use,
        "torch_floor_p50_ms": statistics.median(torch_h),
        "torch_floor_p99_ms": percentile(torch_h, 99),
        "hit_p50_vs_torch": statistics.median(hit) / statistics.median(torch_h),
        "hit_p99_vs_torch": percentile(hit, 99) / percentile(torch_h, 99),
        "exact_p50_ms": statistics.median(exact),
        "exact_p99_ms": percentile(exact, 99),
        "lookups_per_s": rates,
        "scaling_32_vs_1": rates[32] / rates[1],
        "encoder_32_vs_1": ceiling,
        "recall_at_1": recall_at_1(cache, work.paraphrase_vectors, vectors),
        "rebuild_s": rebuild["seconds"],
        "snapshot_load_s": from_snapshot["seconds"],
        "snapshot_save_s": rebuild["save_seconds"],
        "snapshot_mb": rebuild["snapshot_mb"],
        "bytes_per_entry": (from_snapshot["rss_after_mb"] - from_snapshot["rss_before_mb"]) * 2**20 / n,
        "bytes_per_entry_rebuild": (rebuild["rss_after_mb"] - rebuild["rss_before_mb"]) * 2**20 / n,
    }
    cache.close()
    for path in directory.glob(f"bench_{n}.*"):
        path.unlink()
    print(json.dumps(result), flush=True)
    return result


def bench_gptcache(work: Workload, embedder, args, directory: Path) -> dict:
    """GPTCache 0.1.x (sqlite + faiss, its SBERT embedding of the same model) against memcache on
    the same entries and questions, in this process: latencies in alternating blocks of
    questions, throughput in rounds that alternate the two (a slow spell lands on both)."""
    try:
        from gptcache import Cache, Config
        from gptcache.adapter.api import get
        from gptcache.embedding import SBERT
        from gptcache.manager import CacheBase, VectorBase, get_data_manager
        from gptcache.processor.pre import get_prompt
        from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation
    except ImportError:
        return {"skipped": "gptcache is not installed (pip install gptcache)"}
    import gptcache

    n = min(args.gptcache_entries, len(work.stored))
    texts, vectors = work.keys(n)
    sbert = SBERT(embedder.model_name)
    manager = get_data_manager(
        CacheBase("sqlite", sql_url=f"sqlite:///{directory / 'gptcache.db'}"),
        VectorBase("faiss", dimension=vectors.shape[1], index_path=str(directory / "gptcache.faiss")),
        max_size=2 * n,  # GPTCache's default (1,000) would evict most of the entries while importing them
    )
    manager.import_data(texts, [f"answer {i}" for i in range(n)], list(vectors), [None] * n)
    gpt = Cache()
    gpt.init(
        pre_embedding_func=get_prompt,
        embedding_func=sbert.to_embeddings,
        data_manager=manager,
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(similarity_threshold=0.0),
    )
    url = f"sqlite:///{directory / 'memcache_vs.db'}"
    fill_store(url, texts, vectors)
    mine = MemCache(url, embedder=embedder, policy=ThresholdPolicy(0.0), sync_interval=None)
    mine.warm_up()
    systems = {"gptcache": lambda q: get(q, cache_obj=gpt), "memcache": served_by(mine)}
    asked = work.paraphrases[:100]
    agree = sum(systems["gptcache"](q) == systems["memcache"](q) for q in asked) / len(asked)
    if agree < 0.9:  # both search the same vectors exactly: they must serve the same entries
        raise AssertionError(f"GPTCache and memcache served the same answer for only {agree:.0%} of questions")
    out: dict = {"entries": n, "gptcache_version": gptcache.__version__, "same_answer": agree}
    names = list(systems)
    latencies = dict(zip(names, alternating(work.paraphrases, [systems[name] for name in names])))
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):  # rounds alternate the systems, the first going second next time
        for name in names if round_ % 2 == 0 else names[::-1]:
            rates[name].append(throughput(systems[name], work.unseen, 8, args.seconds))
    for name in names:
        out[name] = {
            "hit_p50_ms": statistics.median(latencies[name]),
            "hit_p99_ms": percentile(latencies[name], 99),
            "lookups_per_s_8": statistics.median(rates[name]),
            "lookups_per_s_8_rounds": rates[name],
        }
    out["lookups_ratio_8"] = out["memcache"]["lookups_per_s_8"] / out["gptcache"]["lookups_per_s_8"]
    out["p99_ratio"] = out["memcache"]["hit_p99_ms"] / out["gptcache"]["hit_p99_ms"]
    mine.close()
    manager.close()  # GPTCache writes its faiss file on close: before the directory goes,
    gpt.data_manager = SimpleNamespace(close=lambda: None)  # and not again from its atexit hook
    print(json.dumps(out), flush=True)
    return out


def machine() -> str:
    """The CPU as /proc/cpuinfo names it, with its model number and the vector units that decide
    how fast each encoder runs (two machines of one name differed in PyTorch; docs/DECISIONS.md)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            info = dict(line.split(":", 1) for line in handle.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {key.strip(): value.strip() for key, value in info.items()}
        units = [unit for unit in ("avx512f", "avx512_vnni", "amx_tile") if unit in info.get("flags", "").split()]
        cpu = f"{info['model name']} (model {info.get('model', '?')}{''.join(', ' + u for u in units)})"
    except (OSError, KeyError):
        pass
    with open("/proc/meminfo") as handle:
        mem_gb = int(handle.readline().split()[1]) / 2**20
    import faiss
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM, no GPU used; Python {platform.python_version()}, "
        f"torch {torch.__version__}, faiss {faiss.__version__}"
    )


def markdown(results: dict) -> str:
    sizes = results["sizes"]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{results['command']}` on {results['date']}.",
        "",
        f"Machine: {results['machine']}.",
        "",
        "Every latency is a median (p50) or 99th percentile over the run's lookups; every ratio is to a "
        "reference measured in the same run. Stored keys: real Quora questions encoded by the real model "
        f"(first {sizes[0]['real_keys']:,}), then synthetic keys near them (see eval/bench.py). Lookups: real "
        "questions, encoded by the real all-MiniLM-L6-v2 on the CPU.",
        "",
        "| entries | index | floor p50 ms | torch floor p50 ms | hit p50 ms | hit p99 ms | p50 / floor "
        "| p50 / torch floor | p99 / floor p99 | p99 / torch p99 | exact p50 ms "
        "| recall@1 | lookups/s 1 / 8 / 32 | 32 vs 1 | encoder alone 32 vs 1 | bytes / entry | cold: rebuild s "
        "| cold: snapshot s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sizes:
        rates = r["lookups_per_s"]
        lines.append(
            f"| {r['entries']:,} | {'HNSW' if r['approximate'] else 'flat'} | {r['floor_p50_ms']:.1f} | "
            f"{r['torch_floor_p50_ms']:.1f} | {r['hit_p50_ms']:.1f} | {r['hit_p99_ms']:.1f} | "
            f"{r['hit_p50_ratio']:.2f}x | {r['hit_p50_vs_torch']:.2f}x | {r['hit_p99_ratio']:.2f}x | "
            f"{r['hit_p99_vs_torch']:.2f}x | "
            f"{r['exact_p50_ms']:.3f} | {r['recall_at_1']:.3f} | "
            f"{rates['1']:.0f} / {rates['8']:.0f} / {rates['32']:.0f} | {r['scaling_32_vs_1']:.1f}x | "
            f"{r['encoder_32_vs_1']:.1f}x | "
            f"{r['bytes_per_entry']:,.0f} | {r['rebuild_s']:.1f} | {r['snapshot_load_s']:.1f} |"
        )
    lines += ["", "## Targets", "", *targets(results), ""]
    lines += [
        "How to read it: *floor* is the model's own single-query encode by the backend in use "
        f"({sizes[0].get('backend', 'torch')}), and *torch floor* the same model's single-query encode by PyTorch "
        "(`SentenceTransformer.encode`: what GPTCache, LangChain or RedisVL pay with this model), both timed in "
        "blocks alternating with the lookups they are compared with; *hit* is `MemCache.lookup` of a paraphrase of a "
        "stored question that is served (encode, search in scope, decision, answer); *exact* is a repeat of a "
        "stored question (no encode). *lookups/s* is distinct questions asked by 1, 8 or 32 threads at once "
        "(median of interleaved rounds); *encoder alone* is the model encoding 32 texts per call over 1 per call, "
        "the most micro-batching can gain here. *bytes / entry* is the resident memory a fresh process gains "
        "loading the store and index (snapshot path), over the entry count. *cold* is a fresh process opening "
        "the store: rebuilding the index from the stored vectors, or loading the snapshot and reconciling it "
        "with the store.",
    ]
    g = results.get("gptcache", {})
    lines += ["", "## Beside GPTCache", ""]
    if "skipped" in g or not g:
        lines.append(f"Not run: {g.get('skipped', 'disabled')}.")
    else:
        lines += [
            f"GPTCache {g['gptcache_version']} (sqlite + faiss, its SBERT embedding loading the same model files, "
            f"similarity threshold 0 so every lookup is a hit) and memcache on the same {g['entries']:,} entries "
            f"and the same questions, in the same process, latencies in alternating blocks of questions and "
            f"throughput in rounds alternating the two (median of {len(g['memcache']['lookups_per_s_8_rounds'])}; "
            f"they served the same answer for {g['same_answer']:.0%} of the questions).",
            "",
            "| system | hit p50 ms | hit p99 ms | lookups/s, 8 callers |",
            "|---|---|---|---|",
        ]
        for name in ("gptcache", "memcache"):
            s = g[name]
            lines.append(f"| {name} | {s['hit_p50_ms']:.1f} | {s['hit_p99_ms']:.1f} | {s['lookups_per_s_8']:.0f} |")
        lines += [
            "",
            f"memcache / GPTCache lookups/s with 8 callers: {g['lookups_ratio_8']:.2f}x; "
            f"p99 ratio: {g['p99_ratio']:.2f}x.",
        ]
    if "cli" in results:
        lines += ["", *cli_bench.markdown(results["cli"])]
    return "\n".join(lines) + "\n"


def targets(results: dict) -> list[str]:
    """Each target of the scale-out issue, met or missed, with its figure."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    out = []
    by_size = {r["entries"]: r for r in results["sizes"]}
    for n, bound in ((100_000, 0.5), (1_000_000, 0.6)):
        r = by_size.get(n)
        if r and "hit_p50_vs_torch" in r:
            out.append(
                f"- hit p50 <= {bound}x of the torch floor at {n:,}: {r['hit_p50_vs_torch']:.2f}x "
                f"(of the {r['backend']} floor in use: {r['hit_p50_ratio']:.2f}x): "
                f"{verdict(r['hit_p50_vs_torch'] <= bound)}"
            )
    for r in results["sizes"]:
        out.append(
            f"- exact repeat p50 <= 0.3 ms at {r['entries']:,}: {r['exact_p50_ms']:.3f} ms: "
            f"{verdict(r['exact_p50_ms'] <= 0.3)}"
        )
        scaling, ceiling = r["scaling_32_vs_1"], r["encoder_32_vs_1"]
        out.append(
            f"- 32 callers >= 4x the lookups/s of 1 at {r['entries']:,}, or above what the encoder alone gains "
            f"from batches of 32: {scaling:.1f}x against {ceiling:.1f}x: "
            + (verdict(True) if scaling >= 4 else f"{verdict(scaling >= ceiling)} (by the encoder's ceiling)")
        )
        out.append(
            f"- recall@1 >= 0.99 against exact search at {r['entries']:,}: {r['recall_at_1']:.3f}: "
            f"{verdict(r['recall_at_1'] >= 0.99)}"
        )
    g = results.get("gptcache")
    if g and "skipped" not in g:
        lower = g["memcache"]["hit_p99_ms"] < g["gptcache"]["hit_p99_ms"]
        out.append(
            f"- >= 3x GPTCache's lookups/s with 8 callers, lower p99: {g['lookups_ratio_8']:.2f}x, p99 "
            f"{g['memcache']['hit_p99_ms']:.1f} vs {g['gptcache']['hit_p99_ms']:.1f} ms: "
            f"{verdict(g['lookups_ratio_8'] >= 3 and lower)}"
        )
    return out


def run_bench(args: argparse.Namespace) -> dict:
    from datetime import date

    sizes = [int(s) for s in args.entries.split(",")]
    embedder = SentenceTransformerEmbedder()
    work = Workload(args.pairs, args.real, args.repeats, embedder)
    results: dict = {
        "command": "memcache bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "memcache bench",
        "date": date.today().isoformat(),
        "machine": machine(),
        "sizes": [],
    }
    if args.cli_runs:
        results["cli"] = cli_bench.cli_startup(args.cli_runs, args.workdir)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        directory = Path(tmp)
        if args.gptcache_entries:
            results["gptcache"] = bench_gptcache(work, embedder, args, directory)
        for n in sizes:
            results["sizes"].append(bench_size(n, work, embedder, args, directory))
    results = json.loads(json.dumps(results))  # int keys -> str, as in the JSON file
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return results


def add_bench_command(sub) -> None:
    bench = sub.add_parser("bench", help="latency vs the embedding floor, throughput, memory, cold start, GPTCache")
    bench.add_argument(
        "pairs", help="Quora pairs JSONL (source of real questions), e.g. ../shared/data/qqp_pairs_dev.jsonl"
    )
    bench.add_argument("--entries", default="100000,1000000", help="store sizes, comma-separated")
    bench.add_argument("--real", type=int, default=20_000, help="real questions encoded and stored")
    bench.add_argument("--repeats", type=int, default=1000, help="timed lookups per latency row")
    bench.add_argument("--seconds", type=float, default=5.0, help="duration of one throughput round")
    bench.add_argument(
        "--rounds", type=int, default=3, help="throughput rounds (median); the encoder batching gain takes 7 per round"
    )
    bench.add_argument("--gptcache-entries", type=int, default=10_000, help="0 skips the GPTCache comparison")
    bench.add_argument(
        "--cli-runs", type=int, default=10, help="fresh `memcache ask` processes per command (median); 0 skips"
    )
    bench.add_argument("--workdir", default=None, help="where the temporary stores go (default: system temp)")
    bench.add_argument("--out", default=None, help="write the Markdown table here (e.g. docs/BENCHMARKS.md)")
    bench.add_argument("--json", default=None, help="write all figures as JSON here")
    bench.set_defaults(func=lambda args: run_bench(args) and 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="cold-start child of `memcache bench`")
    parser.add_argument("--child", required=True)
    parser.add_argument("--child-snapshot", default=None)
    parser.add_argument("--child-save", default=None)
    args = parser.parse_args(argv)
    print(json.dumps(cold_start_child(args.child, args.child_snapshot, args.child_save)))


if __name__ == "__main__":
    main()
