"""Tests for ibdml.clustering: seeded k-means for NMI, the authors' sklearn settings and the fast
method (docs/method.md §7.4, §14.3)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from ibdml import clustering
from ibdml.clustering import kmeans
from ibdml.retrieval import faiss_available

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


def unit_rows(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def separated_clusters(n_clusters=5, per_cluster=30, seed=0):
    """Tight clusters around centres 10 apart in norm: any sane k-means finds them."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_clusters, 16, generator=g), dim=1) * 10
    x = centres.repeat_interleave(per_cluster, 0) + 0.05 * torch.randn(
        n_clusters * per_cluster, 16, generator=g
    )
    return x, torch.arange(n_clusters).repeat_interleave(per_cluster)


def recovers(ids: torch.Tensor, truth: torch.Tensor) -> bool:
    """Each true cluster is one k-means cluster, and different true clusters get different ids."""
    n = int(truth.max()) + 1
    return (all(len(set(ids[truth == c].tolist())) == 1 for c in range(n))
            and len(set(ids.tolist())) == n)


@pytest.mark.parametrize("method, use_faiss", [("sklearn", False), ("fast", True),
                                               ("fast", False)])
def test_kmeans_recovers_separated_clusters_and_is_deterministic(method, use_faiss, monkeypatch):
    if use_faiss and not faiss_available():
        pytest.skip("faiss is not installed")
    if not use_faiss:
        monkeypatch.setattr(clustering, "faiss_available", lambda: False)  # sklearn's KMeans
    x, truth = separated_clusters()
    ids = kmeans(x, 5, seed=3, method=method)
    assert ids.dtype == torch.int64 and ids.shape == (150,) and ids.device.type == "cpu"
    assert torch.equal(ids, kmeans(x, 5, seed=3, method=method))
    assert recovers(ids, truth)


def test_sklearn_method_runs_the_authors_settings_seeded(monkeypatch):
    from sklearn import cluster

    seen = []

    class Recording(cluster.KMeans):
        def __init__(self, **settings):
            seen.append(settings)
            super().__init__(**settings)

    monkeypatch.setattr(cluster, "KMeans", Recording)
    kmeans(separated_clusters()[0], 5, seed=7)  # the default method
    kmeans(separated_clusters()[0], 5, seed=7, method="fast", niter=4)
    assert seen[0] == {"n_clusters": 5, "init": "k-means++", "n_init": 10, "max_iter": 300,
                       "tol": 1e-4, "random_state": 7}
    if not faiss_available():  # the fast method falls back to one sklearn start
        assert seen[1]["n_init"] == 1 and seen[1]["max_iter"] == 4
    else:
        assert len(seen) == 1


def test_sklearn_method_is_deterministic_and_seeded_on_unstructured_data():
    x = unit_rows(200, dim=8, seed=8)
    first = kmeans(x, 10, seed=1)
    assert torch.equal(first, kmeans(x, 10, seed=1))
    assert len({tuple(kmeans(x, 10, seed=s).tolist()) for s in range(3)}) > 1


@needs_faiss
def test_kmeans_plus_plus_start_finds_well_separated_clusters_for_every_seed(monkeypatch):
    # 10 clusters of 10 points: from k-means++ centres every seed finds them; faiss's own random
    # start splits or merges some in every one of these seeds (checked here too, so that this
    # test would notice if the k-means++ start stopped being used).
    x, truth = separated_clusters(10, 10, seed=1)
    assert all(recovers(kmeans(x, 10, seed=s, method="fast"), truth) for s in range(5))
    monkeypatch.setattr(clustering, "_KMEANS_PP_MAX_K", 0)  # faiss's random start
    assert not any(recovers(kmeans(x, 10, seed=s, method="fast"), truth) for s in range(5))


def test_kmeans_plus_plus_picks_k_distinct_data_rows_deterministically():
    data = unit_rows(50, dim=4, seed=2).numpy()
    start = clustering._kmeans_plus_plus(data, 8, seed=5)
    assert start.shape == (8, 4)
    rows = [int(np.flatnonzero((data == centre).all(axis=1))[0]) for centre in start]
    assert len(set(rows)) == 8  # a row at distance 0 from a centre is never drawn again
    np.testing.assert_array_equal(start, clustering._kmeans_plus_plus(data, 8, seed=5))
    assert not np.array_equal(start, clustering._kmeans_plus_plus(data, 8, seed=6))


def test_kmeans_plus_plus_when_every_row_is_already_a_centre():
    # Two distinct points, k = 3: after both are centres all distances are 0, any row will do.
    data = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    start = clustering._kmeans_plus_plus(data, 3, seed=0)
    assert start.shape == (3, 2)
    assert {tuple(row) for row in start.tolist()} == {(0.0, 1.0), (1.0, 0.0)}


@needs_faiss
def test_kmeans_with_few_points_per_centroid_is_silent(capfd):
    # NMI on SOP has ~5 points per cluster; faiss would print "please provide at least ...".
    ids = kmeans(unit_rows(60), 20, seed=0, method="fast")
    out, err = capfd.readouterr()
    assert "please provide" not in out + err
    assert ids.shape == (60,)


def test_kmeans_seed_changes_the_clustering_of_unstructured_data():
    # Guards against a seed that is silently ignored.
    x = unit_rows(200, dim=8, seed=8)
    runs = {tuple(kmeans(x, 10, seed=s, method="fast", niter=5).tolist()) for s in range(4)}
    assert len(runs) > 1


def test_numpy_input_and_k_equal_to_n_are_accepted():
    x, _ = separated_clusters(3, 10)
    assert kmeans(np.asarray(x), 3).shape == (30,)
    ids = kmeans(x[:6], 6)  # every point its own cluster
    assert sorted(ids.tolist()) == list(range(6))


def test_without_faiss_installed_kmeans_uses_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    x, truth = separated_clusters(4, 10)
    ids = kmeans(x, 4, seed=0, method="fast")
    assert ids.shape == (40,) and ids.dtype == torch.int64
    assert recovers(ids, truth)


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 11}, r"k-means needs 1 ≤ k ≤ number of rows \(10\), got k=11"),
    ({"k": 0}, "got k=0"),
    ({"k": 2.5}, "got k=2.5"),
    ({"k": 2, "niter": 0}, "niter must be ≥ 1, got 0"),
    ({"k": 2, "method": "faiss"}, "k-means method 'faiss': use 'sklearn'"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kmeans(unit_rows(10), **kwargs)


def test_non_finite_rows_are_refused_by_the_validator():
    x = unit_rows(10)
    x[2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^x has 1 of 10 rows with NaN or inf \(rows \[2\]\)"):
        kmeans(x, 2)
