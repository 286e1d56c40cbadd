import numpy as np
import pytest

from memcache.index import FaissIndex


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_search_stays_inside_its_scope():
    index = FaissIndex(3)
    index.add("a", [1], unit([[1, 0, 0]]))
    index.add("b", [2], unit([[1, 0.01, 0]]))
    sims, ids = index.search("a", unit([[1, 0.01, 0]]), 5)
    assert ids[0].tolist()[:1] == [1] and set(ids[0].tolist()) == {1, -1}
    assert sims[0][0] == pytest.approx(0.99995, abs=1e-4)


def test_removed_ids_never_come_back_flat_and_hnsw():
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(300, 8)))
    index = FaissIndex(8, approximate_after=100)
    index.add("s", list(range(300)), vectors)
    index.wait_for_builds()
    assert index._partitions["s"].approximate
    index.remove(range(0, 300, 2))
    _, ids = index.search("s", vectors[:20], 10)
    assert not (set(ids.ravel().tolist()) - {-1}) & set(range(0, 300, 2))
    index.remove(range(1, 300, 2))
    assert len(index) == 0 and index.scope_sizes() == {}


def test_hnsw_recall_against_exact():
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(3000, 32)))
    queries = unit(vectors[:200] + rng.normal(scale=0.1, size=(200, 32)))
    exact, approx = FaissIndex(32, approximate_after=10**9), FaissIndex(32, approximate_after=1000)
    for index in (exact, approx):
        index.add("s", list(range(3000)), vectors)
    approx.wait_for_builds()
    assert approx._partitions["s"].approximate
    recall = np.mean(exact.search("s", queries, 1)[1][:, 0] == approx.search("s", queries, 1)[1][:, 0])
    assert recall >= 0.99


def test_snapshot_round_trip_keeps_partitions_graphs_and_tombstones(tmp_path):
    rng = np.random.default_rng(2)
    vectors = unit(rng.normal(size=(400, 16)))
    index = FaissIndex(16, approximate_after=200)
    index.add("big", list(range(300)), vectors[:300])
    index.add("small", list(range(300, 400)), vectors[300:])
    index.wait_for_builds()
    index.remove([0, 1, 2, 350])
    path = tmp_path / "index.snap"
    index.save(path, meta={"store_id": "abc"})
    loaded = FaissIndex.load(path)
    assert FaissIndex.read_meta(path) == {"store_id": "abc"}
    assert loaded.ids() == index.ids() and loaded.scope_sizes() == index.scope_sizes()
    assert loaded._partitions["big"].approximate and loaded._partitions["big"].tombstones == {0, 1, 2}
    for scope in ("big", "small"):
        for before, after in zip(index.search(scope, vectors[:50], 5), loaded.search(scope, vectors[:50], 5)):
            np.testing.assert_array_equal(before, after)
    loaded.add("small", [500], vectors[:1])  # a loaded index keeps working
    assert loaded.search("small", vectors[:1], 1)[1][0, 0] == 500


