"""Loading a store fast, for benchmarks: many new answers, one key each, in one transaction.

Unlike `Store.add_answer` it does not merge equal answers, so an answer already stored in its
scope fails the whole batch (StoreError) and nothing of it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from memcache.errors import StoreError
from memcache.schema import ChangeRow, EntryRow, KeyRow, text_hash
from memcache.store import Store, _new_entry, utcnow
from memcache.types import Scope


@dataclass(frozen=True)
class BulkRow:
    """One new answer with its one key."""

    scope: Scope
    query: str
    normalized_hash: str
    embedding: np.ndarray
    answer: str


def bulk_insert(store: Store, rows: Sequence[BulkRow]) -> int:
    """Insert `rows` with batched statements; returns the number inserted."""
    if not rows:
        return 0
    now = utcnow()
    entries = [_new_entry(r.scope, r.answer, text_hash(r.answer), r.scope.model, now) for r in rows]
    try:
        with store.engine.begin() as conn:  # not retried: a duplicate is the caller's error
            insert_entries = EntryRow.__table__.insert().returning(EntryRow.id, sort_by_parameter_order=True)
            entry_ids = conn.execute(insert_entries, entries).scalars().all()
            keys = [
                {
                    "entry_id": entry_id, "scope_key": r.scope.key, "query": r.query,
                    "normalized_hash": r.normalized_hash, "created_at": now,
                    "embedding": np.asarray(r.embedding, dtype=np.float32).tobytes(),
                }
                for r, entry_id in zip(rows, entry_ids)
            ]  # fmt: skip
            insert_keys = KeyRow.__table__.insert().returning(KeyRow.id, sort_by_parameter_order=True)
            key_ids = conn.execute(insert_keys, keys).scalars().all()
            changes = [
                {"kind": "key", "entry_id": e, "key_id": k, "created_at": now} for e, k in zip(entry_ids, key_ids)
            ]
            conn.execute(ChangeRow.__table__.insert(), changes)
    except SQLAlchemyError as exc:
        raise StoreError(f"bulk insert failed, nothing was stored: {exc}") from exc
    return len(rows)
