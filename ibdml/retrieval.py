"""Exact k-nearest-neighbour search by inner product: cosine similarity on L2-normalised rows.

Everything downstream of a trained network searches through here: Recall@K and MAP@R
(`metrics.py`), the reciprocal neighbourhoods of the MPN at inference (`neighbourhoods.py`),
the retrieval gallery and the R@1 transitions (`evaluation.py`).

- Exact: every product is computed; on unit rows the inner-product ranking equals the Euclidean
  ranking of the authors' code (docs/method.md §7.2). Results agree with a float64 brute force
  except where two candidates' similarities differ by less than ~1e-6: float32 products round
  differently from float64 (and from block to block), so such near-ties may be ordered either
  way. The order among exactly tied similarities is unspecified.
- A query is removed from its own list BY INDEX, never by dropping column 0: with exact
  duplicate embeddings column 0 may hold the duplicate instead of the query (§7.2).
- Memory O(block · N + N · k): no N×N matrix (the authors' needs ~15 GB on SOP, §7.2).

Where the search runs: on the GPU `device.search_device` names (the queries' CUDA device, or the
current one in a process that already uses CUDA: a run with device: cpu never touches CUDA here,
nor asks faiss about GPUs), else on the CPU; then by what the machine has (docs/method.md §14),
never by timings:
    on a GPU, faiss-gpu sees one (k ≤ 2048)  faiss GPU IndexFlatIP       `_search_faiss_gpu`
    on a GPU, otherwise                      products + top-k there      `_search_blocks`
    CPU, a set searched against itself       symmetric faiss heap search `_self_search_heaps`
    CPU, queries → reference (or no faiss)   products + top-k            `_search_blocks`
Results come back on the queries' device. faiss is imported lazily, so a missing or broken faiss
never breaks `import ibdml`; only the CPU self-search needs it. On the GPU the products are
exact float32 as long as TF32 matmuls stay off (PyTorch's default). faiss's GPU resources are
made once per device and process (`_gpu_resources`).

Inputs may be torch tensors or numpy arrays; results are torch tensors.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ibdml.device import search_device
from ibdml.embeddings import as_embeddings, check_same_width

# faiss-gpu's k-selection stops at k = 2048 (faiss#2103); larger searches run with torch.
_FAISS_GPU_MAX_K = 2048
# Entries of one block of query × reference products in `_search_blocks`: 64 MiB of float32,
# reused from block to block (a fresh block each time costs page faults on the CPU).
_BLOCK_ENTRIES = 2**24
# Rows per block of the CPU self-search: [256, N] products, the heaps' updates in between.
_HEAP_BLOCK_ROWS = 256


def faiss_available() -> bool:
    """True when `import faiss` works. Imports lazily, so `import ibdml` never needs faiss."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def nearest_neighbours(queries, reference=None, k: int = 1, *,
                       exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product k-NN (cosine similarity when rows are L2-normalised).

    Args:
        queries: [Nq, D] floats (torch or numpy; computed in float32), finite.
        reference: [Nr, D], or None to search `queries` against itself.
        k: neighbours per query, 1 ≤ k ≤ Nr (Nr − 1 with `exclude_self`).
        exclude_self: only with reference=None: remove each query's own row BY INDEX, so an
            exact duplicate of the query stays in its list and the query itself never does.

    Returns:
        (similarities [Nq, k] float32, descending; indices [Nq, k] int64 into the reference),
        on the queries' device. Exact up to near-ties (module docstring).

    Example: three points on the unit circle at 0°, 10° and 90°:
        >>> x = torch.tensor([[1.0, 0.0], [0.985, 0.174], [0.0, 1.0]])
        >>> nearest_neighbours(x, k=1, exclude_self=True)[1].ravel().tolist()
        [1, 0, 1]
    """
    queries = as_embeddings(queries, "queries")
    if reference is not None:
        if exclude_self:
            raise ValueError(
                "exclude_self=True only applies to a self-search: pass reference=None to search "
                "`queries` against itself, or exclude_self=False for a separate reference set."
            )
        reference = as_embeddings(reference, "reference")
        check_same_width(queries, reference, "queries", "reference")
    _check_k(k, len(queries if reference is None else reference), exclude_self)
    if reference is None and search_device(queries.device).type == "cpu" and faiss_available():
        return _self_search_heaps(queries, k, exclude_self)
    own = torch.arange(len(queries), device=queries.device) if exclude_self else None
    return _search(queries, queries if reference is None else reference, k, own)


def nearest_neighbours_of_rows(x, rows, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest rows of x to each of x[rows], each query's own row excluded BY INDEX.

    For a few queries drawn from a set (a retrieval gallery): Q × N products, not N × N. With
    rows = all of x it equals `nearest_neighbours(x, k=k, exclude_self=True)`.

    Args:
        x: [N, D] floats (torch or numpy).
        rows: [Q] integer row indices into x (torch, numpy or a list); repeats are allowed.
        k: 1 ≤ k ≤ N − 1.

    Returns:
        (similarities [Q, k] float32, descending; indices [Q, k] int64 into x), on x's device.

    Example: the nearest other point of the point at 10° is the one at 0°:
        >>> x = torch.tensor([[1.0, 0.0], [0.985, 0.174], [0.0, 1.0]])
        >>> nearest_neighbours_of_rows(x, [1], k=2)[1].tolist()
        [[0, 2]]
    """
    x = as_embeddings(x, "x")
    rows = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows)
    if rows.ndim != 1 or len(rows) == 0 or rows.is_floating_point() or rows.dtype == torch.bool:
        raise ValueError(f"rows must be a non-empty 1-D list of integer row indices, got shape "
                         f"{tuple(rows.shape)} and dtype {rows.dtype}.")
    rows = rows.to(device=x.device, dtype=torch.int64)
    if int(rows.min()) < 0 or int(rows.max()) >= len(x):
        raise ValueError(f"rows must index x's {len(x)} rows (0 to {len(x) - 1}), got "
                         f"{int(rows.min())} to {int(rows.max())}.")
    _check_k(k, len(x), exclude_self=True)
    return _search(x[rows], x, k, own=rows)


