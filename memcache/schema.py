"""The store's tables, the version of their layout, and the steps that bring an older store up to it.

The schema is versioned (`SCHEMA_VERSION`, kept in `memcache_meta`). Opening an older store
runs the missing steps of `MIGRATIONS` in one locked transaction (`memcache.store.Store` takes
the lock), so a newer library opens any older store, and two processes opening it at once
migrate it once. A new version adds its table or column here, one step in `MIGRATIONS`, and a
fixture of the old layout under tests/fixtures.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateTable

from memcache.errors import StoreError
from memcache.scope import normalize

SCHEMA_VERSION = 7


def text_hash(text: str) -> str:
    """The SHA-256 hex digest keys and answers are looked up by."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "memcache_meta"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class EntryRow(Base):
    """One answer, valid inside one scope."""

    __tablename__ = "memcache_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope_key: Mapped[str] = mapped_column(String(64), index=True)
    tenant: Mapped[str] = mapped_column(String(255), index=True)
    model: Mapped[str] = mapped_column(Text)
    scope_json: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    payload: Mapped[str | None] = mapped_column(
        Text, nullable=True
    )  # opaque, for adapters (e.g. LangChain generations)
    answer_hash: Mapped[str] = mapped_column(String(64))
    source_model: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_hit_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # last hit, else creation: what capacity eviction orders by (v2; indexed so it stays a range scan)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    hit_count: Mapped[int] = mapped_column(Integer, default=0)
    verified: Mapped[bool] = mapped_column(Boolean, default=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    checks: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # one row per answer per scope, also under concurrent writers in several processes
    __table_args__ = (
        UniqueConstraint("scope_key", "answer_hash", name="uq_memcache_entries_scope_answer"),
        {"sqlite_autoincrement": True},  # v4: a deleted entry's id never comes back (see _migrate_3_to_4)
    )


class KeyRow(Base):
    """One query text that maps to an entry; its embedding is what the index searches."""

    __tablename__ = "memcache_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("memcache_entries.id", ondelete="CASCADE"), index=True)
    scope_key: Mapped[str] = mapped_column(String(64))
    query: Mapped[str] = mapped_column(Text)
    normalized_hash: Mapped[str] = mapped_column(String(64))
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (
        Index("ix_memcache_keys_scope_norm", "scope_key", "normalized_hash"),
        UniqueConstraint("entry_id", "normalized_hash", name="uq_memcache_keys_entry_norm"),
        {"sqlite_autoincrement": True},
    )


class _LabelColumns:
    """The columns every label table has (a declarative mixin: each table gets its own copy)."""

    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    features: Mapped[str] = mapped_column(Text)
    correct: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    # set on audits: the confidence the answer was served with
    claimed_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    # the instance that learned it first (`Store.writer`; v7): the others learn it while they run
    writer: Mapped[str | None] = mapped_column(String(32), nullable=True)


class LabelRow(_LabelColumns, Base):
    """A paid answer turned into a policy label: features of the lookup, and whether the
    nearest entry's answer agreed with it. Kept so learning survives restarts."""

    __tablename__ = "memcache_labels"
    # the new key the paid answer was stored under (v7): other processes ask it again in hindsight
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class CheapLabelRow(_LabelColumns, Base):
    """A cheap model's reply the strong model also answered (escalated or audited): the cheap
    path's label (`memcache.cheap_gate`), kept so its learning survives restarts (v6)."""

    __tablename__ = "memcache_cheap_labels"


class ChangeRow(Base):
    """The change sequence other processes follow: a key was added, a key moved to another entry
    (two entries merged), an entry was dropped, or its answer was checked (its counts changed)."""

    __tablename__ = "memcache_changes"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))  # "key", "move", "drop" or "check"
    entry_id: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class CounterRow(Base):
    """Lifetime totals of all processes on this store (lookups, hits, strong calls, spend, ...)."""

    __tablename__ = "memcache_counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


SCHEMA_LOCK_KEY = 0x6D656D6361636865 >> 2  # "memcache", fits a signed 64-bit advisory lock key


def _column_names(conn: Connection, table: str) -> set[str]:
    return {column["name"] for column in inspect(conn).get_columns(table)}


def get_meta(conn: Connection, name: str) -> str | None:
    return conn.execute(select(MetaRow.value).where(MetaRow.name == name)).scalar()


def set_meta(conn: Connection, name: str, value: str) -> None:
    if conn.execute(update(MetaRow).where(MetaRow.name == name).values(value=value)).rowcount == 0:
        conn.execute(MetaRow.__table__.insert().values(name=name, value=value))


def _migrate_1_to_2(conn: Connection) -> None:
    """v2: `entries.last_used_at` (indexed) so capacity eviction is an index range scan at
    millions of entries instead of sorting every row by coalesce(last hit, creation); and an
    index on `expires_at` for TTL sweeps."""
    column_type = DateTime().compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE memcache_entries ADD COLUMN last_used_at {column_type}"))
    conn.execute(update(EntryRow).values(last_used_at=func.coalesce(EntryRow.last_hit_at, EntryRow.created_at)))
    for index in EntryRow.__table__.indexes:
        if index.name in ("ix_memcache_entries_last_used_at", "ix_memcache_entries_expires_at"):
            index.create(conn)


