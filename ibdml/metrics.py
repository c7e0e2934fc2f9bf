"""Retrieval metrics as pure functions: Recall@K, MAP@R, NMI, and `evaluate` on an embedding set.

Every metric is the mean of a per-query outcome (docs/method.md §7.5): `recall_hits` [N, len(ks)]
bool and `average_precision_at_r` [N] float, whose means are `recall_at_k` and `map_at_r`. The
outcomes of one k-NN search are kept in a `QueryOutcomes`, from which `summarise` gives the
metrics with their standard errors (`uncertainty.py`) and `uncertainty.paired_bootstrap_difference`
compares two feature sets query by query. Results are plain Python floats, ready for JSON. None of
them loops over queries in Python.

Conventions (docs/method.md §7):
- The query set is the reference set (CUB, Cars, SOP); each query is removed from its own
  neighbour list by index in `retrieval.nearest_neighbours`, never by dropping column 0.
- Recall@K is the paper's: the fraction of queries with at least one same-label item among their
  K nearest neighbours. (pytorch-metric-learning calls Recall@1 "precision_at_1".)
- MAP@R is Musgrave et al. 2020 ("A Metric Learning Reality Check", §3.2).
- NMI is arithmetic NMI of seeded k-means clusters with k = number of classes (§7.4).
- In-Shop searches queries against a separate gallery (§7.3): `gallery_metrics.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ibdml import clustering
from ibdml.embeddings import as_embeddings, as_labels
from ibdml.retrieval import nearest_neighbours
from ibdml.uncertainty import standard_errors


@dataclass(frozen=True)
class QueryOutcomes:
    """What each query of one evaluation got, from which every metric and its uncertainty follow.

    ks: the Recall@K values, in order.
    hits: [N, len(ks)] bool, query i has a same-label item among its first ks[j] neighbours.
    average_precision: [N] float64 AP@R of each query; NaN for a query with R_i = 0.
    labels: [M] int64 label ids (indices into the sorted distinct labels). M = N for a set
        searched against itself; for a query → gallery benchmark (In-Shop) M = Nq + Ng: the
        queries' labels first, then the gallery's, because NMI clusters both together.
    clusters: [M] int64 k-means cluster ids of the same M rows as `labels`, or None when NMI was
        not computed.
    """

    ks: tuple[int, ...]
    hits: np.ndarray
    average_precision: np.ndarray
    labels: np.ndarray
    clusters: np.ndarray | None = None

    @property
    def n_queries(self) -> int:
        return len(self.hits)


def recall_hits(neighbour_labels, query_labels, ks: Sequence[int]) -> np.ndarray:
    """Per-query Recall@K outcomes: [N, len(ks)] bool, True when query i has a same-label item
    among its first ks[j] neighbours.

    Args:
        neighbour_labels: [N, K] labels of each query's neighbours in rank order (self excluded),
            K ≥ max(ks).
        query_labels: [N] label of each query.
        ks: the K values, each ≥ 1.

    A query whose label occurs nowhere else (a lone label) is a miss at every K.

        >>> recall_hits([[1, 0], [0, 0], [2, 1]], [0, 0, 1], ks=[1, 2]).tolist()
        [[False, True], [True, True], [False, True]]
    """
    neighbours, queries = _neighbour_matrix(neighbour_labels, query_labels)
    ks = checked_ks(ks, neighbours.shape[1])
    same = neighbours == queries[:, None]  # [N, K]
    # Rank of each query's first hit (K where there is none); a hit at k ⇔ rank < k.
    first_hit = np.where(same.any(axis=1), same.argmax(axis=1), neighbours.shape[1])  # [N]
    return first_hit[:, None] < np.asarray(ks)[None, :]


def recall_at_k(neighbour_labels, query_labels, ks: Sequence[int]) -> dict[str, float]:
    """Recall@K: fraction of queries with a same-label item among their first K neighbours,
    the column means of `recall_hits` (same arguments).

    Returns:
        {str(k): fraction in [0, 1]} in the order of ks. A query whose label occurs nowhere else
        (a lone label) counts as a miss, as in the paper's code; pytorch-metric-learning instead
        leaves such queries out of its precision_at_1. K may exceed a class's size: a hit needs
        only one same-label neighbour.

    Example: labels of 3 queries and of their 2 nearest neighbours:
        >>> recall_at_k([[1, 0], [0, 0], [2, 1]], [0, 0, 1], ks=[1, 2])
        {'1': 0.3333333333333333, '2': 1.0}
    """
    hits = recall_hits(neighbour_labels, query_labels, ks)
    return {str(int(k)): float(hits[:, j].mean()) for j, k in enumerate(ks)}


def average_precision_at_r(neighbour_labels, query_labels, relevant_counts) -> np.ndarray:
    """Per-query AP@R (Musgrave et al. 2020): [N] float64,

        AP@R_i = (1 / R_i) Σ_{j ≤ R_i} P(j) · rel(j),   P(j) = (# relevant in the first j) / j,

    where R_i = relevant_counts[i] is the number of OTHER items with the query's label, and
    rel(j) = 1 when the j-th neighbour has the query's label. NaN where R_i = 0 (a lone query has
    no relevant item).

    Args:
        neighbour_labels: [N, K] labels of each query's neighbours in rank order (self excluded),
            K ≥ max R_i (columns past R_i are ignored).
        query_labels: [N].
        relevant_counts: [N] integers R_i ≥ 0.

        >>> average_precision_at_r([["A", "B", "A"], ["A", "A", "A"]], ["A", "C"], [3, 0])
        array([0.55555556,        nan])
    """
    neighbours, queries = _neighbour_matrix(neighbour_labels, query_labels)
    r = np.asarray(relevant_counts).astype(np.int64).ravel()
    if r.shape != queries.shape or (r < 0).any():
        raise ValueError(f"relevant_counts must be {len(queries)} integers ≥ 0 (one per query).")
    ap = np.full(len(queries), np.nan)
    keep = r > 0
    if not keep.any():
        return ap
    max_r = int(r.max())
    if neighbours.shape[1] < max_r:
        raise ValueError(
            f"MAP@R needs at least max R = {max_r} neighbours per query, got "
            f"{neighbours.shape[1]}: search with k ≥ the largest class size − 1."
        )
    neighbours, queries, r_kept = neighbours[keep], queries[keep], r[keep]
    ranks = np.arange(1, max_r + 1)  # [R]
    relevant = (neighbours[:, :max_r] == queries[:, None]) & (ranks <= r_kept[:, None])  # [n, R]
    precision = np.cumsum(relevant, axis=1) / ranks  # P(j), float64
    ap[keep] = (precision * relevant).sum(axis=1) / r_kept
    return ap


def map_at_r(neighbour_labels, query_labels, relevant_counts) -> float:
    """MAP@R (Musgrave et al. 2020): the mean of `average_precision_at_r` (same arguments) over
    queries with R_i > 0. A lone query (R_i = 0) is left out of the mean, as
    pytorch-metric-learning does; if every query is lone the result is nan.

    Example: query A (R=3) sees labels [A, B, A]: AP = (1/3)(1/1 + 2/3) = 5/9; query B (R=1) sees
    [A, ...]: AP = 0; query C is lone and left out. MAP@R = (5/9 + 0) / 2 = 5/18:
        >>> round(map_at_r([["A", "B", "A"], ["A", "A", "A"], ["A", "B", "A"]],
        ...                ["A", "B", "C"], [3, 1, 0]), 6)
        0.277778
    """
    return mean_over_non_lone(average_precision_at_r(neighbour_labels, query_labels,
                                                     relevant_counts))


def mean_over_non_lone(average_precision: np.ndarray) -> float:
    """Mean of the non-NaN entries of [N] per-query APs; nan (without a warning) when all are."""
    kept = average_precision[~np.isnan(average_precision)]
    return float(kept.mean()) if len(kept) else float("nan")


def normalized_mutual_information(cluster_ids, labels) -> float:
    """Arithmetic NMI between cluster ids [N] and labels [N] (sklearn's default, §7.4).

    Symmetric in its arguments; 1.0 when the clusters are the classes up to renaming, ~0 for
    clusters independent of the classes.

        >>> normalized_mutual_information([5, 5, 7, 7], ["a", "a", "b", "b"])
        1.0
    """
    from sklearn.metrics import normalized_mutual_info_score  # lazy: ~1 s to import

    classes = _as_numpy(labels).ravel()
    clusters = as_labels(cluster_ids, len(classes), "cluster ids", rows="labels")
    return float(normalized_mutual_info_score(classes, clusters, average_method="arithmetic"))


def query_outcomes(embeddings, labels, ks: Sequence[int], *, nmi: bool = True, seed: int = 0,
                   kmeans: str = "sklearn") -> QueryOutcomes:
    """Per-query outcomes of a labelled embedding set searched against itself.

    Args:
        embeddings: [N, D], L2-normalised rows (as the model's test features are, §7.1);
            a row norm off 1 by more than 1e-3 is an error, not silently fixed. Finite.
        labels: [N] class labels (any values numpy can compare).
        ks: Recall@K values, each ≤ N − 1, e.g. (1, 2, 4, 8) for CUB/Cars, (1, 10, 100, 1000)
            for SOP.
        nmi: also cluster with seeded k-means (k = number of distinct labels); costly for SOP.
        seed: k-means seed.
        kmeans: "sklearn" (the authors' settings) or "fast" (clustering.kmeans).

    One exact k-NN search with each query excluded by index, k = max(max(ks), largest class − 1),
    serves both Recall@K and MAP@R.
    """
    x = as_embeddings(embeddings, "embeddings", unit=True)
    y = as_labels(labels, len(x))
    ks = checked_ks(ks, len(x) - 1)
    _, label_ids, class_sizes = np.unique(y, return_inverse=True, return_counts=True)
    label_ids = label_ids.astype(np.int64).ravel()
    relevant_counts = class_sizes[label_ids] - 1  # R_i: other rows with the query's label
    k = max(max(ks), int(relevant_counts.max()))
    _, neighbours = nearest_neighbours(x, k=k, exclude_self=True)  # [N, k], self excluded by index
    neighbour_ids = label_ids[neighbours.cpu().numpy()]  # [N, k]
    clusters = None
    if nmi:
        clusters = clustering.kmeans(x, len(class_sizes), seed=seed, method=kmeans).numpy()
    return QueryOutcomes(ks=tuple(ks), hits=recall_hits(neighbour_ids, label_ids, ks),
                         average_precision=average_precision_at_r(neighbour_ids, label_ids,
                                                                  relevant_counts),
                         labels=label_ids, clusters=clusters)


def summarise(outcomes: QueryOutcomes, *, seed: int = 0) -> dict:
    """The metrics of `outcomes` with their standard errors, as metrics.json holds them:

        {"recall_at_k": {"1": ..., ...}, "map_at_r": float, "nmi": float | None,
         "standard_error": uncertainty.standard_errors(outcomes, seed=seed)}

    seed seeds the bootstraps of the standard errors (the metrics themselves are exact)."""
    nmi = None
    if outcomes.clusters is not None:
        nmi = normalized_mutual_information(outcomes.clusters, outcomes.labels)
    return {"recall_at_k": {str(k): float(outcomes.hits[:, j].mean())
                            for j, k in enumerate(outcomes.ks)},
            "map_at_r": mean_over_non_lone(outcomes.average_precision), "nmi": nmi,
            "standard_error": standard_errors(outcomes, seed=seed)}


def evaluate(embeddings, labels, ks: Sequence[int], nmi: bool = True, seed: int = 0, *,
             kmeans: str = "sklearn") -> dict:
    """Recall@K, MAP@R and (optionally) NMI of a labelled embedding set searched against itself,
    with their standard errors: `summarise(query_outcomes(...))` (arguments as there; seed seeds
    both k-means and the bootstraps).

    Returns:
        {"recall_at_k": {"1": ..., ...}, "map_at_r": float, "nmi": float | None,
         "standard_error": {...}}.
    """
    return summarise(query_outcomes(embeddings, labels, ks, nmi=nmi, seed=seed, kmeans=kmeans),
                     seed=seed)


def _neighbour_matrix(neighbour_labels, query_labels) -> tuple[np.ndarray, np.ndarray]:
    neighbours = _as_numpy(neighbour_labels)
    queries = _as_numpy(query_labels).ravel()
    if neighbours.ndim != 2 or len(neighbours) != len(queries) or len(queries) == 0:
        raise ValueError(
            f"neighbour_labels must be [N, K] with one row per query label (N ≥ 1); got shape "
            f"{neighbours.shape} for {len(queries)} query labels."
        )
    return neighbours, queries


def _as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        return values.detach().cpu().numpy()
    return np.asarray(values)


def checked_ks(ks: Sequence[int], max_k: int) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of integers ≥ 1, got {ks}.")
    if max(ks) > max_k:
        raise ValueError(
            f"Recall@{max(ks)} asked for, but each query has only {max_k} neighbours available: "
            f"use ks ≤ {max_k}."
        )
    return ks
