"""Lookups and write-backs while a hindsight relabel searches the index.

    python -m memcache.eval.relabel_bench [--keys 40000,200000] [--window 4000]

Every `window // 20` paid answers the hindsight relabel searches the index for the last
`window` paid queries at once (`memcache/hindsight.py`). For each index size this runs that
batch search in one thread while another searches one query at a time (a lookup's search)
and a third adds one key every 50 ms (a write-back), and reports the lookups' and the adds'
wait, with the index's shared lock (this release) and with one plain lock (the release
before, `PlainLockIndex`). Keys are synthetic unit vectors (384 dimensions) near 20,000
centres; one FAISS thread, as `MemCache` runs it. Prints a JSON line per row and a table; `--json PATH` writes all figures.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

from memcache.eval.bench import NOISE, machine, timed_until
from memcache.index import FaissIndex


class _PlainLock:
    """One reentrant lock for searches and changes alike."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def shared(self) -> threading.RLock:
        return self._lock

    exclusive = shared


class PlainLockIndex(FaissIndex):
    """The release before: searches and changes took the same plain lock."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = _PlainLock()


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20_000, 384)).astype(np.float32)
    out = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=NOISE, size=(n, 384)).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def measure(index: FaissIndex, keys: np.ndarray, window: int) -> dict:
    rng = np.random.default_rng(1)
    done = threading.Event()
    relabel_s, adds = [], []

    def relabel() -> None:
        start = time.perf_counter()
        index.search("s", keys[-window:], 11)
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
        "relabel_s": relabel_s[0], "lookups": len(lookups),
        "lookup_ms_p50": float(np.percentile(lookups, 50)), "lookup_ms_max": max(lookups),
        "add_ms_p50": float(np.percentile(adds, 50)) if adds else None, "add_ms_max": max(adds) if adds else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="40000,200000", help="index sizes (one scope), comma-separated")
    parser.add_argument("--window", type=int, default=4000, help="queries in one relabel search")
    parser.add_argument("--json", default=None, help="write all figures as JSON here")
    args = parser.parse_args(argv)
    rows = []
    for n in (int(v) for v in args.keys.split(",")):
        keys = vectors(n)
        for name, cls in (("shared lock", FaissIndex), ("plain lock", PlainLockIndex)):
            index = cls(384)
            index.add("s", list(range(1, n + 1)), keys)
            index.wait_for_builds()
            rows.append({"keys": n, "lock": name, **measure(index, keys, min(args.window, n))})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nMachine: {machine()}\n")
    print("| keys | lock | relabel search | lookup search p50 / max | add p50 / max |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        add = "-" if r["add_ms_p50"] is None else f"{r['add_ms_p50']:.1f} / {r['add_ms_max']:.0f} ms"
        print(f"| {r['keys']:,} | {r['lock']} | {r['relabel_s']:.1f} s | "
              f"{r['lookup_ms_p50']:.1f} / {r['lookup_ms_max']:.1f} ms | {add} |")
    report = {"machine": machine(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
