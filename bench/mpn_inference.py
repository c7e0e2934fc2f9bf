"""MPN at inference: vectorised reciprocal k-NN neighbourhoods (`ibdml.neighbourhoods`) against a
loop over samples in the authors' style (docs/method.md §8.1, §14), on random 512-d unit
embeddings.

    .venv/bin/python bench/mpn_inference.py           # timings at N = 5,924 / 20,000 / 60,502
    .venv/bin/python bench/mpn_inference.py --tiny    # seconds, no timing claims: the two agree
    .venv/bin/python bench/mpn_inference.py --sizes CUB --kinds clustered --json out.json

Times, per data kind (Gaussian: almost no reciprocal structure; clustered: points around N/10
centres, like real embeddings): the exact k-NN search alone (the floor), the vectorised
neighbourhoods (search included) and what they add after the search, the loop (N×N matrix,
full argsort, Python loop; N ≤ 20,000) and, at SOP size, `refine` with a random 1-layer, 2-head,
512-d MPN with SOP's 11,318 training classes (refine skips the classifier: at that size its
logits would cost more than the message passing).

--json OUT also writes the rows (seconds; "agree" where the loop ran) or, with --tiny, whether
everything agreed, with torch's version and thread count.

The loop functions here are the reference the tests compare against; they are not library code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from ibdml.inference import refine
from ibdml.mpn import MessagePassingNetwork
from ibdml.neighbourhoods import reciprocal_neighbourhoods, reciprocal_neighbourhoods_query_gallery
from ibdml.retrieval import nearest_neighbours

SIZES = {"CUB": 5_924, "20k": 20_000, "SOP": 60_502}
LOOP_MAX_N = 20_000  # the loop's N×N matrix and argsort need ~5 GB at 20,000
SOP_TRAIN_CLASSES = 11_318


# ---------------------------------------------------------------------------------------------
# The loop reference (docs/method.md §8.1 as the authors' code does it, with ibdml's tie order)
# ---------------------------------------------------------------------------------------------


def _similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full [Na, Nb] matrix of inner products, summed in float64 and rounded to float32 (as
    `ibdml.neighbourhoods` scores near-ties: exact duplicates then really tie). In row blocks, so the
    float64 temporary stays small; the float32 matrix is N×N, as the authors'."""
    out = np.empty((len(a), len(b)), dtype=np.float32)
    b64 = b.astype(np.float64)
    for start in range(0, len(a), 2048):
        out[start : start + 2048] = a[start : start + 2048].astype(np.float64) @ b64.T
    return out


def _full_ranking(sims: np.ndarray, own_first: bool) -> np.ndarray:
    """Full argsort of every row of sims [Nq, Nr]: similarity desc, index asc (stable); with
    own_first (a self-ranking) row i is moved to the front of its own list."""
    order = np.argsort(-sims, axis=1, kind="stable")  # [Nq, Nr]
    if own_first:
        for i, row in enumerate(order):
            p = int(np.flatnonzero(row == i)[0])
            row[1 : p + 1] = row[:p].copy()
            row[0] = i
    return order


def _reciprocal(i: int, forward: np.ndarray, backward_lists: np.ndarray, m: int) -> np.ndarray:
    """Members j of forward whose own m-list contains i."""
    return np.array([j for j in forward if i in backward_lists[j, :m]], dtype=np.int64)


def _expanded_set(i, reciprocal, half_ranking, k_half, alpha) -> np.ndarray:
    expanded = list(reciprocal)
    for c in reciprocal:
        half = half_ranking[c, : k_half + 1]
        half_reciprocal = _reciprocal(c, half, half_ranking, k_half + 1)
        if len(np.intersect1d(half_reciprocal, reciprocal)) > alpha * len(half_reciprocal):
            expanded.extend(half_reciprocal)
    return np.unique(np.array(expanded, dtype=np.int64))


def _nearest_first(expanded, sims_row, forward, keep, own=None) -> np.ndarray:
    """Sort the expanded set by (own first, similarity desc, index asc), keep `keep`, then pad
    with the plain forward list in its order."""
    not_own = expanded != own if own is not None else np.ones(len(expanded), dtype=bool)
    chosen = list(expanded[np.lexsort((expanded, -sims_row[expanded], not_own))][:keep])
    chosen += [j for j in forward if j not in chosen][: keep - len(chosen)]
    return np.array(chosen, dtype=np.int64)


def loop_neighbourhoods(x: np.ndarray, k: int = 30, batch: int = 7,
                        alpha: float = 2 / 3) -> np.ndarray:
    """Per-sample loop over a full N×N similarity matrix and its full argsort: [N, batch]."""
    x = np.asarray(x, dtype=np.float32)
    sims = _similarities(x, x)  # [N, N]
    ranking = _full_ranking(sims, own_first=True)  # [N, N]
    out = np.empty((len(x), batch), dtype=np.int64)
    for i in range(len(x)):
        forward = ranking[i, : k + 1]
        reciprocal = _reciprocal(i, forward, ranking, k + 1)
        expanded = _expanded_set(i, reciprocal, ranking, round(k / 2), alpha)
        out[i] = _nearest_first(expanded, sims[i], forward, batch, own=i)
    return out


