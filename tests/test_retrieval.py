"""Tests for ibdml.retrieval: exact k-NN (faiss and torch backends) and seeded k-means."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from ibdml import retrieval
from ibdml.retrieval import faiss_available, kmeans, nearest_neighbours

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


def unit_rows(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Random L2-normalised rows: continuous, so similarities have no ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def brute_force(queries, reference, k, exclude_self=False):
    """The unchunked answer: the whole similarity matrix in float64, own index masked."""
    sims = queries.double() @ reference.double().T
    if exclude_self:
        sims.fill_diagonal_(float("-inf"))
    top_sims, top_idx = sims.topk(k, dim=1)
    return top_sims.float(), top_idx


# --- backends agree with each other and with brute force ----------------------------------------


@needs_faiss
@pytest.mark.parametrize("exclude_self", [False, True])
def test_faiss_and_torch_agree_on_a_self_search(exclude_self):
    x = unit_rows(600)
    f_sims, f_idx = nearest_neighbours(x, k=8, exclude_self=exclude_self, backend="faiss")
    for chunk in (128, 4096):
        t_sims, t_idx = nearest_neighbours(
            x, k=8, exclude_self=exclude_self, backend="torch", chunk_size=chunk
        )
        assert torch.equal(f_idx, t_idx)
        torch.testing.assert_close(f_sims, t_sims, atol=1e-5, rtol=0)


@needs_faiss
def test_faiss_and_torch_agree_with_a_separate_reference():
    queries, reference = unit_rows(300, seed=1), unit_rows(500, seed=2)
    f_sims, f_idx = nearest_neighbours(queries, reference, k=6, backend="faiss")
    t_sims, t_idx = nearest_neighbours(queries, reference, k=6, backend="torch", chunk_size=64)
    assert torch.equal(f_idx, t_idx)
    torch.testing.assert_close(f_sims, t_sims, atol=1e-5, rtol=0)


def heap_chunks(monkeypatch, chunk: int, torch_products: bool = True) -> None:
    """Rows per block of the CPU self-search, and which library multiplies there."""
    monkeypatch.setattr(retrieval, "_TORCH_CHUNK", chunk)
    monkeypatch.setattr(retrieval, "_NUMPY_CHUNK", chunk)
    monkeypatch.setattr(retrieval, "_TORCH_PRODUCTS_MAX_N", 10**9 if torch_products else 0)


@needs_faiss
@pytest.mark.parametrize("chunk", [1, 7, 64, 512, 700])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("torch_products", [True, False])
def test_symmetric_heap_search_equals_brute_force(monkeypatch, chunk, exclude_self,
                                                  torch_products):
    # n = 600: one-row chunks, uneven chunks (7 leaves 5 rows at the end), and one chunk of all.
    heap_chunks(monkeypatch, chunk, torch_products)
    x = unit_rows(600, dim=16, seed=8)
    want_sims, want_idx = brute_force(x, x, 7, exclude_self)
    sims, idx = nearest_neighbours(x, k=7, exclude_self=exclude_self, backend="faiss")
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(sims, want_sims, atol=1e-5, rtol=0)


@needs_faiss
@pytest.mark.parametrize("torch_products", [True, False])
def test_symmetric_heap_search_gives_every_row_all_others_and_restores_threads(monkeypatch,
                                                                               torch_products):
    # k = n - 1: every row's heap must end up holding all other rows, whichever chunk gave them.
    # The numpy way runs faiss on one thread meanwhile; faiss's setting must come back after.
    import faiss

    heap_chunks(monkeypatch, 3, torch_products)
    threads = faiss.omp_get_max_threads()
    x = unit_rows(10, dim=4, seed=10)
    sims, idx = nearest_neighbours(x, k=9, exclude_self=True, backend="faiss")
    assert [sorted(row) for row in idx.tolist()] == [
        [j for j in range(10) if j != i] for i in range(10)
    ]
    assert bool((sims[:, :-1] >= sims[:, 1:]).all())
    assert faiss.omp_get_max_threads() == threads


@pytest.mark.parametrize("chunk", [1, 7, 16, 64, 96, 100, 256, 2000])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_chunked_torch_equals_unchunked_brute_force(chunk, exclude_self):
    # n = 1500 and k = 5: chunks 96 and 256 take the exact top-k shortcut (row windows), the
    # others its plain fallback; 2000 is one plain chunk.
    x = unit_rows(1500, dim=16, seed=3)
    want_sims, want_idx = brute_force(x, x, 5, exclude_self)
    sims, idx = nearest_neighbours(x, k=5, exclude_self=exclude_self, backend="torch",
                                   chunk_size=chunk)
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(sims, want_sims, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [3, 50, 1000])
def test_chunked_torch_with_reference_equals_brute_force(chunk):
    queries, reference = unit_rows(200, seed=4), unit_rows(2000, seed=5)
    want_sims, want_idx = brute_force(queries, reference, 9)
    sims, idx = nearest_neighbours(queries, reference, k=9, backend="torch", chunk_size=chunk)
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(sims, want_sims, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape, k", [((96, 3000), 5), ((160, 1300), 3), ((64, 5000), 1)])
def test_top_k_shortcut_equals_torch_topk(shape, k):
    # Coarse values force many ties and a -inf entry per row mimics the masked own index; with
    # ties the indices may differ, so check the values and that the indices point at them.
    g = torch.Generator().manual_seed(9)
    block = torch.randint(0, 50, shape, generator=g).float()
    block[torch.arange(shape[0]), torch.arange(shape[0])] = float("-inf")
    sims, idx = retrieval._topk_rows(block, k)
    assert torch.equal(sims, block.topk(k, dim=1).values)
    assert torch.equal(block.gather(1, idx), sims) and _distinct_per_row(idx)


def _distinct_per_row(idx: torch.Tensor) -> bool:
    return all(len(set(row)) == len(row) for row in idx.tolist())


def test_results_are_sorted_float32_int64_and_accept_numpy():
    x = unit_rows(300).numpy()
    sims, idx = nearest_neighbours(x, k=10, exclude_self=True, backend="torch", chunk_size=64)
    assert sims.dtype == torch.float32 and idx.dtype == torch.int64
    assert sims.shape == idx.shape == (300, 10)
    assert bool((sims[:, :-1] >= sims[:, 1:]).all())
    # Every neighbour is distinct within a row.
    assert all(len(set(row)) == 10 for row in idx.tolist())


# --- self-exclusion by index ---------------------------------------------------------------------


BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [2, 4096])
def test_self_excluded_by_index_among_exact_duplicates(monkeypatch, backend, chunk):
    # Rows 0..4 are exact duplicates. Each of them must list the other four (similarity 1) and
    # never itself; dropping column 0 would instead drop whichever duplicate sorted first.
    heap_chunks(monkeypatch, chunk)  # faiss's self-search: chunks of rows
    x = unit_rows(40, dim=8, seed=6)
    x[1:5] = x[0]
    sims, idx = nearest_neighbours(x, k=4, exclude_self=True, backend=backend, chunk_size=chunk)
    for i in range(5):
        assert i not in idx[i].tolist()
        assert set(idx[i].tolist()) == set(range(5)) - {i}
        torch.testing.assert_close(sims[i], torch.ones(4), atol=1e-5, rtol=0)
    # Nobody else lists itself either.
    assert not bool((idx == torch.arange(40)[:, None]).any())


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_never_returned_when_duplicates_outnumber_k(monkeypatch, backend):
    # Ten identical rows and k = 2: ties among the ten decide which two come back, but the query
    # itself never does (faiss's k+1 list may not even hold the query: the last column is dropped).
    heap_chunks(monkeypatch, 4)
    x = unit_rows(30, dim=8, seed=7)
    x[:10] = x[0]
    _, idx = nearest_neighbours(x, k=2, exclude_self=True, backend=backend, chunk_size=4)
    for i in range(10):
        row = idx[i].tolist()
        assert i not in row and len(set(row)) == 2 and set(row) <= set(range(10))


def test_drop_own_index_keeps_order_and_drops_last_when_own_is_missing():
    sims = torch.tensor([[0.9, 0.8, 0.7], [1.0, 1.0, 1.0]])
    idx = torch.tensor([[3, 0, 2], [4, 5, 6]])  # row 0 lists itself second; row 1 not at all
    kept_sims, kept_idx = retrieval._drop_own_index(sims, idx)
    assert kept_idx.tolist() == [[3, 2], [4, 5]]
    torch.testing.assert_close(kept_sims, torch.tensor([[0.9, 0.7], [1.0, 1.0]]))


# --- errors that say what to do ------------------------------------------------------------------


def test_k_larger_than_available_raises():
    x = unit_rows(10)
    nearest_neighbours(x, k=9, exclude_self=True)  # 9 others: fine
    with pytest.raises(ValueError, match=r"k=10 .* only 9 reference rows .* excluding each query"):
        nearest_neighbours(x, k=10, exclude_self=True)
    with pytest.raises(ValueError, match=r"k=6 .* only 5 reference rows"):
        nearest_neighbours(x, x[:5], k=6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: nearest_neighbours(x, k=0), "k must be an integer ≥ 1"),
        (lambda x: nearest_neighbours(x, unit_rows(5, dim=8)), "dimension 32 .* has 8"),
        (lambda x: nearest_neighbours(x[0]), "2-D"),
        (lambda x: nearest_neighbours(x, backend="annoy"), "backend must be one of"),
        (lambda x: nearest_neighbours(x, x, exclude_self=True), "pass reference=None"),
        (lambda x: nearest_neighbours(x, chunk_size=0), "chunk_size"),
        (lambda x: kmeans(x, 11), "1 ≤ k ≤ number of rows"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(unit_rows(10))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_raises_and_names_the_row(value):
    x = unit_rows(10)
    x[3, 1] = value
    with pytest.raises(ValueError, match=r"NaN or inf \(rows \[3\]"):
        nearest_neighbours(x, k=1, exclude_self=True, backend="torch")
    with pytest.raises(ValueError, match="reference contains NaN"):
        nearest_neighbours(unit_rows(4), x, k=1, backend="torch")


def test_without_faiss_auto_uses_torch_and_faiss_backend_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    assert not faiss_available()
    x = unit_rows(50)
    _, idx = nearest_neighbours(x, k=3, exclude_self=True)  # auto → torch
    assert torch.equal(idx, brute_force(x, x, 3, exclude_self=True)[1])
    with pytest.raises(ValueError, match="install faiss-cpu .* backend='torch'"):
        nearest_neighbours(x, k=3, backend="faiss")
    ids = kmeans(x, 4, seed=0)  # the sklearn fallback
    assert ids.shape == (50,) and ids.dtype == torch.int64


# --- k-means -------------------------------------------------------------------------------------


def separated_clusters(n_clusters=5, per_cluster=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_clusters, 16, generator=g), dim=1) * 10
    x = centres.repeat_interleave(per_cluster, 0) + 0.05 * torch.randn(
        n_clusters * per_cluster, 16, generator=g
    )
    return x, torch.arange(n_clusters).repeat_interleave(per_cluster)


@pytest.mark.parametrize("use_faiss", [True, False])
def test_kmeans_recovers_separated_clusters_and_is_deterministic(use_faiss, monkeypatch):
    if use_faiss and not faiss_available():
        pytest.skip("faiss is not installed")
    if not use_faiss:
        monkeypatch.setattr(retrieval, "faiss_available", lambda: False)
    x, truth = separated_clusters()
    ids = kmeans(x, 5, seed=3)
    assert torch.equal(ids, kmeans(x, 5, seed=3))
    # Each true cluster is one k-means cluster, and different true clusters get different ids.
    for c in range(5):
        assert len(set(ids[truth == c].tolist())) == 1
    assert len(set(ids.tolist())) == 5


@needs_faiss
def test_kmeans_with_few_points_per_centroid_is_silent(capfd):
    # NMI on SOP has ~5 points per cluster; faiss would print "please provide at least ...".
    kmeans(unit_rows(60), 20, seed=0)
    out, err = capfd.readouterr()
    assert "please provide" not in out + err


def test_kmeans_seed_changes_the_clustering_of_unstructured_data():
    # Guards against a seed that is silently ignored.
    x = unit_rows(200, dim=8, seed=8)
    runs = {tuple(kmeans(x, 10, seed=s, niter=5).tolist()) for s in range(4)}
    assert len(runs) > 1


def test_numpy_input_is_accepted_by_kmeans():
    x, _ = separated_clusters(3, 10)
    assert kmeans(np.asarray(x), 3).shape == (30,)


# --- on a GPU: the faiss-gpu guard and torch on the GPU, with stand-ins (no GPU needed) ----------


class FakeFaiss:
    """Just enough of faiss for `_search_faiss`: a brute-force IndexFlatIP in numpy, a GPU count,
    and GPU calls that only record themselves (the index stays the CPU one)."""

    def __init__(self, gpus: int):
        self.gpus, self.moved_to = gpus, []

    def get_num_gpus(self) -> int:
        return self.gpus

    class IndexFlatIP:
        def __init__(self, dim: int):
            self.data = np.zeros((0, dim), dtype=np.float32)

        def add(self, x: np.ndarray) -> None:
            self.data = np.concatenate([self.data, x])

        def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            sims = q @ self.data.T
            idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(sims, idx, axis=1), idx

    def StandardGpuResources(self) -> str:
        return "resources"

    def index_cpu_to_gpu(self, resources, device: int, index):
        assert resources == "resources"
        self.moved_to.append(device)
        return index


@pytest.mark.parametrize("backend", ["auto", "faiss"])
def test_faiss_without_a_gpu_searches_on_the_cpu_index(monkeypatch, backend):
    fake = FakeFaiss(gpus=0)  # faiss-cpu, or faiss-gpu imported on a machine without a GPU
    monkeypatch.setitem(sys.modules, "faiss", fake)
    queries, reference = unit_rows(40, seed=3), unit_rows(60, seed=4)
    _, idx = nearest_neighbours(queries, reference, k=3, backend=backend)
    assert fake.moved_to == []
    assert torch.equal(idx, brute_force(queries, reference, 3)[1])


@pytest.mark.parametrize("backend", ["auto", "faiss"])
def test_faiss_seeing_a_gpu_puts_the_index_there(monkeypatch, backend):
    fake = FakeFaiss(gpus=1)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    queries, reference = unit_rows(40, seed=3), unit_rows(60, seed=4)
    _, idx = nearest_neighbours(queries, reference, k=5, backend=backend)
    assert fake.moved_to == [0]  # torch sees no GPU here: device 0
    assert torch.equal(idx, brute_force(queries, reference, 5)[1])


def test_faiss_gpu_is_used_only_up_to_k_2048_and_only_when_it_counts_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", FakeFaiss(gpus=2))
    assert retrieval._faiss_gpu_usable(2048)
    assert not retrieval._faiss_gpu_usable(2049)  # faiss-gpu's k-selection limit
    monkeypatch.setitem(sys.modules, "faiss", FakeFaiss(gpus=0))
    assert not retrieval._faiss_gpu_usable(5)
    monkeypatch.setitem(sys.modules, "faiss", object())  # an old faiss without get_num_gpus
    assert not retrieval._faiss_gpu_usable(5)
    monkeypatch.setitem(sys.modules, "faiss", None)  # no faiss at all
    assert not retrieval._faiss_gpu_usable(5)


def test_auto_uses_torch_on_a_visible_gpu_when_faiss_cannot(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", FakeFaiss(gpus=0))
    cpu = torch.device("cpu")
    assert retrieval._resolve_backend("auto", cpu, 4) == "faiss"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert retrieval._resolve_backend("auto", cpu, 4) == "torch"
    assert retrieval._resolve_backend("auto", torch.device("cuda", 0), 4) == "torch"
