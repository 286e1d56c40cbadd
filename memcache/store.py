"""The source of truth: entries (answers) and their keys (the queries that map to them).

SQLAlchemy 2.x, so any URL works; the default is a SQLite file in WAL mode. Every write is
one transaction, so a process killed mid-write leaves either the whole entry or nothing.
The in-memory index and exact-repeat table are rebuilt from `iter_keys` on start. The tables
and their migrations are `memcache.schema`; opening a store takes the lock under which an
older one is migrated.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

import numpy as np
import sqlalchemy
from sqlalchemy import create_engine, delete, event, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from memcache.errors import StoreError
from memcache.schema import (
    SCHEMA_LOCK_KEY,
    ChangeRow,
    CheapLabelRow,
    CounterRow,
    EntryRow,
    KeyRow,
    LabelRow,
    MetaRow,
    create_or_migrate,
    get_meta,
    set_meta,
    text_hash,
)
from memcache.types import CacheEntry, Label, Scope

T = TypeVar("T")
SHIFT_COUNTS = "shift_counts:"  # meta rows: each instance's share of the pooled shift test, by writer
SHIFT_COUNTS_KEPT_S = 3600.0


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Change:
    id: int
    kind: str
    entry_id: int
    key_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class StoredKey:
    """A key as needed to rebuild the in-memory index and exact-repeat table."""

    key_id: int
    entry_id: int
    scope_key: str
    normalized_hash: str
    embedding: np.ndarray | None


class StoredAnswer(NamedTuple):
    """What a hit reads of an entry; `scope_key` lets the reader check the entry is the request's."""

    answer: str
    expires_at: datetime | None
    payload: str | None
    scope_key: str


@dataclass(frozen=True)
class WriteResult:
    entry_id: int
    key_id: int
    new_entry: bool
    new_key: bool
    checked: tuple[int, int] | None = None  # the label's entry's (checks, failures) after it; None: no label
    answer: str | None = None  # the entry's own answer, where the key joined one judged to say the same


def _write_label(
    conn: Connection, label: Label, now: datetime, writer: str, key_id: int | None
) -> tuple[int, int] | None:
    """Store a label (with the new key its answer was stored under, which other processes ask
    again in hindsight) and count the check on the entry it judged (inside the write-back's
    transaction); returns that entry's (checks, failures) after it, None when it is gone.
    A "check" change tells other processes to read the entry's counts again."""
    conn.execute(
        LabelRow.__table__.insert().values(
            features=json.dumps(list(label.features)),
            correct=label.correct,
            created_at=now,
            claimed_confidence=label.claimed_confidence,
            writer=writer,
            key_id=key_id,
        )
    )
    counts = conn.execute(
        update(EntryRow)
        .where(EntryRow.id == label.entry_id)
        .values(checks=EntryRow.checks + 1, failures=EntryRow.failures + (0 if label.correct else 1))
        .returning(EntryRow.checks, EntryRow.failures)
    ).first()
    if counts is None:
        return None
    conn.execute(ChangeRow.__table__.insert().values(kind="check", entry_id=label.entry_id, created_at=now))
    return int(counts[0]), int(counts[1])


