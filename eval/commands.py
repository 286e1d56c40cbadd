"""`memcache eval` and `memcache calibrate`: the replay protocol behind a command line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from memcache.embedding import SentenceTransformerEmbedder
from memcache.errors import ConfigError
from memcache.eval.data import OOS, load_csv, load_intents, load_pairs, pair_groups
from memcache.eval.metrics import (
    TENANT_KEYS,
    WARMUP_HITS,
    across_seeds,
    best_static,
    cheap_path,
    hit_rates,
    summarize,
    tenant_figures,
)
from memcache.eval.replay import (
    MemoEmbedder,
    QueryRecord,
    SimulatedCheapModel,
    replay_intents,
    replay_pairs,
    shuffled,
    static_replay,
)
from memcache.policy import CalibratedPolicy, Policy, ThresholdPolicy, neighbourhood_features
from memcache.types import Decision

SWEEP_THRESHOLDS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98)
HINDSIGHT_THRESHOLDS = tuple(round(0.5 + 0.01 * i, 2) for i in range(51))  # 0.50 to 1.00: the hindsight cut-off's grid


@dataclass
class Stream:
    """A loaded data set, ready to replay with any policy.

    `limit` cuts an intent stream to its first N queries after the shuffle (a short stream of
    the whole set); pairs files are cut when read, to their first N pairs.
    """

    kind: str
    items: list
    texts: list[str] = field(default_factory=list)
    limit: int | None = None

    def replay(
        self,
        policy: Policy,
        embedder,
        *,
        seed: int,
        warm=(),
        progress: bool = False,
        shadow_audits: bool = True,
        oos_from: int | None = None,
        oos_ramp: bool = False,
        cheap_model: SimulatedCheapModel | None = None,
        wordings: bool = False,
    ) -> list[QueryRecord]:
        options = {
            "policy": policy,
            "embedder": embedder,
            "seed": seed,
            "progress": progress,
            "shadow_audits": shadow_audits,
        }
        if self.kind == "pairs":  # no out-of-scope queries: run_eval refuses --oos-from here
            return replay_pairs(self.items, **options)
        return replay_intents(
            self.items, warm=warm, oos_from=oos_from, oos_ramp=oos_ramp, limit=self.limit, cheap_model=cheap_model,
            wordings=wordings, **options,
        )  # fmt: skip

    def sweep(self, thresholds, embedder, *, seed: int, warm=(), oos_from=None, oos_ramp=False) -> list[dict]:
        """One row per static cosine cut-off on the stream in `seed`'s order. Intent streams are
        computed from one similarity matrix (`static_replay`); pairs streams replay the engine."""
        if self.kind == "pairs":
            return [
                {"threshold": t, **summarize(self.replay(ThresholdPolicy(t), embedder, seed=seed))} for t in thresholds
            ]
        curve = self.static_hits(thresholds, embedder, seed, warm, oos_from, oos_ramp)
        return [sweep_row(threshold, *row) for threshold, row in curve.items()]

    def static_hits(
        self, thresholds, embedder, seed: int, warm=(), oos_from=None, oos_ramp=False
    ) -> dict[float, tuple[int, int, int]]:
        """{cut-off: (queries, hits, wrong hits)} of static cosine cut-offs on the intent stream
        in `seed`'s order."""
        order = shuffled(self.items, seed, oos_from, oos_ramp)[: self.limit]
        vectors = embedder.embed([q.text for q in order])
        warm_vectors = embedder.embed([q.text for q in warm]) if warm else None
        curve = static_replay(order, vectors, thresholds, warm, warm_vectors)
        return {threshold: (len(order), hits, wrong) for threshold, (hits, wrong) in curve.items()}


def sweep_row(threshold: float, n: int, hits: int, wrong: int) -> dict:
    """One static cut-off's figures on one stream, as the `--sweep` table shows them."""
    return {
        "threshold": threshold,
        "queries": n,
        "hits": hits,
        "wrong_hits": wrong,
        **hit_rates(n, hits, wrong),
        "strong_calls": (n - hits) / n if n else 0.0,  # every miss; static cut-offs audit nothing
    }


