"""The validation protocol of docs/EVAL.md: CLINC150 domains the policy was never tuned on.

Short streams of those domains, several shuffles each, beside the best static cosine threshold
chosen in hindsight.

    python -m memcache.eval.validation ../shared/data/clinc150.jsonl --family validation --json out.json

Families: `tuning` (banking, credit_cards, home, kitchen_and_dining, small_talk: where choices were
made) and `validation` (auto_and_commute, travel, utility, work, meta: reported, never tuned on).
Each family has three kinds of short stream: one domain's train rows cut to 1,000 queries (fifteen
near intents, many wordings), one domain's test and val rows (750), and three domains' test rows
(1,350). Every figure is "streams over the bound / streams" beside its mean.

`--drift`: traffic that changes under the policy. The family's five domains' test and val rows
(3,750) with its own half of CLINC150's out-of-scope rows (600, none shared with the other
family): out-of-scope questions arriving from query 2,000 on, or their share rising from none at
query 1,000 to the end of the stream.

`--newcomer`: a new tenant on a warm cache. The family's other four domains' train rows are one
tenant's traffic; after its first 3,000 queries a second tenant arrives with one domain's test
and val rows (750), interleaved with the first tenant's next 750. Each tenant is a scope of its
own, so the newcomer starts with an empty memory and a policy that has learned on the other's.
Figures are the newcomer's (the incumbent's beside them, `incumbent_*`).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from memcache.embedding import SentenceTransformerEmbedder
from memcache.eval.data import OOS, LabeledQuery, load_intents
from memcache.eval.metrics import best_static, cheap_path, summarize
from memcache.eval.replay import MemoEmbedder, SimulatedCheapModel, replay_intents, shuffled, static_replay
from memcache.policy import CalibratedPolicy, Policy

FAMILIES = {
    "tuning": ("banking", "credit_cards", "home", "kitchen_and_dining", "small_talk"),
    "validation": ("auto_and_commute", "travel", "utility", "work", "meta"),
}
STATIC_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.60, 1.0001, 0.01))


@dataclass(frozen=True)
class ShortStream:
    """One short stream: rows of some domains and splits, cut to `limit` queries after the shuffle;
    with `oos_from`, the family's out-of-scope rows join, arriving from there (`memcache eval --oos-from`,
    with `oos_ramp` its `--oos-ramp`)."""

    name: str
    kind: str
    domains: tuple[str, ...]
    splits: tuple[str, ...]
    limit: int | None = None
    oos_from: int | None = None
    oos_ramp: bool = False
    incumbent: tuple[str, ...] = ()  # `--newcomer`: the domains of the tenant already there


INCUMBENT_HEAD = 3000  # the incumbent's queries before the newcomer's first
NEWCOMER, INCUMBENT = "newcomer", "incumbent"


def newcomer_order(
    newcomer: Sequence[LabeledQuery], incumbent: Sequence[LabeledQuery], seed: int
) -> list[LabeledQuery]:
    """The incumbent's first `INCUMBENT_HEAD` queries, then the newcomer's, shuffled together with
    as many more of the incumbent's; each query carries its tenant."""
    first = shuffled([replace(q, tenant=INCUMBENT) for q in incumbent], seed)
    second = shuffled([replace(q, tenant=NEWCOMER) for q in newcomer], seed)
    tail = second + first[INCUMBENT_HEAD : INCUMBENT_HEAD + len(second)]
    return first[:INCUMBENT_HEAD] + shuffled(tail, seed)


def out_of_scope_half(data: str, family: str) -> list[LabeledQuery]:
    """The family's own out-of-scope rows: alternate test rows (the first of each two for tuning,
    the second for validation), and the 100 of val (tuning) or of train (validation)."""
    rows = load_intents(data, None, {"domain": {OOS}})
    first = 0 if family == "tuning" else 1
    other = "val" if family == "tuning" else "train"
    return [r for r in rows if r.split == "test"][first::2] + [r for r in rows if r.split == other]


