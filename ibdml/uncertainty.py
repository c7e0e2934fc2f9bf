"""How uncertain each retrieval metric is, from its per-query outcomes (docs/method.md §7.5).

The test queries are a sample: another draw of test images would give other numbers. Each metric
gets a standard error (SE) over the queries, and two feature sets scored on the same queries
(the backbone and MPN at inference, two runs) get a paired bootstrap interval of their
difference. Pure: arrays or `metrics.QueryOutcomes` in, plain floats and dicts out.

- Recall@K: binomial SE sqrt(p(1 − p) / n) over the n queries (each query is a hit or a miss).
- MAP@R: bootstrap over queries (queries drawn with replacement; the mean AP of the drawn
  non-lone queries; SE = the std of the resampled means).
- NMI: bootstrap of the (cluster, label) pairs, NMI recomputed on each resample WITHOUT
  re-clustering: the SE is conditional on the k-means clustering (k-means' own seed-to-seed
  spread is not in it). `nmi_of_ids` computes sklearn's arithmetic NMI from a bincount
  contingency table, vectorised over resamples.

Every bootstrap draws from numpy's default_rng(seed): the same call gives the same numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the type only: metrics imports this module
    from ibdml.metrics import QueryOutcomes

MAP_RESAMPLES = 1000  # bootstrap resamples of the MAP@R standard error
NMI_RESAMPLES = 200  # bootstrap resamples of the NMI standard error (each recomputes NMI)
_DRAWS_PER_BLOCK = 2_000_000  # indices drawn at once: bounds memory at SOP size (N = 60,502)
Statistic = Callable[[np.ndarray], np.ndarray]  # indices [b, n] → statistic of each row [b]


def binomial_standard_error(hits) -> np.ndarray:
    """SE of each column's hit rate: [N, K] bool → [K] float64, sqrt(p(1 − p) / N).

        >>> binomial_standard_error([[True], [False], [True], [True]]).round(4).tolist()
        [0.2165]
    """
    h = np.asarray(hits, dtype=bool)
    if h.ndim != 2 or len(h) == 0:
        raise ValueError(f"hits must be a non-empty [N, K] bool matrix, got shape {h.shape}.")
    p = h.mean(axis=0)
    return np.sqrt(p * (1 - p) / len(h))


def bootstrap_standard_error(values, *, resamples: int = MAP_RESAMPLES,
                             seed: int = 0) -> float | None:
    """Bootstrap SE of the mean of the non-NaN entries of values [N] (per-query APs: NaN marks a
    lone query, drawn like any other but left out of each resample's mean).

    Returns the std (ddof 1) of `resamples` resampled means (0 for N = 1); None when fewer than
    two resamples have a mean (every value NaN). For a large sample it approaches std / sqrt(n).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) == 0:
        raise ValueError("values is empty: the SE of a mean needs at least one query.")
    return _spread(bootstrap(_mean_statistic(v), len(v), resamples, seed))


def nmi_of_ids(cluster_ids, label_ids) -> float:
    """Arithmetic NMI of two labelings [N] of non-negative int ids, equal to sklearn's
    normalized_mutual_info_score(label_ids, cluster_ids) to ~1e-15, from a bincount table.

        >>> nmi_of_ids([0, 0, 1, 1], [3, 3, 5, 5])
        1.0
    """
    pairs = _PairTable(cluster_ids, label_ids)
    return float(pairs.nmi(np.arange(len(pairs.pair_of_row))[None, :])[0])


def bootstrap_nmi_standard_error(cluster_ids, label_ids, *, resamples: int = NMI_RESAMPLES,
                                 seed: int = 0) -> float | None:
    """Bootstrap SE of NMI over the (cluster, label) pairs [N], without re-clustering (the SE is
    conditional on the clustering). None when fewer than two resamples give an NMI."""
    pairs = _PairTable(cluster_ids, label_ids)
    return _spread(bootstrap(pairs.nmi, len(pairs.pair_of_row), resamples, seed))


