"""Retrieval metrics as pure functions: Recall@K, MAP@R, NMI, and `evaluate` on an embedding set.

Each metric takes plain arrays (torch tensors or numpy arrays) and returns plain Python floats, so
results go straight into JSON sidecars. None of them loops over queries in Python.

Conventions (METHOD_SPEC Part 1, rows "Recall@K", "NMI", "extra metric"; §7):
- The query set is the reference set (CUB, Cars, SOP); each query is removed from its own
  neighbour list by index in `retrieval.nearest_neighbours`, never by dropping column 0.
- Recall@K is the paper's: the fraction of queries with at least one same-label item among their
  K nearest neighbours. (pytorch-metric-learning calls Recall@1 "precision_at_1".)
- MAP@R is Musgrave et al. 2020 ("A Metric Learning Reality Check", §3.2).
- NMI is arithmetic NMI of seeded k-means clusters with k = number of classes (§7.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ibdml.retrieval import kmeans, nearest_neighbours

# Row norms of "L2-normalised" embeddings may differ from 1 by float32 rounding, not more.
_UNIT_NORM_TOLERANCE = 1e-3


def recall_at_k(neighbour_labels, query_labels, ks: Sequence[int]) -> dict[str, float]:
    """Recall@K: fraction of queries with a same-label item among their first K neighbours.

    Args:
        neighbour_labels: [N, K] labels of each query's neighbours in rank order (self excluded),
            K ≥ max(ks).
        query_labels: [N] label of each query.
        ks: the K values, each ≥ 1.

    Returns:
        {str(k): fraction in [0, 1]} in the order of ks. A query whose label occurs nowhere else
        (a lone label) counts as a miss, as in the paper's code; pytorch-metric-learning instead
        leaves such queries out of its precision_at_1. K may exceed a class's size: a hit needs
        only one same-label neighbour.

    Example: labels of 3 queries and of their 2 nearest neighbours:
        >>> recall_at_k([[1, 0], [0, 0], [2, 1]], [0, 0, 1], ks=[1, 2])
        {'1': 0.3333333333333333, '2': 1.0}
    """
    neighbours, queries = _neighbour_matrix(neighbour_labels, query_labels)
    ks = _checked_ks(ks, neighbours.shape[1])
    hits = neighbours == queries[:, None]  # [N, K]
    # Rank of each query's first hit (K where there is none); R@k = fraction with rank < k.
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), neighbours.shape[1])
    return {str(k): float(np.mean(first_hit < k)) for k in ks}


def map_at_r(neighbour_labels, query_labels, relevant_counts) -> float:
    """MAP@R (Musgrave et al. 2020): mean over queries of AP@R_i.

        AP@R_i = (1 / R_i) Σ_{j ≤ R_i} P(j) · rel(j),   P(j) = (# relevant in the first j) / j,

    where R_i = relevant_counts[i] is the number of OTHER items with the query's label, and
    rel(j) = 1 when the j-th neighbour has the query's label.

    Args:
        neighbour_labels: [N, K] labels of each query's neighbours in rank order (self excluded),
            K ≥ max R_i (columns past R_i are ignored).
        query_labels: [N].
        relevant_counts: [N] integers R_i ≥ 0.

    Returns:
        The mean over queries with R_i > 0. A query with R_i = 0 (its label occurs once) has no
        relevant item and is left out of the mean, as pytorch-metric-learning does; if every
        query is lone the result is nan.

    Example: query A (R=3) sees labels [A, B, A]: AP = (1/3)(1/1 + 2/3) = 5/9; query B (R=1) sees
    [A, ...]: AP = 0; query C is lone and left out. MAP@R = (5/9 + 0) / 2 = 5/18:
        >>> round(map_at_r([["A", "B", "A"], ["A", "A", "A"], ["A", "B", "A"]],
        ...                ["A", "B", "C"], [3, 1, 0]), 6)
        0.277778
    """
    neighbours, queries = _neighbour_matrix(neighbour_labels, query_labels)
    r = _as_numpy(relevant_counts).astype(np.int64).ravel()
    if r.shape != queries.shape or (r < 0).any():
        raise ValueError(f"relevant_counts must be {len(queries)} integers ≥ 0 (one per query).")
    keep = r > 0
    if not keep.any():
        return float("nan")
    neighbours, queries, r = neighbours[keep], queries[keep], r[keep]
    max_r = int(r.max())
    if neighbours.shape[1] < max_r:
        raise ValueError(
            f"MAP@R needs at least max R = {max_r} neighbours per query, got "
            f"{neighbours.shape[1]}: search with k ≥ the largest class size − 1."
        )
    ranks = np.arange(1, max_r + 1)  # [R]
    relevant = (neighbours[:, :max_r] == queries[:, None]) & (ranks <= r[:, None])  # [N, R]
    precision = np.cumsum(relevant, axis=1) / ranks  # P(j), float64
    return float(np.mean((precision * relevant).sum(axis=1) / r))


def normalized_mutual_information(cluster_ids, labels) -> float:
    """Arithmetic NMI between cluster ids [N] and labels [N] (sklearn's default, METHOD_SPEC §7.4).

    Symmetric in its arguments; 1.0 when the clusters are the classes up to renaming, ~0 for
    clusters independent of the classes.

        >>> normalized_mutual_information([5, 5, 7, 7], ["a", "a", "b", "b"])
        1.0
    """
    from sklearn.metrics import normalized_mutual_info_score  # lazy: ~1 s to import

    clusters, classes = _as_numpy(cluster_ids).ravel(), _as_numpy(labels).ravel()
    if clusters.shape != classes.shape:
        raise ValueError(f"{len(clusters)} cluster ids but {len(classes)} labels: give one each.")
    return float(normalized_mutual_info_score(classes, clusters, average_method="arithmetic"))


# The short name; `evaluate` calls the long one because its `nmi` flag shadows this.
nmi = normalized_mutual_information


def evaluate(embeddings, labels, ks: Sequence[int], nmi: bool = True, seed: int = 0) -> dict:
    """Recall@K, MAP@R and (optionally) NMI of a labelled embedding set searched against itself.

    Args:
        embeddings: [N, D], L2-normalised rows (as the model's test features are, METHOD_SPEC
            §7.1); a row norm off 1 by more than 1e-3 is an error, not silently fixed.
        labels: [N] class labels.
        ks: Recall@K values, e.g. (1, 2, 4, 8) for CUB/Cars, (1, 10, 100, 1000) for SOP.
        nmi: also cluster with seeded k-means (k = number of distinct labels) and report NMI;
            costly for SOP's ~11k classes.
        seed: k-means seed.

    Returns:
        {"recall_at_k": {"1": ..., ...}, "map_at_r": float, "nmi": float | None}.

    One exact k-NN search with each query excluded by index, k = max(max(ks), largest class − 1),
    serves both Recall@K and MAP@R.
    """
    x = _unit_rows(embeddings)
    y = _as_numpy(labels).ravel()
    if len(y) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(y)} labels: give one label per row.")
    ks = _checked_ks(ks, len(x) - 1)
    _, label_ids, class_sizes = np.unique(y, return_inverse=True, return_counts=True)
    relevant_counts = class_sizes[label_ids] - 1  # R_i: other rows with the query's label
    k = max(max(ks), int(relevant_counts.max()))
    _, neighbours = nearest_neighbours(x, k=k, exclude_self=True)  # [N, k], self excluded by index
    neighbour_labels = y[neighbours.cpu().numpy()]  # [N, k]
    result = {
        "recall_at_k": recall_at_k(neighbour_labels, y, ks),
        "map_at_r": map_at_r(neighbour_labels, y, relevant_counts),
        "nmi": None,
    }
    if nmi:
        clusters = kmeans(x, len(class_sizes), seed=seed)
        result["nmi"] = normalized_mutual_information(clusters, y)
    return result


# ---------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _neighbour_matrix(neighbour_labels, query_labels) -> tuple[np.ndarray, np.ndarray]:
    neighbours, queries = _as_numpy(neighbour_labels), _as_numpy(query_labels).ravel()
    if neighbours.ndim != 2 or len(neighbours) != len(queries) or len(queries) == 0:
        raise ValueError(
            f"neighbour_labels must be [N, K] with one row per query label (N ≥ 1); got shape "
            f"{neighbours.shape} for {len(queries)} query labels."
        )
    return neighbours, queries


def _checked_ks(ks: Sequence[int], max_k: int) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of integers ≥ 1, got {ks}.")
    if max(ks) > max_k:
        raise ValueError(
            f"Recall@{max(ks)} asked for, but each query has only {max_k} neighbours available: "
            f"use ks ≤ {max_k}."
        )
    return ks


def _unit_rows(embeddings) -> torch.Tensor:
    x = torch.as_tensor(embeddings).detach()
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {tuple(x.shape)}.")
    x = x.to(torch.float32)
    deviation = (torch.linalg.vector_norm(x, dim=1) - 1).abs()
    if not bool((deviation <= _UNIT_NORM_TOLERANCE).all()):  # also catches NaN rows
        raise ValueError(
            "evaluate expects L2-normalised embeddings (every row norm 1 ± 1e-3); the largest "
            f"deviation is {deviation.max().item():.3g}. Normalise first: "
            "torch.nn.functional.normalize(embeddings, dim=1)."
        )
    return x
