"""Tests for ibdml.retrieval: exact inner-product k-NN (docs/method.md §7.2, §14.2).

Every path the search can take is checked against a float64 brute force: the CPU self-search
with faiss heaps (`_self_search_heaps`), products and top-k in blocks (`_search_blocks`: queries
against a reference, and the self-search when faiss is missing) and faiss on a GPU
(`_search_faiss_gpu`, here with a stand-in faiss). "Exact" means: up to near-ties, two candidates
whose float64 similarities differ by less than ~1e-6 may come in either order (module docstring).

A test that names a path forces it (calls it, or fixes `search_device`), so that it tests that
path on a machine with a GPU and faiss-gpu too; where the search runs is faked, never assumed.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from ibdml import retrieval
from ibdml.retrieval import faiss_available, nearest_neighbours, nearest_neighbours_of_rows

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")

NEAR_TIE = 1e-6  # float64 similarities closer than this may be ordered either way


@pytest.fixture(autouse=True)
def fresh_gpu_resources():
    """No faiss GPU resources kept from another test (or its stand-in faiss) before or after."""
    retrieval._gpu_resources.cache_clear()
    yield
    retrieval._gpu_resources.cache_clear()


def on_the_cpu(monkeypatch):
    """The search runs on the CPU, as on a machine without a GPU or in a run with device: cpu."""
    monkeypatch.setattr(retrieval, "search_device", lambda device: device)


def on_a_gpu(monkeypatch, index: int = 0):
    """The search runs on CUDA device `index`, as in a process that uses CUDA (no GPU needed
    where faiss does the search: the tensors stay on the CPU)."""
    monkeypatch.setattr(retrieval, "search_device", lambda device: torch.device("cuda", index))


def unit_rows(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Random L2-normalised rows: continuous, so exact ties do not occur."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def brute_force(queries, reference, k, exclude_self=False):
    """The unblocked answer: the whole similarity matrix in float64, own index masked."""
    sims = queries.double() @ reference.double().T
    if exclude_self:
        sims.fill_diagonal_(float("-inf"))
    return sims.topk(k, dim=1)


def assert_exact(queries, reference, sims, idx, k, exclude_self=False, own=None):
    """(sims, idx) [Nq, k] is the exact k-NN of queries in reference, up to near-ties.

    Rank by rank, the float64 similarity of the returned neighbour equals the float64 brute
    force's at that rank (so a wrong neighbour is caught unless it ties the right one within
    NEAR_TIE), indices are distinct and valid, the own index (exclude_self) never appears, and
    the returned float32 similarities are those of the returned indices, descending.
    """
    queries, reference = torch.as_tensor(queries).cpu(), torch.as_tensor(reference).cpu()
    sims, idx = sims.cpu(), idx.cpu()
    assert sims.dtype == torch.float32 and idx.dtype == torch.int64
    assert sims.shape == idx.shape == (len(queries), k)
    assert int(idx.min()) >= 0 and int(idx.max()) < len(reference)
    assert all(len(set(row)) == k for row in idx.tolist()), "a neighbour listed twice"
    if exclude_self:
        own = torch.arange(len(queries)) if own is None else torch.as_tensor(own)
        assert not bool((idx == own[:, None]).any()), "a query lists itself"
    all_sims = queries.double() @ reference.double().T  # [Nq, Nr]
    if exclude_self:
        all_sims[torch.arange(len(queries)), own] = float("-inf")
    want = all_sims.topk(k, dim=1).values  # [Nq, k]
    got = all_sims.gather(1, idx)  # exact similarity of each returned neighbour
    assert float((got - want).abs().max()) <= NEAR_TIE
    torch.testing.assert_close(sims.double(), got, atol=1e-5, rtol=0)
    assert bool((sims[:, :-1] >= sims[:, 1:]).all())


def test_assert_exact_catches_a_wrong_neighbour():
    # The checker itself: swapping in the 8th neighbour for the 7th, or listing the query itself,
    # must fail it.
    x = unit_rows(50, dim=8)
    sims, idx = brute_force(x, x, 8, exclude_self=True)
    assert_exact(x, x, sims[:, :7].float(), idx[:, :7], 7, exclude_self=True)
    wrong = idx[:, :7].clone()
    wrong[0, 6] = idx[0, 7]
    with pytest.raises(AssertionError):
        assert_exact(x, x, sims[:, :7].float(), wrong, 7, exclude_self=True)
    with pytest.raises(AssertionError):
        assert_exact(x, x, *brute_force(x, x, 3), 3, exclude_self=True)


# --- the CPU self-search: faiss heaps, each pair's product once --------------------------------


@needs_faiss
@pytest.mark.parametrize("block_rows", [1, 7, 64, 256, 400])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_heap_self_search_equals_brute_force(monkeypatch, block_rows, exclude_self):
    # n = 300: one-row blocks, uneven blocks (7 leaves 6 rows at the end), several, one of all.
    monkeypatch.setattr(retrieval, "_HEAP_BLOCK_ROWS", block_rows)
    x = unit_rows(300, dim=16, seed=8)
    sims, idx = retrieval._self_search_heaps(x, 7, exclude_self)
    assert_exact(x, x, sims, idx, 7, exclude_self)


@needs_faiss
def test_heap_self_search_gives_every_row_all_others(monkeypatch):
    # k = n − 1: every row's heap must end up holding all other rows, whichever block gave them.
    monkeypatch.setattr(retrieval, "_HEAP_BLOCK_ROWS", 3)
    x = unit_rows(10, dim=4, seed=10)
    sims, idx = retrieval._self_search_heaps(x, 9, True)
    assert [sorted(row) for row in idx.tolist()] == [
        [j for j in range(10) if j != i] for i in range(10)
    ]
    assert bool((sims[:, :-1] >= sims[:, 1:]).all())


# --- products and top-k in blocks: any device, queries → reference, no-faiss self-search --------


@pytest.mark.parametrize("block_rows", [1, 7, 64, 300])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_block_search_equals_brute_force(monkeypatch, block_rows, exclude_self):
    # Blocks of query rows into one reused buffer: the last block short (7), or all in one.
    monkeypatch.setattr(retrieval, "_BLOCK_ENTRIES", block_rows * 300)  # block_rows per block
    x = unit_rows(300, dim=16, seed=3)
    own = torch.arange(300) if exclude_self else None
    sims, idx = retrieval._search_blocks(x, x, 5, own)
    assert_exact(x, x, sims, idx, 5, exclude_self)


@pytest.mark.parametrize("block_entries", [10, 9 * 2000, 50 * 2000, 2**24])
def test_queries_against_a_reference_equal_brute_force(monkeypatch, block_entries):
    # Fewer entries than one reference row still makes blocks of one query.
    monkeypatch.setattr(retrieval, "_BLOCK_ENTRIES", block_entries)
    queries, reference = unit_rows(200, seed=4), unit_rows(2000, seed=5)
    sims, idx = nearest_neighbours(queries, reference, k=9)
    assert_exact(queries, reference, sims, idx, 9)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_without_faiss_the_block_search_agrees_with_the_default_path(monkeypatch, exclude_self):
    # The default CPU path (faiss heaps) and the fallback without faiss: the same neighbours, up
    # to near-ties, several blocks each. On the CPU even where a GPU is visible.
    on_the_cpu(monkeypatch)
    monkeypatch.setattr(retrieval, "_HEAP_BLOCK_ROWS", 64)
    monkeypatch.setattr(retrieval, "_BLOCK_ENTRIES", 64 * 500)
    x = unit_rows(500, dim=16, seed=11)
    sims, idx = nearest_neighbours(x, k=10, exclude_self=exclude_self)
    monkeypatch.setattr(retrieval, "faiss_available", lambda: False)
    fb_sims, fb_idx = nearest_neighbours(x, k=10, exclude_self=exclude_self)
    assert_exact(x, x, sims, idx, 10, exclude_self)
    assert_exact(x, x, fb_sims, fb_idx, 10, exclude_self)
    torch.testing.assert_close(fb_sims, sims, atol=1e-5, rtol=0)
    assert float((fb_idx != idx).float().mean()) < 0.01  # differ at near-ties at most


def test_without_faiss_installed_the_search_still_works(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    assert not faiss_available()
    assert not retrieval._faiss_gpu_usable(5)
    x = unit_rows(50)
    sims, idx = nearest_neighbours(x, k=3, exclude_self=True)
    assert_exact(x, x, sims, idx, 3, exclude_self=True)


def test_results_are_sorted_float32_int64_on_the_cpu_and_accept_numpy():
    x = unit_rows(300).numpy()
    sims, idx = nearest_neighbours(x, k=10, exclude_self=True)
    assert sims.device.type == idx.device.type == "cpu"
    assert_exact(torch.from_numpy(x), torch.from_numpy(x), sims, idx, 10, exclude_self=True)
    sims, idx = nearest_neighbours(x[:20], x.astype(np.float64), k=4)  # computed in float32
    assert_exact(torch.from_numpy(x[:20]), torch.from_numpy(x), sims, idx, 4)


def test_doc_example_and_k_equal_to_the_reference_size():
    x = torch.tensor([[1.0, 0.0], [0.985, 0.174], [0.0, 1.0]])
    assert nearest_neighbours(x, k=1, exclude_self=True)[1].ravel().tolist() == [1, 0, 1]
    _, idx = nearest_neighbours(x, k=3)  # the whole reference, query included
    assert idx.tolist() == [[0, 1, 2], [1, 0, 2], [2, 1, 0]]


# --- where the search runs (docs/method.md §14.2) ----------------------------------------------


@pytest.mark.parametrize("device_type, faiss_gpus, reference, want", [
    ("cpu", 0, False, "_self_search_heaps"),  # CPU self-search: symmetric faiss heaps
    ("cpu", 0, True, "_search_blocks"),  # CPU, queries → reference: products + top-k
    ("cpu", 1, False, "_self_search_heaps"),  # on the CPU faiss's GPUs are not asked about
    ("cpu", 1, True, "_search_blocks"),
    ("meta", 0, False, "_search_blocks"),  # a GPU, faiss without one: products + top-k there
    ("meta", 0, True, "_search_blocks"),
    ("cuda", 1, False, "_search_faiss_gpu"),  # a GPU that faiss sees too
    ("cuda", 1, True, "_search_faiss_gpu"),
])
def test_the_path_is_chosen_by_what_the_machine_has(monkeypatch, device_type, faiss_gpus,
                                                    reference, want):
    # Stand-ins for what the machine has (no GPU needed): where `search_device` sends the search
    # ("meta" plays a GPU that tensors can be moved to here; "cuda" one where only faiss
    # searches, which moves nothing), and how many GPUs faiss counts. Each path is replaced by a
    # spy that records that it ran.
    ran = []

    def spy(name):
        def path(queries, *args):
            ran.append(name)
            k = args[1] if name != "_self_search_heaps" else args[0]  # (reference, k, ...)
            return torch.zeros(len(queries), k), torch.zeros(len(queries), k, dtype=torch.int64)
        return path

    monkeypatch.setitem(sys.modules, "faiss", FakeFaiss(gpus=faiss_gpus))
    monkeypatch.setattr(retrieval, "search_device",
                        lambda device: torch.device(device_type, 0 if device_type == "cuda"
                                                    else None))
    for name in ("_self_search_heaps", "_search_blocks", "_search_faiss_gpu"):
        monkeypatch.setattr(retrieval, name, spy(name))
    x = unit_rows(20)
    sims, idx = nearest_neighbours(x, x[:10] if reference else None, k=3)
    assert ran == [want]
    assert sims.shape == idx.shape == (20, 3) and sims.device == x.device


def test_faiss_gpu_is_used_only_up_to_k_2048_and_only_when_it_counts_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", FakeFaiss(gpus=2))
    assert retrieval._faiss_gpu_usable(2048)
    assert not retrieval._faiss_gpu_usable(2049)  # faiss-gpu's k-selection limit (faiss#2103)
    monkeypatch.setitem(sys.modules, "faiss", FakeFaiss(gpus=0))
    assert not retrieval._faiss_gpu_usable(5)
    monkeypatch.setitem(sys.modules, "faiss", object())  # an old faiss without get_num_gpus
    assert not retrieval._faiss_gpu_usable(5)
    monkeypatch.setitem(sys.modules, "faiss", None)  # no faiss at all
    assert not retrieval._faiss_gpu_usable(5)


# --- faiss on a GPU, with a stand-in faiss (no GPU needed) --------------------------------------


class FakeFaiss:
    """Just enough of faiss for `_search_faiss_gpu`: a brute-force IndexFlatIP in numpy (ties in
    index order), a GPU count, and GPU calls that only record themselves: the GPU counts asked
    for, the resources made, and for each index moved, its device and resources."""

    def __init__(self, gpus: int):
        self.gpus, self.moved_to, self.resources, self.asked = gpus, [], [], 0

    def get_num_gpus(self) -> int:
        self.asked += 1
        return self.gpus

    class IndexFlatIP:
        def __init__(self, dim: int):
            self.data = np.zeros((0, dim), dtype=np.float32)

        def add(self, x: np.ndarray) -> None:
            self.data = np.concatenate([self.data, x])

        def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            # Without BLAS, so that exact duplicates get exactly equal products.
            sims = (q[:, None, :] * self.data[None, :, :]).sum(axis=2)
            idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(sims, idx, axis=1), idx

    def StandardGpuResources(self) -> object:
        self.resources.append(object())
        return self.resources[-1]

    def index_cpu_to_gpu(self, resources, device: int, index):
        assert any(resources is made for made in self.resources)
        self.moved_to.append((device, resources))
        return index


def test_faiss_seeing_a_gpu_puts_the_index_there(monkeypatch):
    fake = FakeFaiss(gpus=2)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    on_a_gpu(monkeypatch, 1)  # the GPU torch uses, not faiss's first
    queries, reference = unit_rows(40, seed=3), unit_rows(60, seed=4)
    sims, idx = nearest_neighbours(queries, reference, k=5)
    assert [device for device, _ in fake.moved_to] == [1]
    assert sims.device == queries.device
    assert_exact(queries, reference, sims, idx, 5)


@pytest.mark.parametrize("self_search", [False, True])
def test_a_search_on_the_cpu_never_asks_faiss_about_gpus(monkeypatch, self_search):
    # A run with device: cpu on a machine with faiss-gpu and a GPU: faiss's GPU count is not
    # even asked for (it would start CUDA), and the search is the CPU's.
    fake = FakeFaiss(gpus=1)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    on_the_cpu(monkeypatch)
    monkeypatch.setattr(retrieval, "_self_search_heaps",
                        lambda x, k, exclude: retrieval._search_blocks(x, x, k, torch.arange(
                            len(x)) if exclude else None))  # the stand-in has no heaps
    queries, reference = unit_rows(40, seed=3), unit_rows(60, seed=4)
    if self_search:
        sims, idx = nearest_neighbours(reference, k=3, exclude_self=True)
        assert_exact(reference, reference, sims, idx, 3, exclude_self=True)
    else:
        sims, idx = nearest_neighbours(queries, reference, k=3)
        assert_exact(queries, reference, sims, idx, 3)
    assert fake.asked == 0 and fake.moved_to == [] and fake.resources == []


def test_faiss_gpu_resources_are_made_once_per_device_and_process(monkeypatch):
    # Each StandardGpuResources reserves pinned host memory and GPU scratch memory: one per
    # device, reused by every later search on it (an evaluation every epoch).
    fake = FakeFaiss(gpus=2)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    x = unit_rows(30, dim=8, seed=6)
    for gpu in (0, 0, 1, 0, 1):
        on_a_gpu(monkeypatch, gpu)
        nearest_neighbours(x, k=2, exclude_self=True)
        nearest_neighbours(x[:5], x, k=3)
    assert len(fake.resources) == 2
    by_device = {}
    for device, resources in fake.moved_to:
        assert by_device.setdefault(device, resources) is resources
    assert sorted(by_device) == [0, 1] and len(fake.moved_to) == 10


def test_faiss_gpu_self_search_drops_the_own_index(monkeypatch):
    # Rows 0..4 are exact duplicates. The stand-in lists ties in index order, so row 3's k+1 = 3
    # nearest are 0, 1, 2, without 3 itself: the last column goes instead.
    fake = FakeFaiss(gpus=1)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    on_a_gpu(monkeypatch)
    x = unit_rows(30, dim=8, seed=6)
    x[1:5] = x[0]
    sims, idx = nearest_neighbours(x, k=2, exclude_self=True)
    assert len(fake.moved_to) == 1
    assert idx[3].tolist() == [0, 1] and idx[0].tolist() == [1, 2]
    assert_exact(x, x, sims, idx, 2, exclude_self=True)


def test_drop_own_index_keeps_order_and_drops_last_when_own_is_missing():
    sims = torch.tensor([[0.9, 0.8, 0.7], [1.0, 1.0, 1.0]])
    idx = torch.tensor([[3, 0, 2], [4, 5, 6]])  # row 0 lists itself second; row 1 not at all
    kept_sims, kept_idx = retrieval._drop_own_index(sims, idx, torch.tensor([0, 1]))
    assert kept_idx.tolist() == [[3, 2], [4, 5]]
    torch.testing.assert_close(kept_sims, torch.tensor([[0.9, 0.7], [1.0, 1.0]]))


@needs_cuda
def test_on_a_gpu_results_come_back_on_the_queries_device():
    x = unit_rows(300, dim=16, seed=12)
    for queries in (x.cuda(), x):  # then CPU queries in a process that uses CUDA: on the GPU
        sims, idx = nearest_neighbours(queries, k=6, exclude_self=True)
        assert sims.device == idx.device == queries.device
        assert_exact(x, x, sims, idx, 6, exclude_self=True)
    sims, idx = nearest_neighbours(x[:50].cuda(), x.cuda(), k=6)
    assert sims.device.type == "cuda"
    assert_exact(x[:50], x, sims, idx, 6)


# --- self-exclusion BY INDEX (docs/method.md §7.2) ---------------------------------------------


def _self_search(path: str, monkeypatch):
    """A self-search with exclude_self=True by one path: (x, k) → (sims, idx)."""
    if path == "heaps":
        if not faiss_available():
            pytest.skip("faiss is not installed")
        monkeypatch.setattr(retrieval, "_HEAP_BLOCK_ROWS", 3)
        return lambda x, k: retrieval._self_search_heaps(x, k, True)
    if path == "blocks":
        monkeypatch.setattr(retrieval, "_BLOCK_ENTRIES", 3 * 40)
        return lambda x, k: retrieval._search_blocks(x, x, k, torch.arange(len(x)))
    if path == "no faiss":
        monkeypatch.setattr(retrieval, "faiss_available", lambda: False)
    return lambda x, k: nearest_neighbours(x, k=k, exclude_self=True)  # "default", "no faiss"


SELF_SEARCHES = ["heaps", "blocks", "default", "no faiss"]


@pytest.mark.parametrize("path", SELF_SEARCHES)
def test_self_excluded_by_index_among_exact_duplicates(monkeypatch, path):
    # Rows 0..4 are exact duplicates. Each of them must list the other four (similarity 1) and
    # never itself; dropping column 0 would instead drop whichever duplicate sorted first.
    search = _self_search(path, monkeypatch)
    x = unit_rows(40, dim=8, seed=6)
    x[1:5] = x[0]
    sims, idx = search(x, 4)
    for i in range(5):
        assert set(idx[i].tolist()) == set(range(5)) - {i}
        torch.testing.assert_close(sims[i], torch.ones(4), atol=1e-5, rtol=0)
    assert not bool((idx == torch.arange(40)[:, None]).any())  # nobody lists itself


@pytest.mark.parametrize("path", SELF_SEARCHES)
def test_self_never_returned_when_duplicates_outnumber_k(monkeypatch, path):
    # Ten identical rows and k = 2: ties among the ten decide which two come back, but the query
    # itself never does.
    search = _self_search(path, monkeypatch)
    x = unit_rows(40, dim=8, seed=7)
    x[:10] = x[0]
    _, idx = search(x, 2)
    for i in range(10):
        row = idx[i].tolist()
        assert i not in row and len(set(row)) == 2 and set(row) <= set(range(10))


# --- a few queries drawn from the set ----------------------------------------------------------


def test_neighbours_of_rows_equal_the_full_self_search_at_those_rows(monkeypatch):
    monkeypatch.setattr(retrieval, "_BLOCK_ENTRIES", 7 * 400)  # several blocks of queries
    x = unit_rows(400, dim=16, seed=13)
    x[[50, 51]] = x[17].clone()  # exact duplicates of a drawn row: listed, never the row itself
    rows = [17, 3, 399, 3, 0, 51]  # repeats allowed
    sims, idx = nearest_neighbours_of_rows(x, rows, k=8)
    assert_exact(x[rows], x, sims, idx, 8, exclude_self=True, own=rows)
    all_sims, all_idx = nearest_neighbours(x, k=8, exclude_self=True)
    torch.testing.assert_close(sims, all_sims[rows], atol=1e-5, rtol=0)
    # The same neighbours; exact duplicates (row 17's 50 and 51) may come in either order.
    assert [set(row) for row in idx.tolist()] == [set(row) for row in all_idx[rows].tolist()]
    assert torch.equal(idx[1], idx[3]) and set(idx[0, :2].tolist()) == {50, 51}
    assert set(idx[5, :2].tolist()) == {17, 50}


@pytest.mark.parametrize("rows", [torch.tensor([4, 1]), np.array([4, 1]), [4, 1],
                                  np.array([4, 1], dtype=np.int32)])
def test_neighbours_of_rows_accept_tensors_arrays_and_lists(rows):
    x = unit_rows(30, dim=8, seed=14)
    sims, idx = nearest_neighbours_of_rows(x.numpy(), rows, k=29)  # k = N − 1: all others
    assert [sorted(row) for row in idx.tolist()] == [
        [j for j in range(30) if j != i] for i in (4, 1)
    ]
    assert_exact(x[[4, 1]], x, sims, idx, 29, exclude_self=True, own=[4, 1])


@pytest.mark.parametrize("rows, message", [
    ([], "rows must be a non-empty 1-D list of integer row indices, got shape \\(0,\\)"),
    ([[1, 2]], "non-empty 1-D list .* got shape \\(1, 2\\)"),
    ([1.0, 2.0], "integer row indices, .* dtype torch.float64"),
    ([True, False], "integer row indices, .* dtype torch.bool"),
    ([0, 10], "rows must index x's 10 rows \\(0 to 9\\), got 0 to 10"),
    ([-1, 3], "rows must index x's 10 rows \\(0 to 9\\), got -1 to 3"),
])
def test_neighbours_of_rows_refuse_bad_rows(rows, message):
    with pytest.raises(ValueError, match=message):
        nearest_neighbours_of_rows(unit_rows(10), rows, k=1)


def test_neighbours_of_rows_k_limits():
    x = unit_rows(10)
    nearest_neighbours_of_rows(x, [0], k=9)
    with pytest.raises(ValueError, match=r"k=10 .* only 9 reference rows .* excluding each query"):
        nearest_neighbours_of_rows(x, [0], k=10)
    with pytest.raises(ValueError, match="k must be an integer ≥ 1"):
        nearest_neighbours_of_rows(x, [0], k=0)


# --- errors that say what to do ----------------------------------------------------------------


def test_k_larger_than_available_raises():
    x = unit_rows(10)
    nearest_neighbours(x, k=9, exclude_self=True)  # 9 others: fine
    nearest_neighbours(x, x[:5], k=5)  # the whole reference: fine
    with pytest.raises(ValueError, match=r"k=10 .* only 9 reference rows .* excluding each query"
                                         r" itself: use k ≤ 9"):
        nearest_neighbours(x, k=10, exclude_self=True)
    with pytest.raises(ValueError, match=r"k=6 .* only 5 reference rows are available: use k ≤ 5"):
        nearest_neighbours(x, x[:5], k=6)


@pytest.mark.parametrize("call, message", [
    (lambda x: nearest_neighbours(x, k=0), "k must be an integer ≥ 1, got 0"),
    (lambda x: nearest_neighbours(x, k=2.0), "k must be an integer ≥ 1, got 2.0"),
    (lambda x: nearest_neighbours(x, k=True), "k must be an integer ≥ 1, got True"),
    (lambda x: nearest_neighbours(x, unit_rows(5, dim=8)),
     "queries has 32-d rows but reference has 8-d rows"),
    (lambda x: nearest_neighbours(x[0]), "queries must be a 2-D"),
    (lambda x: nearest_neighbours(x, x[:0]), "reference is empty"),
    (lambda x: nearest_neighbours(x, x, exclude_self=True), "pass reference=None"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(unit_rows(10))


def test_numpy_integer_k_is_accepted_against_a_reference():
    x = unit_rows(10)
    sims, idx = nearest_neighbours(x, x[:5], k=np.int64(2))
    assert_exact(x, x[:5], sims, idx, 2)


def test_numpy_integer_k_is_accepted_in_a_cpu_self_search(monkeypatch):
    if not faiss_available():
        pytest.skip("faiss is not installed")
    on_the_cpu(monkeypatch)
    x = unit_rows(10)
    sims, idx = nearest_neighbours(x, k=np.int64(2), exclude_self=True)
    assert_exact(x, x, sims, idx, 2, exclude_self=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_raises_and_names_the_row(value):
    x = unit_rows(10)
    x[3, 1] = value
    with pytest.raises(ValueError, match=r"queries has 1 of 10 rows with NaN or inf \(rows \[3\]"):
        nearest_neighbours(x, k=1, exclude_self=True)
    with pytest.raises(ValueError, match=r"reference has 1 of 10 rows with NaN or inf "
                                         r"\(rows \[3\]"):
        nearest_neighbours(unit_rows(4), x, k=1)
