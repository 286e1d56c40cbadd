"""`memcache bench` and the GPU script, run small on the real stack so they cannot rot.

These check that every figure is produced and sane, not how fast anything is: speed is
measured by the commands themselves, on a quiet machine, into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from memcache.cli import main
from memcache.eval import gpu_bench


def run_module(cwd, module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m memcache.eval.MODULE ARGS` in a fresh process, as the docs run it."""
    command = [sys.executable, "-m", f"memcache.eval.{module}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ}, cwd=cwd)


def test_bench_writes_every_figure_and_the_table(tmp_path, data_dir):
    out, figures = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    code = main(
        [
            "bench",
            str(data_dir / "qqp_pairs_dev.jsonl"),
            "--entries",
            "1000,2000",
            "--real",
            "500",
            "--repeats",
            "20",
            "--seconds",
            "0.3",
            "--rounds",
            "1",
            "--gptcache-entries",
            "300",
            "--cli-runs",
            "1",
            "--workdir",
            str(tmp_path),
            "--out",
            str(out),
            "--json",
            str(figures),
        ]
    )
    assert code == 0
    results = json.loads(figures.read_text())
    small, large = results["sizes"]
    assert (small["entries"], large["entries"]) == (1000, 2000) and large["real_keys"] == 500
    for row in (small, large):
        assert row["recall_at_1"] == 1.0  # flat index: exact
        assert 0 < row["exact_p50_ms"] < row["hit_p50_ms"] and row["floor_p50_ms"] > 0
        assert row["backend"] == "onnx" and row["torch_floor_p50_ms"] > 0
        assert row["hit_p50_vs_torch"] == pytest.approx(row["hit_p50_ms"] / row["torch_floor_p50_ms"])
        assert set(row["lookups_per_s"]) == {"1", "8", "32"} and min(row["lookups_per_s"].values()) > 0
        assert row["bytes_per_entry"] > 1536  # at least the float32 vector itself
        assert row["snapshot_load_s"] > 0 and row["rebuild_s"] > 0
    gpt = results["gptcache"]
    assert gpt["entries"] == 300 and gpt["gptcache"]["lookups_per_s_8"] > 0 and gpt["memcache"]["lookups_per_s_8"] > 0
    table = out.read_text()
    assert "| 1,000 | flat |" in table and "| 2,000 | flat |" in table and "## Beside GPTCache" in table
    cli = results["cli"]
    assert cli["runs"] == 1 and 0 < cli["bare_import_s"] and 0 < cli["exact_repeat_s"] < cli["miss_mock_s"]
    assert cli["exact_vs_bare"] == pytest.approx(cli["exact_repeat_s"] / cli["bare_import_s"])
    assert cli["exact_repeat_imports"] == []  # a served exact repeat needs no torch, sentence-transformers, LiteLLM
    assert "## The command line, from a fresh process" in table and "exact repeat (served)" in table
    assert not list(tmp_path.glob("tmp*"))  # temporary stores are gone


def test_gpu_script_dry_run_on_cpu(data_dir, capsys):
    result = gpu_bench.main(
        [
            "--device",
            "cpu",
            "--pairs",
            str(data_dir / "qqp_pairs_dev.jsonl"),
            "--entries",
            "2000",
            "--real",
            "300",
            "--queries",
            "100",
            "--seconds",
            "0.3",
        ]
    )
    assert result["index"] == "FaissIndex" and result["entries"] == 2000 and result["hit_p50_ms"] > 0
    assert "| CPU (dry run) | FaissIndex | 2,000 |" in capsys.readouterr().out


def test_policy_bench_measures_the_cap_against_keeping_every_label(tmp_path):
    figures = tmp_path / "policy.json"
    done = run_module(
        tmp_path, "policy_bench", "--sizes", "5000", "--max-labels", "500", "--refits", "1", "--json", str(figures)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    capped, every = json.loads(figures.read_text())["rows"]
    assert (capped["max_labels"], capped["labels_in_use"]) == (500, 500)
    assert (every["max_labels"], every["labels_in_use"]) == (None, 5000)
    assert 0 < capped["labels_mib"] < every["labels_mib"] and capped["refit_s_median"] > 0
    assert every["decide_ms_max_outside_lock"] > 0 and every["decide_ms_max_inside_lock"] > 0
    assert "| 5,000 | 500 |" in done.stdout and "| 5,000 | all |" in done.stdout


def test_relabel_bench_reports_each_setup(tmp_path):
    figures = tmp_path / "relabel.json"
    done = run_module(tmp_path, "relabel_bench", "--keys", "3000", "--window", "500", "--json", str(figures))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(figures.read_text())["rows"]
    assert [r["setup"] for r in rows] == ["pieces, shared lock", "one batch, shared lock", "one batch, plain lock"]
    for row in rows:
        assert row["keys"] == 3000 and row["relabel_s"] > 0 and row["lookups"] >= 1 and row["lookup_ms_max"] > 0
    assert "| 3,000 | pieces, shared lock |" in done.stdout
