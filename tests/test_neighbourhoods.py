"""Tests for ibdml.neighbourhoods: the vectorised reciprocal k-NN neighbourhoods of the MPN at
inference equal a per-sample loop in the authors' style (docs/method.md §8.1, §14.4), whatever
path the k-NN search takes, and In-Shop's query → gallery neighbourhoods on a hand-made example
and against the loop (§8.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench_scripts import load_bench
from ibdml import retrieval
from ibdml.neighbourhoods import reciprocal_neighbourhoods, reciprocal_neighbourhoods_query_gallery

# bench/mpn_inference.py holds the loop reference (full N×N matrix, full argsort, Python loop).
bench = load_bench("mpn_inference")


def lattice(n: int, seed: int) -> torch.Tensor:
    """Unit rows with four entries ±0.5 in 16 dims: every inner product is a multiple of 0.25,
    exact in any arithmetic, so the ranking is full of exact ties (and some duplicates)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 16)
    cols = torch.rand(n, 16, generator=g).argsort(dim=1)[:, :4]
    signs = torch.randint(0, 2, (n, 4), generator=g) * 2 - 1.0
    return x.scatter_(1, cols, 0.5 * signs)


def with_duplicates(n: int, seed: int) -> torch.Tensor:
    """Clustered rows, a third of them exact copies of others, shuffled."""
    g = torch.Generator().manual_seed(seed)
    base = bench.clustered_embeddings(n - n // 3, dim=64, seed=seed)
    x = torch.cat([base, base[torch.randint(len(base), (n // 3,), generator=g)]])
    return x[torch.randperm(n, generator=g)]


DATA = {
    "gaussian": lambda n, seed: bench.gaussian_embeddings(n, dim=256, seed=seed),
    "clustered": lambda n, seed: bench.clustered_embeddings(n, dim=64, seed=seed),
    "duplicates": with_duplicates,
    "lattice": lattice,
}


def search_path(monkeypatch, path: str) -> None:
    """Make the k-NN search underneath take one path: 'default' (what this machine does),
    'small heaps' (the CPU heap self-search in blocks of 16 rows, on the CPU even where a GPU is
    visible), or 'no faiss' (products and top-k in blocks of 16 query rows against 160 reference
    rows)."""
    if path == "small heaps":
        monkeypatch.setattr(retrieval, "_HEAP_BLOCK_ROWS", 16)
        for module in ("ibdml.neighbourhoods", "ibdml.retrieval"):
            monkeypatch.setattr(f"{module}.search_device", lambda device: device)
    elif path == "no faiss":
        monkeypatch.setattr(retrieval, "faiss_available", lambda: False)
        monkeypatch.setattr(retrieval, "_BLOCK_ENTRIES", 16 * 160)
    else:
        assert path == "default"


def angles(degrees: list[float]) -> torch.Tensor:
    """Unit vectors on the circle: cosine similarity falls with the angle between them."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()  # [n, 2]


# ---------------------------------------------------------------------------------------------
# §8.1: a set against itself
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DATA))
@pytest.mark.parametrize("path", ["default", "no faiss"])
def test_neighbourhoods_equal_the_loop_reference(monkeypatch, kind, path):
    search_path(monkeypatch, path)
    x = DATA[kind](160, seed=1 if path == "default" else 2)
    for k, batch, alpha in [(30, 7, 2 / 3), (5, 6, 2 / 3), (8, 9, 0.5)]:
        expected = bench.loop_neighbourhoods(x.numpy(), k, batch, alpha)
        got = reciprocal_neighbourhoods(x, k, batch, alpha)
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"k={k} batch={batch}")


@pytest.mark.parametrize("kind", ["duplicates", "lattice"])
def test_neighbourhoods_do_not_depend_on_the_search_path(monkeypatch, kind):
    # Full of exact ties, which each search path orders its own way: the neighbourhoods must not.
    x = DATA[kind](160, seed=3)
    results = []
    for path in ("default", "small heaps", "no faiss"):
        with monkeypatch.context() as patch:
            search_path(patch, path)
            results.append(reciprocal_neighbourhoods(x, k=10, batch=7))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.parametrize("kind", list(DATA))
def test_rows_start_with_the_query_hold_valid_distinct_indices(kind):
    x = DATA[kind](200, 3)
    nbrs = reciprocal_neighbourhoods(x, k=10, batch=11)
    assert nbrs.shape == (200, 11) and nbrs.dtype == torch.int64 and nbrs.device == x.device
    assert torch.equal(nbrs[:, 0], torch.arange(200))
    assert nbrs.min() >= 0 and nbrs.max() < 200
    assert all(len(set(row)) == len(row) for row in nbrs.tolist())


def test_smallest_allowed_n_is_k_plus_one():
    x = with_duplicates(12, seed=4)  # N = k + 1: every forward list holds every point
    nbrs = reciprocal_neighbourhoods(x, k=11, batch=12)
    np.testing.assert_array_equal(nbrs.numpy(), bench.loop_neighbourhoods(x.numpy(), 11, 12))
    assert all(sorted(row) == list(range(12)) for row in nbrs.tolist())


def test_batch_one_is_the_sample_alone_and_numpy_input_is_accepted():
    x = bench.clustered_embeddings(30, dim=16, seed=5)
    assert reciprocal_neighbourhoods(x.numpy(), k=4, batch=1).tolist() == [[i] for i in range(30)]


@pytest.mark.parametrize("path", ["default", "small heaps", "no faiss"])
def test_exact_duplicates_tie_and_go_in_index_order(monkeypatch, path):
    # Point p copied to rows 2, 5 and 7: each copy comes first in its own row (BY INDEX), then
    # the other copies by index, whatever the search returned first.
    search_path(monkeypatch, path)
    x = bench.clustered_embeddings(40, dim=32, seed=0)
    x[5], x[7] = x[2], x[2]
    nbrs = reciprocal_neighbourhoods(x, k=6, batch=3)
    assert nbrs[2].tolist() == [2, 5, 7]
    assert nbrs[5].tolist() == [5, 2, 7]
    assert nbrs[7].tolist() == [7, 2, 5]


def test_more_duplicates_than_the_search_length_still_agree():
    # 12 copies of one point with k = 4: the copies tie beyond the first search's 6 entries.
    x = bench.clustered_embeddings(60, dim=32, seed=1)
    x[40:52] = x[3]
    nbrs = reciprocal_neighbourhoods(x, k=4, batch=5)
    np.testing.assert_array_equal(nbrs.numpy(), bench.loop_neighbourhoods(x.numpy(), 4, 5))
    assert nbrs[45].tolist() == [45, 3, 40, 41, 42]


def test_two_tight_pairs():
    # The docstring's example: each point's graph is itself and its partner.
    x = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]), dim=1)
    assert reciprocal_neighbourhoods(x, k=1, batch=2).tolist() == [[0, 1], [1, 0], [2, 3], [3, 2]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_on_a_gpu_the_same_neighbourhoods_come_back_on_the_embeddings_device():
    x = with_duplicates(160, seed=6)
    expected = bench.loop_neighbourhoods(x.numpy(), 10, 7)
    for embeddings in (x, x.cuda()):
        got = reciprocal_neighbourhoods(embeddings, k=10, batch=7)
        assert got.device == embeddings.device
        np.testing.assert_array_equal(got.cpu().numpy(), expected)


# ---------------------------------------------------------------------------------------------
# §8.2: In-Shop, queries against a gallery
# ---------------------------------------------------------------------------------------------

# Gallery m, c, x, y at 0°, 10°, 29°, 33°; query q at 21°, three other queries at 29.5–30.5°.
# k = 2: q's forward list is [x (8°), c (11°), y (12°)]. x and y each have the three other
# queries nearer than q, so R(q) = {c}. c's nearest gallery item is m and m's is c: R½(c) =
# {c, m}. With alpha = 0.4 it is added (|{c}| = 1 > 0.4·2), m from outside the forward list;
# with alpha = 2/3 it is not (1 ≤ 4/3).
GALLERY = angles([0, 10, 29, 33])  # m=0, c=1, x=2, y=3
QUERIES = angles([21, 29.5, 30, 30.5])


def test_query_gallery_hand_made_example():
    nbrs = reciprocal_neighbourhoods_query_gallery(QUERIES, GALLERY, k=2, batch=4, alpha=0.4)
    assert nbrs[0].tolist() == [1, 0, 2]  # expanded set {c, m} by distance, padded with x
    assert nbrs[1].tolist() == [2, 3, 1]  # q at 29.5°: R = {x, y, c}, nearest three
    strict = reciprocal_neighbourhoods_query_gallery(QUERIES, GALLERY, k=2, batch=4)
    assert strict[0].tolist() == [1, 2, 3]  # expanded set {c}, padded in forward order
    assert strict.shape == (4, 3) and strict.dtype == torch.int64


@pytest.mark.parametrize("path", ["default", "no faiss"])
def test_query_gallery_equals_the_loop_reference(monkeypatch, path):
    search_path(monkeypatch, path)
    seed = 0 if path == "default" else 1
    gallery = with_duplicates(120, seed)
    queries = torch.cat([bench.clustered_embeddings(50, dim=64, seed=seed + 7), gallery[:20]])
    for k, batch, alpha in [(30, 4, 2 / 3), (6, 5, 0.5)]:
        expected = bench.loop_neighbourhoods_query_gallery(queries.numpy(), gallery.numpy(),
                                                           k, batch, alpha)
        got = reciprocal_neighbourhoods_query_gallery(queries, gallery, k, batch, alpha)
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"k={k} batch={batch}")


def test_query_gallery_with_fewer_queries_than_k():
    # Backward lists hold every query when there are fewer than k + 1.
    gallery = bench.clustered_embeddings(60, dim=16, seed=8)
    queries = bench.clustered_embeddings(5, dim=16, seed=9)
    expected = bench.loop_neighbourhoods_query_gallery(queries.numpy(), gallery.numpy(), 10, 4)
    got = reciprocal_neighbourhoods_query_gallery(queries, gallery, k=10, batch=4)
    np.testing.assert_array_equal(got.numpy(), expected)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 30}, "k=30 needs more than k embeddings \\(at least 31\\), got 20: pass k ≤ 19"),
    ({"k": 5, "batch": 7}, "1 ≤ batch ≤ 6"),
    ({"k": 5, "batch": 0}, "1 ≤ batch"),
    ({"k": 5, "alpha": 0.0}, "alpha must be in"),
    ({"k": 5, "alpha": 1.5}, "alpha must be in"),
    ({"k": 0}, "k must be an integer"),
    ({"k": 2.0}, "k must be an integer"),
])
def test_neighbourhood_arguments_are_checked(kwargs, message):
    x = bench.gaussian_embeddings(20, dim=8)
    with pytest.raises(ValueError, match=message):
        reciprocal_neighbourhoods(x, **kwargs)


def test_embeddings_are_checked():
    x = bench.gaussian_embeddings(20, dim=8)
    with pytest.raises(ValueError, match=r"embeddings must have L2-normalised rows .* e\.g\. row 0 "
                                         r"with norm 2: pass torch\.nn\.functional\.normalize"):
        reciprocal_neighbourhoods(2 * x, k=3, batch=2)
    with_nan = x.clone()
    with_nan[4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"embeddings has 1 of 20 rows with NaN or inf "
                                         r"\(rows \[4\]"):
        reciprocal_neighbourhoods(with_nan, k=3, batch=2)
    with pytest.raises(ValueError, match="embeddings must be a 2-D"):
        reciprocal_neighbourhoods(x[None], k=3, batch=2)
    with pytest.raises(ValueError, match="needs more than k gallery items"):
        reciprocal_neighbourhoods_query_gallery(x, x[:3], k=3)
    with pytest.raises(ValueError, match="2 ≤ batch ≤ 5"):
        reciprocal_neighbourhoods_query_gallery(x, x, k=3, batch=1)
    with pytest.raises(ValueError, match="queries has 8-d rows but gallery has 4-d rows"):
        reciprocal_neighbourhoods_query_gallery(x, bench.gaussian_embeddings(20, dim=4), k=3)
    with pytest.raises(ValueError, match="gallery must have L2-normalised rows"):
        reciprocal_neighbourhoods_query_gallery(x, 2 * x, k=3)
    with pytest.raises(ValueError, match=r"queries has 1 of 20 rows with NaN or inf"):
        reciprocal_neighbourhoods_query_gallery(with_nan, x, k=3)
