"""TorchIndex (the GPU path) run on the CPU: it must rank exactly like FAISS's exact flat index."""

import numpy as np
import pytest

from memcache.gpu_index import TorchIndex
from memcache.index import FaissIndex


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_matches_faiss_flat_through_growth_and_removals():
    rng = np.random.default_rng(3)
    vectors = unit(rng.normal(size=(3000, 24)))
    queries = unit(rng.normal(size=(40, 24)))
    torch_index, flat = TorchIndex(24, device="cpu"), FaissIndex(24, approximate_after=10**9)
    for index in (torch_index, flat):
        for lo in range(0, 3000, 700):  # several adds: the matrix grows past its first capacity
            index.add("s", list(range(lo, min(lo + 700, 3000))), vectors[lo : lo + 700])
        index.remove(range(0, 3000, 3))
    assert torch_index.ids() == flat.ids() and len(torch_index) == 2000
    t_sims, t_ids = torch_index.search("s", queries, 5)
    f_sims, f_ids = flat.search("s", queries, 5)
    np.testing.assert_array_equal(t_ids, f_ids)
    np.testing.assert_allclose(t_sims, f_sims, atol=1e-5)


def test_scopes_are_separate_and_short_scopes_pad():
    index = TorchIndex(3, device="cpu")
    index.add("a", [1], unit([[1, 0, 0]]))
    index.add("b", [2, 3], unit([[1, 0.01, 0], [0, 1, 0]]))
    sims, ids = index.search("a", unit([[1, 0.01, 0]]), 3)
    assert ids[0].tolist() == [1, -1, -1] and sims[0][1] == -np.inf
    assert index.search("nope", unit([[1, 0, 0]]), 2)[1].tolist() == [[-1, -1]]
    index.add("a", [1], unit([[0, 0, 1]]))  # an id already present is kept, not duplicated
    index.remove([2, 3, 99])
    assert index.scope_sizes() == {"a": 1} and index.ids() == {1}


def test_bad_arguments():
    with pytest.raises(ValueError):
        TorchIndex(3, device="cpu").add("s", [1, 2], unit([[1, 0, 0]]))