def hindsight_static(
    curves: dict[float, list[tuple[int, int, int]]], runs: Sequence[dict], bounds: Sequence[float], seeds: int
) -> list[dict]:
    """Per bound, the best static cut-off in hindsight over the replayed shuffles (`best_static`
    of `curves`: per cut-off, one (queries, hits, wrong hits) per shuffle) beside the policy's
    mean correct hits on the same shuffles: the comparison a user needs to judge the policy on
    a data set, since no fixed threshold can be chosen before its traffic."""
    out = []
    for bound in bounds:
        policy_correct = [run["correct_hit_rate"] for run in runs if run["max_false_hit_rate"] == bound]
        mean = sum(policy_correct) / len(policy_correct)
        best = best_static(curves, bound)
        ratio = mean / best["correct_hit_rate_mean"] if best and best["correct_hit_rate_mean"] > 0 else None
        out.append(
            {
                "max_false_hit_rate": bound,
                "seeds": seeds,
                "best_static_threshold": None if best is None else best["threshold"],
                "best_static_correct_hit_rate_mean": None if best is None else best["correct_hit_rate_mean"],
                "best_static_false_hit_rate_mean": None if best is None else best["false_hit_rate_mean"],
                "best_static_over_bound": None if best is None else best["over_bound"],
                "policy_correct_hit_rate_mean": mean,
                "policy_vs_best_static": ratio,
            }
        )
    return out


def _splits(value: str | None) -> tuple[set[str] | None, bool]:
    """--splits names data splits; the name "oos" keeps out-of-scope rows of those splits."""
    if not value:
        return None, True
    names = {s.strip() for s in value.split(",") if s.strip()}
    return (names - {OOS}) or None, OOS in names


def parse_where(clauses: Sequence[str] | None) -> dict[str, set[str]] | None:
    """`--where FIELD=V1,V2` clauses as {field: values}; rows must match every clause."""
    if not clauses:
        return None
    where: dict[str, set[str]] = {}
    for clause in clauses:
        name, sep, values = clause.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise ConfigError(f"--where takes FIELD=VALUE[,VALUE...], got {clause!r}")
        where.setdefault(name.strip(), set()).update(v.strip() for v in values.split(",") if v.strip())
    return where


def _where_text(where: dict[str, set[str]] | None) -> str:
    return "".join(f"; {field}={','.join(sorted(values))}" for field, values in (where or {}).items())


def load_stream(
    path: str,
    fmt: str | None,
    splits: str | None,
    text_col: str,
    label_col: str,
    limit: int | None = None,
    where: dict[str, set[str]] | None = None,
    oos_labels: Collection[str] = (),
    tenant_col: str | None = None,
) -> Stream:
    """The stream `memcache eval` replays; rows labeled one of `oos_labels` (a data set's own name
    for "no intent", e.g. NO_NODES_DETECTED) are out of scope, as CLINC150's `oos` rows are."""
    fmt = data_format(path, fmt)
    if limit is not None and limit < 1:
        raise ConfigError("--limit takes a number of queries (pairs) >= 1")
    if fmt in ("pairs", "groups") and (where or oos_labels or tenant_col):
        raise ConfigError(
            "--where, --oos-label and --tenant-col take intent files; pairs files have no labels of their own"
        )
    if fmt == "pairs":
        pairs = load_pairs(path)[:limit]
        return Stream("pairs", pairs, [t for p in pairs for t in (p.a, p.b)])
    if fmt == "groups":  # a pairs file replayed as one stream of questions (see pair_groups)
        rows = pair_groups(load_pairs(path)[:limit])
        return Stream("intents", rows, [r.text for r in rows])
    names, keep_oos = _splits(splits)
    if fmt == "csv":
        rows = load_csv(path, text_col=text_col, label_col=label_col, splits=names, where=where, tenant_col=tenant_col)
    else:
        rows = load_intents(path, names, where, tenant_col)
    rows = [replace(r, label=OOS) if r.label in oos_labels else r for r in rows]
    if splits and not keep_oos:
        rows = [r for r in rows if r.label != OOS]
    if not rows:
        asked = [f"--splits {splits}"] if splits else []
        asked += [f"--where {field}={','.join(sorted(values))}" for field, values in (where or {}).items()]
        raise ConfigError(f"no rows in {path}" + (f" for {' '.join(asked)}" if asked else ""))
    return Stream("intents", rows, [r.text for r in rows], limit)


