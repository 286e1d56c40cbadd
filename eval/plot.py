"""PNG plots of a replay: the running false-hit rate against the bound and against what was claimed,
and, when static thresholds were swept, hits against false hits beside them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from memcache.errors import ConfigError
from memcache.eval.metrics import WARMUP_HITS, running_false_hit_rates
from memcache.eval.replay import QueryRecord


def plot_report(
    path: str | Path,
    *,
    title: str,
    records: Sequence[QueryRecord],
    summary: dict,
    sweep: Sequence[dict] = (),
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError.missing_extra("eval", "matplotlib") from exc
    bound = summary.get("max_false_hit_rate")
    if sweep:  # nothing to compare one point with otherwise
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        _hits_against_false_hits(left, sweep, summary, bound)
    else:
        fig, right = plt.subplots(1, 1, figsize=(6.5, 4.2))
    _running_rate(right, records, bound)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hits_against_false_hits(axis, sweep: Sequence[dict], summary: dict, bound: float | None) -> None:
    axis.plot(
        [row["false_hit_rate"] for row in sweep],
        [row["correct_hit_rate"] for row in sweep],
        "o-",
        color="grey",
        label="static cosine threshold",
    )
    for row in sweep:
        axis.annotate(f"{row['threshold']:.2f}", (row["false_hit_rate"], row["correct_hit_rate"]), fontsize=7)
    axis.plot(
        [summary["false_hit_rate"]],
        [summary["correct_hit_rate"]],
        "*",
        ms=14,
        color="tab:red",
        label="memcache (calibrated)",
    )
    if bound:
        axis.axvline(bound, ls="--", color="tab:red", lw=1, label=f"bound {bound:.0%}")
    axis.set_xlabel("false-hit rate (wrong hits / hits)")
    axis.set_ylabel("correct-hit rate (right hits / queries)")
    axis.legend(fontsize=8)
    axis.set_title("hits against false hits")


def _running_rate(axis, records: Sequence[QueryRecord], bound: float | None) -> None:
    running = running_false_hit_rates(records)
    if running:
        xs = [i + 1 for i, _, _ in running]
        axis.plot(xs, [rate for _, rate, _ in running], color="tab:blue", label="served false-hit rate so far")
        axis.plot(
            xs, [claimed for _, _, claimed in running], color="tab:green", ls=":", label="claimed by the confidences"
        )
        if len(running) >= WARMUP_HITS:
            warm_end = running[WARMUP_HITS - 1][0] + 1
            axis.axvspan(0, warm_end, color="grey", alpha=0.15, label=f"warm-up (first {WARMUP_HITS} hits)")
    else:
        axis.text(
            0.5, 0.5, "no hits served: no region met the bound", ha="center", va="center", transform=axis.transAxes
        )
    axis.set_xlim(0, max(len(records), 1))
    if bound:
        axis.axhline(bound, ls="--", color="tab:red", lw=1, label="bound")
        axis.set_ylim(0, max(3 * bound, max((rate for _, rate, _ in running[WARMUP_HITS - 1 :]), default=0) * 1.1))
    axis.set_xlabel("queries replayed")
    axis.set_ylabel("false-hit rate so far")
    axis.legend(fontsize=8)
    axis.set_title("the bound over the stream")
