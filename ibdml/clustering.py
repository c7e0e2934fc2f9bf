"""Seeded k-means for NMI (docs/method.md §7.4): cluster the test embeddings into as many
clusters as there are classes, then compare clusters and classes (`metrics.py`).

Two methods (the `kmeans` parameter):
- "sklearn": the authors' settings, sklearn KMeans(init="k-means++", n_init=10, max_iter=300,
  tol=1e-4). The authors ran it unseeded, so their NMI varied between runs; here it is seeded.
- "fast": one k-means++ start and 20 iterations, with faiss when installed: the only practical
  choice at SOP / In-Shop size (k ≈ 11k to 8k clusters of ~5 points), where 10 sklearn starts
  would take hours. It gives other clusters than "sklearn", and usually a slightly different NMI.
Either method gives the same clusters for the same seed.
"""

from __future__ import annotations

import numpy as np
import torch

from ibdml.embeddings import as_embeddings
from ibdml.retrieval import faiss_available

METHODS = ("sklearn", "fast")
# Largest k for which the fast method starts faiss from k-means++ centres (see `kmeans`).
_KMEANS_PP_MAX_K = 1024


def kmeans(x, k: int, *, seed: int = 0, method: str = "sklearn", niter: int = 20) -> torch.Tensor:
    """Seeded k-means on the rows of x [N, D]; returns cluster ids [N] int64 (on the CPU).

    method="sklearn" (default): sklearn KMeans(n_clusters=k, init="k-means++", n_init=10,
    max_iter=300, tol=1e-4, random_state=seed), the authors' settings (§7.4); niter is unused.

    method="fast": faiss.Kmeans when faiss is importable (fast enough for SOP's ~11k clusters),
    otherwise sklearn's KMeans with one k-means++ start and max_iter=niter. For k ≤ 1024 faiss
    starts from k-means++ centres, as the authors' sklearn k-means did: faiss's own random start
    split or merged even well-separated clusters in most seeds tried. Above that, k-means++ would
    cost k passes over the data (~45 s for SOP), so faiss's random start is kept.

    Args:
        x: [N, D] finite floats (torch or numpy).
        k: number of clusters, 1 ≤ k ≤ N.
        seed: seeds the start (and faiss's or sklearn's own sampling).
        method: "sklearn" or "fast".
        niter: the fast method's iterations, ≥ 1.

    Example: two far-apart pairs of points fall into two clusters:
        >>> ids = kmeans(torch.tensor([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.0, 5.1]]), 2)
        >>> bool(ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2])
        True
    """
    x = as_embeddings(x, "x")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 ≤ k ≤ number of rows ({len(x)}), got k={k}.")
    if method not in METHODS:
        raise ValueError(f"k-means method {method!r}: use 'sklearn' (the authors' settings) or "
                         "'fast' (one start, 20 iterations; SOP / In-Shop size).")
    if niter < 1:
        raise ValueError(f"niter must be ≥ 1, got {niter}.")
    data = x.cpu().numpy()
    if method == "sklearn":
        return _sklearn_kmeans(data, k, seed, n_init=10, max_iter=300)
    if not faiss_available():
        return _sklearn_kmeans(data, k, seed, n_init=1, max_iter=niter)
    import faiss

    # NMI clusters into as many clusters as classes, with few points each (SOP: ~5), far below
    # the 39 per centroid faiss asks for; min_points_per_centroid=1 silences that warning.
    model = faiss.Kmeans(
        data.shape[1], k, niter=niter, seed=seed, min_points_per_centroid=1, verbose=False
    )
    start = _kmeans_plus_plus(data, k, seed) if k <= _KMEANS_PP_MAX_K else None
    model.train(data, init_centroids=start)
    _, ids = model.index.search(data, 1)
    return torch.from_numpy(ids[:, 0].astype(np.int64))


def _sklearn_kmeans(data: np.ndarray, k: int, seed: int, *, n_init: int,
                    max_iter: int) -> torch.Tensor:
    """sklearn KMeans with k-means++ starts and tol 1e-4 (its default, the authors'): ids [N]."""
    from sklearn.cluster import KMeans  # imported here: sklearn costs ~1 s to import

    model = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, tol=1e-4,
                   random_state=seed).fit(data)
    return torch.from_numpy(model.labels_.astype(np.int64))


def _kmeans_plus_plus(data: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre is drawn with probability
    ∝ squared distance to the nearest centre so far. One pass over the data per centre.
    Returns the k centres [k, D]."""
    rng = np.random.default_rng(seed)
    sq_norms = np.einsum("ij,ij->i", data, data)

    def sq_distances(i: int) -> np.ndarray:  # ‖x − x_i‖² for every row, via one mat-vec
        return np.maximum(sq_norms - 2 * (data @ data[i]) + sq_norms[i], 0)

    chosen = [int(rng.integers(len(data)))]
    nearest = sq_distances(chosen[0])
    for _ in range(1, k):
        cumulative = np.cumsum(nearest, dtype=np.float64)
        if cumulative[-1] > 0:  # inverse-CDF draw: ~10× faster than torch.multinomial here
            draw = np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")
            chosen.append(min(int(draw), len(data) - 1))
        else:  # every row coincides with a centre already: any row will do
            chosen.append(int(rng.integers(len(data))))
        np.minimum(nearest, sq_distances(chosen[-1]), out=nearest)
    return data[chosen]
