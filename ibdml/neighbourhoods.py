"""Reciprocal k-NN neighbourhoods for the MPN at inference (paper claim 2; docs/method.md §8.1,
§8.2, §14.4): which samples form each sample's small graph. `inference.py` runs the MPN on them.

Each test sample i becomes a small graph, i plus its nearest members of the expanded k-reciprocal
set. The authors argsort an N×N distance matrix and loop over samples in Python. Here everything
follows from one exact (k+1)-NN search (`retrieval.py`) with tensor operations: memory O(N·k)
plus chunked temporaries, no N×N matrix, no loop over samples.

Ranking order, everywhere: the sample itself first (self-searches only; BY INDEX, where the
authors rely on D[i, i] = 0, a tie when i has exact duplicates), then similarity descending, then
index ascending. Similarity is the float64 inner product rounded to float32, so exact duplicates
really tie (float32 BLAS gives identical columns different last bits); only near-ties of the
search are re-scored that way (`_rank`). Lists whose end falls inside a tie are searched again,
longer: the result never depends on how the search orders ties, so the neighbourhoods are the
same on every device and BLAS.

Device: computed on the GPU when there is one (`device.search_device`), handed back on the
embeddings' device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ibdml.device import search_device
from ibdml.embeddings import as_embeddings, check_same_width
from ibdml.retrieval import nearest_neighbours

# Search similarities closer than this are re-scored before ordering (`_rank`). float32 inner
# products of unit rows were measured within 7e-7 of the exact value for D = 64 to 2048; the
# rigorous worst case, D·2⁻²⁴, is never approached by blocked BLAS sums. (A TF32 search on a GPU
# errs by ~1e-3: near-ties would then be ordered by its noise.)
_TIE_TOLERANCE = 1e-5
_ROW_CHUNK = 4096  # rows per block of [rows, k, k] temporaries
_PAIR_CHUNK = 65536  # pairs per block of gathered rows in `_row_dots`
_TABLE_BYTES = 2**24  # size of the lookup table of `_positions`


def reciprocal_neighbourhoods(embeddings: torch.Tensor, k: int = 30, batch: int = 7,
                              alpha: float = 2 / 3) -> torch.Tensor:
    """Reciprocal k-NN neighbourhoods of every sample (docs/method.md §8.1), vectorised.

    Args:
        embeddings: [N, D] L2-normalised floats, N > k.
        k: forward lists hold k + 1 samples, the sample included (authors: k1 = 30).
        batch: graph size, 1 ≤ batch ≤ k + 1 (authors: 7).
        alpha: overlap test of the expansion, 0 < alpha ≤ 1 (authors: 2/3).

    Returns:
        [N, batch] int64. Row i is i, then its nearest members of the expanded set
        R(i) ∪ {R½(c) : c ∈ R(i), |R½(c) ∩ R(i)| > alpha·|R½(c)|} (k½ = round(k/2), Python's
        round-half-to-even, as the authors), padded with i's plain nearest neighbours when the set
        has fewer than `batch` members. Rows hold no repeated index.

    Example: two tight pairs far apart; each point's graph is itself and its partner:
        >>> x = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]), dim=1)
        >>> reciprocal_neighbourhoods(x, k=1, batch=2).tolist()
        [[0, 1], [1, 0], [2, 3], [3, 2]]
    """
    x = as_embeddings(embeddings, "embeddings", unit=True)
    _check_arguments(k, alpha, batch, (1, k + 1), len(x), "embeddings")
    home, x = x.device, x.to(search_device(x.device))  # the GPU when there is one
    forward = _ranked_lists(x, None, k + 1)  # [N, k+1], forward[:, 0] = own index
    half = forward[:, : round(k / 2) + 1]  # [N, k½+1]: a prefix of the same ranking
    reciprocal = _reciprocal_mask(forward, forward)  # [N, k+1]: membership of R(i)
    half_reciprocal = _reciprocal_mask(half, half)  # [N, k½+1]: membership of R½(c)
    return _select(x, x, forward, reciprocal, half, half_reciprocal, batch, alpha).to(home)


def reciprocal_neighbourhoods_query_gallery(queries: torch.Tensor, gallery: torch.Tensor,
                                            k: int = 30, batch: int = 4,
                                            alpha: float = 2 / 3) -> torch.Tensor:
    """In-Shop neighbourhoods (docs/method.md §8.2): gallery items only, chosen per query.

    Forward list: the query's k+1 nearest gallery items. Backward list: a gallery item's k+1
    nearest queries (all queries when there are fewer). R(q): forward items whose backward list
    holds q. Expansion with gallery–gallery k½-reciprocal sets (self first), same alpha rule.

    Args:
        queries: [Nq, D], gallery: [Ng, D], L2-normalised, Ng > k.
        batch: graph size including the query, 2 ≤ batch ≤ k + 2 (authors: 4).

    Returns:
        [Nq, batch − 1] int64 gallery indices, nearest to the query first, no repeats.
    """
    q = as_embeddings(queries, "queries", unit=True)
    g = as_embeddings(gallery, "gallery", unit=True)
    check_same_width(q, g, "queries", "gallery")
    _check_arguments(k, alpha, batch, (2, k + 2), len(g), "gallery items")
    home, device = q.device, search_device(q.device)  # the GPU when there is one
    q, g = q.to(device), g.to(device)
    forward = _ranked_lists(q, g, k + 1)  # [Nq, k+1] gallery items
    backward = _ranked_lists(g, q, min(k + 1, len(q)))  # [Ng, ≤ k+1] queries
    reciprocal = _reciprocal_mask(forward, backward)  # [Nq, k+1]
    half = _ranked_lists(g, None, round(k / 2) + 1)  # [Ng, k½+1] gallery, self first
    half_reciprocal = _reciprocal_mask(half, half)  # [Ng, k½+1]
    return _select(q, g, forward, reciprocal, half, half_reciprocal, batch - 1, alpha).to(home)



# --- Ranked lists and reciprocity (docs/method.md §14.4 steps 1–3) -----------------------------


def _ranked_lists(x: torch.Tensor, reference: torch.Tensor | None, m: int) -> torch.Tensor:
    """First m entries [Nx, m] of each row's ranking over `reference` (None: over x itself, own
    index first), in the module's order (see `_rank`).

    One exact search for m + 2 entries. A row's list is certain when a clear gap follows its
    m-th entry; rows where near-ties straddle the end (exact duplicates; otherwise a few rows in
    ten thousand, measured) are searched again with twice the length.
    """
    ref = x if reference is None else reference
    lists = torch.empty(len(x), m, dtype=torch.long, device=x.device)
    todo = torch.arange(len(x), device=x.device)  # rows whose list is not certain yet
    k_search = min(m + 2, len(ref))
    while len(todo):
        sims, idx = _search(x, reference, todo, k_search)  # [r, k_search] each
        own = todo if reference is None else None
        ranked, certain = _rank(sims, idx, m, x[todo], ref, own, complete=k_search == len(ref))
        lists[todo[certain]] = ranked[certain]
        todo = todo[~certain]
        k_search = min(2 * k_search, len(ref))
    return lists


def _search(x: torch.Tensor, reference: torch.Tensor | None, rows: torch.Tensor,
            k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest of x[rows] in reference. The full self-search runs as one (symmetric: half the
    FLOPs, see `nearest_neighbours`) with the own index removed by index and put first here."""
    if reference is not None or len(rows) < len(x):
        ref = x if reference is None else reference
        return nearest_neighbours(x[rows], ref, k)
    sims, idx = nearest_neighbours(x, k=k - 1, exclude_self=True)  # [N, k-1]
    sims = F.pad(sims, (1, 0), value=float("inf"))  # [N, k]
    return sims, torch.cat([rows[:, None], idx], dim=1)


