"""Retrieval metrics as pure functions: Recall@K, MAP@R, NMI, and `evaluate` on an embedding set.

Each metric takes plain arrays (torch tensors or numpy arrays) and returns plain Python floats, so
results go straight into JSON sidecars. None of them loops over queries in Python.

Conventions (docs/method.md §7):
- The query set is the reference set (CUB, Cars, SOP); each query is removed from its own
  neighbour list by index in `retrieval.nearest_neighbours`, never by dropping column 0.
- Recall@K is the paper's: the fraction of queries with at least one same-label item among their
  K nearest neighbours. (pytorch-metric-learning calls Recall@1 "precision_at_1".)
- MAP@R is Musgrave et al. 2020 ("A Metric Learning Reality Check", §3.2).
- NMI is arithmetic NMI of seeded k-means clusters with k = number of classes (§7.4).
- In-Shop searches queries against a separate gallery (§7.3): `query_gallery_recall_at_k`,
  `query_gallery_map_at_r`, and `evaluate_query_gallery` with `evaluate`'s keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ibdml.clustering import kmeans
from ibdml.embeddings import as_embeddings, as_labels, check_same_width, cosine_rows
from ibdml.retrieval import nearest_neighbours


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


def evaluate(embeddings, labels, ks: Sequence[int], nmi: bool = True, seed: int = 0) -> dict:
    """Recall@K, MAP@R and (optionally) NMI of a labelled embedding set searched against itself.

    Args:
        embeddings: [N, D], L2-normalised rows (as the model's test features are, §7.1);
            a row norm off 1 by more than 1e-3 is an error, not silently fixed. Finite.
        labels: [N] class labels (any values numpy can compare).
        ks: Recall@K values, each ≤ N − 1, e.g. (1, 2, 4, 8) for CUB/Cars, (1, 10, 100, 1000) for SOP.
        nmi: also cluster with seeded k-means (k = number of distinct labels) and report NMI;
            costly for SOP's ~11k classes.
        seed: k-means seed.

    Returns:
        {"recall_at_k": {"1": ..., ...}, "map_at_r": float, "nmi": float | None}.

    One exact k-NN search with each query excluded by index, k = max(max(ks), largest class − 1),
    serves both Recall@K and MAP@R.
    """
    x = as_embeddings(embeddings, "embeddings", unit=True)
    y = as_labels(labels, len(x))
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


def query_gallery_recall_at_k(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                              ks: Sequence[int], *, chunk_size: int = 1024) -> dict[str, float]:
    """In-Shop Recall@K: queries searched against a separate gallery (§7.3).

    Similarity is cosine (rows are divided by their norms here). A query is a hit at K when its
    best same-label gallery image is beaten by fewer than K gallery images of other labels; that
    is "a same-item image within the top K", with ties between the best positive and a negative
    resolved in the positive's favour, exactly the authors' rule. There is no self-exclusion:
    query and gallery are disjoint image sets.

    Args:
        query_embeddings: [Nq, D] floats, gallery_embeddings: [Ng, D] (torch or numpy); a zero or
            non-finite row is an error (its cosine is undefined).
        query_labels: [Nq], gallery_labels: [Ng]: item ids, compared by value across the two sets
            (In-Shop's reader labels an item the same in query and gallery).
        ks: the K values, each 1 ≤ K ≤ Ng; In-Shop uses 1, 10, 20, 30, 40, 50.
        chunk_size: query rows per similarity block; memory is O(chunk_size · Ng).

    Returns:
        {str(k): fraction in [0, 1]} in the order of ks. A query whose item has no gallery image
        counts as a miss at every K (it stays in the denominator), as in the authors' code, where
        its threshold is the max over an empty set.

    Example: query 0 (item a) has two gallery images of a, at cosine 0.8 and 0, and one image of
    b at 1.0 above them: a hit from K = 2. Query 1 (item a) has a's image at 1.0 first: a hit at
    K = 1. Query 2 (item c) has no gallery image: a miss.
        >>> q = [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
        >>> g = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]
        >>> query_gallery_recall_at_k(q, ["a", "a", "c"], g, ["b", "a", "a"], ks=[1, 2])
        {'1': 0.3333333333333333, '2': 0.6666666666666666}
    """
    q, g = _query_gallery(query_embeddings, gallery_embeddings)
    q_ids, g_ids = _shared_label_ids(query_labels, gallery_labels, len(q), len(g))
    ks = _checked_ks(ks, len(g))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}.")
    q_ids, g_ids = torch.from_numpy(q_ids).to(q.device), torch.from_numpy(g_ids).to(q.device)
    beaten_by = torch.empty(len(q), dtype=torch.int64, device=q.device)  # [Nq]
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        sims = q[start:stop] @ g.T  # [c, Ng]
        same = q_ids[start:stop, None] == g_ids[None, :]  # [c, Ng]
        best_positive = sims.masked_fill(~same, float("-inf")).amax(dim=1)  # [c], -inf if none
        beaten_by[start:stop] = ((sims > best_positive[:, None]) & ~same).sum(dim=1)
    has_positive = torch.isin(q_ids, g_ids)  # [Nq]
    return {str(k): float((has_positive & (beaten_by < k)).double().mean()) for k in ks}


def query_gallery_map_at_r(query_embeddings, query_labels, gallery_embeddings,
                           gallery_labels) -> float:
    """MAP@R of queries searched against a separate gallery (In-Shop; Musgrave et al. 2020).

    As `map_at_r`, with R_i = the number of gallery images with query i's label and the ranking
    by cosine similarity over the gallery (no self-exclusion: query and gallery are disjoint).

    Args:
        query_embeddings: [Nq, D], gallery_embeddings: [Ng, D]; zero or non-finite rows are errors.
        query_labels: [Nq], gallery_labels: [Ng]: item ids, compared by value.

    Returns:
        The mean AP@R over queries whose item has at least one gallery image; queries without
        one (R_i = 0) are left out of the mean, as in `map_at_r`; nan when no query has one.
        The order among exactly tied similarities is unspecified (unlike the recall above).

    Example: query 0 (item a, R = 2) ranks the gallery b, a, a: AP = (1/2)(1/2) = 1/4. Query 1
    (item a) ranks a first, then a: AP = 1. Query 2 (item c, R = 0) is left out. MAP@R = 5/8:
        >>> q = [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
        >>> g = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]
        >>> query_gallery_map_at_r(q, ["a", "a", "c"], g, ["b", "a", "a"])
        0.625
    """
    q, g = _query_gallery(query_embeddings, gallery_embeddings)
    q_ids, g_ids = _shared_label_ids(query_labels, gallery_labels, len(q), len(g))
    relevant_counts = np.bincount(g_ids, minlength=int(q_ids.max()) + 1)[q_ids]  # [Nq] R_i
    if relevant_counts.max() == 0:
        return float("nan")
    _, neighbours = nearest_neighbours(q, g, k=int(relevant_counts.max()))  # [Nq, max R]
    return map_at_r(g_ids[neighbours.cpu().numpy()], q_ids, relevant_counts)


def evaluate_query_gallery(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                           ks: Sequence[int], nmi: bool = True, seed: int = 0) -> dict:
    """`evaluate`'s keys for a query → gallery benchmark (In-Shop, §7.3).

    Args:
        query_embeddings [Nq, D], gallery_embeddings [Ng, D]: L2-normalised rows.
        query_labels [Nq], gallery_labels [Ng]: item ids, compared by value across the two.
        ks: Recall@K values (In-Shop: 1, 10, 20, 30, 40, 50).
        nmi: NMI of seeded k-means (k = distinct items) over query and gallery together; the
            authors compute none for In-Shop. Only meaningful when both sides share one feature
            space (not for refined queries against backbone gallery features).

    Returns:
        {"recall_at_k": query_gallery_recall_at_k, "map_at_r": query_gallery_map_at_r,
         "nmi": float | None}.
    """
    q = as_embeddings(query_embeddings, "query_embeddings", unit=True)  # as `evaluate` asks
    g = as_embeddings(gallery_embeddings, "gallery_embeddings", unit=True)
    result = {
        "recall_at_k": query_gallery_recall_at_k(q, query_labels, g, gallery_labels, ks),
        "map_at_r": query_gallery_map_at_r(q, query_labels, g, gallery_labels),
        "nmi": None,
    }
    if nmi:
        q, g = q.cpu(), g.cpu()
        y = np.concatenate([as_labels(query_labels, len(q), "query labels", "query embeddings"),
                            as_labels(gallery_labels, len(g), "gallery labels",
                                      "gallery embeddings")])
        clusters = kmeans(torch.cat([q, g]), len(np.unique(y)), seed=seed)  # [Nq + Ng]
        result["nmi"] = normalized_mutual_information(clusters, y)
    return result


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


def _query_gallery(query_embeddings, gallery_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """Query [Nq, D] and gallery [Ng, D] rows divided by their norms, on the queries' device."""
    q = cosine_rows(query_embeddings, "query_embeddings")
    g = cosine_rows(gallery_embeddings, "gallery_embeddings")
    check_same_width(q, g, "query_embeddings", "gallery_embeddings")
    return q, g.to(q.device)


def _shared_label_ids(query_labels, gallery_labels, n_query: int,
                      n_gallery: int) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery labels as int64 ids into their joint sorted set of values."""
    q = as_labels(query_labels, n_query, "query labels", "query embeddings")
    g = as_labels(gallery_labels, n_gallery, "gallery labels", "gallery embeddings")
    _, ids = np.unique(np.concatenate([q, g]), return_inverse=True)
    ids = ids.astype(np.int64).ravel()
    return ids[:n_query], ids[n_query:]