def _add_answer(
    conn: Connection, scope: Scope, query: str, normalized_hash: str, blob: bytes | None, answer: str,
    source_model: str, expires_at: datetime | None, payload: str | None, label: Label | None, now: datetime,
    writer: str, same_as: int | None = None,
) -> WriteResult:  # fmt: skip
    """`Store.add_answer` inside its transaction: the label, the entry (the one judged the same,
    or one with an equal answer, or a new one), the key, the change."""
    answer_hash = text_hash(answer)
    find_entry = (  # locked against deletes (PostgreSQL) until the key is in
        select(EntryRow.id)
        .where(EntryRow.scope_key == scope.key, EntryRow.answer_hash == answer_hash)
        .limit(1)
        .with_for_update(key_share=True)
    )
    entry_id = stored_answer = None
    if same_as is not None:  # still there, in scope and alive, locked the same way
        alive = or_(EntryRow.expires_at.is_(None), EntryRow.expires_at > now)
        judged = select(EntryRow.id, EntryRow.answer).where(
            EntryRow.id == same_as, EntryRow.scope_key == scope.key, alive
        )
        row = conn.execute(judged.with_for_update(key_share=True)).first()
        entry_id, stored_answer = (None, None) if row is None else row
    if entry_id is None:
        entry_id = conn.execute(find_entry).scalar()
    new_entry = entry_id is None
    if new_entry:
        values = _new_entry(scope, answer, answer_hash, source_model, now, expires_at, payload)
        entry_id = _insert_unless_taken(conn, EntryRow.__table__, values, ("scope_key", "answer_hash"))
        if entry_id is None:  # a concurrent writer stored the same answer first: join its entry
            new_entry, entry_id = False, _found(conn.execute(find_entry).scalar())
    find_key = select(KeyRow.id).where(KeyRow.entry_id == entry_id, KeyRow.normalized_hash == normalized_hash).limit(1)
    key_id = None if new_entry else conn.execute(find_key).scalar()
    if not new_entry and expires_at is not None:
        conn.execute(update(EntryRow).where(EntryRow.id == entry_id).values(expires_at=expires_at))
    new_key = False
    if key_id is None:
        key = {
            "entry_id": entry_id,
            "scope_key": scope.key,
            "query": query,
            "normalized_hash": normalized_hash,
            "embedding": blob,
            "created_at": now,
        }
        key_id = _insert_unless_taken(conn, KeyRow.__table__, key, ("entry_id", "normalized_hash"))
        new_key = key_id is not None
        if not new_key:  # a concurrent writer gave the entry the same key first
            key_id = _found(conn.execute(find_key).scalar())
    if new_key:
        conn.execute(ChangeRow.__table__.insert().values(kind="key", entry_id=entry_id, key_id=key_id, created_at=now))
    checked = _write_label(conn, label, now, writer, key_id if new_key else None) if label is not None else None
    return WriteResult(entry_id, key_id, new_entry=new_entry, new_key=new_key, checked=checked, answer=stored_answer)


@dataclass(frozen=True)
class Merged:
    """What `Store.merge_entries` changed: the keys that moved to the kept entry, and those
    deleted because it had the same query already."""

    moved: tuple[int, ...]
    deleted: tuple[int, ...]


def _merge_entries(conn: Connection, keep: int, drop: int, scope_key: str, now: datetime) -> Merged | None:
    """`Store.merge_entries` inside its transaction."""
    alive = or_(EntryRow.expires_at.is_(None), EntryRow.expires_at > now)
    both = (
        select(EntryRow.id, EntryRow.hit_count, EntryRow.checks, EntryRow.failures, EntryRow.last_hit_at,
               EntryRow.last_used_at, EntryRow.expires_at)
        .where(EntryRow.id.in_([keep, drop]), EntryRow.scope_key == scope_key, alive)
        .order_by(EntryRow.id)  # one lock order for every merge
        .with_for_update()
    )  # fmt: skip
    rows = {row[0]: row for row in conn.execute(both)}
    if len(rows) != 2:
        return None
    kept, gone = rows[keep], rows[drop]
    taken = select(KeyRow.normalized_hash).where(KeyRow.entry_id == keep)
    deleted = tuple(
        conn.execute(
            delete(KeyRow).where(KeyRow.entry_id == drop, KeyRow.normalized_hash.in_(taken)).returning(KeyRow.id)
        ).scalars()
    )
    moving = update(KeyRow).where(KeyRow.entry_id == drop).values(entry_id=keep).returning(KeyRow.id)
    moved = tuple(sorted(conn.execute(moving).scalars()))
    latest = [t for t in (kept[4], gone[4]) if t is not None]
    used = [t for t in (kept[5], gone[5]) if t is not None]
    conn.execute(
        update(EntryRow)
        .where(EntryRow.id == keep)
        .values(
            hit_count=kept[1] + gone[1], checks=kept[2] + gone[2], failures=kept[3] + gone[3],
            last_hit_at=max(latest, default=None), last_used_at=max(used, default=None),
            expires_at=None if kept[6] is None or gone[6] is None else max(kept[6], gone[6]),
        )
    )  # fmt: skip
    conn.execute(delete(EntryRow).where(EntryRow.id == drop))
    changes = [{"kind": "move", "entry_id": keep, "key_id": key_id, "created_at": now} for key_id in moved]
    changes += [
        {"kind": "drop", "entry_id": drop, "key_id": None, "created_at": now},
        {"kind": "check", "entry_id": keep, "key_id": None, "created_at": now},
    ]
    conn.execute(ChangeRow.__table__.insert(), changes)
    return Merged(moved, deleted)


