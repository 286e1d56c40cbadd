"""The hindsight ceiling (`memcache.eval.ceiling`): its cut-off search, and a run on real data."""

from __future__ import annotations

import json

import numpy as np

from memcache.eval import ceiling


def test_best_cut_serves_the_most_it_can_under_the_bound():
    # ten would-be hits, the two lowest-scored wrong; replies for the four lowest, one of them wrong
    score = np.linspace(0.1, 1.0, 10)
    right = np.array([False, False] + [True] * 8)
    replies = {0: (0.9, True), 1: (0.2, False), 2: (0.8, True), 3: (0.7, True)}
    best = ceiling.best_cut((score, right), replies, bound=0.1, cost=0.05)
    # serving hits from the third on (8 right) and the replies of queries 0 and 1 would be 1 wrong in 10:
    # within 10%, but cheaper is 8 hits + 1 right reply (query 0) = 9 answers, 0 wrong; the last one
    # (the wrong reply of query 1) fits too: 1 wrong of 10 <= 10%
    assert best["hits"] == 8 and best["wrong_hits"] == 0
    assert best["cheap_answers"] == 2 and best["wrong_cheap_answers"] == 1
    assert best["false_answer_rate"] <= 0.1
    n = 11  # ten scored queries after the first
    assert best["cost"] == (n - 8 - 2 + 0.05 * (n - 1 - 8)) / n
    strict = ceiling.best_cut((score, right), replies, bound=0.0, cost=0.05)
    assert strict["wrong_hits"] == strict["wrong_cheap_answers"] == 0 and strict["cheap_answers"] == 1
    # held apart, the cheap answers get no share of what the hits left: one wrong of two is over 10%
    apart = ceiling.best_cut((score, right), replies, bound=0.1, cost=0.05, joint=False)
    assert (apart["hits"], apart["cheap_answers"], apart["wrong_cheap_answers"]) == (8, 1, 0)


def test_hits_only_charges_no_cheap_calls():
    score, right = np.array([0.2, 0.9]), np.array([False, True])
    best = ceiling.best_cut((score, right), {}, bound=0.02, cost=0.05)
    assert best["hits"] == 1 and best["cost"] == best["hits_only_cost"] == 2 / 3


def test_ceiling_on_real_clinc_rows(data_dir, vectors, monkeypatch, tmp_path):
    monkeypatch.setattr(ceiling, "SentenceTransformerEmbedder", lambda: vectors)
    out = tmp_path / "ceiling.json"
    rows = ceiling.main([
        str(data_dir / "clinc150.jsonl"), "--splits", "test", "--where", "domain=travel,utility",
        "--limit", "400", "--seed", "0", "--cheap-accuracy", "1.0", "--learn", "online", "--json", str(out),
    ])  # fmt: skip
    alone, read = (next(r for r in rows if r["cheap_accuracy"] == p) for p in (None, 1.0))
    for row in (alone, read):
        assert row["queries"] == 400 and row["false_answer_rate"] <= 0.02
    assert alone["cheap_answers"] == 0 and alone["hits"] > 0
    # a reader that never misses a right answer it is shown can only add right answers
    assert read["correct_rate"] >= alone["correct_rate"] and read["cost"] <= alone["cost"] + 0.05
    assert json.loads(out.read_text())["rows"] == rows


def test_a_family_is_its_short_streams(data_dir):
    args = ceiling.build_parser().parse_args([str(data_dir / "clinc150.jsonl"), "--family", "validation"])
    streams = ceiling._streams(args)
    assert len(streams) == 20 and {name["kind"] for name, _, _ in streams} == {
        "one domain, train, 1,000", "one domain, test+val, 750", "three domains, test, 1,350"
    }  # fmt: skip
    for _, rows, limit in streams:
        assert rows and {r.label for r in rows}.isdisjoint({"oos"}) and limit in (None, 1000)
