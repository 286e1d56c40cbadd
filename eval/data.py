"""Labeled query streams: two queries with the same label have the same correct answer.

The label "oos" (out of scope) matches no other question: its right answer is the strong model's
answer to that very text, which only a repeat of it shares (`right_answer`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from memcache.errors import ConfigError
from memcache.scope import normalize

OOS = "oos"
Format = Literal["intents", "pairs", "groups", "csv"]


@dataclass(frozen=True)
class LabeledQuery:
    text: str
    label: str
    split: str = ""
    tenant: str = ""  # whose request it is: each tenant is a scope of its own ("" the stream's one)


def right_answer(query: LabeledQuery) -> str:
    """What the simulated strong model answers, and so what a served answer must be to be right:
    one answer per intent; for an out-of-scope question its own, shared only by the same text up
    to whitespace and letter case (memcache serves the same text as an exact repeat, and a case
    variant through the policy), as a deterministic model's answer would be."""
    if query.label == OOS:
        return f"[oos answer: {normalize(query.text).casefold()}]"
    return f"[answer for {query.label}]"


_WORDING = " [wording "


def worded(answer: str, wording: int) -> str:
    """`answer` in its `wording`-th words: a real model words each answer anew, so text equality
    says nothing about meaning and only the judge can (`memcache eval --worded`)."""
    return f"{answer}{_WORDING}{wording}]"


def meaning(text: str) -> str:
    """What a (possibly worded) simulated answer says: the `right_answer` it words."""
    return text.split(_WORDING, 1)[0]


@dataclass(frozen=True)
class LabeledPair:
    """Two questions; `duplicate` says whether they have the same answer."""

    a: str
    b: str
    duplicate: bool


def _read_jsonl(path: Path) -> Iterable[dict]:
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as exc:
                        raise ConfigError(f"{path}:{number} is not JSON: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


Where = Mapping[str, Collection[str]]


def _kept(row: Mapping, where: Where | None) -> bool:
    """Whether a row's fields hold one of the wanted values for every field in `where`."""
    return where is None or all(str(row.get(field, "")) in values for field, values in where.items())


def load_intents(
    path: str | Path, splits: Iterable[str] | None = None, where: Where | None = None, tenant_col: str | None = None
) -> list[LabeledQuery]:
    """JSONL rows {"text", "label", "split", ...}; keep only `splits`, and rows matching `where`
    ({field: values}, e.g. {"domain": {"travel", "home"}}), when given; `tenant_col` names the
    field that says whose request each row is (each tenant a scope of its own)."""
    wanted = set(splits) if splits else None
    rows = []
    for row in _read_jsonl(Path(path)):
        if "text" not in row or "label" not in row:
            hint = "; this looks like a pairs file: add --format pairs (or groups)" if {"a", "b"} <= set(row) else ""
            raise ConfigError(f"{path}: intent rows need 'text' and 'label' keys, got {sorted(row)}{hint}")
        if (wanted is None or row.get("split", "") in wanted) and _kept(row, where):
            tenant = "" if tenant_col is None else str(row.get(tenant_col, ""))
            rows.append(LabeledQuery(row["text"], str(row["label"]), row.get("split", ""), tenant))
    if tenant_col is not None and rows and not any(r.tenant for r in rows):
        raise ConfigError(f"{path}: no row has a {tenant_col!r} field to take its tenant from")
    return rows


def load_pairs(path: str | Path) -> list[LabeledPair]:
    """JSONL rows {"a", "b", "label"} with label 1 for duplicates."""
    pairs = []
    for row in _read_jsonl(Path(path)):
        if not {"a", "b", "label"} <= set(row):
            raise ConfigError(f"{path}: pair rows need 'a', 'b' and 'label' keys, got {sorted(row)}")
        pairs.append(LabeledPair(row["a"], row["b"], int(row["label"]) == 1))
    return pairs


def pair_groups(pairs: Iterable[LabeledPair]) -> list[LabeledQuery]:
    """Turn duplicate-question pairs into a labeled stream of single questions.

    Duplicates are joined transitively into groups (as are texts that are the same question
    up to case and whitespace: the same question to a reader); a group of
    two or more questions shares a label, and a question in no group is "oos": nothing
    stored can be right for it. Each distinct text appears once, in order of first sight.
    """
    from memcache.judge import comparable as normalize

    parent: dict[str, str] = {}

    def root(text: str) -> str:
        key = normalize(text)
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    texts: dict[str, str] = {}  # first spelling seen of each normalized text
    for pair in pairs:
        for text in (pair.a, pair.b):
            texts.setdefault(normalize(text), text)
        a, b = root(pair.a), root(pair.b)
        if pair.duplicate and a != b:
            parent[a] = b
    members: dict[str, list[str]] = {}
    for key in texts:
        members.setdefault(root(key), []).append(key)
    group_of = {r: f"group-{i}" for i, (r, keys) in enumerate(members.items()) if len(keys) > 1}
    labels = {key: group_of.get(root(key), OOS) for key in texts}
    return [LabeledQuery(text, labels[key], "pairs") for key, text in texts.items()]


def load_csv(
    path: str | Path,
    *,
    text_col: str = "text",
    label_col: str = "label",
    split_col: str = "split",
    splits: Iterable[str] | None = None,
    where: Where | None = None,
    tenant_col: str | None = None,
) -> list[LabeledQuery]:
    wanted = set(splits) if splits else None
    try:
        with Path(path).open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or text_col not in reader.fieldnames or label_col not in reader.fieldnames:
                raise ConfigError(
                    f"{path}: needs columns {text_col!r} and {label_col!r} (name others with --text-col and "
                    f"--label-col), has {reader.fieldnames}"
                )
            if tenant_col is not None and tenant_col not in reader.fieldnames:
                raise ConfigError(f"{path}: no column {tenant_col!r} to take each row's tenant from")
            rows = [
                LabeledQuery(r[text_col], r[label_col], r.get(split_col, "") or "", r[tenant_col] if tenant_col else "")
                for r in reader
                if (wanted is None or (r.get(split_col, "") or "") in wanted) and _kept(r, where)
            ]
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return rows