class _RowGone(Exception):
    """A row a concurrent writer inserted was deleted before this transaction could read it:
    `Store._transact` runs the transaction again."""


def _found(row_id: int | None) -> int:
    if row_id is None:
        raise _RowGone
    return row_id


def _insert_unless_taken(
    conn: Connection, table: sqlalchemy.Table, values: dict, unique: tuple[str, ...]
) -> int | None:
    """Insert a row and return its id; None where a row with the same `unique` columns exists,
    committed by a concurrent writer whose insert this one waited for (ON CONFLICT DO NOTHING),
    so the caller reads that row instead of failing the whole transaction. Other dialects insert
    plainly: a conflict fails the transaction, which `Store._transact` retries."""
    insert = {"postgresql": pg_insert, "sqlite": sqlite_insert}.get(conn.dialect.name)
    if insert is None:
        return conn.execute(table.insert().values(values).returning(table.c.id)).scalar_one()
    statement = insert(table).values(values).on_conflict_do_nothing(index_elements=list(unique))
    return conn.execute(statement.returning(table.c.id)).scalar()


def _hold_record(conn: Connection) -> tuple[int, int] | None:
    """The shift hold's record in the meta table (`Store.shift_hold`)."""
    value = get_meta(conn, "shift_hold")
    if value is None:
        return None
    hold = json.loads(value)
    return int(hold["after_label_id"]), int(hold["audits"])


def _up_to(query, table, until: int | None):
    return query if until is None else query.where(table.id <= until)


def _shift_counts_row():
    return MetaRow.name.startswith(SHIFT_COUNTS, autoescape=True)


def _stamp(value: str) -> float:
    """When a published share of the shift test was written (0 if unreadable: it is dropped)."""
    try:
        return float(json.loads(value)["at"])
    except (ValueError, KeyError, TypeError):
        return 0.0


def _retryable(exc: SQLAlchemyError) -> bool:
    """A failure that another try of the same transaction can pass: a concurrent insert of the
    same unique row, a deadlock or serialization failure (PostgreSQL), a busy SQLite file."""
    if isinstance(exc, IntegrityError):
        return True
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return code in ("40P01", "40001") or "database is locked" in str(exc)


def _select_keys(embeddings: bool = True):
    vector = KeyRow.embedding if embeddings else sqlalchemy.null()
    return select(KeyRow.id, KeyRow.entry_id, KeyRow.scope_key, KeyRow.normalized_hash, vector)


def _stored_key(row) -> StoredKey:
    key_id, entry_id, scope_key, normalized_hash, blob = row
    vector = None if blob is None else np.frombuffer(blob, dtype=np.float32)
    return StoredKey(key_id, entry_id, sys.intern(scope_key), normalized_hash, vector)


