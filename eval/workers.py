"""Several instances on one store: a short stream dealt round-robin over `--workers` instances.

    python -m memcache.eval.workers ../shared/data/clinc150.jsonl --family validation --workers 4

Each instance is a `MemCache` of its own on one SQLite file (as the workers behind one proxy
are), syncing before every lookup. Beside it: the same stream through one instance, and with
`--own` also the instances learning only from their own paid answers (labels per process, as
memcache did before it followed the others' labels). One stream of each kind of the family's
(see `memcache.eval.validation`), several shuffles; every figure is over the whole stream.

`--drift`: the family's two drift streams instead (out-of-scope questions arriving from query
2,000, or their share rising from query 1,000), beside the instances each testing for the shift
on its own lookups only (as before the test was pooled); the hits after the change and where
the alarms came are reported apart.
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
from memcache.eval.data import LabeledQuery, load_intents, right_answer
from memcache.eval.replay import MemoEmbedder, shuffled
from memcache.eval.validation import out_of_scope_half, streams_of


def deal(
    queries: Sequence[LabeledQuery],
    workers: int,
    *,
    seed: int,
    embedder,
    shared: bool = True,
    pooled: bool = True,
    oos_from: int | None = None,
) -> dict:
    """Replay `queries` dealt round-robin over `workers` instances on one new store; `shared=False`:
    each learns only its own labels; `pooled=False`: each tests for a traffic shift on its own
    lookups only (as before the test was pooled). With `oos_from`, the hits from there on are
    reported apart, and where (in the whole stream) an instance raised a shift alarm."""
    url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='memcache-workers-')) / 'memcache.db'}"
    caches = [
        MemCache(url, embedder=embedder, seed=seed * 100 + i, relabel_in_background=False, shadow_audits=False,
                 sync_interval=0.0)
        for i in range(workers)
    ]  # fmt: skip
    for cache in caches:
        if not shared:
            cache.controller.follow_labels = lambda: None
        elif not pooled:
            cache.controller._pool_shift_test = lambda: None
    hits = wrong = after_hits = after_wrong = 0
    first_hit = None
    alarms: list[int] = []
    try:
        for position, query in enumerate(queries):
            cache = caches[position % workers]
            seen = sum(len(c.controller.learning.shifts_detected) for c in caches)
            result = cache.lookup(query.text)
            if sum(len(c.controller.learning.shifts_detected) for c in caches) > seen:
                alarms.append(position)
            if result.hit is None:
                cache.write_back(result, right_answer(query))  # as `replay_intents` pays
                continue
            hits += 1
            bad = result.hit.answer != right_answer(query)
            wrong += bad
            if oos_from is not None and position >= oos_from:
                after_hits, after_wrong = after_hits + 1, after_wrong + bad
            first_hit = position if first_hit is None else first_hit
    finally:
        for cache in caches:
            cache.close()
    run = {
        "queries": len(queries),
        "hits": hits,
        "wrong_hits": wrong,
        "false_hit_rate": wrong / hits if hits else 0.0,
        "correct_hit_rate": (hits - wrong) / len(queries),
        "first_hit_query": first_hit,
    }
    if oos_from is not None:
        run.update(shift_alarms=alarms, hits_after=after_hits, wrong_hits_after=after_wrong,
                   false_hit_rate_after=after_wrong / after_hits if after_hits else 0.0)  # fmt: skip
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m memcache.eval.workers", description=__doc__.splitlines()[0])
    parser.add_argument("data", help="clinc150.jsonl (rows carry a domain)")
    parser.add_argument("--family", choices=("tuning", "validation"), default="validation")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--own", action="store_true", help="also run the workers on their own labels only")
    parser.add_argument(
        "--drift",
        action="store_true",
        help="the family's drift streams (out-of-scope queries arriving), beside the workers each testing "
        "for the shift on its own lookups",
    )
    parser.add_argument("--limit", type=int, help="cut every stream to this many queries")
    parser.add_argument("--json", help="write the report here")
    return parser


def _streams(args: argparse.Namespace):
    """(stream, its rows) for each stream the run replays: the first of each kind of the family's
    short streams, or with `--drift` its two drift streams."""
    if args.drift:
        extra = out_of_scope_half(args.data, args.family)
        for stream in streams_of(args.family, drift=True):
            yield stream, load_intents(args.data, stream.splits, {"domain": set(stream.domains)}) + extra
        return
    picked = {}
    for stream in streams_of(args.family):
        picked.setdefault(stream.kind, stream)
    for stream in picked.values():
        yield stream, load_intents(args.data, stream.splits, {"domain": set(stream.domains)})


def _summary(mine: list[dict]) -> dict:
    firsts = [r["first_hit_query"] for r in mine if r["first_hit_query"] is not None]
    out = {
        "streams": len(mine),
        "over_bound": sum(r["false_hit_rate"] > 0.02 for r in mine),
        "false_hit_rate_mean": statistics.mean(r["false_hit_rate"] for r in mine),
        "false_hit_rate_max": max(r["false_hit_rate"] for r in mine),
        "correct_hit_rate_mean": statistics.mean(r["correct_hit_rate"] for r in mine),
        "first_hit_query_median": statistics.median(firsts) if firsts else None,
    }
    if "false_hit_rate_after" in mine[0]:
        late = [next((a - r["oos_from"] for a in r["shift_alarms"] if a >= r["oos_from"]), None) for r in mine]
        out.update(
            false_hit_rate_after_mean=statistics.mean(r["false_hit_rate_after"] for r in mine),
            false_hit_rate_after_max=max(r["false_hit_rate_after"] for r in mine),
            over_bound_after=sum(r["false_hit_rate_after"] > 0.02 for r in mine),
            alarms_mean=statistics.mean(len(r["shift_alarms"]) for r in mine),
            first_alarm_after_shift=late,
        )
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    embedder = MemoEmbedder(SentenceTransformerEmbedder())
    many = f"{args.workers} instances"
    setups = {"one instance": {"workers": 1}, many: {"workers": args.workers}}
    if args.own:
        setups[f"{many}, own labels only"] = {"workers": args.workers, "shared": False}
    if args.drift:
        setups[f"{many}, each testing for a shift alone"] = {"workers": args.workers, "pooled": False}
    runs = []
    for stream, rows in _streams(args):
        for seed in seeds:
            order = shuffled(rows, seed, stream.oos_from, stream.oos_ramp)
            order = order[: min(stream.limit or len(rows), args.limit or len(rows))]
            for setup, how in setups.items():
                run = deal(order, seed=seed, embedder=embedder, oos_from=stream.oos_from, **how)
                runs.append({"stream": stream.name, "kind": stream.kind, "seed": seed, "setup": setup,
                             "oos_from": stream.oos_from, **run})  # fmt: skip
                after = f", after the shift {run['false_hit_rate_after']:.2%}" if stream.oos_from is not None else ""
                print(f"{stream.name} ({stream.kind}) seed {seed}, {setup}: {run['correct_hit_rate']:.1%} correct, "
                      f"{run['false_hit_rate']:.2%} false ({run['wrong_hits']}/{run['hits']}){after}, "
                      f"first hit {run['first_hit_query']}", flush=True)  # fmt: skip
    summary = {}
    for setup in setups:
        summary[setup] = s = _summary([r for r in runs if r["setup"] == setup])
        print(f"{setup}: {s['correct_hit_rate_mean']:.1%} correct, false {s['false_hit_rate_mean']:.2%} "
              f"(max {s['false_hit_rate_max']:.2%}), over {s['over_bound']}/{s['streams']}, "
              f"first hit median {s['first_hit_query_median']}")  # fmt: skip
        if "first_alarm_after_shift" in s:
            print(f"  after the shift: false {s['false_hit_rate_after_mean']:.2%} (max {s['false_hit_rate_after_max']:.2%}), "
                  f"over {s['over_bound_after']}/{s['streams']}; first alarm this many queries after it: "
                  f"{s['first_alarm_after_shift']}")  # fmt: skip
    report = {"family": args.family, "workers": args.workers, "seeds": seeds, "runs": runs, "summary": summary}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
