"""Tests for ibdml.uncertainty: the standard errors of Recall@K, MAP@R and NMI, and the paired
bootstrap of a difference (docs/method.md §7.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from ibdml.metrics import QueryOutcomes
from ibdml.uncertainty import (binomial_standard_error, bootstrap, bootstrap_nmi_standard_error,
                               bootstrap_standard_error, nmi_of_ids, paired_bootstrap_difference,
                               standard_errors)


def outcomes(hits, ap, labels=None, clusters=None, ks=(1,)) -> QueryOutcomes:
    hits = np.asarray(hits, dtype=bool).reshape(len(ap), len(ks))
    labels = np.arange(len(ap)) % 7 if labels is None else np.asarray(labels)
    return QueryOutcomes(ks=tuple(ks), hits=hits, average_precision=np.asarray(ap, float),
                         labels=labels.astype(np.int64),
                         clusters=None if clusters is None else np.asarray(clusters, np.int64))


# --- standard errors -----------------------------------------------------------------------------


def test_binomial_standard_error_by_hand():
    # Column 1: 3 hits of 4, sqrt(0.75 · 0.25 / 4); column 2: all hits, 0.
    hits = [[True, True], [False, True], [True, True], [True, True]]
    np.testing.assert_allclose(binomial_standard_error(hits), [math.sqrt(0.1875 / 4), 0.0],
                               rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"non-empty \[N, K\] bool matrix"):
        binomial_standard_error(np.zeros((0, 2), bool))


def test_bootstrap_standard_error_of_a_mean_approaches_std_over_root_n():
    values = np.random.default_rng(0).exponential(size=4000)
    want = values.std(ddof=1) / math.sqrt(len(values))
    got = bootstrap_standard_error(values, seed=1)
    assert got == pytest.approx(want, rel=0.1)  # 1000 resamples: ~2 % relative noise
    assert bootstrap_standard_error(values, seed=1) == got  # deterministic under a seed
    assert bootstrap_standard_error(values, seed=2) != got


def test_bootstrap_standard_error_ignores_lone_queries_and_degenerate_cases():
    values = np.random.default_rng(3).random(500)
    with_lone = np.concatenate([values, np.full(500, np.nan)])  # half the queries lone
    got = bootstrap_standard_error(with_lone, seed=0)
    # Each resample's mean covers ~250 real values: SE ≈ std / sqrt(500), not / sqrt(1000).
    assert got == pytest.approx(values.std(ddof=1) / math.sqrt(500), rel=0.15)
    assert bootstrap_standard_error([np.nan, np.nan], seed=0) is None
    assert bootstrap_standard_error([0.5], seed=0) == 0.0  # one query: every resample is it
    assert bootstrap_standard_error(np.full(10, 0.3), seed=0) == pytest.approx(0.0, abs=1e-15)


def test_bootstrap_draws_in_blocks_give_the_same_statistic_count():
    draws = bootstrap(lambda idx: idx.mean(axis=1), 10, 7, seed=0)
    assert draws.shape == (7,)
    with pytest.raises(ValueError, match="resamples must be ≥ 2"):
        bootstrap(lambda idx: idx.mean(axis=1), 10, 1, seed=0)


@pytest.mark.parametrize("n, clusters, classes", [(4000, 100, 100), (300, 12, 40), (50, 50, 3),
                                                  (20, 1, 4), (20, 3, 1), (20, 1, 1)])
def test_nmi_of_ids_equals_sklearn(n, clusters, classes):
    rng = np.random.default_rng(n + clusters)
    c, y = rng.integers(0, clusters, n), rng.integers(0, classes, n)
    assert nmi_of_ids(c, y) == pytest.approx(
        normalized_mutual_info_score(y, c, average_method="arithmetic"), abs=1e-12)
    # Correlated labelings, with ids that are not 0..k-1.
    y2 = np.where(rng.random(n) < 0.7, c, rng.integers(0, clusters, n)) * 3 + 5
    assert nmi_of_ids(c, y2) == pytest.approx(
        normalized_mutual_info_score(y2, c, average_method="arithmetic"), abs=1e-12)


def test_nmi_standard_error_is_zero_for_a_perfect_clustering_and_seeded():
    y = np.repeat(np.arange(10), 20)
    assert bootstrap_nmi_standard_error(y[::-1], y, seed=0) == pytest.approx(0.0, abs=1e-12)
    noisy = np.where(np.random.default_rng(0).random(200) < 0.3, 0, y)
    se = bootstrap_nmi_standard_error(noisy, y, seed=4)
    assert 0 < se < 0.1 and bootstrap_nmi_standard_error(noisy, y, seed=4) == se
    with pytest.raises(ValueError, match="two non-empty"):
        nmi_of_ids([0, 1], [0])


def test_standard_errors_entry_says_how_it_was_computed():
    o = outcomes([[True, True], [False, True], [True, False], [False, False]] * 25,
                 np.linspace(0, 1, 100), clusters=np.arange(100) % 7, ks=(1, 4))
    se = standard_errors(o, seed=3)
    assert se["recall_at_k"] == {"1": pytest.approx(math.sqrt(0.25 / 100)),
                                 "4": pytest.approx(math.sqrt(0.25 / 100))}
    assert se["map_at_r"] > 0 and se["nmi"] is not None
    assert "binomial" in se["method"] and "seed 3" in se["method"]
    assert "conditional on the k-means clustering" in se["method"]


# --- paired bootstrap ----------------------------------------------------------------------------


def random_outcomes(seed: int, n: int = 300) -> QueryOutcomes:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 20, n)
    ap = rng.random(n)
    ap[:5] = np.nan  # lone queries
    return outcomes(rng.random((n, 2)) < 0.6, ap, labels=labels,
                    clusters=np.where(rng.random(n) < 0.5, labels, rng.integers(0, 20, n)),
                    ks=(1, 10))


@pytest.mark.parametrize("metric", ["R@1", "R@10", "MAP@R", "NMI"])
def test_paired_bootstrap_of_identical_outcomes_is_exactly_zero(metric):
    a = random_outcomes(0)
    got = paired_bootstrap_difference(a, a, metric)
    assert (got["difference"], got["low"], got["high"]) == (0.0, 0.0, 0.0)
    assert got["resamples"] == 1000 and "paired bootstrap" in got["method"]


def test_paired_bootstrap_when_b_is_better_on_every_query():
    a = random_outcomes(1)
    worse = outcomes(np.zeros((300, 2), bool), np.where(np.isnan(a.average_precision), np.nan, 0),
                     labels=a.labels, ks=a.ks)
    better = outcomes(np.ones((300, 2), bool), np.where(np.isnan(a.average_precision), np.nan, 1),
                      labels=a.labels, ks=a.ks)
    for metric in ("R@1", "MAP@R"):
        got = paired_bootstrap_difference(worse, better, metric, level=0.9, resamples=200, seed=5)
        assert got["difference"] == 1.0 and got["low"] > 0 and got["high"] == 1.0
        assert got["level"] == 0.9 and "90% percentile" in got["method"]


def test_paired_bootstrap_interval_covers_the_difference_and_is_seeded():
    a, b = random_outcomes(2), random_outcomes(3)
    b = QueryOutcomes(a.ks, b.hits, b.average_precision, a.labels, b.clusters)
    got = paired_bootstrap_difference(a, b, "R@1", seed=1)
    assert got["low"] < got["difference"] < got["high"]
    want = b.hits[:, 0].mean() - a.hits[:, 0].mean()
    assert got["difference"] == pytest.approx(want)
    assert paired_bootstrap_difference(a, b, "R@1", seed=1) == got
    nmi = paired_bootstrap_difference(a, b, "NMI", seed=1)
    assert nmi["difference"] == pytest.approx(nmi_of_ids(b.clusters, b.labels)
                                              - nmi_of_ids(a.clusters, a.labels))


def test_paired_bootstrap_refuses_different_queries_and_unknown_metrics():
    a, b = random_outcomes(4), random_outcomes(5)
    with pytest.raises(ValueError, match="cover different queries.*same test split"):
        paired_bootstrap_difference(a, b, "R@1")
    short = outcomes(a.hits[:10, :1], a.average_precision[:10], labels=a.labels[:10])
    with pytest.raises(ValueError, match="cover different queries"):
        paired_bootstrap_difference(a, short, "R@1")
    with pytest.raises(ValueError, match=r"'R@5': use 'MAP@R', 'NMI' or 'R@K' with K in \[1, 10\]"):
        paired_bootstrap_difference(a, a, "R@5")
    no_clusters = QueryOutcomes(a.ks, a.hits, a.average_precision, a.labels, None)
    with pytest.raises(ValueError, match="no k-means clusters: evaluate both with nmi=True"):
        paired_bootstrap_difference(a, no_clusters, "NMI")
    with pytest.raises(ValueError, match="level must be in"):
        paired_bootstrap_difference(a, a, "R@1", level=1.5)
