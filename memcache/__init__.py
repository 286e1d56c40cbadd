"""memcache: a semantic cache for LLM calls that holds a user-set bound on wrong hits."""

from memcache.cache import MemCache, cache_info
from memcache.embedding import Embedder, SentenceTransformerEmbedder
from memcache.errors import (
    ConfigError,
    EmbeddingError,
    EscalationError,
    InvalidRequestError,
    MemcacheError,
    SnapshotError,
    StoreError,
)
from memcache.index import FaissIndex, VectorIndex
from memcache.judge import EmbeddingJudge, ExactJudge, Judge, LLMJudge
from memcache.policy import CalibratedPolicy, LearningPolicy, Policy, ThresholdPolicy
from memcache.shift import ShiftDetector
from memcache.store import Store
from memcache.types import CacheEntry, CacheHit, CacheInfo, Decision, LookupResult, PolicyStatus, Scope, Stats

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
    "LearningPolicy",
    "LookupResult",
    "MemCache",
    "MemcacheError",
    "Policy",
    "PolicyStatus",
    "Scope",
    "SentenceTransformerEmbedder",
    "SnapshotError",
    "ShiftDetector",
    "Stats",
    "Store",
    "StoreError",
    "ThresholdPolicy",
    "VectorIndex",
    "cache_info",
]