def loop_neighbourhoods_query_gallery(q: np.ndarray, g: np.ndarray, k: int = 30, batch: int = 4,
                                      alpha: float = 2 / 3) -> np.ndarray:
    """The In-Shop loop (docs/method.md §8.2): [Nq, batch − 1] gallery indices."""
    q, g = np.asarray(q, dtype=np.float32), np.asarray(g, dtype=np.float32)
    qg = _similarities(q, g)  # [Nq, Ng]
    forward_ranking = _full_ranking(qg, own_first=False)  # queries → gallery
    backward_ranking = _full_ranking(qg.T, own_first=False)  # gallery → queries [Ng, Nq]
    gallery_ranking = _full_ranking(_similarities(g, g), own_first=True)  # gallery → gallery
    out = np.empty((len(q), batch - 1), dtype=np.int64)
    for i in range(len(q)):
        forward = forward_ranking[i, : k + 1]
        reciprocal = _reciprocal(i, forward, backward_ranking, k + 1)
        expanded = _expanded_set(i, reciprocal, gallery_ranking, round(k / 2), alpha)
        out[i] = _nearest_first(expanded, qg[i], forward, batch - 1)
    return out


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def gaussian_embeddings(n: int, dim: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=1)  # [n, dim]


def clustered_embeddings(n: int, dim: int = 512, seed: int = 0,
                         noise: float = 0.05) -> torch.Tensor:
    """Points around max(n // 10, 1) random unit centres (cosine to the centre ≈ 0.66)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(max(n // 10, 1), dim, generator=g), dim=1)
    labels = torch.randint(len(centres), (n,), generator=g)
    return F.normalize(centres[labels] + noise * torch.randn(n, dim, generator=g), dim=1)


DATA = {"gaussian": gaussian_embeddings, "clustered": clustered_embeddings}


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


def _seconds(fn, *args, repeat: int = 1, **kwargs):
    """Best wall time of `repeat` calls (seconds) and the last result."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def tiny(n: int = 300, k: int = 30) -> bool:
    """Both implementations on small sets (Gaussian, clustered, clustered with exact duplicates;
    §8.1 and In-Shop): True when all agree."""
    ok = True
    for kind in (*DATA, "duplicates"):
        x = DATA.get(kind, clustered_embeddings)(n, dim=64, seed=1)
        if kind == "duplicates":
            x[n // 2 :] = x[: n - n // 2]  # every point twice
        same = np.array_equal(reciprocal_neighbourhoods(x, k).numpy(), loop_neighbourhoods(x, k))
        q = x[: n // 3] + 0.01 * DATA["gaussian"](n // 3, dim=64, seed=2)  # queries near items
        q = F.normalize(q, dim=1)
        same_qg = np.array_equal(reciprocal_neighbourhoods_query_gallery(q, x, k).numpy(),
                                 loop_neighbourhoods_query_gallery(q, x, k))
        print(f"{kind:10s} N={n}: §8.1 agree={same}  In-Shop agree={same_qg}")
        ok &= same and same_qg
    return ok


def timings(kind: str, n: int, k: int = 30) -> dict:
    x = DATA[kind](n, seed=0)
    row = {"kind": kind, "n": n}
    reciprocal_neighbourhoods(x[:2000], k)  # warm-up: thread pools, allocator
    # Best of 3 for the vectorised parts (the loop runs once). The search is the one
    # `reciprocal_neighbourhoods` makes first; "after" reruns it with that search served from
    # a cache, so it times everything else exactly (re-searches of tied rows included).
    row["search"], found = _seconds(nearest_neighbours, x, k=k + 2, exclude_self=True, repeat=3)
    row["vectorised"], nbrs = _seconds(reciprocal_neighbourhoods, x, k, repeat=3)
    with mock.patch("ibdml.neighbourhoods.nearest_neighbours", _cached_search(found)):
        row["after"], _ = _seconds(reciprocal_neighbourhoods, x, k, repeat=3)
    if n <= LOOP_MAX_N:
        row["loop"], reference = _seconds(loop_neighbourhoods, x.numpy(), k)
        row["agree"] = bool(np.array_equal(nbrs.numpy(), reference))
    else:  # SOP size: refinement too, with the classifier a trained SOP model would have
        torch.manual_seed(0)
        mpn = MessagePassingNetwork(512, SOP_TRAIN_CLASSES, layers=1, heads=2, dropout=0.1,
                                    null_key=True, concat_layers=False)
        row["refine"], _ = _seconds(refine, mpn, x, nbrs)
    return row


def _cached_search(found: tuple[torch.Tensor, torch.Tensor]):
    """A stand-in for `nearest_neighbours` that answers the full self-search from `found`."""
    def search(queries, reference=None, k=1, *, exclude_self=False):
        if exclude_self and len(queries) == len(found[1]) and k == found[1].shape[1]:
            return found
        return nearest_neighbours(queries, reference, k, exclude_self=exclude_self)

    return search


def report(row: dict) -> str:
    text = (f"{row['kind']:9s} N={row['n']:>6,}: k-NN search {row['search']:5.2f} s; "
            f"neighbourhoods {row['vectorised']:5.2f} s (after the search {row['after']:4.2f} s "
            f"= {100 * row['after'] / row['search']:3.0f} % of it)")
    if "loop" in row:
        text += (f"; loop {row['loop']:6.2f} s: {row['loop'] / row['vectorised']:5.1f}× faster, "
                 f"agree={row['agree']}")
    if "refine" in row:
        text += (f"; refine {row['refine']:5.2f} s; end to end {row['vectorised'] + row['refine']:5.2f} s")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few hundred points, agreement only")
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--kinds", nargs="*", choices=list(DATA), default=list(DATA))
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    result = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "k": 30,
              "batch": 7, "tiny": args.tiny}
    if args.tiny:
        result["agree"] = tiny()
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, k = 30, batch = 7")
        result["rows"] = []
        for name in args.sizes:
            for kind in args.kinds:
                result["rows"].append(timings(kind, SIZES[name]))
                print(report(result["rows"][-1]), flush=True)
        result["agree"] = all(row.get("agree", True) for row in result["rows"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
