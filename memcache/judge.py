"""Whether two answers to the same query say the same thing: how a paid answer becomes a label."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from memcache import llm
from memcache.embedding import Embedder
from memcache.errors import ConfigError


@runtime_checkable
class Judge(Protocol):
    def same_answer(self, query: str, answer: str, reference: str) -> bool: ...


def which_same(judge: Judge, query: str, answer: str, references: Sequence[str]) -> int | None:
    """The index of one of `references` (in order of preference) that the judge finds the same
    as `answer`, else None.

    A judge with a `which_same` of its own answers in one go (`LLMJudge`: one call for all, not
    one per reference); any other is asked of each in turn, and the first it finds is taken."""
    own = getattr(judge, "which_same", None)
    if callable(own):
        return own(query, answer, references)
    return next((i for i, reference in enumerate(references) if judge.same_answer(query, answer, reference)), None)


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


_LLM_FIRST_SAME_PROMPT = (
    "Question: {query}\n\nAnswer A: {answer}\n\nOther answers:\n{references}\n\n"
    "Which other answer would serve a user who asked the question as well as Answer A "
    "(same facts, same conclusion)? Reply with its number only, or NONE."
)
_NUMBER = re.compile(r"\d+")


class LLMJudge:
    """Asks a model through LiteLLM whether both answers serve the question equally."""

    def __init__(self, model: str, **litellm_kwargs) -> None:
        self.model = model
        self.kwargs = litellm_kwargs
        self._on_call: Callable[[Any], object] = lambda response: None

    def count_calls_with(self, on_call: Callable[[Any], object]) -> None:
        """Where each call's response goes to be counted and priced (the cache this judge serves:
        its `judge_calls` and `judge_spend_micro_usd`)."""
        self._on_call = on_call

    def same_answer(self, query: str, answer: str, reference: str) -> bool:
        if comparable(answer) == comparable(reference):
            return True
        verdict = self._ask(_LLM_JUDGE_PROMPT.format(query=query, answer=answer, reference=reference))
        return verdict.strip().upper().startswith("YES")

    def which_same(self, query: str, answer: str, references: Sequence[str]) -> int | None:
        """`memcache.judge.which_same` in one call, however many references (a paid answer is
        compared with several stored ones while its caller waits)."""
        equal = next((i for i, r in enumerate(references) if comparable(r) == comparable(answer)), None)
        if equal is not None or not references:
            return equal
        if len(references) == 1:
            return 0 if self.same_answer(query, answer, references[0]) else None
        listed = "\n".join(f"[{i}] {reference}" for i, reference in enumerate(references, 1))
        reply = self._ask(_LLM_FIRST_SAME_PROMPT.format(query=query, answer=answer, references=listed))
        number = _NUMBER.search(reply)
        return int(number.group()) - 1 if number and 1 <= int(number.group()) <= len(references) else None

    def _ask(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        response = llm.completion(self.model, messages, role="judge", **{"temperature": 0, **self.kwargs})
        self._on_call(response)
        return response.choices[0].message.content or ""
