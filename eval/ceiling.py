"""What a learned gate could serve with hindsight: the headroom above any certified rule.

    python -m memcache.eval.ceiling ../shared/data/clinc150.jsonl --splits test,oos --seed 0,1,2,3,4

A replay says what the policy served; this says what was there to serve. Each query of a
shuffled stream meets a memory that holds every earlier query with its right answer (as if all
had been paid for), and the simulated cheap model of `memcache eval` (`SimulatedCheapModel`)
reads its nearest five answers. Two models (gradient-boosted trees, or with `--model` a logistic
model with or without pairwise products) score, from what the controller could observe, whether
the nearest answer is right (a hit) and whether the cheap model's reply is. Then, per stream,
the hit and cheap cut-offs are chosen in hindsight: the pair with the lowest `cost` (as
`memcache eval` counts it) whose served wrong answers stay under the bound.

Nothing here is certified, so these are ceilings, not results: no label is paid for before it
is learned, the cut-offs know the stream's answers, and with `--learn pooled` each query is
scored by models fitted on the other queries of every shuffle (five folds, a text never in its
own fold's fit). `--learn online` fits each stream's models on its own earlier queries only
(refitted every 250 queries, from the 200th on): what a young memory could know; on a short
stream that learner is cruder than the policy's (which refits far more often), so there it is a
reference to read beside the replay, not a bound on it. `--family` runs each short stream of
the validation protocol's family (`memcache.eval.validation`). Where the gap between a replay
and this lies (learning, or the price of the certificate) says where to work.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memcache import cheap
from memcache.cheap_gate import used_pair_features
from memcache.embedding import SentenceTransformerEmbedder
from memcache.eval.commands import load_stream, parse_where
from memcache.eval.data import LabeledQuery, load_intents, right_answer
from memcache.eval.replay import MemoEmbedder, SimulatedCheapModel, shuffled
from memcache.eval.validation import FAMILIES, streams_of

NEAREST_KEYS = 10  # the keys whose agreement with the nearest entry is a feature, as in the policy
REFIT_EVERY, FIRST_FIT = 250, 200  # --learn online


@dataclass(frozen=True)
class Neighbourhood:
    """One query against the memory of every query before it: features, the nearest distinct
    answers (as the cheap model reads them, nearest first) and which of them is right."""

    features: tuple[float, ...]
    pairs: tuple[cheap.MemoryPair, ...]
    right: int | None


def neighbourhoods(order: Sequence[LabeledQuery], vectors: np.ndarray) -> list[Neighbourhood]:
    """Every query after the first, against all earlier ones; an out-of-scope query's answer is its own
    (`right_answer`: an exact repeat shares it)."""
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    answers = [right_answer(q) for q in order]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    out = []
    for t in range(len(order)):
        if t:
            sims = vectors[:t] @ vectors[t]
            nearest = np.argsort(-sims)[: 8 * cheap.PAIRS]
            seen: dict[str, int] = {}  # answer: its nearest key
            for k in nearest.tolist():
                if answers[k] not in seen:
                    seen[answers[k]] = k
                    if len(seen) == cheap.PAIRS:
                        break
            keys = list(seen.values())
            top = [answers[k] for k in nearest[:NEAREST_KEYS].tolist()]
            first, second = answers[keys[0]], answers[keys[1]] if len(keys) > 1 else None
            centroid = [float(vectors[t] @ sums[a]) / np.linalg.norm(sums[a]) for a in (first, second) if a]
            entry_sims = [float(sims[k]) for k in keys] + [0.0] * (cheap.PAIRS - len(keys))
            features = (
                entry_sims[0], entry_sims[0] - entry_sims[1], top.count(first) / len(top),
                math.log1p(counts[first]), centroid[0], centroid[0] - (centroid[1] if second else 0.0),
                t / len(order), float(np.mean(sims[nearest[:NEAREST_KEYS]])), *entry_sims,
            )  # fmt: skip
            pairs = tuple(cheap.MemoryPair(k, order[k].text, answers[k], float(sims[k])) for k in keys)
            right = next((i for i, k in enumerate(keys) if answers[k] == answers[t]), None)
            out.append(Neighbourhood(features, pairs, right))
        sums[answers[t]] = sums.get(answers[t], 0) + vectors[t]
        counts[answers[t]] = counts.get(answers[t], 0) + 1
    return out


def _model(kind: str):
    """`boosted`: gradient-boosted trees; `pairwise`: a logistic model over the features and their
    pairwise products (the hit policy's form, more strongly regularized); `linear`: the features alone."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    if kind == "boosted":
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, random_state=0)
    if kind == "pairwise":
        products = PolynomialFeatures(2, include_bias=False)
        return make_pipeline(StandardScaler(), products, StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


def scores(
    x: np.ndarray, y: np.ndarray, texts: Sequence[str], streams: Sequence[int], learn: str, model: str = "boosted"
) -> np.ndarray:
    """Each row's chance of being right, from a model that never saw the row (see the module doc)."""
    out = np.zeros(len(y))
    if learn == "pooled":
        from sklearn.model_selection import GroupKFold

        for fit, held in GroupKFold(n_splits=5).split(x, y, texts):
            out[held] = (
                _model(model).fit(x[fit], y[fit]).predict_proba(x[held])[:, 1] if len(set(y[fit])) > 1 else y[fit][0]
            )
        return out
    streams = np.asarray(streams)
    for stream in np.unique(streams):
        rows = np.flatnonzero(streams == stream)
        for start in range(FIRST_FIT, len(rows), REFIT_EVERY):
            past, now = rows[:start], rows[start : start + REFIT_EVERY]
            if len(set(y[past])) > 1:
                out[now] = _model(model).fit(x[past], y[past]).predict_proba(x[now])[:, 1]
    return out


def best_cut(
    hit: tuple[np.ndarray, np.ndarray], reply: dict[int, tuple[float, bool]], bound: float, cost: float, joint=True
):
    """The hindsight cut-offs with the lowest cost whose served wrong answers stay under `bound`.

    `hit` is (score, right) per query; `reply` maps a query to its cheap reply's (score, right),
    for queries whose reply named a pair. Every query not served as a hit asks the cheap model
    (cost `cost`); one not served either way pays the strong model (1). `joint`: hits and cheap
    answers share the bound, so the hit cut-off may rise to leave the cheap model the marginal
    queries; otherwise (as memcache's two learners do) the hits take their own best cut-off and
    the cheap answers are held under the bound on their own.
    """
    score, right = hit
    n = len(score) + 1  # the stream's first query meets an empty memory
    cuts = np.unique(np.quantile(score, np.linspace(0.0, 1.0, 201))).tolist() + [math.inf]
    if reply and not joint:
        cuts = [best_cut(hit, {}, bound, cost)["cut"]]
    best = None
    for cut in cuts:
        served = score >= cut
        hits, wrong_hits = int(served.sum()), int((served & ~right).sum())
        if wrong_hits > bound * hits:
            continue
        replies = sorted((reply[i] for i in np.flatnonzero(~served).tolist() if i in reply), key=lambda r: -r[0])
        wrong = np.cumsum([not ok for _, ok in replies]) if replies else np.zeros(0)
        spent, shared = (wrong_hits, hits) if joint else (0, 0)
        answered = next((k for k in range(len(replies), 0, -1) if spent + wrong[k - 1] <= bound * (shared + k)), 0)
        wrong_answers = int(wrong[answered - 1]) if answered else 0
        row = {
            "cut": cut,
            "hits": hits,
            "wrong_hits": wrong_hits,
            "cheap_answers": answered,
            "wrong_cheap_answers": wrong_answers,
            "cost": ((n - hits - answered) + cost * (n - 1 - hits if reply else 0)) / n,
            "hits_only_cost": (n - hits) / n,
            "false_answer_rate": (wrong_hits + wrong_answers) / max(hits + answered, 1),
            "correct_rate": (hits - wrong_hits + answered - wrong_answers) / n,
        }
        if best is None or row["cost"] < best["cost"]:
            best = row
    return best


def ceiling(
    queries: Sequence[LabeledQuery],
    embedder,
    *,
    seeds: Sequence[int],
    accuracies: Sequence[float | None],
    abstain: float = 0.5,
    cost: float = 0.05,
    bound: float = 0.02,
    limit: int | None = None,
    learn: str = "pooled",
    model: str = "boosted",
    joint: bool = True,
) -> list[dict]:
    """One row per (seed, cheap accuracy); accuracy None is the hits alone."""
    orders = {seed: shuffled(queries, seed)[:limit] for seed in seeds}
    found = {seed: neighbourhoods(order, embedder.embed([q.text for q in order])) for seed, order in orders.items()}
    rows = [(seed, t, hood) for seed in seeds for t, hood in enumerate(found[seed])]
    texts = [orders[seed][t + 1].text for seed, t, _ in rows]
    streams = [seed for seed, _, _ in rows]
    x = np.array([hood.features for _, _, hood in rows])
    y = np.array([hood.right == 0 for _, _, hood in rows])
    p_hit = scores(x, y, texts, streams, learn, model)
    out = []
    for accuracy in accuracies:
        replies: dict[int, tuple[tuple[float, ...], bool]] = {}  # row: (features, right) of a reply naming a pair
        if accuracy is not None:
            readers = {seed: SimulatedCheapModel(accuracy, abstain, cost, seed=seed) for seed in seeds}
            for i, (seed, t, hood) in enumerate(rows):
                answer = right_answer(orders[seed][t + 1])
                parsed = cheap.parse_reply(readers[seed].reply(answer, hood.pairs), hood.pairs)
                if parsed is not None:
                    extra = (p_hit[i], *used_pair_features(hood.pairs, parsed))  # as the gate sees the pair
                    replies[i] = ((*hood.features, *extra), parsed.used == hood.right)
        keys = sorted(replies)
        p_reply = (
            scores(np.array([replies[i][0] for i in keys]), np.array([replies[i][1] for i in keys]),
                   [texts[i] for i in keys], [streams[i] for i in keys], learn, model)
            if keys else np.zeros(0)
        )  # fmt: skip
        scored = {i: (float(p), replies[i][1]) for i, p in zip(keys, p_reply)}
        for seed in seeds:
            mine = [i for i, s in enumerate(streams) if s == seed]
            hit = (p_hit[mine], y[mine])
            reply = {j: scored[i] for j, i in enumerate(mine) if i in scored}
            best = best_cut(hit, reply if accuracy is not None else {}, bound, cost, joint)
            best["cut"] = None if math.isinf(best["cut"]) else best["cut"]  # None: no hit served
            out.append({"seed": seed, "cheap_accuracy": accuracy, "queries": len(orders[seed]), **best})
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m memcache.eval.ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="an intents JSONL file ({'text', 'label', 'split'})")
    parser.add_argument("--splits", default=None, help="as in memcache eval, e.g. test,oos")
    parser.add_argument("--where", action="append", help="FIELD=V1,V2: keep only rows whose FIELD is one of these")
    parser.add_argument("--limit", type=int, default=None, help="the first N queries of each shuffle")
    parser.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        help="instead: each short stream of this family (memcache.eval.validation)",
    )
    parser.add_argument("--seed", "--seeds", dest="seeds", default="0", help="shuffles, e.g. 0,1,2,3,4")
    parser.add_argument("--cheap-accuracy", default="0.9", help="simulated cheap models' P, comma-separated")
    parser.add_argument("--cheap-abstain", type=float, default=0.5)
    parser.add_argument("--cheap-cost", type=float, default=0.05)
    parser.add_argument("--max-false-hit-rate", type=float, default=0.02)
    parser.add_argument("--learn", choices=("pooled", "online"), default="pooled")
    parser.add_argument("--model", choices=("boosted", "pairwise", "linear"), default="boosted")
    parser.add_argument(
        "--budget", choices=("joint", "separate"), default="joint", help="how hits and cheap answers share the bound"
    )
    parser.add_argument("--json", help="write the rows here")
    return parser


