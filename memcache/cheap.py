"""The cheap path's contract with the cheap model: what it reads, how it must reply, and how the
reply is read.

The cheap model gets the request and the nearest stored question/answer pairs of the request's
own scope, numbered, and must reply with one JSON object: `{"memory": N, "answer": "..."}`
naming the pair its answer reuses or adapts, or `{"memory": null}` when none of them answers
the request. Anything else (no JSON, a number out of range, an empty answer) counts as an
abstain: the request goes to the strong model, and nothing of the reply is stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PAIRS = 5  # stored pairs the cheap model reads: the nearest distinct entries of the request's scope
MAX_PAIR_CHARS = 2_000  # a stored question or answer longer than this is cut in the prompt

INSTRUCTIONS = """You answer a user's request from a memory of earlier requests and their verified answers.
The memory entries below are numbered. If one of them answers the user's request (the same question, \
perhaps worded differently), reply with its answer, adapted only where the request differs. If none \
does, do not guess.
Reply with one JSON object and nothing else:
{"memory": <number of the entry you used>, "answer": "<your answer>"}
or, when no entry answers the request:
{"memory": null}

Memory:
"""


@dataclass(frozen=True)
class MemoryPair:
    """One stored question and its answer, as the cheap model reads it (`entry_id` is not shown)."""

    entry_id: int
    question: str
    answer: str
    similarity: float


@dataclass(frozen=True)
class CheapReply:
    """A reply that names the pair it used (`used`: its position in the pairs, from 0)."""

    used: int
    answer: str


def _cut(text: str) -> str:
    return text if len(text) <= MAX_PAIR_CHARS else text[: MAX_PAIR_CHARS - 1] + "…"


def memory_block(pairs: Sequence[MemoryPair]) -> str:
    return "\n".join(
        f"[{i}] Request: {json.dumps(_cut(p.question), ensure_ascii=False)}\n"
        f"    Answer: {json.dumps(_cut(p.answer), ensure_ascii=False)}"
        for i, p in enumerate(pairs, start=1)
    )


def cheap_messages(messages: Sequence[Mapping[str, Any]], pairs: Sequence[MemoryPair]) -> list[dict[str, Any]]:
    """The cheap model's prompt: the instructions and the memory as a system message, then the
    caller's own messages (its system prompt and conversation included) unchanged."""
    return [{"role": "system", "content": INSTRUCTIONS + memory_block(pairs)}, *[dict(m) for m in messages]]


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def parse_reply(text: object, pairs: Sequence[MemoryPair]) -> CheapReply | None:
    """The reply, or None for an abstain or anything that does not follow the format."""
    if not isinstance(text, str):
        return None
    body = _FENCE.sub("", text.strip())
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(body[start : end + 1])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    used, answer = data.get("memory"), data.get("answer")
    if isinstance(used, str) and used.strip().isdigit():
        used = int(used)
    if not isinstance(used, int) or isinstance(used, bool) or not 1 <= used <= len(pairs):
        return None
    if not isinstance(answer, str) or not answer.strip():
        return None
    return CheapReply(used - 1, answer.strip())


def reply_text(used: int | None, answer: str | None = None) -> str:
    """A reply in the format above (what a simulated cheap model returns); `used` from 1, None abstains."""
    return json.dumps({"memory": None} if used is None else {"memory": used, "answer": answer})
