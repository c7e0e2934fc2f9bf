"""MPN at inference: vectorised reciprocal neighbourhoods equal the per-sample loop (METHOD_SPEC
§8.1), In-Shop neighbourhoods on a hand-made example (§8.2), batched refinement equals one MPN
call per graph."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ibdml.inference import (reciprocal_neighbourhoods, reciprocal_neighbourhoods_query_gallery,
                             refine, refine_queries, refine_query_gallery)
from ibdml.mpn import MessagePassingNetwork
from bench_scripts import load_bench


def _load_bench():
    return load_bench("mpn_inference")


bench = _load_bench()


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


def angles(degrees: list[float]) -> torch.Tensor:
    """Unit vectors on the circle: cosine similarity falls with the angle between them."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()  # [n, 2]


def make_mpn(dim: int = 16, concat: bool = False) -> MessagePassingNetwork:
    torch.manual_seed(0)
    return MessagePassingNetwork(dim, 5, layers=2, heads=2, dropout=0.1, null_key=True,
                                 concat_layers=concat)


# ---------------------------------------------------------------------------------------------
# Neighbourhoods (§8.1)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DATA))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbourhoods_equal_the_loop_reference(kind, seed):
    x = DATA[kind](240, seed)
    for k, batch, alpha in [(30, 7, 2 / 3), (5, 6, 2 / 3), (8, 9, 0.5)]:
        expected = bench.loop_neighbourhoods(x.numpy(), k, batch, alpha)
        got = reciprocal_neighbourhoods(x, k, batch, alpha, backend=["faiss", "torch"][seed % 2])
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"k={k} batch={batch}")


@pytest.mark.parametrize("kind", list(DATA))
def test_rows_start_with_the_query_hold_valid_distinct_indices(kind):
    x = DATA[kind](200, 3)
    nbrs = reciprocal_neighbourhoods(x, k=10, batch=11)
    assert nbrs.shape == (200, 11) and nbrs.dtype == torch.int64
    assert torch.equal(nbrs[:, 0], torch.arange(200))
    assert nbrs.min() >= 0 and nbrs.max() < 200
    assert all(len(set(row)) == len(row) for row in nbrs.tolist())


def test_smallest_allowed_n_is_k_plus_one():
    x = with_duplicates(12, seed=4)  # N = k + 1: every forward list holds every point
    nbrs = reciprocal_neighbourhoods(x, k=11, batch=12)
    np.testing.assert_array_equal(nbrs.numpy(), bench.loop_neighbourhoods(x.numpy(), 11, 12))
    assert all(sorted(row) == list(range(12)) for row in nbrs.tolist())


def test_exact_duplicates_tie_and_go_in_index_order():
    # Point p copied to rows 2, 5 and 7: each copy comes first in its own row, then the other
    # copies by index, whatever the search returned first.
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