def _check_k(k: int, n_reference: int, exclude_self: bool) -> None:
    available = n_reference - int(exclude_self)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer ≥ 1, got {k!r}.")
    if k > available:
        why = " after excluding each query itself" if exclude_self else ""
        raise ValueError(
            f"k={k} neighbours asked for, but only {available} reference rows are available{why}: "
            f"use k ≤ {available} or a larger reference set."
        )


# ---------------------------------------------------------------------------------------------
# Queries against a reference: on the GPU, or in blocks on the CPU
# ---------------------------------------------------------------------------------------------


def _search(queries: torch.Tensor, reference: torch.Tensor, k: int,
            own: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest reference rows of each query; own [Nq] (or None): the index in `reference` of
    each query's own row, excluded. Runs where `search_device` says: faiss-gpu is asked about
    GPUs only when that is a CUDA device."""
    home, device = queries.device, search_device(queries.device)
    if device.type == "cuda" and _faiss_gpu_usable(k + int(own is not None)):
        sims, idx = _search_faiss_gpu(queries, reference, k, own, device.index)
    else:
        own = None if own is None else own.to(device)
        sims, idx = _search_blocks(queries.to(device), reference.to(device), k, own)
    return sims.to(home), idx.to(home)


def _search_blocks(queries: torch.Tensor, reference: torch.Tensor, k: int,
                   own: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of query rows: products Q Rᵀ [c, Nr] into one reused buffer, each query's own
    column (own [Nq], or None) set to -inf BY INDEX, then the block's top-k. Any device."""
    n_ref = len(reference)
    rows = max(1, min(len(queries), _BLOCK_ENTRIES // n_ref))
    buffer = torch.empty(rows * n_ref, device=queries.device)
    sims = torch.empty(len(queries), k, device=queries.device)
    idx = torch.empty(len(queries), k, dtype=torch.int64, device=queries.device)
    for start in range(0, len(queries), rows):
        stop = min(start + rows, len(queries))
        block = buffer[: (stop - start) * n_ref].view(stop - start, n_ref)
        torch.mm(queries[start:stop], reference.T, out=block)  # [c, Nr]
        if own is not None:
            block[torch.arange(stop - start, device=block.device), own[start:stop]] = -torch.inf
        sims[start:stop], idx[start:stop] = block.topk(k, dim=1)
    return sims, idx


def _faiss_gpu_usable(k: int) -> bool:
    """faiss-gpu is importable and really sees a GPU, and k is within its k-selection limit.
    faiss-gpu imports on CPU-only machines too, where it counts no GPU; faiss-cpu has
    get_num_gpus too and answers 0."""
    if k > _FAISS_GPU_MAX_K or not faiss_available():
        return False
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _search_faiss_gpu(queries: torch.Tensor, reference: torch.Tensor, k: int,
                      own: torch.Tensor | None, gpu: int) -> tuple[torch.Tensor, torch.Tensor]:
    """faiss GPU IndexFlatIP on CUDA device `gpu`; with `own`, k + 1 neighbours and then the own
    index removed."""
    import faiss

    # On the GPU torch uses, not spread over every GPU (pytorch-metric-learning#292).
    index = faiss.index_cpu_to_gpu(_gpu_resources(gpu), gpu, faiss.IndexFlatIP(queries.shape[1]))
    index.add(reference.cpu().numpy())
    sims, idx = index.search(queries.cpu().numpy(), k + int(own is not None))
    sims, idx = torch.from_numpy(sims), torch.from_numpy(idx).to(torch.int64)
    return (sims, idx) if own is None else _drop_own_index(sims, idx, own.cpu())


# Process-level state, on purpose (the only state here that outlives a call): each
# StandardGpuResources reserves pinned host memory and up to 1.5 GiB of GPU scratch memory outside
# torch's allocator, so one made per search would reserve it again for every evaluation of every
# epoch. faiss shares one object between the indexes of a device; ibdml searches one at a time, as
# faiss requires of it. Kept until the process ends; tests clear it with
# `_gpu_resources.cache_clear()`.
@functools.lru_cache(maxsize=None)
def _gpu_resources(gpu: int):
    """faiss's GPU resources for CUDA device `gpu`: made on first use, then the same object."""
    import faiss

    return faiss.StandardGpuResources()


def _drop_own_index(sims: torch.Tensor, idx: torch.Tensor,
                    own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From (k+1)-NN lists [Nq, k+1], remove each query's own index own [Nq]; [Nq, k] remain.

    When the own index is missing (several exact duplicates tied ahead of it), drop the last
    column instead: every remaining entry is then a genuine other row.
    """
    is_own = idx == own[:, None]  # [Nq, k+1], at most one True per row
    is_own[~is_own.any(dim=1), -1] = True
    keep = ~is_own  # exactly k True per row; boolean indexing keeps each row's order
    k = idx.shape[1] - 1
    return sims[keep].view(-1, k), idx[keep].view(-1, k)


# ---------------------------------------------------------------------------------------------
# A set against itself on the CPU: each pair's product once
# ---------------------------------------------------------------------------------------------


def _self_search_heaps(x: torch.Tensor, k: int,
                       exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-search of x [N, D] on the CPU that computes each pair's product once: half the FLOPs
    of a full X Xᵀ, with faiss's k-selection (one min-heap of k per row).

    Block [start, stop) is multiplied only by rows ≥ start: block = X[start:stop] X[start:]ᵀ
    [c, N − start]. Its rows go into the block's heaps (candidates among columns ≥ start); its
    columns past the block, transposed, go into every later row's heap (candidates among this
    block's rows). Each row's heap thus sees every other row exactly once, and holds its exact
    top-k at the end. The own index is masked BY INDEX (-inf never enters a heap).
    Returns (similarities [N, k] float32, descending; indices [N, k] int64).
    """
    import faiss

    n = len(x)
    chunk = min(_HEAP_BLOCK_ROWS, n)
    sims = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    heaps = faiss.float_minheap_array_t()  # keeps the k largest; its top is the smallest kept
    heaps.k, heaps.nh = int(k), n  # faiss takes a plain int, not a numpy integer
    heaps.val, heaps.ids = faiss.swig_ptr(sims), faiss.swig_ptr(idx)
    heaps.heapify()
    # Two reused buffers: a fresh block per chunk would cost page faults every time. torch
    # multiplies: numpy's OpenBLAS threads keep spinning after each product and slow faiss's heap
    # threads down (docs/architecture.md, "Optional dependencies: faiss").
    rows_buffer, columns_buffer = torch.empty(chunk * n), torch.empty(chunk * n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        c = stop - start
        block = rows_buffer[: c * (n - start)].view(c, n - start)
        torch.mm(x[start:stop], x[start:].T, out=block)  # [c, N − start]
        if exclude_self:
            block.fill_diagonal_(-torch.inf)  # (i, i): each query's own index, by index
        heaps.addn(n - start, faiss.swig_ptr(block.numpy()), start, start, c)
        if stop < n:  # later rows, against this block's rows
            later = columns_buffer[: (n - stop) * c].view(n - stop, c)
            later.copy_(block[:, c:].T)
            heaps.addn(c, faiss.swig_ptr(later.numpy()), start, stop, n - stop)
    heaps.reorder()  # each row's heap sorted: descending similarity
    return torch.from_numpy(sims), torch.from_numpy(idx)