def streams_of(family: str, longer: bool = False, drift: bool = False, newcomer: bool = False) -> list[ShortStream]:
    """The family's short streams; `longer`: its train rows instead, three domains cut to 1,500
    queries (ten streams) and all five to 4,000 (one), where the cheap path has time to learn;
    `drift`: its five domains' test and val rows with out-of-scope rows arriving at once or
    rising slowly; `newcomer`: each domain as a new tenant beside the other four (see the
    module's docstring)."""
    domains = FAMILIES[family]
    if newcomer:
        return [
            ShortStream(f"{d}/test+val after {'+'.join(o for o in domains if o != d)}/train",
                        "a new tenant on a warm cache, 750", (d,), ("test", "val"),
                        incumbent=tuple(o for o in domains if o != d))
            for d in domains
        ]  # fmt: skip
    if drift:
        name = "+".join(domains) + "/test+val+oos"
        return [
            ShortStream(name, "out of scope from query 2,000", domains, ("test", "val"), oos_from=2000),
            ShortStream(name, "out-of-scope share rising from 1,000", domains, ("test", "val"), oos_from=1000,
                        oos_ramp=True),
        ]  # fmt: skip
    if longer:
        out = [
            ShortStream("+".join(c) + "/train", "three domains, train, 1,500", c, ("train",), 1500)
            for c in itertools.combinations(domains, 3)
        ]
        return out + [
            ShortStream("+".join(domains) + "/train", "five domains, train, 4,000", domains, ("train",), 4000)
        ]
    out = [ShortStream(f"{d}/train", "one domain, train, 1,000", (d,), ("train",), 1000) for d in domains]
    out += [ShortStream(f"{d}/test+val", "one domain, test+val, 750", (d,), ("test", "val")) for d in domains]
    out += [
        ShortStream("+".join(c) + "/test", "three domains, test, 1,350", c, ("test",))
        for c in itertools.combinations(domains, 3)
    ]
    return out


def run_family(
    data: str,
    family: str,
    *,
    seeds: Sequence[int] = (0, 1),
    bound: float = 0.02,
    policy: Callable[[int], Policy] | None = None,
    embedder=None,
    progress: bool = False,
    cheap_accuracy: float | None = None,
    longer: bool = False,
    drift: bool = False,
    wordings: bool = False,
    newcomer: bool = False,
) -> dict:
    """Replay every stream of `family` with the policy and with static cut-offs; the report.
    With `cheap_accuracy`, the cheap path runs too, with the simulated cheap model's defaults
    for abstains and cost (`memcache eval --cheap`); with `wordings`, each paid answer is worded
    anew (`memcache eval --worded`); with `newcomer`, each domain arrives as a new tenant (the
    figures are its own; a static cut-off learns nothing, so its figures are the newcomer's
    queries replayed alone)."""
    memo = MemoEmbedder(embedder or SentenceTransformerEmbedder())
    make = policy or (lambda seed: CalibratedPolicy(bound, seed=seed))
    runs, static = [], {}
    for stream in streams_of(family, longer, drift, newcomer):
        wanted = load_intents(data, stream.splits, {"domain": set(stream.domains)})
        if stream.oos_from is not None:
            wanted += out_of_scope_half(data, family)
        incumbent = load_intents(data, ("train",), {"domain": set(stream.incumbent)}) if stream.incumbent else []
        memo.prefill([r.text for r in wanted + incumbent])
        for seed in seeds:
            reader = None if cheap_accuracy is None else SimulatedCheapModel(cheap_accuracy, seed=seed)
            order = (
                newcomer_order(wanted, incumbent, seed)
                if incumbent
                else shuffled(wanted, seed, stream.oos_from, stream.oos_ramp)[: stream.limit]
            )
            records = replay_intents(
                order, policy=make(seed), embedder=memo, seed=seed, cheap_model=reader, wordings=wordings,
                shuffle=False,
            )  # fmt: skip
            beside = {}
            if incumbent:  # the newcomer's figures, the incumbent's beside them
                others = summarize([r for r in records if r.tenant == INCUMBENT], max_false_hit_rate=bound)
                beside = {f"incumbent_{k}": others[k] for k in ("false_hit_rate", "correct_hit_rate")}
                records = [r for r in records if r.tenant == NEWCOMER]
                order = [q for q in order if q.tenant == NEWCOMER]
            summary = {**summarize(records, max_false_hit_rate=bound), **beside}
            if reader is not None:
                summary.update(cheap_path(records, reader.cost))
            runs.append({"stream": stream.name, "kind": stream.kind, "seed": seed, **summary})
            curve = static_replay(order, memo.embed([q.text for q in order]), STATIC_THRESHOLDS)
            for threshold, (hits, wrong) in curve.items():
                static.setdefault(threshold, []).append((len(order), hits, wrong))
            if progress:
                print(
                    f"{stream.name} seed {seed}: {summary['false_hit_rate']:.4f} false, "
                    f"{summary['correct_hit_rate']:.4f} correct",
                    flush=True,
                )
    return {
        "family": family
        + (" (longer train-row streams)" if longer else "")
        + (" (drift)" if drift else "")
        + (" (a new tenant on a warm cache)" if newcomer else "")
        + (" (worded answers)" if wordings else ""),
        "bound": bound,
        "seeds": list(seeds),
        "runs": runs,
        "rows": table(runs, bound),
        "best_static": best_static(static, bound),
    }