# ---------------------------------------------------------------------------------------------
# In-Shop (§8.2)
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
    assert strict.shape == (4, 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_query_gallery_equals_the_loop_reference(seed):
    gallery = with_duplicates(150, seed)
    queries = torch.cat([bench.clustered_embeddings(60, dim=64, seed=seed + 7), gallery[:20]])
    for k, batch, alpha in [(30, 4, 2 / 3), (6, 5, 0.5)]:
        expected = bench.loop_neighbourhoods_query_gallery(queries.numpy(), gallery.numpy(),
                                                           k, batch, alpha)
        got = reciprocal_neighbourhoods_query_gallery(queries, gallery, k, batch, alpha)
        np.testing.assert_array_equal(got.numpy(), expected)


# ---------------------------------------------------------------------------------------------
# Refinement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("concat", [False, True])
def test_batched_refinement_equals_one_call_per_graph(concat):
    x = bench.clustered_embeddings(90, dim=16, seed=0)
    nbrs = reciprocal_neighbourhoods(x, k=8, batch=5)
    mpn = make_mpn(concat=concat).train()
    refined = refine(mpn, x, nbrs, chunk=32)  # 3 chunks, the last one short
    assert mpn.training  # mode restored
    mpn.eval()
    with torch.no_grad():
        one_by_one = torch.stack([mpn(x[row][None]).features[0, 0] for row in nbrs])
    torch.testing.assert_close(refined, F.normalize(one_by_one, dim=1), atol=1e-5, rtol=0)
    assert refined.shape == (90, 32 if concat else 16)
    torch.testing.assert_close(refined.norm(dim=1), torch.ones(90))


def test_refine_queries_uses_query_then_gallery_neighbours():
    queries = bench.clustered_embeddings(20, dim=16, seed=1)
    gallery = bench.clustered_embeddings(50, dim=16, seed=2)
    nbrs = reciprocal_neighbourhoods_query_gallery(queries, gallery, k=6, batch=4)
    mpn = make_mpn().eval()
    refined = refine_queries(mpn, queries, gallery, nbrs, chunk=7)
    with torch.no_grad():
        graphs = [torch.cat([queries[i, None], gallery[nbrs[i]]]) for i in range(20)]  # [4, D]
        one_by_one = torch.stack([mpn(graph[None]).features[0, 0] for graph in graphs])
    torch.testing.assert_close(refined, F.normalize(one_by_one, dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(refined.norm(dim=1), torch.ones(20))


def test_query_gallery_feature_spaces():
    queries = bench.clustered_embeddings(20, dim=16, seed=1)
    gallery = bench.clustered_embeddings(50, dim=16, seed=2)
    mpn = make_mpn().eval()
    q, g = refine_query_gallery(mpn, queries, gallery, k=6, batch=4)  # authors: backbone gallery
    nbrs = reciprocal_neighbourhoods_query_gallery(queries, gallery, k=6, batch=4)
    torch.testing.assert_close(q, refine_queries(mpn, queries, gallery, nbrs))
    torch.testing.assert_close(g, gallery)
    q2, g2 = refine_query_gallery(mpn, queries, gallery, k=6, batch=4, gallery_space="refined")
    torch.testing.assert_close(q2, q)
    torch.testing.assert_close(g2, refine(mpn, gallery, reciprocal_neighbourhoods(gallery, 6, 4)))
    assert not torch.allclose(g2, gallery)
    with pytest.raises(ValueError, match="gallery_space"):
        refine_query_gallery(mpn, queries, gallery, k=6, gallery_space="both")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 30}, "at least 31"),  # N = 20 ≤ k
    ({"k": 5, "batch": 7}, "1 ≤ batch ≤ 6"),
    ({"k": 5, "batch": 0}, "1 ≤ batch"),
    ({"k": 5, "alpha": 0.0}, "alpha must be in"),
    ({"k": 5, "alpha": 1.5}, "alpha must be in"),
    ({"k": 0}, "k must be an integer"),
])
def test_neighbourhood_arguments_are_checked(kwargs, message):
    x = bench.gaussian_embeddings(20, dim=8)
    with pytest.raises(ValueError, match=message):
        reciprocal_neighbourhoods(x, **kwargs)


def test_embeddings_are_checked():
    x = bench.gaussian_embeddings(20, dim=8)
    with pytest.raises(ValueError, match="row 0 has norm 2: pass torch.nn.functional.normalize"):
        reciprocal_neighbourhoods(2 * x, k=3, batch=2)
    with_nan = x.clone()
    with_nan[4, 0] = float("nan")
    with pytest.raises(ValueError, match="row 4 has norm nan"):
        reciprocal_neighbourhoods(with_nan, k=3, batch=2)
    with pytest.raises(ValueError, match="2-D"):
        reciprocal_neighbourhoods(x[None], k=3, batch=2)
    with pytest.raises(ValueError, match="gallery items"):
        reciprocal_neighbourhoods_query_gallery(x, x[:3], k=3)
    with pytest.raises(ValueError, match="2 ≤ batch ≤ 5"):
        reciprocal_neighbourhoods_query_gallery(x, x, k=3, batch=1)
    with pytest.raises(ValueError, match="-d"):
        reciprocal_neighbourhoods_query_gallery(x, bench.gaussian_embeddings(20, dim=4), k=3)


def test_refine_checks_neighbourhoods():
    x = bench.gaussian_embeddings(20, dim=16)
    mpn = make_mpn()
    with pytest.raises(ValueError, match=r"outside \[0, 20\)"):
        refine(mpn, x, torch.full((20, 3), 20))
    with pytest.raises(ValueError, match="one row per graph"):
        refine(mpn, x, torch.zeros(19, 3, dtype=torch.long))


def test_bench_tiny_mode_agrees(capsys):
    assert bench.main(["--tiny"]) == 0
    assert "agree=False" not in capsys.readouterr().out