def test_snapshot_that_is_not_one_is_refused(tmp_path):
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a memcache index snapshot"):
        FaissIndex.load(bad)
    index = FaissIndex(4)
    index.add("s", [1], unit([[1, 0, 0, 0]]))
    index.save(tmp_path / "ok.snap")
    (tmp_path / "cut.snap").write_bytes((tmp_path / "ok.snap").read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        FaissIndex.load(tmp_path / "cut.snap")


def test_switch_to_hnsw_builds_in_the_background_and_catches_up():
    """Crossing `approximate_after` one key at a time must not stall: the flat partition serves
    while the graph is built, and keys added or removed meanwhile are right afterwards."""
    rng = np.random.default_rng(4)
    vectors = unit(rng.normal(size=(3000, 32)))
    index = FaissIndex(32, approximate_after=2000)
    index.add("s", list(range(2000)), vectors[:2000])
    index.add("s", [2000], vectors[2000:2001])  # one key over: a background build starts
    assert index._partitions["s"].builder is not None and not index._partitions["s"].approximate
    for key_id in range(2001, 3000):  # lookups and writes go on meanwhile
        index.add("s", [key_id], vectors[key_id : key_id + 1])
        assert index.search("s", vectors[key_id : key_id + 1], 1)[1][0, 0] == key_id
    index.remove(range(0, 3000, 10))
    index.wait_for_builds()
    part = index._partitions["s"]
    assert part.approximate and part.builder is None and len(index) == 2700
    _, ids = index.search("s", vectors, 1)
    assert not set(ids[:, 0].tolist()) & set(range(0, 3000, 10))  # removed keys never come back
    live = [i for i in range(3000) if i % 10]
    assert np.mean(ids[live, 0] == np.asarray(live)) >= 0.99  # and the others are found


def test_searches_share_the_index_a_change_waits_and_the_next_piece_lets_it_go_first():
    """A long search (a piece of the hindsight relabel) must not hold up lookups, and a change
    waits for it; the relabel's next piece (`yield_to_changes`) lets the waiting change go
    first, so a write-back waits for one piece, not for the whole window."""
    import threading

    from memcache.index import _SharedLock

    lock = _SharedLock()
    piece_in, release = threading.Event(), threading.Event()
    order = []

    def first_piece():
        with lock.shared(yield_to_changes=True):
            piece_in.set()
            assert release.wait(30)
            order.append("piece 1")

    def change():
        with lock.exclusive():
            order.append("change")

    def next_piece():
        with lock.shared(yield_to_changes=True):
            order.append("piece 2")

    def lookup():
        with lock.shared():
            order.append("lookup")

    searcher = threading.Thread(target=first_piece)
    searcher.start()
    assert piece_in.wait(30)
    writer = threading.Thread(target=change)
    writer.start()
    while not lock._changes_waiting:  # the change is waiting for the piece under way
        writer.join(0.01)
    assert writer.is_alive()
    follower = threading.Thread(target=next_piece)
    follower.start()
    follower.join(0.2)
    assert follower.is_alive()  # the next piece waits for the waiting change
    reader = threading.Thread(target=lookup)
    reader.start()
    reader.join(10)
    assert not reader.is_alive()  # a lookup does not
    release.set()
    for thread in (searcher, writer, follower):
        thread.join(30)
    assert order == ["lookup", "piece 1", "change", "piece 2"]


def test_a_search_of_several_vectors_yields_to_a_waiting_change():
    """`FaissIndex.search` with more than one vector is the relabel's: it must not overtake an add."""
    import threading

    vectors = unit(np.random.default_rng(4).normal(size=(20, 8)))
    index = FaissIndex(8)
    index.add("s", list(range(1, 11)), vectors[:10])
    results = {}
    with index._lock.shared():  # a lookup's search under way
        writer = threading.Thread(target=lambda: index.add("s", [11], vectors[10:11]))
        writer.start()
        while not index._lock._changes_waiting:
            writer.join(0.01)
        batch = threading.Thread(target=lambda: results.setdefault("batch", index.search("s", vectors[10:12], 1)))
        single = threading.Thread(target=lambda: results.setdefault("single", index.search("s", vectors[10:11], 1)))
        batch.start()
        single.start()
        single.join(10)
        assert not single.is_alive()  # a lookup passes the waiting add
        batch.join(0.2)
        assert batch.is_alive()  # the batch waits behind it
    for thread in (writer, batch):
        thread.join(30)
    assert results["single"][1][0, 0] != 11  # searched before the add
    assert results["batch"][1][0, 0] == 11  # searched after it


def test_concurrent_searches_and_adds_stay_consistent():
    import threading

    vectors = unit(np.random.default_rng(3).normal(size=(2000, 8)))
    index = FaissIndex(8)
    index.add("s", list(range(1, 1001)), vectors[:1000])
    errors = []

    def search():
        try:
            for i in range(300):
                _, ids = index.search("s", vectors[i % 1000][None, :], 1)
                assert ids[0, 0] == i % 1000 + 1
        except Exception as exc:  # reported below
            errors.append(exc)

    def add():
        for i in range(1000, 2000, 10):
            index.add("s", list(range(i + 1, i + 11)), vectors[i : i + 10])

    threads = [threading.Thread(target=search) for _ in range(4)] + [threading.Thread(target=add)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(thread.is_alive() for thread in threads)
    _, ids = index.search("s", vectors[1500:1510], 1)
    assert ids[:, 0].tolist() == list(range(1501, 1511))
