"""Whether two answers to the same query say the same thing: how a paid answer becomes a label."""

from __future__ import annotations

import unicodedata
from typing import Protocol, runtime_checkable

import numpy as np

from memcache import llm
from memcache.embedding import Embedder
from memcache.errors import ConfigError


@runtime_checkable
class Judge(Protocol):
    def same_answer(self, query: str, answer: str, reference: str) -> bool: ...


def comparable(text: str) -> str:
    """An answer's form for comparison: case, whitespace and compatibility forms folded."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class ExactJudge:
    """Equal after case and whitespace normalization. Right for short, canonical answers."""

    def same_answer(self, query: str, answer: str, reference: str) -> bool:
        return comparable(answer) == comparable(reference)


class EmbeddingJudge:
    """Cosine similarity of the two answers' embeddings at or above `threshold` (in [-1, 1])."""

    def __init__(self, embedder: Embedder, threshold: float = 0.9) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError("EmbeddingJudge threshold is a cosine similarity in [-1, 1]")
        self.embedder = embedder
        self.threshold = threshold

    def same_answer(self, query: str, answer: str, reference: str) -> bool:
        if comparable(answer) == comparable(reference):
            return True
        vectors = self.embedder.embed([answer, reference])
        return float(np.dot(vectors[0], vectors[1])) >= self.threshold


_LLM_JUDGE_PROMPT = (
    "Question: {query}\n\nAnswer A: {answer}\n\nAnswer B: {reference}\n\n"
    "Would a user who asked the question be equally well served by either answer "
    "(same facts, same conclusion)? Reply with exactly YES or NO."
)


class LLMJudge:
    """Asks a model through LiteLLM whether both answers serve the question equally."""

    def __init__(self, model: str, **litellm_kwargs) -> None:
        self.model = model
        self.kwargs = litellm_kwargs

    def same_answer(self, query: str, answer: str, reference: str) -> bool:
        if comparable(answer) == comparable(reference):
            return True
        prompt = _LLM_JUDGE_PROMPT.format(query=query, answer=answer, reference=reference)
        messages = [{"role": "user", "content": prompt}]
        response = llm.completion(self.model, messages, role="judge", **{"temperature": 0, **self.kwargs})
        verdict = (response.choices[0].message.content or "").strip().upper()
        return verdict.startswith("YES")
