"""memcache: a semantic cache for LLM calls that holds a user-set bound on wrong hits."""

from memcache.cache import MemCache, cache_info
from memcache.embedding import Embedder, SentenceTransformerEmbedder
from memcache.errors import (
    ConfigError,
    EmbeddingError,
    EscalationError,
    InvalidRequestError,
    MemcacheError,
    StoreError,
)
from memcache.index import FaissIndex, VectorIndex
from memcache.judge import EmbeddingJudge, ExactJudge, Judge, LLMJudge
from memcache.policy import CalibratedPolicy, Policy, ThresholdPolicy
from memcache.shift import ShiftDetector
from memcache.store import Store
from memcache.types import CacheEntry, CacheHit, CacheInfo, Decision, LookupResult, Scope, Stats

__all__ = [
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
    "LookupResult",
    "MemCache",
    "MemcacheError",
    "Policy",
    "Scope",
    "SentenceTransformerEmbedder",
    "ShiftDetector",
    "Stats",
    "Store",
    "StoreError",
    "ThresholdPolicy",
    "VectorIndex",
    "cache_info",
]