class LabelCollector:
    """A policy that never serves and keeps every paid label: the offline calibration pass."""

    max_false_hit_rate = 1.0

    def __init__(self) -> None:
        self.labels: list[tuple[tuple[float, ...], bool]] = []

    def decide(self, candidates, entries) -> Decision:
        if not candidates:
            return Decision("miss", None, float("-inf"), 0.0)
        entry_id, s1, features = neighbourhood_features(candidates, entries)
        return Decision("miss", entry_id, s1, 0.0, features)

    def observe(self, features: Sequence[float], correct: bool, *, key: int | None = None) -> None:
        self.labels.append((tuple(features), bool(correct)))


def _table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "-" if value is None else str(value)

    widths = [max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(cell(r.get(c)).rjust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


REPORT_COLUMNS = (
    "seed",
    "max_false_hit_rate",
    "queries",
    "hit_rate",
    "false_hit_rate",
    "max_running_false_hit_rate",
    "correct_hit_rate",
    "strong_calls",
    "first_hit_query",
    "lookup_p50_ms",
)
MORE_COLUMNS = ("reusable_rate", "lookup_p99_ms", "claimed_false_hit_rate", "claim_shortfall", "policy_claim_ratio")
LEGEND = (
    "rates are shares of queries, false_hit_rate of hits (wrong hits / hits); max_running_false_hit_rate: the worst "
    f"running false-hit rate from the {WARMUP_HITS}th hit on; strong_calls: queries the strong model was paid for "
    "(misses and audits); first_hit_query: index of the first hit"
)
MORE_LEGEND = (
    "reusable_rate: queries whose right answer was already stored; claimed_false_hit_rate: the policy's estimate at the "
    "end; claim_shortfall: wrong hits over what the served confidences predicted; policy_claim_ratio: the policy's own "
    "estimate of that factor, from its audits"
)
CHEAP_COLUMNS = (
    "cheap_accuracy", "cheap_calls", "cheap_answer_rate", "false_answer_rate", "max_running_false_answer_rate",
    "strong_calls", "cost",
)  # fmt: skip
ACROSS_SEEDS_CHEAP_COLUMNS = (
    "max_false_hit_rate", "cheap_accuracy", "seeds", "false_answer_rate_mean", "false_answer_rate_max",
    "seeds_over_bound_answers", "cheap_answer_rate_mean", "cost_mean", "cost_max",
)  # fmt: skip
CHEAP_LEGEND = (
    "cheap_calls: queries the cheap model was asked about; cheap_answer_rate: queries it answered; false_answer_rate: "
    "wrong answers served without the strong model (hits and cheap answers) over those answers; cost: strong calls + "
    "cheap cost x cheap calls, over sending every query to the strong model"
)
AFTER_SHIFT_KEYS = ("queries", "hit_rate", "false_hit_rate", "correct_hit_rate", "strong_calls")
ACROSS_SEEDS_COLUMNS = (
    "max_false_hit_rate",
    "seeds",
    "false_hit_rate_mean",
    "false_hit_rate_max",
    "seeds_over_bound",
    "seeds_crossed_after_warmup",
    "correct_hit_rate_mean",
    "correct_hit_rate_min",
    "strong_calls_mean",
    "strong_calls_max",
)
HINDSIGHT_COLUMNS = (
    "max_false_hit_rate", "seeds", "best_static_threshold", "best_static_correct_hit_rate_mean",
    "best_static_false_hit_rate_mean", "best_static_over_bound", "policy_correct_hit_rate_mean", "policy_vs_best_static",
)  # fmt: skip
HINDSIGHT_LEGEND = (
    "best_static: the cut-off with the most correct hits whose mean false-hit rate over these shuffles met the bound, "
    "chosen knowing every answer; best_static_over_bound: its shuffles that ended above the bound; "
    "policy_vs_best_static: the policy's mean correct-hit rate over the best static cut-off's"
)


def run_eval(args: argparse.Namespace) -> dict:
    """Replay every (bound, cheap accuracy, shuffle, audit coin) the arguments ask for, beside
    the static cut-offs if `--sweep`; print the tables, write the JSON and the plot."""
    simulated = _check_eval_args(args)  # the simulated cheap model is replayed
    cheap = simulated or bool(args.cheap_model)
    where = parse_where(args.where)
    stream = load_stream(
        args.data, args.format, args.splits, args.text_col, args.label_col, args.limit, where, args.oos_label,
        args.tenant_col,
    )  # fmt: skip
    warm = (
        load_stream(
            args.data,
            args.format,
            args.warm,
            args.text_col,
            args.label_col,
            where=where,
            oos_labels=args.oos_label,
            tenant_col=args.tenant_col,
        ).items
        if args.warm
        else ()
    )
    # The first replay encodes each query online (its latencies include the model); later
    # replays of the same stream reuse those vectors, so their latencies exclude encoding.
    embedder = MemoEmbedder(SentenceTransformerEmbedder(args.embedding_model))
    bounds = [float(b) for b in str(args.max_false_hit_rate).split(",")]
    seeds = [int(s) for s in str(args.seed).split(",")]
    audit_seeds = [int(s) for s in str(args.audit_seed).split(",")] if args.audit_seed is not None else None
    accuracies = [float(p) for p in str(args.cheap_accuracy or "0.9").split(",")] if simulated else [None]
    plan = [
        (bound, accuracy, seed, coin)
        for bound in bounds
        for accuracy in accuracies
        for seed in seeds
        for coin in (audit_seeds or [seed])
    ]
    runs = [_replay_run(args, stream, embedder, warm, *step, first=not i) for i, step in enumerate(plan)]
    sweep, curves = _static_cut_offs(args, stream, embedder, seeds, warm)
    report = {
        "data": str(args.data),
        "format": args.format,
        "splits": args.splits,
        "oos_from": args.oos_from,
        "oos_ramp": args.oos_ramp,
        "runs": [{k: v for k, v in run.items() if k != "_records"} for run in runs],
        "sweep": sweep,
    }
    if curves:
        report["best_static"] = hindsight_static(curves, report["runs"], bounds, len(seeds))
    if len(runs) > len(bounds):  # several runs per bound: their spread is what to read
        report["across_seeds"] = across_seeds(report["runs"])
    _print_report(args, report, seeds, audit_seeds, cheap)
    if args.json:
        Path(args.json).write_text(json.dumps(report["runs"][0] if len(runs) == 1 and not sweep else report, indent=2))
    if args.plot:
        from memcache.eval.plot import plot_report

        first = runs[0]
        plot_report(
            args.plot,
            title=f"{Path(args.data).name} ({args.splits or 'all'}{_where_text(where)}), seed {first['seed']}",
            records=first["_records"],
            summary=first,
            sweep=sweep,
        )
    return report


def data_format(path: str, fmt: str | None) -> str:
    """The `--format` asked for, else what the file's name says: csv for a .csv file, else intents."""
    if fmt is not None:
        return fmt
    return "csv" if Path(path).suffix.lower() == ".csv" else "intents"


def _check_eval_args(args: argparse.Namespace) -> bool:
    """Refuse combinations that cannot be replayed, before anything loads; True where the
    simulated cheap model is replayed (`--cheap`, `--cheap-accuracy`)."""
    args.format = data_format(args.data, args.format)
    if args.oos_from is not None and (args.oos_from < 0 or args.format == "pairs"):
        raise ConfigError(
            "--oos-from takes a query position >= 0, on an intent stream (pairs have no out-of-scope queries)"
        )
    if args.oos_ramp and args.oos_from is None:
        raise ConfigError("--oos-ramp needs --oos-from N, where the out-of-scope share starts rising")
    simulated = args.cheap or args.cheap_accuracy is not None
    if (simulated or args.strong_model) and args.format == "pairs":
        raise ConfigError("the cheap path and real models (--cheap, --strong-model) replay intent streams, not pairs")
    if args.cheap_model and not args.strong_model:
        raise ConfigError("--cheap-model needs --strong-model: real models replace the simulated ones together")
    if args.worded and (args.format == "pairs" or args.strong_model):
        raise ConfigError("--worded rewords the simulated strong model's answers on an intent stream "
                          "(real models, --strong-model, word their own)")  # fmt: skip
    if args.strong_model and (simulated or args.warm or args.oos_from is not None or args.tenant_col):
        raise ConfigError(
            "with --strong-model, leave out --cheap/--cheap-accuracy, --warm, --oos-from and --tenant-col"
        )
    return simulated


def _replay_run(
    args: argparse.Namespace, stream: Stream, embedder, warm, bound: float, accuracy: float | None, seed: int,
    audit_seed: int, *, first: bool,
) -> dict:  # fmt: skip
    """One replay with a fresh policy (and simulated cheap model, at `accuracy`): its summary
    row, with the records kept under `_records` for the plot."""
    reader = None
    if accuracy is not None:
        reader = SimulatedCheapModel(accuracy, args.cheap_abstain, args.cheap_cost, seed=audit_seed)
    if args.calibration:
        policy = CalibratedPolicy.from_file(args.calibration, max_false_hit_rate=bound, seed=audit_seed)
    else:
        policy = CalibratedPolicy(bound, seed=audit_seed)
    shadow = not args.escalate_audits
    if args.strong_model:  # real models through LiteLLM (memcache.eval.real)
        records = _replay_real(args, stream, policy, embedder, seed)
    else:
        records = stream.replay(
            policy,
            embedder,
            seed=seed,
            warm=warm,
            progress=True,
            shadow_audits=shadow,
            oos_from=args.oos_from,
            oos_ramp=args.oos_ramp,
            cheap_model=reader,
            wordings=args.worded,
        )
    summary = summarize(records, max_false_hit_rate=bound, claimed=policy.bound)
    if args.tenant_col:
        summary.update(tenant_figures(records, bound))
    if args.worded:
        summary["worded"] = True
    if args.strong_model and args.cheap_model:
        summary.update(cheap_model=args.cheap_model, **cheap_path(records, args.cheap_cost))
    elif reader is not None:
        summary.update(
            cheap_accuracy=accuracy, cheap_abstain=args.cheap_abstain, **cheap_path(records, args.cheap_cost)
        )
    run = {
        "seed": seed,
        "audit_seed": audit_seed,
        **summary,
        "shadow_audits": shadow,
        "latency_includes_encoding": first,
        "shifts_detected": list(policy.shifts_detected),
        "policy_claim_ratio": policy.claim_ratio,
        "_records": records,
    }
    if args.oos_from is not None:  # the traffic after out-of-scope queries start arriving
        after = summarize(records[args.oos_from :], max_false_hit_rate=bound)
        run["after_oos_from"] = {key: after[key] for key in AFTER_SHIFT_KEYS}
    return run


def _static_cut_offs(args: argparse.Namespace, stream: Stream, embedder, seeds: list[int], warm) -> tuple[list, dict]:
    """`--sweep`: the table's static cut-offs on the first shuffle, and for intent streams every
    hindsight cut-off's hits on every shuffle (for the best static cut-off in hindsight)."""
    if not args.sweep:
        return [], {}
    if stream.kind != "intents":
        return stream.sweep(SWEEP_THRESHOLDS, embedder, seed=seeds[0]), {}
    curves: dict[float, list] = {}
    order = {"warm": warm, "oos_from": args.oos_from, "oos_ramp": args.oos_ramp}
    for seed in seeds:
        for threshold, row in stream.static_hits(HINDSIGHT_THRESHOLDS, embedder, seed, **order).items():
            curves.setdefault(threshold, []).append(row)
    return [sweep_row(threshold, *curves[threshold][0]) for threshold in SWEEP_THRESHOLDS], curves


def _print_report(
    args: argparse.Namespace, report: dict, seeds: list[int], audit_seeds: list[int] | None, cheap: bool
) -> None:
    """The tables `memcache eval` prints: one row per run, then the cheap path, the traffic after
    `--oos-from`, the spread across seeds, and the static cut-offs."""
    runs = report["runs"]
    run_ids = ("seed",) if audit_seeds is None else ("seed", "audit_seed")
    columns = (*run_ids, *REPORT_COLUMNS[1:], *(MORE_COLUMNS if args.all_columns else ()))
    print(_table(runs, columns))
    print(LEGEND + (f"; {MORE_LEGEND}" if args.all_columns else " (--all-columns for more)"))
    if cheap:
        print("\nthe cheap path (simulated cheap model):")
        print(_table(runs, (*run_ids, *CHEAP_COLUMNS)))
        print(CHEAP_LEGEND)
    if args.oos_from is not None:
        arriving = "out-of-scope share rising" if args.oos_ramp else "out-of-scope queries arriving"
        print(f"\nfrom query {args.oos_from} on ({arriving}):")
        rows = [
            {**{key: run[key] for key in run_ids}, **run["after_oos_from"], "shifts_detected": run["shifts_detected"]}
            for run in runs
        ]
        print(_table(rows, (*run_ids, *AFTER_SHIFT_KEYS, "shifts_detected")))
    for run in runs:
        if "tenants" in run:
            print(f"\nper tenant, seed {run['seed']} ({run['tenants_over_bound']} over the bound):")
            print(_table([{"tenant": name, **row} for name, row in run["tenants"].items()], ("tenant", *TENANT_KEYS)))
    if "across_seeds" in report:
        which = ",".join(map(str, seeds))
        if audit_seeds is not None:
            which += "; audit seeds " + ",".join(map(str, audit_seeds))
        print(f"\nacross seeds ({which}):")
        print(_table(report["across_seeds"], ACROSS_SEEDS_COLUMNS))
        if cheap:
            print(_table(report["across_seeds"], ACROSS_SEEDS_CHEAP_COLUMNS))
    if report["sweep"]:
        print(f"\nstatic cosine thresholds (same stream, seed {seeds[0]}):")
        print(_table(report["sweep"], ("threshold", "hit_rate", "false_hit_rate", "correct_hit_rate", "strong_calls")))
    if report.get("best_static"):
        print(
            f"\nbest static cut-off in hindsight (0.50-1.00, over seeds {','.join(map(str, seeds))}) beside the policy:"
        )
        print(_table(report["best_static"], HINDSIGHT_COLUMNS))
        print(HINDSIGHT_LEGEND)


def _replay_real(args: argparse.Namespace, stream: Stream, policy: Policy, embedder, seed: int) -> list[QueryRecord]:
    from memcache.eval.real import replay_real

    options = {k: v for k, v in (("api_base", args.api_base), ("api_key", args.api_key)) if v}
    return replay_real(
        stream.items, policy=policy, embedder=embedder, strong_model=args.strong_model, cheap_model=args.cheap_model,
        judge_model=args.judge_model, options=options, seed=seed, limit=stream.limit,
    )  # fmt: skip


def run_calibrate(args: argparse.Namespace) -> CalibratedPolicy:
    where = parse_where(args.where)
    stream = load_stream(
        args.data, args.format, args.splits, args.text_col, args.label_col, args.limit, where, args.oos_label
    )
    embedder = MemoEmbedder(SentenceTransformerEmbedder(args.embedding_model))
    embedder.prefill(stream.texts, progress=True)
    collector = LabelCollector()
    stream.replay(collector, embedder, seed=args.seed, progress=True)
    policy = CalibratedPolicy(float(args.max_false_hit_rate))
    policy.load_labels(collector.labels)
    policy.save(args.out)
    threshold = "none (bound not reachable on this data)" if policy.threshold is None else f"{policy.threshold:.4f}"
    kept = (
        ""
        if policy.labels_in_use == len(collector.labels)
        else f" (the newest {policy.labels_in_use:,} kept: max_labels)"
    )
    print(f"{len(collector.labels)} labels{kept}; confidence cut-off {threshold}; wrote {args.out}")
    return policy


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="JSONL or CSV file of labeled queries")
    parser.add_argument(
        "--format",
        choices=("intents", "pairs", "groups", "csv"),
        default=None,
        help="default: csv for a .csv file, else intents (JSONL); "
        "groups: a pairs file replayed as one stream, duplicates joined into groups",
    )
    parser.add_argument(
        "--splits", default=None, help="comma-separated splits to replay; 'oos' keeps out-of-scope rows"
    )
    parser.add_argument("--text-col", default="text")
    parser.add_argument("--label-col", default="label")
    parser.add_argument(
        "--oos-label",
        type=lambda value: {v.strip() for v in value.split(",") if v.strip()},
        default=set(),
        metavar="L1,L2",
        help="labels that mean 'no intent' in this file (e.g. NO_NODES_DETECTED): such rows are out of scope, "
        "as label oos is (with --splits, name oos there too to keep them)",
    )
    parser.add_argument("--embedding-model", default=None, help="sentence-transformers name or path")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="a short stream: the first N queries of each shuffled replay (pairs files: the first N pairs)",
    )
    parser.add_argument(
        "--tenant-col",
        default=None,
        metavar="FIELD",
        help="the field (column) naming each row's tenant: each tenant is a scope of its own, reported on its own",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=None,
        metavar="FIELD=V1,V2",
        help="keep only intent rows whose FIELD is one of the values, e.g. --where domain=travel,home; repeatable",
    )