def _streams(args: argparse.Namespace) -> list[tuple[dict, list[LabeledQuery], int | None]]:
    """(what the stream is, its rows, its length) for the file as filtered, or each stream of a family."""
    if args.family is None:
        stream = load_stream(args.data, "intents", args.splits, "text", "label", args.limit, parse_where(args.where))
        return [({}, stream.items, args.limit)]
    return [
        ({"stream": s.name, "kind": s.kind}, load_intents(args.data, s.splits, {"domain": set(s.domains)}), s.limit)
        for s in streams_of(args.family)
    ]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    embedder = MemoEmbedder(SentenceTransformerEmbedder())
    accuracies = [None, *(float(a) for a in args.cheap_accuracy.split(",") if a)]
    rows = []
    for name, items, limit in _streams(args):
        embedder.prefill([q.text for q in items])
        found = ceiling(
            items, embedder, seeds=[int(s) for s in args.seeds.split(",")], accuracies=accuracies,
            abstain=args.cheap_abstain, cost=args.cheap_cost, bound=args.max_false_hit_rate, limit=limit,
            learn=args.learn, model=args.model, joint=args.budget == "joint",
        )  # fmt: skip
        rows += [{**name, **row} for row in found]
    for accuracy in accuracies:
        mine = [r for r in rows if r["cheap_accuracy"] == accuracy]
        name = "hits only" if accuracy is None else f"P = {accuracy}"
        print(f"{name} ({args.learn}, {args.model}, {args.budget}, {len(mine)} streams): cost {statistics.mean(r['cost'] for r in mine):.3f} "
              f"(max {max(r['cost'] for r in mine):.3f}), correct {statistics.mean(r['correct_rate'] for r in mine):.1%}, "
              f"hits {statistics.mean(r['hits'] / r['queries'] for r in mine):.1%}, cheap answers "
              f"{statistics.mean(r['cheap_answers'] / r['queries'] for r in mine):.1%}")  # fmt: skip
    for kind in sorted({r["kind"] for r in rows if "kind" in r}):
        for accuracy in accuracies:
            mine = [r for r in rows if r.get("kind") == kind and r["cheap_accuracy"] == accuracy]
            print(f"  {kind}, {'hits only' if accuracy is None else f'P = {accuracy}'}: cost "
                  f"{statistics.mean(r['cost'] for r in mine):.3f}, correct "
                  f"{statistics.mean(r['correct_rate'] for r in mine):.1%} ({len(mine)} streams)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