def table(runs: Sequence[dict], bound: float) -> list[dict]:
    """One row per stream kind and one for all: means beside streams over / streams."""
    groups = {"all": runs}
    for run in runs:
        groups.setdefault(run["kind"], []).append(run)
    out = []
    for kind, group in groups.items():
        rates = np.array([run["false_hit_rate"] for run in group])
        worst = [run["max_running_false_hit_rate"] for run in group]
        out.append(
            {
                "streams": kind,
                "n": len(group),
                "false_hit_rate_mean": float(rates.mean()),
                "false_hit_rate_max": float(rates.max()),
                "over_bound": f"{int((rates > bound).sum())}/{len(group)}",
                "crossed_after_warmup": f"{sum(w is not None and w > bound for w in worst)}/{len(group)}",
                "correct_hit_rate_mean": float(np.mean([run["correct_hit_rate"] for run in group])),
                "strong_calls_mean": float(np.mean([run["strong_calls"] for run in group])),
                "first_hit_median": float(np.median([run["first_hit_query"] or 0 for run in group])),
            }
        )
        if "false_answer_rate" in group[0]:  # the cheap path ran: everything served without the strong model
            answers = np.array([run["false_answer_rate"] for run in group])
            worst = [run["max_running_false_answer_rate"] for run in group]
            out[-1].update(
                false_answer_rate_mean=float(answers.mean()),
                false_answer_rate_max=float(answers.max()),
                answers_over_bound=f"{int((answers > bound).sum())}/{len(group)}",
                answers_crossed_after_warmup=f"{sum(w is not None and w > bound for w in worst)}/{len(group)}",
                cheap_answer_rate_mean=float(np.mean([run["cheap_answer_rate"] for run in group])),
                cost_mean=float(np.mean([run["cost"] for run in group])),
            )
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m memcache.eval.validation", description=__doc__.splitlines()[0])
    parser.add_argument("data", help="clinc150.jsonl (rows with a domain field)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="validation")
    parser.add_argument("--seed", default="0,1", help="shuffles of each stream")
    parser.add_argument("--max-false-hit-rate", type=float, default=0.02)
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--cheap-accuracy", type=float, default=None, help="run the cheap path too (memcache eval)")
    parser.add_argument("--worded", action="store_true", help="each paid answer worded anew (memcache eval --worded)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--longer", action="store_true", help="train-row streams of 1,500 and 4,000 queries instead")
    kind.add_argument(
        "--drift", action="store_true", help="streams whose traffic changes: out-of-scope questions arriving or rising"
    )
    kind.add_argument("--newcomer", action="store_true", help="each domain a new tenant beside the other four")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run_family(
        args.data,
        args.family,
        seeds=[int(s) for s in args.seed.split(",")],
        bound=args.max_false_hit_rate,
        progress=True,
        cheap_accuracy=args.cheap_accuracy,
        longer=args.longer,
        drift=args.drift,
        wordings=args.worded,
        newcomer=args.newcomer,
    )
    for row in report["rows"]:
        print(json.dumps(row))
    print("best static cut-off in hindsight:", json.dumps(report["best_static"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