def add_eval_commands(sub) -> None:
    ev = sub.add_parser("eval", help="replay a labeled stream and report hits and false hits")
    _add_data_args(ev)
    ev.add_argument("--warm", default=None, help="splits written to the cache before the replay")
    ev.add_argument("--seed", default="0", help="shuffle seed, or several: 0,1,2 (also the audit coin's seed)")
    ev.add_argument(
        "--audit-seed",
        default=None,
        help="the policy's audit-coin seed, or several, replayed on each shuffle (default: the shuffle seed); "
        "one shuffle with many coins shows how much of a run is the coin",
    )
    ev.add_argument("--max-false-hit-rate", default="0.02", help="the bound, or several: 0.01,0.02,0.05")
    ev.add_argument("--calibration", default=None, help="start the policy from this calibration file")
    ev.add_argument("--json", default=None, help="write the report as JSON here")
    ev.add_argument("--plot", default=None, help="write a PNG plot here")
    ev.add_argument("--sweep", action="store_true", help="also replay static cosine thresholds for comparison")
    ev.add_argument(
        "--oos-from",
        type=int,
        default=None,
        metavar="N",
        help="traffic that changes: out-of-scope queries arrive only from query N on (reported separately)",
    )
    ev.add_argument(
        "--oos-ramp",
        action="store_true",
        help="with --oos-from N: a gradual change, the out-of-scope share rising linearly from none at N to the end",
    )
    ev.add_argument("--all-columns", action="store_true", help="print every figure of each run, not only the main ones")
    ev.add_argument(
        "--escalate-audits",
        action="store_true",
        help="an audited query gets the strong model's answer (default: the stored answer is served while it is checked)",
    )
    ev.add_argument(
        "--worded",
        action="store_true",
        help="the simulated strong model words each answer anew, as a real one does, and a judge that "
        "knows their meaning compares them (default: one answer text per intent)",
    )
    ev.add_argument(
        "--cheap", action="store_true", help="replay the cheap path too, with the simulated cheap model (docs/EVAL.md)"
    )
    ev.add_argument(
        "--cheap-accuracy",
        default=None,
        metavar="P",
        help="the simulated cheap model names the right stored answer with probability P when it was passed "
        "(implies --cheap; several: 0.6,0.9,0.98; default 0.9)",
    )
    ev.add_argument(
        "--cheap-abstain", type=float, default=0.5, metavar="A", help="otherwise it abstains with probability A"
    )
    ev.add_argument(
        "--cheap-cost", type=float, default=0.05, metavar="C", help="a cheap call's cost as a share of a strong call's"
    )
    real = ev.add_argument_group("real models (for users with keys; each query is a real call)")
    real.add_argument("--strong-model", default=None, help="LiteLLM name of the strong model, e.g. openai/gpt-4o")
    real.add_argument("--cheap-model", default=None, help="LiteLLM name of the cheap model, e.g. openai/gpt-4o-mini")
    real.add_argument("--judge-model", default=None, help="LiteLLM name of the judge (default: answers must match)")
    real.add_argument("--api-base", default=None, help="the models' server, e.g. http://127.0.0.1:8000/v1")
    real.add_argument("--api-key", default=None, help="its key (default: the provider's variable)")
    ev.set_defaults(func=lambda args: run_eval(args) and 0)

    cal = sub.add_parser("calibrate", help="fit the decision policy from labeled data")
    _add_data_args(cal)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--max-false-hit-rate", type=float, default=0.02)
    cal.add_argument("--out", required=True, help="calibration JSON to write")
    cal.set_defaults(func=lambda args: run_calibrate(args) and 0)
