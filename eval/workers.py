"""Several instances on one store: a short stream dealt round-robin over `--workers` instances.

    python -m memcache.eval.workers ../shared/data/clinc150.jsonl --family validation --workers 4

Each instance is a `MemCache` of its own on one SQLite file (as the workers behind one proxy
are), syncing before every lookup. Beside it: the same stream through one instance, and with
`--own` also the instances learning only from their own paid answers (labels per process, as
memcache did before it followed the others' labels). One stream of each kind of the family's
(see `memcache.eval.validation`), several shuffles; every figure is over the whole stream.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from memcache.cache import MemCache
from memcache.embedding import SentenceTransformerEmbedder
from memcache.eval.data import OOS, LabeledQuery, load_intents
from memcache.eval.replay import MemoEmbedder, _answer, _label_of, shuffled
from memcache.eval.validation import streams_of


def deal(queries: Sequence[LabeledQuery], workers: int, *, seed: int, embedder, shared: bool = True) -> dict:
    """Replay `queries` dealt round-robin over `workers` instances on one new store."""
    url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='memcache-workers-')) / 'memcache.db'}"
    caches = [
        MemCache(url, embedder=embedder, seed=seed * 100 + i, relabel_in_background=False, shadow_audits=False,
                 sync_interval=0.0)
        for i in range(workers)
    ]  # fmt: skip
    if not shared:
        for cache in caches:
            cache.controller.follow_labels = lambda: None
    hits = wrong = 0
    first_hit = None
    try:
        for position, query in enumerate(queries):
            cache = caches[position % workers]
            result = cache.lookup(query.text)
            if result.hit is None:
                cache.write_back(result, _answer(query.label, position))  # as `replay_intents` pays
                continue
            hits += 1
            label = _label_of(result.hit.answer)
            wrong += label != query.label or label == OOS  # an out-of-scope query has no right answer
            first_hit = position if first_hit is None else first_hit
    finally:
        for cache in caches:
            cache.close()
    return {
        "queries": len(queries),
        "hits": hits,
        "wrong_hits": wrong,
        "false_hit_rate": wrong / hits if hits else 0.0,
        "correct_hit_rate": (hits - wrong) / len(queries),
        "first_hit_query": first_hit,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m memcache.eval.workers", description=__doc__.splitlines()[0])
    parser.add_argument("data", help="clinc150.jsonl (rows carry a domain)")
    parser.add_argument("--family", choices=("tuning", "validation"), default="validation")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--own", action="store_true", help="also run the workers on their own labels only")
    parser.add_argument("--limit", type=int, help="cut every stream to this many queries")
    parser.add_argument("--json", help="write the report here")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    embedder = MemoEmbedder(SentenceTransformerEmbedder())
    setups = {"one instance": (1, True), f"{args.workers} instances": (args.workers, True)}
    if args.own:
        setups[f"{args.workers} instances, own labels only"] = (args.workers, False)
    picked = {}
    for stream in streams_of(args.family):
        picked.setdefault(stream.kind, stream)  # the first stream of each kind
    runs = []
    for stream in picked.values():
        rows = load_intents(args.data, stream.splits, {"domain": set(stream.domains)})
        for seed in seeds:
            order = shuffled(rows, seed)[: min(stream.limit or len(rows), args.limit or len(rows))]
            for setup, (workers, shared) in setups.items():
                run = deal(order, workers, seed=seed, embedder=embedder, shared=shared)
                runs.append({"stream": stream.name, "seed": seed, "setup": setup, **run})
                print(f"{stream.name} seed {seed}, {setup}: {run['correct_hit_rate']:.1%} correct, "
                      f"{run['false_hit_rate']:.2%} false ({run['wrong_hits']}/{run['hits']}), "
                      f"first hit {run['first_hit_query']}", flush=True)  # fmt: skip
    summary = {}
    for setup in setups:
        mine = [r for r in runs if r["setup"] == setup]
        firsts = [r["first_hit_query"] for r in mine if r["first_hit_query"] is not None]
        summary[setup] = {
            "streams": len(mine),
            "over_bound": sum(r["false_hit_rate"] > 0.02 for r in mine),
            "false_hit_rate_mean": statistics.mean(r["false_hit_rate"] for r in mine),
            "false_hit_rate_max": max(r["false_hit_rate"] for r in mine),
            "correct_hit_rate_mean": statistics.mean(r["correct_hit_rate"] for r in mine),
            "first_hit_query_median": statistics.median(firsts) if firsts else None,
        }
        s = summary[setup]
        print(f"{setup}: {s['correct_hit_rate_mean']:.1%} correct, false {s['false_hit_rate_mean']:.2%} "
              f"(max {s['false_hit_rate_max']:.2%}), over {s['over_bound']}/{s['streams']}, "
              f"first hit median {s['first_hit_query_median']}")  # fmt: skip
    report = {"family": args.family, "workers": args.workers, "seeds": seeds, "runs": runs, "summary": summary}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