def standard_errors(outcomes: QueryOutcomes, *, seed: int = 0) -> dict:
    """metrics.json's "standard_error" entry for `outcomes`:

        {"recall_at_k": {"1": se, ...}, "map_at_r": se | None, "nmi": se | None, "method": str}

    map_at_r is None when every query is lone, nmi when the outcomes carry no clusters."""
    n = outcomes.n_queries
    nmi = None
    if outcomes.clusters is not None:
        nmi = bootstrap_nmi_standard_error(outcomes.clusters, outcomes.labels, seed=seed)
    method = (f"Recall@K: binomial sqrt(p(1 − p)/n) over the {n} queries; MAP@R: bootstrap over "
              f"queries ({MAP_RESAMPLES} resamples, seed {seed})")
    if outcomes.clusters is not None:
        over = "the query and gallery images" if len(outcomes.labels) > n else "the queries"
        method += (f"; NMI: bootstrap over {over} ({NMI_RESAMPLES} resamples, seed {seed}), "
                   "conditional on the k-means clustering")
    return {"recall_at_k": {str(k): float(se) for k, se in
                            zip(outcomes.ks, binomial_standard_error(outcomes.hits))},
            "map_at_r": bootstrap_standard_error(outcomes.average_precision, seed=seed),
            "nmi": nmi, "method": method + "."}


def paired_bootstrap_difference(a: QueryOutcomes, b: QueryOutcomes, metric: str, *,
                                level: float = 0.95, resamples: int = 1000,
                                seed: int = 0) -> dict:
    """Difference b − a of one metric on the same queries, with a paired bootstrap interval.

    Both sides are resampled with the same query indices (the In-Shop NMI: the same query and
    gallery images), so what the queries share cancels; the interval is the (1 − level)/2 and
    (1 + level)/2 percentiles of the resampled differences.

    Args:
        a, b: outcomes of the same queries in the same order (e.g. the backbone and MPN at
            inference); their label ids must be equal.
        metric: "R@K" for a K in both outcomes' ks (e.g. "R@1"), "MAP@R" or "NMI" (both need
            clusters; conditional on each side's clustering, as `bootstrap_nmi_standard_error`).
        level: the interval's coverage, in (0, 1).

    Returns:
        {"metric", "difference": b − a on all queries, "low", "high", "level", "resamples",
         "seed", "method"}; identical outcomes give 0 and [0, 0].
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    _check_same_queries(a, b)
    stat_a, stat_b = _metric_statistic(a, metric), _metric_statistic(b, metric)
    # NMI pairs every image (In-Shop: queries and gallery) with its cluster; the rest, queries.
    n = len(a.labels) if metric.strip().upper() == "NMI" else a.n_queries
    everyone = np.arange(n)[None, :]  # [1, n]: the difference on all of them
    difference = float(stat_b(everyone)[0] - stat_a(everyone)[0])
    draws = bootstrap(lambda idx: stat_b(idx) - stat_a(idx), n, resamples, seed)  # [resamples]
    low, high = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2])
    what = "images" if n > a.n_queries else "queries"
    return {"metric": metric, "difference": difference, "low": float(low), "high": float(high),
            "level": level, "resamples": resamples, "seed": seed,
            "method": f"paired bootstrap over the same {n} {what} ({resamples} resamples, seed "
                      f"{seed}), {100 * level:g}% percentile interval"}


def bootstrap(statistic: Statistic, n: int, resamples: int, seed: int) -> np.ndarray:
    """`statistic` of `resamples` draws of n indices with replacement: [resamples] float64.
    The draws come in blocks of rows [b, n] (memory O(2M indices)), from default_rng(seed)."""
    if resamples < 2:
        raise ValueError(f"resamples must be ≥ 2, got {resamples}.")
    rng, out = np.random.default_rng(seed), []
    block = max(1, _DRAWS_PER_BLOCK // n)
    for start in range(0, resamples, block):
        out.append(statistic(rng.integers(0, n, size=(min(block, resamples - start), n))))
    return np.concatenate(out)


def _spread(draws: np.ndarray) -> float | None:
    finite = draws[np.isfinite(draws)]
    return float(finite.std(ddof=1)) if len(finite) >= 2 else None


def _mean_statistic(values: np.ndarray) -> Statistic:
    """Mean of the non-NaN values of each resample [b, n] → [b] (NaN where all are NaN)."""
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)

    def mean(idx: np.ndarray) -> np.ndarray:
        count = present[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return filled[idx].sum(axis=1) / count

    return mean


class _PairTable:
    """The distinct (cluster, label) pairs of N rows, from which a resample's contingency table
    is one bincount: sparse, so SOP's ~11k × 11k table never exists densely."""

    def __init__(self, cluster_ids, label_ids) -> None:
        c, y = (np.asarray(v).astype(np.int64).ravel() for v in (cluster_ids, label_ids))
        if c.shape != y.shape or len(c) == 0 or min(c.min(), y.min()) < 0:
            raise ValueError(f"cluster ids {c.shape} and label ids {y.shape} must be two "
                             "non-empty [N] arrays of integers ≥ 0 (one pair per row).")
        _, c = np.unique(c, return_inverse=True)
        _, y = np.unique(y, return_inverse=True)
        self.n_clusters, self.n_labels = int(c.max()) + 1, int(y.max()) + 1
        pairs, self.pair_of_row = np.unique(c.ravel() * self.n_labels + y.ravel(),
                                            return_inverse=True)
        self.pair_of_row = self.pair_of_row.ravel()
        self.cluster_of_pair, self.label_of_pair = pairs // self.n_labels, pairs % self.n_labels

    def nmi(self, idx: np.ndarray) -> np.ndarray:
        """Arithmetic NMI of each resample of rows idx [b, n] → [b], as sklearn computes it."""
        b, n, P = len(idx), idx.shape[1], len(self.cluster_of_pair)
        rows = np.arange(b)[:, None]
        counts = np.bincount((rows * P + self.pair_of_row[idx]).ravel(),
                             minlength=b * P).reshape(b, P).astype(np.float64)  # [b, P]
        per_cluster = _row_sums(counts, self.cluster_of_pair, self.n_clusters)  # [b, C]
        per_label = _row_sums(counts, self.label_of_pair, self.n_labels)  # [b, L]
        outer = per_cluster[:, self.cluster_of_pair] * per_label[:, self.label_of_pair]  # [b, P]
        with np.errstate(divide="ignore", invalid="ignore"):  # empty cells contribute 0
            terms = (counts / n) * (np.log(counts) - np.log(n)) \
                + (counts / n) * (2 * np.log(n) - np.log(outer))
            terms = np.where(counts > 0, terms, 0.0)
        terms = np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms)  # as sklearn
        mi = np.clip(terms.sum(axis=1), 0.0, None)
        h_c, h_l = _entropy(per_cluster, n), _entropy(per_label, n)
        n_c, n_l = (per_cluster > 0).sum(axis=1), (per_label > 0).sum(axis=1)
        mi = np.where((n_c == 1) | (n_l == 1), 0.0, mi)  # one cluster or one class: no MI
        with np.errstate(divide="ignore", invalid="ignore"):
            nmi = mi / np.maximum((h_c + h_l) / 2, np.finfo(np.float64).eps)
        # sklearn's special cases: both single-valued is a perfect match; zero MI is 0.
        return np.where((n_c == 1) & (n_l == 1), 1.0, np.where(mi == 0, 0.0, nmi))


