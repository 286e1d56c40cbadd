"""Moving a memory between stores: every entry as one JSON line, and back.

An export keeps each entry's scope, answer, payload, source model, expiry and all its queries.
An import re-embeds the queries with the importing cache's model; imported answers were not paid
for here, so they teach the policy nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from memcache.errors import InvalidRequestError
from memcache.memory import Memory
from memcache.scope import check_text
from memcache.types import Scope


@dataclass(frozen=True)
class ImportedQuery:
    """One query of an exported entry, with what it is stored under."""

    scope: Scope
    query: str
    answer: str
    payload: str | None
    source_model: str
    expires_at: datetime | None


def _progress(items, enabled: bool, desc: str, unit: str, total: int | None = None):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit=unit)


def export_jsonl(memory: Memory, path: str | Path, *, progress: bool = False) -> int:
    """Write every entry of the store as one JSON line; returns the count."""
    rows = memory.store.iter_export_rows()
    rows = _progress(rows, progress, "exporting", "entry", total=memory.store.counts()[0] if progress else None)
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_export(path: str | Path, *, max_chars: int) -> list[ImportedQuery]:
    """Every query of an export file, each line checked before anything is written.

    Raises:
        InvalidRequestError: the file cannot be read, or a line is not an exported entry.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc}") from exc
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            scope = Scope(**row["scope"])
            answer, queries = row["answer"], list(row["queries"])
            expires = row.get("expires_at")
            expires_at = datetime.fromisoformat(expires) if expires else None
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRequestError(f"{path}:{number} is not an exported memcache entry: {exc}") from exc
        for query in queries:
            check_text(query, what=f"{path}:{number} query", max_chars=max_chars)
            source = row.get("source_model") or scope.model
            items.append(ImportedQuery(scope, query, answer, row.get("payload"), source, expires_at))
    return items


def import_queries(
    memory: Memory,
    items: Sequence[ImportedQuery],
    embed: Callable[[list[str]], np.ndarray],
    *,
    batch: int = 256,
    progress: bool = False,
) -> int:
    """Store imported queries, embedded `batch` at a time; returns how many were read."""
    memory.load()
    written = 0
    for start in _progress(range(0, len(items), batch), progress, "importing", "batch"):
        part = items[start : start + batch]
        for item, vector in zip(part, embed([item.query for item in part])):
            memory.add(
                item.scope,
                item.query,
                item.answer,
                vector,
                source_model=item.source_model,
                payload=item.payload,
                expires_at=item.expires_at,
            )
            written += 1
    return written
