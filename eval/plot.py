"""PNG plots of a replay: static-threshold curve against the calibrated policy, and the running false-hit rate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from memcache.errors import ConfigError
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
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if sweep:
        left.plot(
            [row["false_hit_rate"] for row in sweep], [row["correct_hit_rate"] for row in sweep],
            "o-", color="grey", label="static cosine threshold",
        )
        for row in sweep:
            left.annotate(f"{row['threshold']:.2f}", (row["false_hit_rate"], row["correct_hit_rate"]), fontsize=7)
    left.plot([summary["false_hit_rate"]], [summary["correct_hit_rate"]], "*", ms=14, color="tab:red", label="memcache (calibrated)")
    bound = summary.get("max_false_hit_rate")
    if bound:
        left.axvline(bound, ls="--", color="tab:red", lw=1, label=f"bound {bound:.0%}")
    left.set_xlabel("false-hit rate (wrong hits / hits)")
    left.set_ylabel("correct-hit rate (right hits / queries)")
    left.legend(fontsize=8)
    left.set_title("hits against false hits")
    hits = wrong = 0
    xs, ys = [], []
    for i, record in enumerate(records, 1):
        if record.outcome == "hit":
            hits += 1
            wrong += not record.correct
        if hits:
            xs.append(i)
            ys.append(wrong / hits)
    right.plot(xs, ys, color="tab:blue", label="running false-hit rate")
    if not xs:
        right.text(0.5, 0.5, "no hits served: no region met the bound", ha="center", va="center",
                   transform=right.transAxes)
        right.set_xlim(0, len(records))
    if bound:
        right.axhline(bound, ls="--", color="tab:red", lw=1, label="bound")
    right.set_xlabel("queries replayed")
    right.set_ylabel("false-hit rate so far")
    right.legend(fontsize=8)
    right.set_title("bound over the stream")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
