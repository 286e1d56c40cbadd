"""`memcache demo`: the main job on a shipped sample, with no key and no network.

A labeled sample of CLINC150 questions (`memcache/data/clinc150_sample.jsonl`, CC BY 3.0, see
the LICENSE file beside it) is replayed through the real engine (the packaged embedding model,
FAISS, a SQLite store in a temporary folder, the default policy at a 2% bound). A simulated
strong model answers every miss with the question's intent, as `memcache eval` does; a question
out of scope gets an answer of its own. The summary says what a user of the cache would have
seen: hits served, wrong hits against the bound, strong calls saved, and what they would have
cost at a real model's price.

    python -m memcache.eval.demo --make-sample ../shared/data/clinc150.jsonl   # how the sample was drawn
"""

from __future__ import annotations

import argparse
import json
import os
import random
from importlib import resources
from pathlib import Path

from memcache.embedding import SentenceTransformerEmbedder
from memcache.eval.data import OOS, load_intents
from memcache.eval.metrics import summarize
from memcache.eval.replay import MemoEmbedder, replay_intents
from memcache.policy import CalibratedPolicy

SAMPLE = "clinc150_sample.jsonl"
PRICE_MODEL = "gpt-4o-mini"  # what a strong call is priced at in the summary
PRICE_TOKENS = (60, 120)  # prompt and completion tokens of a short support answer
SAMPLE_INTENTS, SAMPLE_PER_INTENT, SAMPLE_OOS = 60, 22, 180


def sample_path() -> Path:
    return Path(str(resources.files("memcache") / "data" / SAMPLE))


def make_sample(source: str, out: str | Path) -> int:
    """Draw the shipped sample from CLINC150 (seeded): 60 intents, 22 questions each, 180 out of scope."""
    rows = load_intents(source)
    rng = random.Random(150)
    intents = sorted({r.label for r in rows if r.label != OOS})
    chosen = rng.sample(intents, SAMPLE_INTENTS)
    sample = []
    for intent in chosen:
        sample += rng.sample([r for r in rows if r.label == intent], SAMPLE_PER_INTENT)
    sample += rng.sample([r for r in rows if r.label == OOS], SAMPLE_OOS)
    with Path(out).open("w", encoding="utf-8") as handle:
        for row in sample:
            handle.write(json.dumps({"text": row.text, "label": row.label}) + "\n")
    return len(sample)


def strong_call_price() -> float | None:
    """Dollars of one strong call at `PRICE_MODEL` (LiteLLM's price table, read locally), or None."""
    try:
        from memcache.llm import _litellm

        prompt, completion = _litellm().cost_per_token(
            model=PRICE_MODEL, prompt_tokens=PRICE_TOKENS[0], completion_tokens=PRICE_TOKENS[1]
        )
        return float(prompt + completion)
    except Exception:  # noqa: BLE001 - the price is a courtesy; the demo stands without it
        return None


def run_demo(args: argparse.Namespace) -> dict:
    rows = load_intents(sample_path())
    queries = args.queries or int(os.environ.get("MEMCACHE_DEMO_QUERIES", "0")) or len(rows)
    print(f"replaying {min(queries, len(rows)):,} questions of CLINC150 (CC BY 3.0) through memcache, bound 2% ...")
    embedder = MemoEmbedder(SentenceTransformerEmbedder())
    policy = CalibratedPolicy(args.max_false_hit_rate, seed=args.seed)
    records = replay_intents(rows, policy=policy, embedder=embedder, seed=args.seed, limit=queries, progress=True)
    summary = summarize(records, max_false_hit_rate=args.max_false_hit_rate)
    _print_summary(summary, args.max_false_hit_rate)
    if args.plot:
        _plot(args.plot, records, summary)
    return summary


def _print_summary(summary: dict, bound: float) -> None:
    n, hits, wrong = summary["queries"], summary["hits"], summary["wrong_hits"]
    paid = round(summary["strong_calls"] * n)
    print(f"\n  questions            {n:,}")
    print(f"  served from memory   {hits:,} ({hits / n:.0%}); the first at question {summary['first_hit_query']}")
    print(f"  wrong answers served {wrong} of {hits:,} hits = {summary['false_hit_rate']:.2%} (bound {bound:.0%})")
    print(f"  strong-model calls   {paid:,} of {n:,} ({n - paid:,} saved; audits of served hits included)")
    price = strong_call_price()
    if price is not None:
        saved = (n - paid) * price
        print(
            f"  spend saved          ${saved:.4f} here, ${saved / n * 1_000_000:,.0f} per million questions at {PRICE_MODEL} prices"
        )
    print("\nThe cache starts closed and serves once its paid answers certify the bound: a longer stream serves more.")


def _plot(path: str, records, summary: dict) -> None:
    try:
        from memcache.eval.plot import plot_report

        plot_report(path, title="memcache demo: CLINC150 sample, bound 2%", records=records, summary=summary)
        print(f"wrote {path}")
    except Exception as exc:  # noqa: BLE001 - matplotlib is the [eval] extra
        print(f"(no plot: {exc})")


def add_demo_command(sub) -> None:
    demo = sub.add_parser("demo", help="replay a shipped sample of real questions: no key, no network")
    demo.add_argument("--queries", type=int, default=None, help="replay only the first N questions of the shuffle")
    demo.add_argument("--seed", type=int, default=0, help="shuffle (and audit coin) seed")
    demo.add_argument("--max-false-hit-rate", type=float, default=0.02, help="the bound (default 0.02)")
    demo.add_argument(
        "--plot", default="memcache-demo.png", help="PNG to write (default memcache-demo.png; '' for none)"
    )
    demo.set_defaults(func=lambda args: run_demo(args) and 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m memcache.eval.demo")
    parser.add_argument("--make-sample", required=True, metavar="CLINC150_JSONL")
    parsed = parser.parse_args()
    out = Path(__file__).resolve().parents[1] / "memcache" / "data" / SAMPLE
    print(f"wrote {make_sample(parsed.make_sample, out)} rows to {out}")
