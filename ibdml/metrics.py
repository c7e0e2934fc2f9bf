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
- In-Shop searches queries against a separate gallery (§7.3): `query_gallery_recall_at_k`,
  `query_gallery_map_at_r`, and `evaluate_query_gallery` with `evaluate`'s keys.
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


def query_gallery_recall_at_k(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                              ks: Sequence[int], *, chunk_size: int = 1024) -> dict[str, float]:
    """In-Shop Recall@K: queries searched against a separate gallery (METHOD_SPEC §7.3).

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
    q, g = _cosine_rows(query_embeddings, "query"), _cosine_rows(gallery_embeddings, "gallery")
    q_ids, g_ids = _shared_label_ids(query_labels, gallery_labels, len(q), len(g))
    _check_same_width(q, g)
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
    q, g = _cosine_rows(query_embeddings, "query"), _cosine_rows(gallery_embeddings, "gallery")
    q_ids, g_ids = _shared_label_ids(query_labels, gallery_labels, len(q), len(g))
    _check_same_width(q, g)
    relevant_counts = np.bincount(g_ids, minlength=int(q_ids.max()) + 1)[q_ids]  # [Nq] R_i
    if relevant_counts.max() == 0:
        return float("nan")
    _, neighbours = nearest_neighbours(q, g, k=int(relevant_counts.max()))  # [Nq, max R]
    return map_at_r(g_ids[neighbours.cpu().numpy()], q_ids, relevant_counts)


# ---------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------


def evaluate_query_gallery(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                           ks: Sequence[int], nmi: bool = True, seed: int = 0) -> dict:
    """`evaluate`'s keys for a query → gallery benchmark (In-Shop, METHOD_SPEC §7.3).

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
    result = {
        "recall_at_k": query_gallery_recall_at_k(query_embeddings, query_labels,
                                                 gallery_embeddings, gallery_labels, ks),
        "map_at_r": query_gallery_map_at_r(query_embeddings, query_labels, gallery_embeddings,
                                           gallery_labels),
        "nmi": None,
    }
    if nmi:
        x = torch.cat([_unit_rows(query_embeddings), _unit_rows(gallery_embeddings)])  # [Nq+Ng, D]
        y = np.concatenate([_as_numpy(query_labels).ravel(), _as_numpy(gallery_labels).ravel()])
        clusters = kmeans(x, len(np.unique(y)), seed=seed)
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


def _cosine_rows(embeddings, name: str) -> torch.Tensor:
    """[N, D] float32 rows divided by their norms; zero and non-finite rows are errors."""
    # Torch inputs stay on their device (the similarity blocks are computed there).
    x = (embeddings.detach() if isinstance(embeddings, torch.Tensor)
         else torch.as_tensor(np.asarray(embeddings)))
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name}_embeddings must be [N, D] with N ≥ 1, got shape "
                         f"{tuple(x.shape)}.")
    x = x.to(torch.float32)
    norms = torch.linalg.vector_norm(x, dim=1)  # [N]
    bad = ~torch.isfinite(norms) | (norms == 0)
    if bool(bad.any()):
        rows = torch.nonzero(bad).ravel()[:5].tolist()
        raise ValueError(f"{name}_embeddings has {int(bad.sum())} zero or non-finite rows (e.g. "
                         f"rows {rows}): cosine similarity is undefined for them.")
    return x / norms[:, None]


def _check_same_width(queries: torch.Tensor, gallery: torch.Tensor) -> None:
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query embeddings are {queries.shape[1]}-d but gallery embeddings are "
                         f"{gallery.shape[1]}-d: embed both with the same model.")


def _shared_label_ids(query_labels, gallery_labels, n_query: int,
                      n_gallery: int) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery labels as int64 ids into their joint sorted set of values."""
    q, g = _as_numpy(query_labels).ravel(), _as_numpy(gallery_labels).ravel()
    if len(q) != n_query or len(g) != n_gallery:
        raise ValueError(f"{n_query} query embeddings with {len(q)} labels and {n_gallery} "
                         f"gallery embeddings with {len(g)} labels: give one label per row.")
    _, ids = np.unique(np.concatenate([q, g]), return_inverse=True)
    ids = ids.astype(np.int64).ravel()
    return ids[:n_query], ids[n_query:]