def _row_sums(counts: np.ndarray, group_of_pair: np.ndarray, groups: int) -> np.ndarray:
    """Per-row sums of counts [b, P] over pairs grouped by group_of_pair [P]: [b, groups]."""
    b = len(counts)
    keys = (np.arange(b)[:, None] * groups + group_of_pair[None, :]).ravel()
    return np.bincount(keys, weights=counts.ravel(), minlength=b * groups).reshape(b, groups)


def _entropy(counts: np.ndarray, n: int) -> np.ndarray:
    """Entropy (nats) of each row of counts [b, G] summing to n: [b]; 0 for a single group."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, (counts / n) * (np.log(counts) - np.log(n)), 0.0)
    return -terms.sum(axis=1)


def _check_same_queries(a: QueryOutcomes, b: QueryOutcomes) -> None:
    if a.n_queries != b.n_queries or not np.array_equal(a.labels, b.labels):
        raise ValueError(
            f"the two outcomes cover different queries ({a.n_queries} and {b.n_queries} queries, "
            f"labels {'equal' if np.array_equal(a.labels, b.labels) else 'differ'}): a paired "
            "comparison needs both scored on the same test split in the same order, e.g. "
            "outcomes/test.npz and outcomes/mpn_inference_with.npz of one run.")


def _metric_statistic(o: QueryOutcomes, metric: str) -> Statistic:
    """The statistic of one side for `paired_bootstrap_difference`."""
    name = metric.strip().upper()
    if name == "MAP@R":
        return _mean_statistic(np.asarray(o.average_precision, dtype=np.float64))
    if name == "NMI":
        if o.clusters is None:
            raise ValueError("NMI asked for, but these outcomes have no k-means clusters: "
                             "evaluate both with nmi=True (params: nmi: true).")
        return _PairTable(o.clusters, o.labels).nmi
    match = re.fullmatch(r"R@(\d+)", name)
    if match is None or int(match[1]) not in o.ks:
        raise ValueError(f"metric {metric!r}: use 'MAP@R', 'NMI' or 'R@K' with K in {list(o.ks)}.")
    return _mean_statistic(o.hits[:, list(o.ks).index(int(match[1]))].astype(np.float64))
