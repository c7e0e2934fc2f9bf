"""Query → gallery retrieval metrics (In-Shop, docs/method.md §7.3): queries searched against a
separate gallery, as pure functions. Per-query outcomes first (`query_gallery_recall_hits`,
`query_gallery_average_precision`), their means the metrics, and `evaluate_query_gallery` with
`metrics.evaluate`'s keys. There is no self-exclusion: query and gallery are disjoint image sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ibdml import clustering
from ibdml.embeddings import as_embeddings, as_labels, check_same_width, cosine_rows
from ibdml.metrics import (QueryOutcomes, checked_ks, average_precision_at_r, mean_over_non_lone,
                           summarise)
from ibdml.retrieval import nearest_neighbours


def query_gallery_recall_hits(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                              ks: Sequence[int], *, chunk_size: int = 1024) -> np.ndarray:
    """Per-query In-Shop Recall@K outcomes: [Nq, len(ks)] bool.

    Similarity is cosine (rows are divided by their norms here). A query is a hit at K when its
    best same-label gallery image is beaten by fewer than K gallery images of other labels; that
    is "a same-item image within the top K", with ties between the best positive and a negative
    resolved in the positive's favour, exactly the authors' rule.

    Args:
        query_embeddings: [Nq, D] floats, gallery_embeddings: [Ng, D] (torch or numpy); a zero or
            non-finite row is an error (its cosine is undefined).
        query_labels: [Nq], gallery_labels: [Ng]: item ids, compared by value across the two sets
            (In-Shop's reader labels an item the same in query and gallery).
        ks: the K values, each 1 ≤ K ≤ Ng; In-Shop uses 1, 10, 20, 30, 40, 50.
        chunk_size: query rows per similarity block; memory is O(chunk_size · Ng).

    A query whose item has no gallery image is a miss at every K, as in the authors' code, where
    its threshold is the max over an empty set.
    """
    q, g = _query_gallery(query_embeddings, gallery_embeddings)
    q_ids, g_ids = shared_label_ids(query_labels, gallery_labels, len(q), len(g))
    ks = checked_ks(ks, len(g))
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
    k = torch.tensor(ks, device=q.device)
    return (has_positive[:, None] & (beaten_by[:, None] < k[None, :])).cpu().numpy()


def query_gallery_recall_at_k(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                              ks: Sequence[int], *, chunk_size: int = 1024) -> dict[str, float]:
    """In-Shop Recall@K: the column means of `query_gallery_recall_hits` (same arguments).

    Returns:
        {str(k): fraction in [0, 1]} in the order of ks. A query whose item has no gallery image
        counts as a miss at every K (it stays in the denominator).

    Example: query 0 (item a) has two gallery images of a, at cosine 0.8 and 0, and one image of
    b at 1.0 above them: a hit from K = 2. Query 1 (item a) has a's image at 1.0 first: a hit at
    K = 1. Query 2 (item c) has no gallery image: a miss.
        >>> q = [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
        >>> g = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]
        >>> query_gallery_recall_at_k(q, ["a", "a", "c"], g, ["b", "a", "a"], ks=[1, 2])
        {'1': 0.3333333333333333, '2': 0.6666666666666666}
    """
    hits = query_gallery_recall_hits(query_embeddings, query_labels, gallery_embeddings,
                                     gallery_labels, ks, chunk_size=chunk_size)
    return {str(int(k)): float(hits[:, j].mean()) for j, k in enumerate(ks)}


def query_gallery_average_precision(query_embeddings, query_labels, gallery_embeddings,
                                    gallery_labels) -> np.ndarray:
    """Per-query AP@R of queries searched against a separate gallery: [Nq] float64.

    As `metrics.average_precision_at_r`, with R_i = the number of gallery images with query i's
    label and the ranking by cosine similarity over the gallery. NaN for a query whose item has
    no gallery image (R_i = 0). The order among exactly tied similarities is unspecified (unlike
    the recall above). Arguments as `query_gallery_recall_hits`.
    """
    q, g = _query_gallery(query_embeddings, gallery_embeddings)
    q_ids, g_ids = shared_label_ids(query_labels, gallery_labels, len(q), len(g))
    relevant_counts = np.bincount(g_ids, minlength=int(q_ids.max()) + 1)[q_ids]  # [Nq] R_i
    if relevant_counts.max() == 0:
        return np.full(len(q), np.nan)
    _, neighbours = nearest_neighbours(q, g, k=int(relevant_counts.max()))  # [Nq, max R]
    return average_precision_at_r(g_ids[neighbours.cpu().numpy()], q_ids, relevant_counts)


def query_gallery_map_at_r(query_embeddings, query_labels, gallery_embeddings,
                           gallery_labels) -> float:
    """MAP@R of queries searched against a separate gallery (In-Shop; Musgrave et al. 2020): the
    mean of `query_gallery_average_precision` over queries whose item has at least one gallery
    image; nan when no query has one.

    Example: query 0 (item a, R = 2) ranks the gallery b, a, a: AP = (1/2)(1/2) = 1/4. Query 1
    (item a) ranks a first, then a: AP = 1. Query 2 (item c, R = 0) is left out. MAP@R = 5/8:
        >>> q = [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
        >>> g = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]
        >>> query_gallery_map_at_r(q, ["a", "a", "c"], g, ["b", "a", "a"])
        0.625
    """
    return mean_over_non_lone(query_gallery_average_precision(
        query_embeddings, query_labels, gallery_embeddings, gallery_labels))


def query_gallery_outcomes(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                           ks: Sequence[int], *, nmi: bool = True, seed: int = 0,
                           kmeans: str = "sklearn") -> QueryOutcomes:
    """Per-query outcomes of a query → gallery benchmark (In-Shop, §7.3).

    Args:
        query_embeddings [Nq, D], gallery_embeddings [Ng, D]: L2-normalised rows.
        query_labels [Nq], gallery_labels [Ng]: item ids, compared by value across the two.
        ks: Recall@K values (In-Shop: 1, 10, 20, 30, 40, 50).
        nmi: seeded k-means (k = distinct items) over query and gallery together; the authors
            compute none for In-Shop. Only meaningful when both sides share one feature space
            (not for refined queries against backbone gallery features).
        seed, kmeans: as `metrics.query_outcomes`.

    Returns:
        QueryOutcomes with hits and average_precision of the Nq queries, and labels (and
        clusters) of the Nq + Ng images, queries first.
    """
    q = as_embeddings(query_embeddings, "query_embeddings", unit=True)  # as `evaluate` asks
    g = as_embeddings(gallery_embeddings, "gallery_embeddings", unit=True)
    q_ids, g_ids = shared_label_ids(query_labels, gallery_labels, len(q), len(g))
    labels = np.concatenate([q_ids, g_ids])  # [Nq + Ng]
    clusters = None
    if nmi:
        both = torch.cat([q.cpu(), g.cpu()])  # [Nq + Ng, D]
        clusters = clustering.kmeans(both, len(np.unique(labels)), seed=seed,
                                     method=kmeans).numpy()
    return QueryOutcomes(
        ks=tuple(checked_ks(ks, len(g))),
        hits=query_gallery_recall_hits(q, q_ids, g, g_ids, ks),
        average_precision=query_gallery_average_precision(q, q_ids, g, g_ids),
        labels=labels, clusters=clusters)


def evaluate_query_gallery(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                           ks: Sequence[int], nmi: bool = True, seed: int = 0, *,
                           kmeans: str = "sklearn") -> dict:
    """`metrics.evaluate`'s keys for a query → gallery benchmark (In-Shop, §7.3):
    `summarise(query_gallery_outcomes(...))`, arguments as there.

    Returns:
        {"recall_at_k": query_gallery_recall_at_k, "map_at_r": query_gallery_map_at_r,
         "nmi": float | None, "standard_error": {...}}.
    """
    return summarise(query_gallery_outcomes(query_embeddings, query_labels, gallery_embeddings,
                                            gallery_labels, ks, nmi=nmi, seed=seed,
                                            kmeans=kmeans), seed=seed)


def shared_label_ids(query_labels, gallery_labels, n_query: int,
                     n_gallery: int) -> tuple[np.ndarray, np.ndarray]:
    """Query [Nq] and gallery [Ng] labels as int64 ids into their joint sorted set of values."""
    q = as_labels(query_labels, n_query, "query labels", "query embeddings")
    g = as_labels(gallery_labels, n_gallery, "gallery labels", "gallery embeddings")
    _, ids = np.unique(np.concatenate([q, g]), return_inverse=True)
    ids = ids.astype(np.int64).ravel()
    return ids[:n_query], ids[n_query:]


def _query_gallery(query_embeddings, gallery_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """Query [Nq, D] and gallery [Ng, D] rows divided by their norms, on the queries' device."""
    q = cosine_rows(query_embeddings, "query_embeddings")
    g = cosine_rows(gallery_embeddings, "gallery_embeddings")
    check_same_width(q, g, "query_embeddings", "gallery_embeddings")
    return q, g.to(q.device)
