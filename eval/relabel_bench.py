"""Lookups and write-backs while a hindsight relabel searches the index.

    python -m memcache.eval.relabel_bench [--keys 40000,200000] [--window 4000]

Every `window // 20` paid answers the hindsight relabel asks the index again for the last
`window` paid queries (`memcache/hindsight.py`). For each index size this runs that relabel
(`HindsightWindow.examples`, each key its own entry) in one thread while another searches one
query at a time (a lookup's search) and a third adds one key every 50 ms (a write-back), and
reports the lookups' and the adds' wait in three set-ups: this release (the relabel searches in
pieces of `SEARCH_PIECE` queries, and a waiting add gets in between two), the release before
(the same shared lock, the whole window in one search), and the one before that (one plain
lock for searches and changes, `PlainLockIndex`). Keys are synthetic unit vectors (384
dimensions) near 20,000 centres; one FAISS thread, as `MemCache` runs it. Prints a JSON line per
row and a table; `--json PATH` writes all figures.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

from memcache.eval.bench import NOISE, machine, timed_until
from memcache.hindsight import SEARCH_PIECE, HindsightWindow
from memcache.index import FaissIndex


class _PlainLock:
    """One reentrant lock for searches and changes alike."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def shared(self, *, yield_to_changes: bool = False) -> threading.RLock:
        return self._lock

    exclusive = shared


class PlainLockIndex(FaissIndex):
    """Two releases before: searches and changes took the same plain lock."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = _PlainLock()


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20_000, 384)).astype(np.float32)
    out = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=NOISE, size=(n, 384)).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def measure(index: FaissIndex, keys: np.ndarray, window: int, piece: int) -> dict:
    rng = np.random.default_rng(1)
    done = threading.Event()
    relabel_s, adds = [], []
    hindsight = HindsightWindow(window)
    for key_id in range(len(keys) - window + 1, len(keys) + 1):
        hindsight.add(key_id, "s", keys[key_id - 1])

    def relabel() -> None:
        start = time.perf_counter()
        hindsight.examples(index.search, lambda key_id: key_id, 10, piece=piece)
        relabel_s.append(time.perf_counter() - start)
        done.set()

    def write_backs() -> None:
        next_id = len(keys) + 1
        while not done.is_set():
            vector = keys[rng.integers(0, len(keys))] + 0.01
            start = time.perf_counter()
            index.add("s", [next_id], (vector / np.linalg.norm(vector))[None, :])
            adds.append((time.perf_counter() - start) * 1000.0)
            next_id += 1
            time.sleep(0.05)

    threads = [threading.Thread(target=relabel), threading.Thread(target=write_backs)]
    for thread in threads:
        thread.start()
    lookups = timed_until(done, lambda: index.search("s", keys[rng.integers(0, len(keys))][None, :], 10), pause=0.002)
    for thread in threads:
        thread.join()
    return {
        "relabel_s": relabel_s[0],
        "lookups": len(lookups),
        "lookup_ms_p50": float(np.percentile(lookups, 50)),
        "lookup_ms_max": max(lookups),
        "adds": len(adds),
        "add_ms_p50": float(np.percentile(adds, 50)) if adds else None,
        "add_ms_max": max(adds) if adds else None,
    }


SETUPS = (  # (name, index class, queries per relabel search; None: the whole window)
    ("pieces, shared lock", FaissIndex, SEARCH_PIECE),
    ("one batch, shared lock", FaissIndex, None),
    ("one batch, plain lock", PlainLockIndex, None),
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="40000,200000", help="index sizes (one scope), comma-separated")
    parser.add_argument("--window", type=int, default=4000, help="queries in one relabel search")
    parser.add_argument("--json", default=None, help="write all figures as JSON here")
    args = parser.parse_args(argv)
    rows = []
    for n in (int(v) for v in args.keys.split(",")):
        keys = vectors(n)
        window = min(args.window, n)
        for name, cls, piece in SETUPS:
            index = cls(384)
            index.add("s", list(range(1, n + 1)), keys)
            index.wait_for_builds()
            rows.append({"keys": n, "setup": name, **measure(index, keys, window, piece or window)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nMachine: {machine()}\n")
    print("| keys | relabel | relabel time | lookup search p50 / max | adds during it | add p50 / max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        add = "-" if r["add_ms_p50"] is None else f"{r['add_ms_p50']:.1f} / {r['add_ms_max']:.0f} ms"
        print(
            f"| {r['keys']:,} | {r['setup']} | {r['relabel_s']:.1f} s | "
            f"{r['lookup_ms_p50']:.1f} / {r['lookup_ms_max']:.1f} ms | {r['adds']} | {add} |"
        )
    report = {"machine": machine(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