def _migrate_2_to_3(conn: Connection) -> None:
    """v3: `labels.claimed_confidence`, so the policy's check of its served claims against
    audits (`CalibratedPolicy.claim_ratio`) survives a restart. Older labels have none."""
    column_type = Float().compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE memcache_labels ADD COLUMN claimed_confidence {column_type}"))


def _migrate_3_to_4(conn: Connection) -> None:
    """v4: ids that never come back, and key hashes of the exact path's stricter normal form.

    Why the ids: SQLite hands the id of a deleted newest row to the next insert unless the table
    says AUTOINCREMENT, and every process maps ids to what it serves, so a reused id made one
    process serve another tenant's answer under the old id. SQLite cannot add AUTOINCREMENT to a
    table, so each table is rebuilt; the sequences start past every id the change log ever
    named (deleted rows included). PostgreSQL's sequences never reuse ids. Why the hashes: the
    exact path no longer folds case or compatibility forms (`memcache.scope.normalize`).
    """
    if conn.dialect.name == "sqlite":
        _sqlite_autoincrement(conn)
    last = 0
    while True:
        rows = conn.execute(
            select(KeyRow.id, KeyRow.query).where(KeyRow.id > last).order_by(KeyRow.id).limit(10_000)
        ).all()
        if not rows:
            return
        conn.execute(
            update(KeyRow).where(KeyRow.id == bindparam("key_id")).values(normalized_hash=bindparam("new_hash")),
            [{"key_id": key_id, "new_hash": text_hash(normalize(query))} for key_id, query in rows],
        )
        last = rows[-1][0]


def _sqlite_autoincrement(conn: Connection) -> None:
    """Rebuild every table with AUTOINCREMENT (the steps SQLite documents for ALTER TABLE;
    `Store._prepare_schema` turns foreign keys off first, so dropping a table cascades nothing)."""

    def highest(*columns) -> int:
        return max((conn.execute(select(func.max(column))).scalar() or 0) for column in columns)

    high = {
        EntryRow.__tablename__: highest(EntryRow.id, ChangeRow.entry_id),
        KeyRow.__tablename__: highest(KeyRow.id, ChangeRow.key_id),
        LabelRow.__tablename__: highest(LabelRow.id),
        ChangeRow.__tablename__: highest(ChangeRow.id),
    }
    for table in (EntryRow.__table__, KeyRow.__table__, LabelRow.__table__, ChangeRow.__table__):
        name, rebuilt = table.name, f"{table.name}__v4"
        ddl = str(CreateTable(table).compile(dialect=conn.dialect))
        conn.exec_driver_sql(ddl.replace(f"CREATE TABLE {name} ", f"CREATE TABLE {rebuilt} ", 1))
        present = _column_names(conn, name)  # later steps add the rest
        columns = ", ".join(column.name for column in table.columns if column.name in present)
        conn.exec_driver_sql(f"INSERT INTO {rebuilt} ({columns}) SELECT {columns} FROM {name}")
        conn.exec_driver_sql(f"DROP TABLE {name}")
        conn.exec_driver_sql(f"ALTER TABLE {rebuilt} RENAME TO {name}")
        for index in table.indexes:
            index.create(conn)
        conn.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = ?", (name,))
        conn.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, high[name]))
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise StoreError(f"rebuilding the tables would break {len(broken)} references; the store was left as it was")


def _migrate_4_to_5(conn: Connection) -> None:
    """v5: `memcache_counters`, so `memcache stats` shows the store's history, not one process's."""
    CounterRow.__table__.create(conn)


def _migrate_5_to_6(conn: Connection) -> None:
    """v6: `memcache_cheap_labels`, the cheap path's labels."""
    CheapLabelRow.__table__.create(conn)


def _migrate_6_to_7(conn: Connection) -> None:
    """v7: the labels' `writer`, so a running instance learns the labels of the others on the
    store and not its own twice, and the policy labels' `key_id`, so it asks their keys again in
    hindsight. A table made by an earlier step from today's models has them already."""
    new_columns = {
        LabelRow.__tablename__: {"writer": String(32), "key_id": Integer()},
        CheapLabelRow.__tablename__: {"writer": String(32)},
    }
    for table, columns in new_columns.items():
        present = _column_names(conn, table)
        for name, column_type in columns.items():
            if name not in present:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {column_type.compile(dialect=conn.dialect)}"))


# step from version N to N + 1; each runs inside the locked schema transaction
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
    3: _migrate_3_to_4,
    4: _migrate_4_to_5,
    5: _migrate_5_to_6,
    6: _migrate_6_to_7,
}


def create_or_migrate(conn: Connection) -> str:
    """Create the tables of a new store, or run the missing steps of `MIGRATIONS` on an older one;
    return the store's id (made once, kept in `memcache_meta`). The caller holds the schema lock."""
    if not inspect(conn).has_table(MetaRow.__tablename__):
        Base.metadata.create_all(conn)
        set_meta(conn, "schema_version", str(SCHEMA_VERSION))
    else:
        version = int(get_meta(conn, "schema_version") or 1)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {version} is newer than this library ({SCHEMA_VERSION}); upgrade memcache"
            )
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](conn)
            set_meta(conn, "schema_version", str(step + 1))
    store_id = get_meta(conn, "store_id")
    if store_id is None:
        store_id = uuid.uuid4().hex
        set_meta(conn, "store_id", store_id)
    return store_id
