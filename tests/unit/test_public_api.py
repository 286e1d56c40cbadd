import memcache

EXPECTED_ALL = {
    "CacheEntry",
    "CacheHit",
    "CacheInfo",
    "CalibratedPolicy",
    "ConfigError",
    "Decision",
    "Embedder",
    "EmbeddingError",
    "EmbeddingJudge",
    "EscalationError",
    "ExactJudge",
    "FaissIndex",
    "InvalidRequestError",
    "Judge",
    "LLMJudge",
    "LearningPolicy",
    "LookupResult",
    "MemCache",
    "MemcacheError",
    "Policy",
    "PolicyStatus",
    "Scope",
    "SentenceTransformerEmbedder",
    "ShiftDetector",
    "SnapshotError",
    "Stats",
    "Store",
    "StoreError",
    "ThresholdPolicy",
    "VectorIndex",
    "cache_info",
}


def test_all_is_pinned():
    assert set(memcache.__all__) == EXPECTED_ALL


def test_every_error_is_a_memcache_error():
    for name in (
        "InvalidRequestError",
        "ConfigError",
        "EmbeddingError",
        "StoreError",
        "EscalationError",
        "SnapshotError",
    ):
        assert issubclass(getattr(memcache, name), memcache.MemcacheError)


def test_import_does_no_heavy_work():
    import subprocess
    import sys

    code = "import sys, memcache; print('litellm' in sys.modules, 'sentence_transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