def _rank(sims: torch.Tensor, idx: torch.Tensor, m: int, x: torch.Tensor, ref: torch.Tensor,
          own: torch.Tensor | None, complete: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Search results [r, s] (rows x [r, D] against ref) in the module's order: the first m
    [r, m], and whether each row is certain [r]. Runs of entries whose search similarities lie
    within _TIE_TOLERANCE of each other are re-scored with `_row_dots`; entries further apart
    keep their search similarities, whose order the exact values share (errors < tolerance/2)."""
    key, idx = sims.clone(), idx.clone()
    if own is not None:
        is_own = idx == own[:, None]  # [r, s]
        missing = ~is_own.any(dim=1)  # ≥ s exact duplicates tied with the own row: it takes
        idx[missing, -1] = own[missing]  # the last slot, the least similar one
        is_own[missing, -1] = True
        key[is_own] = float("inf")
    order = key.argsort(dim=1, descending=True, stable=True)  # search similarity descending
    key, idx = key.gather(1, order), idx.gather(1, order)  # [r, s]
    close = key[:, :-1] - key[:, 1:] <= _TIE_TOLERANCE  # [r, s-1] pairs the search can't order
    rows, cols = (F.pad(close, (1, 0)) | F.pad(close, (0, 1))).nonzero(as_tuple=True)
    key[rows, cols] = _row_dots(x, rows, ref, idx[rows, cols])  # re-scored: [r, s] again
    order = idx.argsort(dim=1, stable=True)  # index ascending ...
    key, idx = key.gather(1, order), idx.gather(1, order)
    order = key.argsort(dim=1, descending=True, stable=True)  # ... in similarity descending
    idx = idx.gather(1, order)
    # Certain when a clear gap follows the m-th entry: what lies beyond it, searched or not
    # (the search left out nothing more similar than its last entry), is then clearly less
    # similar than every entry up to it, whose runs the re-scoring has ordered.
    certain = (~close[:, m - 1 :]).any(dim=1) | complete
    return idx[:, :m], certain


def _reciprocal_mask(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """mask[i, a] = (i ∈ backward[forward[i, a]]): forward [Nq, m] indexes the rows of backward
    [Ng, m'], whose entries index the rows of forward. Returns [Nq, m] bool."""
    mask = torch.empty(forward.shape, dtype=torch.bool, device=forward.device)
    for start in range(0, len(forward), _ROW_CHUNK):
        f = forward[start : start + _ROW_CHUNK]  # [c, m]
        own = torch.arange(start, start + len(f), device=f.device)[:, None, None]  # [c, 1, 1]
        mask[start : start + len(f)] = (backward[f] == own).any(dim=-1)  # backward[f]: [c, m, m']
    return mask


# --- Expansion and selection (docs/method.md §8.1, §14.4 steps 4–5) ---------------------------


def _select(qx: torch.Tensor, gx: torch.Tensor, forward: torch.Tensor, reciprocal: torch.Tensor,
            half: torch.Tensor, half_reciprocal: torch.Tensor, keep: int,
            alpha: float) -> torch.Tensor:
    """The `keep` nearest members of each row's expanded set, padded from its forward list.

    Members of the forward list rank before every member outside it (the forward list is the
    head of the same ranking), so outside members need similarities only in rows where the
    expanded part of the forward list has fewer than `keep` members. Returns [Nq, keep].
    """
    K = forward.shape[1]
    dtype = torch.int16 if K < 2**15 else torch.int32
    chunk = max(1, min(_ROW_CHUNK, _TABLE_BYTES // (dtype.itemsize * len(gx))))  # table rows
    table = torch.full((chunk, len(gx)), K, dtype=dtype, device=forward.device)  # [chunk, Ng]
    out = torch.empty(len(forward), keep, dtype=torch.long, device=forward.device)
    for start in range(0, len(forward), chunk):
        rows = slice(start, start + chunk)
        members, flagged, outside = _expand(forward[rows], reciprocal[rows], half,
                                            half_reciprocal, alpha, table)
        outside &= (flagged.sum(dim=1) < keep)[:, None, None]  # only rows that need them
        extra = _rank_outside(qx[rows], gx, members, outside, keep)
        out[rows] = _pick(forward[rows], flagged, extra, keep)
    return out


def _expand(f: torch.Tensor, r: torch.Tensor, half: torch.Tensor, half_reciprocal: torch.Tensor,
            alpha: float, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expansion of R(i) for a chunk of rows. f, r: [c, K] forward lists and R(i) membership.

    Returns (members [c, K, H]: each forward item's half list; flagged [c, K]: which forward
    items are in the expanded set; outside [c, K, H]: expanded members not in the forward list).
    """
    K = f.shape[1]
    members = half[f]  # [c, K, H]: the half list of each forward item c
    in_half_r = half_reciprocal[f]  # [c, K, H]: which of them form R½(c)
    pos = _positions(f, members, table)  # [c, K, H]: column of each member in f; K: none
    r_or_absent = F.pad(r, (0, 1))  # [c, K+1]: column K (absent from f) is never in R(i)
    in_r = r_or_absent.gather(1, pos.flatten(1)).view_as(pos) & in_half_r  # R½(c) ∩ R(i)
    size = in_half_r.sum(dim=-1).double()  # [c, K] |R½(c)|; float64 as the authors' 2/3·len
    accept = r & (in_r.sum(dim=-1).double() > alpha * size)  # c ∈ R(i) passing the alpha test
    added = accept[:, :, None] & in_half_r  # [c, K, H]: members of every accepted R½(c)
    hits = torch.zeros(r.shape[0], K + 1, dtype=torch.long, device=f.device)
    hits.scatter_add_(1, pos.flatten(1), added.flatten(1).long())  # [c, K+1] OR by counting
    flagged = r | (hits[:, :K] > 0)
    return members, flagged, added & (pos == K)


def _positions(f: torch.Tensor, members: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Column of each member [c, K, H] in its row of f [c, K] (rows hold distinct indices), K
    where it is absent. A lookup in table [≥ c, Ng], all K on entry and again on return: only
    the c·K entries written are reset, so a chunk costs O(c·K·H), not O(c·Ng)."""
    c, K = f.shape
    n = table.shape[1]
    flat = table.view(-1)  # [rows · Ng]: entry (row, item) at row · Ng + item
    rows = torch.arange(c, device=f.device)
    written = (rows[:, None] * n + f).view(-1)  # [c·K]
    flat.index_copy_(0, written, torch.arange(K, dtype=table.dtype, device=f.device).repeat(c))
    pos = flat.index_select(0, (rows[:, None, None] * n + members).view(-1))  # [c·K·H]
    flat.index_fill_(0, written, K)
    return pos.view_as(members).long()  # [c, K, H]


def _rank_outside(qx: torch.Tensor, gx: torch.Tensor, members: torch.Tensor,
                  outside: torch.Tensor, keep: int) -> torch.Tensor:
    """Expanded members outside the forward list, per row, in the module's order: [c, keep]
    gallery indices, −1 where a row has fewer. Their similarities are row-wise dot products."""
    rows, a, b = outside.nonzero(as_tuple=True)  # [P] each
    n_gallery = len(gx)
    pairs = torch.unique(rows * n_gallery + members[rows, a, b])  # sorted by (row, index)
    rows, items = pairs // n_gallery, pairs % n_gallery  # [P'] each, duplicates gone
    sims = _row_dots(qx, rows, gx, items)  # [P']
    order = sims.argsort(descending=True, stable=True)  # similarity desc, index asc ...
    rows, items = rows[order], items[order]
    order = rows.argsort(stable=True)  # ... within each row
    rows, items = rows[order], items[order]
    rank = torch.arange(len(rows), device=rows.device) - torch.searchsorted(rows, rows)
    kept = rank < keep
    extra = torch.full((len(qx), keep), -1, dtype=torch.long, device=qx.device)
    extra[rows[kept], rank[kept]] = items[kept]
    return extra


def _row_dots(a: torch.Tensor, a_rows: torch.Tensor, b: torch.Tensor,
              b_rows: torch.Tensor) -> torch.Tensor:
    """⟨a[a_rows[p]], b[b_rows[p]]⟩ for every pair p: [P] float32, gathered in blocks (never a
    matrix). Summed in float64 and rounded to float32: the same value for the same two vectors
    wherever they sit, so exact duplicates tie (the loop reference does the same)."""
    out = torch.empty(len(a_rows), device=a.device)
    for start in range(0, len(a_rows), _PAIR_CHUNK):
        p = slice(start, start + _PAIR_CHUNK)
        pa, pb = a[a_rows[p]].double(), b[b_rows[p]].double()  # [p, D] each
        out[p] = (pa * pb).sum(dim=1).float()  # [p]
    return out


def _pick(f: torch.Tensor, flagged: torch.Tensor, extra: torch.Tensor, keep: int) -> torch.Tensor:
    """First `keep` of: flagged forward items (forward order), then `extra` (its order), then
    unflagged forward items (the padding with plain nearest neighbours). Returns [c, keep]."""
    K = f.shape[1]
    col = torch.arange(K, device=f.device)
    slot = torch.arange(keep, device=f.device)
    priority = torch.cat([torch.where(flagged, col, K + keep + col),  # [c, K]
                          torch.where(extra >= 0, K + slot, 2 * (K + keep))], dim=1)  # [c, K+keep]
    order = priority.topk(keep, dim=1, largest=False).indices  # ascending; K ≥ keep real ones
    return torch.cat([f, extra], dim=1).gather(1, order)



def _check_arguments(k: int, alpha: float, batch: int, batch_range: tuple[int, int], n: int,
                     what: str) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer ≥ 1, got {k!r} (the authors use 30).")
    if n <= k:
        raise ValueError(f"k={k} needs more than k {what} (at least {k + 1}), got {n}: pass "
                         f"k ≤ {max(n - 1, 1)}.")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r} (the authors use 2/3).")
    low, high = batch_range
    if not isinstance(batch, (int, np.integer)) or not low <= batch <= high:
        raise ValueError(f"batch must satisfy {low} ≤ batch ≤ {high} (k={k}), got {batch!r}: "
                         f"pass a batch in that range or a larger k.")

