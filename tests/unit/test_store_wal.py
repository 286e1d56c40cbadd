"""Switching a store file to WAL while another connection writes (real SQLite files)."""

import sqlite3
import threading

import pytest

from memcache.store import _switch_to_wal


def writer_holding_the_lock(path):
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE IF NOT EXISTS t (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    return holder


def test_the_switch_waits_for_a_writer_that_busy_timeout_does_not_cover(tmp_path):
    path = tmp_path / "rollback.db"
    holder = writer_holding_the_lock(path)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("PRAGMA busy_timeout=10000")
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # what a bare pragma does, at once
        reader.execute("PRAGMA journal_mode=WAL")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    _switch_to_wal(reader.cursor())
    release.join()
    assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)  # the writer's row is kept


def test_the_switch_gives_up_after_its_wait(tmp_path):
    path = tmp_path / "rollback.db"
    holder = writer_holding_the_lock(path)
    reader = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _switch_to_wal(reader.cursor(), wait_s=0.2)
    holder.execute("ROLLBACK")