def _new_entry(
    scope: Scope,
    answer: str,
    answer_hash: str,
    source_model: str,
    now: datetime,
    expires_at: datetime | None = None,
    payload: str | None = None,
) -> dict:
    """Column values of a new entry row (for `add_answer`, and bulk loads in `memcache.eval.bulk`)."""
    return {
        "scope_key": scope.key,
        "tenant": scope.tenant,
        "model": scope.model,
        "scope_json": json.dumps(scope.__dict__),
        "answer": answer,
        "payload": payload,
        "answer_hash": answer_hash,
        "source_model": source_model,
        "created_at": now,
        "last_used_at": now,
        "hit_count": 0,
        "verified": True,
        "expires_at": expires_at,
        "checks": 0,
        "failures": 0,
    }


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor, wait_s: float = 10.0) -> None:
    """`PRAGMA journal_mode=WAL`, retried while the file is locked.

    Why: leaving rollback-journal mode needs an exclusive lock that SQLite does not wait for
    (busy_timeout does not apply), so threads opening a store still in that mode (one written
    by memcache 0.1) at once sometimes failed with "database is locked" (docs/DECISIONS.md).
    Once a file is in WAL mode the pragma is a no-op and succeeds at once.
    """
    delay, deadline = 0.005, time.monotonic() + wait_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class Store:
    """SQLAlchemy-backed store of entries, keys and policy labels.

    Args:
        url: any SQLAlchemy URL, e.g. "sqlite:///memcache.db" or
            "postgresql+psycopg://user@host/db".
    """

    def __init__(self, url: str) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise StoreError(f"database_url {url!r} is not a SQLAlchemy URL such as 'sqlite:///memcache.db'")
        self.url = url
        try:
            self.engine: Engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
            self._sqlite = self.engine.dialect.name == "sqlite"
            if self._sqlite:
                event.listen(self.engine, "connect", _sqlite_pragmas)
            self.store_id = self._prepare_schema()
            self.writer = uuid.uuid4().hex  # names this instance's labels (see `label_ids_after`)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {self._safe_url()}: {exc}") from exc
        except ModuleNotFoundError as exc:
            raise StoreError(
                f"the driver for {self._safe_url()} is not installed ({exc.name}); "
                'for PostgreSQL: pip install "memcache[postgres]"'
            ) from exc

    def _safe_url(self) -> str:
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return "<unparseable url>"

    def _prepare_schema(self) -> str:
        """Create a new store, or migrate an older one to SCHEMA_VERSION; return the store's id.

        Runs under a lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so of several
        processes opening a store at once exactly one creates or migrates it. On SQLite, foreign
        keys are off meanwhile (they cannot be switched inside a transaction), so a migration may
        rebuild a table; `_sqlite_autoincrement` checks the references before it commits.
        """
        sqlite = self.engine.dialect.name == "sqlite"
        with self.engine.connect() as conn:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
            try:
                with conn.begin():
                    if sqlite:
                        conn.exec_driver_sql("BEGIN IMMEDIATE")  # DDL inside the same transaction as the reads
                    elif conn.dialect.name == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                    store_id = create_or_migrate(conn)
            finally:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    conn.commit()
        return store_id

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(get_meta(conn, "schema_version"))

    def close(self) -> None:
        self.engine.dispose()

    # -- one place for the database's errors -------------------------------------------------

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[Connection]:
        """A connection for reads; a failure surfaces as StoreError naming `action`."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"{action} failed: {exc}") from exc

    def _transact(self, action: str, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction; all of it is stored, or none.

        On SQLite the transaction takes the write lock before `work` reads (pysqlite would begin
        it only at the first write, after the reads it depends on). A deadlock or serialization
        failure (PostgreSQL picks a victim when two deletes meet in opposite order), a concurrent
        insert of the same unique row on a dialect without ON CONFLICT, and a row a concurrent
        writer inserted and another deleted before this one read it (`_RowGone`) are retried,
        twice; other failures surface as StoreError naming `action`.
        """
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    if self._sqlite:  # the write lock first: what `work` reads cannot change before it writes
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                    return work(conn)
            except StoreError:
                raise
            except _RowGone:
                if attempt == 2:
                    raise StoreError(
                        f"{action} failed, nothing was changed: rows changed under it; try again"
                    ) from None
                continue
            except (IntegrityError, OperationalError) as exc:
                if attempt == 2 or not _retryable(exc):
                    raise StoreError(f"{action} failed, nothing was changed: {exc}") from exc
                time.sleep(0.01 * (attempt + 1))
            except SQLAlchemyError as exc:
                raise StoreError(f"{action} failed, nothing was changed: {exc}") from exc
        raise AssertionError("unreachable")

    # -- writes -----------------------------------------------------------------------------

    def add_answer(
        self,
        *,
        scope: Scope,
        query: str,
        normalized_hash: str,
        embedding: np.ndarray | None,
        answer: str,
        source_model: str,
        expires_at: datetime | None = None,
        payload: str | None = None,
        label: Label | None = None,
        same_as: int | None = None,
    ) -> WriteResult:
        """Store `answer` for `query`; the entry `same_as` (one the judge found to say the same,
        if it is still alive in the scope), else an equal answer in the same scope, gains a key
        instead of a row.

        A `label` (the paid answer compared with the nearest entry) is written in the same
        transaction, with the checked entry's counters: all of it is stored, or none. A
        concurrent writer that inserts the same answer or key first is re-read.
        """
        now = utcnow()
        blob = None if embedding is None else np.asarray(embedding, dtype=np.float32).tobytes()

        return self._transact(
            "write-back",
            lambda conn: _add_answer(conn, scope, query, normalized_hash, blob, answer, source_model, expires_at,
                                     payload, label, now, self.writer, same_as),
        )  # fmt: skip

    def merge_entries(self, keep: int, drop: int, scope_key: str) -> Merged | None:
        """Make `drop` part of `keep`: two alive entries of `scope_key` whose answers the judge
        found to say the same (each paid answer that arrived before either was there made its
        own). `drop`'s keys move to `keep`, its counters add up there, and it is deleted, all in
        one transaction; None (nothing changed) where either is gone, expired or of another scope.
        Other processes follow through the change sequence ("move" per key, then "drop")."""
        if keep == drop:
            return None
        now = utcnow()
        return self._transact("merging entries", lambda conn: _merge_entries(conn, keep, drop, scope_key, now))

    def record_usage(self, hits: dict[int, tuple[int, datetime]], counts: dict[str, int]) -> None:
        """Add buffered hit counters of entries ({entry_id: (hits, last_hit_at)}) and lifetime
        counter increments ({name: increment}), in one transaction."""
        if not hits and not any(counts.values()):
            return

        def work(conn: Connection) -> None:
            for entry_id, (count, last) in sorted(hits.items()):  # one lock order for every writer
                conn.execute(
                    update(EntryRow)
                    .where(EntryRow.id == entry_id)
                    .values(hit_count=EntryRow.hit_count + count, last_hit_at=last, last_used_at=last)
                )
            for name, increment in sorted(counts.items()):
                if (
                    increment
                    and not conn.execute(
                        update(CounterRow).where(CounterRow.name == name).values(value=CounterRow.value + increment)
                    ).rowcount
                ):
                    conn.execute(CounterRow.__table__.insert().values(name=name, value=increment))

        self._transact("recording usage", work)

    def lifetime_counts(self) -> dict[str, int]:
        """Every lifetime counter of the store."""
        with self._read("reading counters") as conn:
            return {name: int(value) for name, value in conn.execute(select(CounterRow.name, CounterRow.value))}

    def delete_entries(self, entry_ids: Iterable[int]) -> tuple[int, list[int]]:
        """Delete entries and their keys; return (entries deleted, key ids to drop from the index)."""
        ids = sorted(set(entry_ids))
        if not ids:
            return 0, []

        def work(conn: Connection) -> tuple[int, list[int]]:
            key_ids = list(conn.execute(delete(KeyRow).where(KeyRow.entry_id.in_(ids)).returning(KeyRow.id)).scalars())
            gone = list(conn.execute(delete(EntryRow).where(EntryRow.id.in_(ids)).returning(EntryRow.id)).scalars())
            if gone:
                now = utcnow()
                conn.execute(
                    ChangeRow.__table__.insert(),
                    [
                        {"kind": "drop", "entry_id": entry_id, "key_id": None, "created_at": now}
                        for entry_id in sorted(gone)
                    ],
                )
            return len(gone), key_ids

        return self._transact("delete", work)

    def entry_ids_of_tenant(self, tenant: str) -> list[int]:
        with self._read("finding the tenant's entries") as conn:
            return list(conn.execute(select(EntryRow.id).where(EntryRow.tenant == tenant)).scalars())

    def expired_entry_ids(self, now: datetime | None = None) -> list[int]:
        now = now or utcnow()
        with self._read("finding expired entries") as conn:
            return list(
                conn.execute(
                    select(EntryRow.id).where(EntryRow.expires_at.is_not(None), EntryRow.expires_at <= now)
                ).scalars()
            )

    def least_recently_used(self, count: int) -> list[int]:
        """Ids of the `count` entries whose last hit (or creation, if never hit) is oldest."""
        with self._read("finding entries to evict") as conn:
            return list(
                conn.execute(select(EntryRow.id).order_by(EntryRow.last_used_at, EntryRow.id).limit(count)).scalars()
            )

    # -- reads ------------------------------------------------------------------------------

    def iter_export_rows(self, chunk: int = 1_000) -> Iterator[dict]:
        """Every entry as a JSON-ready dict with its scope and all its query keys (for `export`)."""
        last = 0
        while True:
            with self._read("export") as conn:
                entries = conn.execute(
                    select(
                        EntryRow.id,
                        EntryRow.scope_json,
                        EntryRow.answer,
                        EntryRow.payload,
                        EntryRow.source_model,
                        EntryRow.created_at,
                        EntryRow.expires_at,
                    )
                    .where(EntryRow.id > last)
                    .order_by(EntryRow.id)
                    .limit(chunk)
                ).all()
                if not entries:
                    return
                queries: dict[int, list[str]] = {}
                for entry_id, query in conn.execute(
                    select(KeyRow.entry_id, KeyRow.query)
                    .where(KeyRow.entry_id.in_([e[0] for e in entries]))
                    .order_by(KeyRow.id)
                ):
                    queries.setdefault(entry_id, []).append(query)
            for entry_id, scope_json, answer, payload, source_model, created_at, expires_at in entries:
                yield {
                    "scope": json.loads(scope_json),
                    "answer": answer,
                    "queries": queries.get(entry_id, []),
                    "payload": payload,
                    "source_model": source_model,
                    "created_at": created_at.isoformat(),
                    "expires_at": None if expires_at is None else expires_at.isoformat(),
                }
            last = entries[-1][0]

    def answer_of(self, entry_id: int) -> StoredAnswer | None:
        """One entry's answer and the scope it belongs to, by primary key: the only read on a hit."""
        with self._read("reading an answer") as conn:
            row = conn.execute(
                select(EntryRow.answer, EntryRow.expires_at, EntryRow.payload, EntryRow.scope_key).where(
                    EntryRow.id == entry_id
                )
            ).first()
        return None if row is None else StoredAnswer(*row)

    def get_entry(self, entry_id: int) -> CacheEntry | None:
        with self._read("reading an entry") as conn:
            row = conn.execute(select(EntryRow).where(EntryRow.id == entry_id)).first()
            if row is None:
                return None
            queries = tuple(
                conn.execute(select(KeyRow.query).where(KeyRow.entry_id == entry_id).order_by(KeyRow.id)).scalars()
            )
        entry = row[0] if isinstance(row[0], EntryRow) else row
        return CacheEntry(
            id=entry.id,
            scope_key=entry.scope_key,
            tenant=entry.tenant,
            answer=entry.answer,
            source_model=entry.source_model,
            created_at=entry.created_at,
            last_hit_at=entry.last_hit_at,
            hit_count=entry.hit_count,
            verified=entry.verified,
            expires_at=entry.expires_at,
            queries=queries,
        )

    def last_change_id(self) -> int:
        with self._read("reading the change sequence") as conn:
            return conn.execute(select(func.max(ChangeRow.id))).scalar() or 0

    def changes_since(self, change_id: int, limit: int = 10_000) -> list[Change]:
        """Changes with a larger id, oldest first (what other processes wrote since)."""
        with self._read("reading the change sequence") as conn:
            rows = conn.execute(
                select(ChangeRow.id, ChangeRow.kind, ChangeRow.entry_id, ChangeRow.key_id, ChangeRow.created_at)
                .where(ChangeRow.id > change_id)
                .order_by(ChangeRow.id)
                .limit(limit)
            ).all()
        return [Change(*row) for row in rows]

    def key_queries(self, key_ids: Iterable[int]) -> dict[int, str]:
        """{key id: the query text stored under it} (what the cheap model reads as a question)."""
        ids = sorted(set(key_ids))
        if not ids:
            return {}
        with self._read("reading key texts") as conn:
            return dict(conn.execute(select(KeyRow.id, KeyRow.query).where(KeyRow.id.in_(ids))).all())

    def keys_by_id(self, key_ids: Iterable[int]) -> list[StoredKey]:
        ids = list(key_ids)
        if not ids:
            return []
        with self._read("reading keys") as conn:
            rows = conn.execute(_select_keys().where(KeyRow.id.in_(ids))).all()
        return [_stored_key(row) for row in rows]

    def iter_keys(self, chunk: int = 10_000, *, embeddings: bool = True) -> Iterator[StoredKey]:
        """Every live key, in id order (for index rebuilds); `embeddings=False` leaves the
        vectors out (a snapshot already holds them)."""
        last = 0
        while True:
            with self._read("reading keys") as conn:
                rows = conn.execute(
                    _select_keys(embeddings).where(KeyRow.id > last).order_by(KeyRow.id).limit(chunk)
                ).all()
            if not rows:
                return
            yield from (_stored_key(row) for row in rows)
            last = rows[-1][0]

    def vector_dimension(self) -> int | None:
        """Width of the stored key vectors (None while no key has one): a snapshot must match it."""
        with self._read("reading a key") as conn:
            blob = conn.execute(select(KeyRow.embedding).where(KeyRow.embedding.is_not(None)).limit(1)).scalar()
        return None if blob is None else len(blob) // 4

    def entry_reliability(self, entry_ids: Iterable[int] | None = None) -> list[tuple[int, int, int]]:
        """(entry_id, checks, failures) of every entry checked at least once (of `entry_ids` only, if given)."""
        query = select(EntryRow.id, EntryRow.checks, EntryRow.failures).where(EntryRow.checks > 0)
        if entry_ids is not None:
            query = query.where(EntryRow.id.in_(list(entry_ids)))
        with self._read("reading entry checks") as conn:
            return [tuple(row) for row in conn.execute(query)]

    def iter_labels(self, limit: int | None = None, until: int | None = None) -> Iterator[tuple[list[float], bool]]:
        """(features, correct) of stored labels, oldest first; with `limit`, only the newest
        `limit`; with `until`, only ids up to it."""
        query = _up_to(select(LabelRow.id, LabelRow.features, LabelRow.correct), LabelRow, until)
        for _, features, correct in self._oldest_first(query, limit):
            yield json.loads(features), bool(correct)

    def iter_audit_claims(self, limit: int | None = None, until: int | None = None) -> Iterator[tuple[float, bool]]:
        """(confidence claimed when served, whether the audit found it right), oldest first;
        with `limit`, only the newest `limit`; with `until`, only ids up to it."""
        query = select(LabelRow.id, LabelRow.claimed_confidence, LabelRow.correct).where(
            LabelRow.claimed_confidence.is_not(None)
        )
        for _, claimed, correct in self._oldest_first(_up_to(query, LabelRow, until), limit):
            yield float(claimed), bool(correct)

    def audits_per_scope(self, until: int | None = None) -> dict[str, int]:
        """How many audits each scope's served hits had (labels with a claimed confidence, by the
        scope of the key their answer was stored under); with `until`, only ids up to it. An
        audit whose key is gone (deleted, expired) counts toward no scope."""
        query = (
            select(KeyRow.scope_key, func.count())
            .select_from(LabelRow)
            .join(KeyRow, KeyRow.id == LabelRow.key_id)
            .where(LabelRow.claimed_confidence.is_not(None))
            .group_by(KeyRow.scope_key)
        )
        with self._read("counting audits per scope") as conn:
            return {scope: int(n) for scope, n in conn.execute(_up_to(query, LabelRow, until))}

    def add_cheap_label(self, features: Sequence[float], correct: bool, claimed: float | None) -> None:
        """Keep one cheap-path label (see `CheapLabelRow`)."""
        row = {"features": json.dumps([float(f) for f in features]), "correct": bool(correct),
               "created_at": utcnow(), "claimed_confidence": claimed, "writer": self.writer}  # fmt: skip
        self._transact("storing a cheap-path label", lambda conn: conn.execute(CheapLabelRow.__table__.insert(), row))

    def iter_cheap_labels(
        self, limit: int | None = None, until: int | None = None
    ) -> Iterator[tuple[list[float], bool, float | None]]:
        """(features, right, claimed confidence or None) of cheap-path labels, oldest first;
        with `limit`, only the newest `limit`; with `until`, only ids up to it."""
        query = select(
            CheapLabelRow.id, CheapLabelRow.features, CheapLabelRow.correct, CheapLabelRow.claimed_confidence
        )
        for _, features, correct, claimed in self._oldest_first(_up_to(query, CheapLabelRow, until), limit,
                                                               CheapLabelRow.id):  # fmt: skip
            yield json.loads(features), bool(correct), None if claimed is None else float(claimed)

    def last_label_id(self, cheap: bool = False) -> int:
        """The highest id of the policy's labels (`cheap`: of the cheap path's), 0 for none."""
        table = CheapLabelRow if cheap else LabelRow
        with self._read("reading labels") as conn:
            return conn.execute(select(func.max(table.id))).scalar() or 0

    def label_ids_after(self, after: int, *, cheap: bool = False, others_only: bool = True) -> list[int]:
        """Ids of labels above `after`, in order; `others_only`: those other instances wrote."""
        table = CheapLabelRow if cheap else LabelRow
        query = select(table.id).where(table.id > after).order_by(table.id)
        if others_only:
            query = query.where((table.writer.is_(None)) | (table.writer != self.writer))
        with self._read("reading labels") as conn:
            return list(conn.execute(query).scalars())

    def labels_by_id(
        self, ids: Sequence[int], *, cheap: bool = False
    ) -> list[tuple[list[float], bool, float | None, int | None]]:
        """(features, right, claimed confidence or None, the new key its answer was stored under
        or None) of the labels `ids`, in id order."""
        table = CheapLabelRow if cheap else LabelRow
        key = sqlalchemy.null() if cheap else LabelRow.key_id
        query = select(table.features, table.correct, table.claimed_confidence, key).where(table.id.in_(list(ids)))
        with self._read("reading labels") as conn:
            rows = conn.execute(query.order_by(table.id)).all()
        return [(json.loads(f), bool(c), None if k is None else float(k), key_id) for f, c, k, key_id in rows]

    def _oldest_first(self, query, limit: int | None, order=LabelRow.id) -> list[tuple]:
        """Rows of a label query in id order; with `limit`, the newest `limit` of them (read newest
        first, so a start-up reads only what the policy keeps, then reversed)."""
        with self._read("reading labels") as conn:
            if limit is None:
                return conn.execute(query.order_by(order)).all()
            rows = conn.execute(query.order_by(order.desc()).limit(limit)).all()
        return rows[::-1]

    def start_shift_hold(self, audits: int) -> tuple[int, int]:
        """Record that a hold of `audits` audits starts now (after a detected traffic shift);
        returns the record, as `shift_hold` reads it.

        Kept as the newest label id at the alarm: the audits stored after it, by any instance,
        are the ones the hold has had, so `shift_hold_left` needs no write per audit.
        """

        def work(conn: Connection) -> tuple[int, int]:
            after = conn.execute(select(func.max(LabelRow.id))).scalar() or 0
            set_meta(conn, "shift_hold", json.dumps({"after_label_id": after, "audits": int(audits)}))
            return after, int(audits)

        return self._transact("recording a shift hold", work)

    def shift_hold(self) -> tuple[int, int] | None:
        """The last recorded hold as (newest label id at its alarm, audits it asked for), or None:
        one small read, so other instances can tell a new hold at each sync."""
        with self._read("reading the shift hold") as conn:
            return _hold_record(conn)

    def shift_hold_left(self, record: tuple[int, int] | None = None) -> int:
        """Audits still owed by the last recorded hold (0 if none): what a restart resumes.
        `record`: that hold as `shift_hold` just read it (else it is read here)."""
        with self._read("reading the shift hold") as conn:
            record = record or _hold_record(conn)
            if record is None:
                return 0
            after, audits = record
            done = conn.execute(
                select(func.count())
                .select_from(LabelRow)
                .where(LabelRow.id > after, LabelRow.claimed_confidence.is_not(None))
            ).scalar_one()
        return max(0, audits - done)

    def publish_shift_counts(self, counts: Sequence[Sequence[int]]) -> None:
        """Keep this instance's share of the pooled shift test (`ShiftDetector.counts`) for the
        others to read, stamped with the time; drop those of instances silent for an hour."""
        now = time.time()

        def work(conn: Connection) -> None:
            rows = conn.execute(select(MetaRow.name, MetaRow.value).where(_shift_counts_row())).all()
            stale = [name for name, value in rows if now - _stamp(value) > SHIFT_COUNTS_KEPT_S]
            if stale:
                conn.execute(delete(MetaRow).where(MetaRow.name.in_(stale)))
            set_meta(conn, SHIFT_COUNTS + self.writer, json.dumps({"at": now, "counts": [list(c) for c in counts]}))

        self._transact("sharing shift counts", work)

    def peer_shift_counts(self, within_s: float) -> list[list[tuple[int, ...]]]:
        """The shares of the pooled shift test the other instances published in the last
        `within_s` seconds (an instance that stopped drops out)."""
        now = time.time()
        with self._read("reading shift counts") as conn:
            others = select(MetaRow.value).where(_shift_counts_row(), MetaRow.name != SHIFT_COUNTS + self.writer)
            values = conn.execute(others).scalars().all()
        shares = []
        for value in values:
            try:
                share = json.loads(value)
                if now - float(share["at"]) <= within_s:
                    shares.append([tuple(int(n) for n in row) for row in share["counts"] if len(row) == 5])
            except (ValueError, KeyError, TypeError):  # not a share this version wrote: left out
                continue
        return shares

    def counts(self) -> tuple[int, int, int]:
        """(entries, keys, labels)."""
        with self._read("counting") as conn:
            entries = conn.execute(select(func.count()).select_from(EntryRow)).scalar_one()
            keys = conn.execute(select(func.count()).select_from(KeyRow)).scalar_one()
            labels = conn.execute(select(func.count()).select_from(LabelRow)).scalar_one()
        return entries, keys, labels
