"""MPN at inference: refine each sample's embedding on its reciprocal k-NN graph (paper claim 2;
docs/method.md §8.1, §8.2). The graphs come from `neighbourhoods.py`; here the trained MPN runs on
them, one call per chunk of graphs, and each sample keeps its own output (position 0).

`refine` runs the MPN where its parameters are, in fp32 without autocast: put the MPN on the GPU
to refine there. The refined feature is the last MPN layer's output (space="last", the default),
or the concatenation of all layers' outputs (space="concat") for an MPN trained with
mpn_concat_layers; for a non-concatenating MPN the two are the same (docs/method.md §8.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ibdml.embeddings import as_embeddings
from ibdml.mpn import MessagePassingNetwork
from ibdml.neighbourhoods import reciprocal_neighbourhoods, reciprocal_neighbourhoods_query_gallery

SPACES = ("last", "concat")  # the refined feature: last layer, or all layers concatenated


def refine(mpn: MessagePassingNetwork, embeddings: torch.Tensor, neighbourhoods: torch.Tensor,
           *, chunk: int = 1024, space: str = "last") -> torch.Tensor:
    """Refined features of every sample: the MPN output at position 0 of its graph.

    Args:
        embeddings: [N, D] L2-normalised backbone embeddings (what the MPN was trained on).
        neighbourhoods: [N, batch] int64 rows of `reciprocal_neighbourhoods` (position 0 = i).
        chunk: graphs per MPN call; memory grows with chunk · batch.
        space: "last" (default): the last layer's output, [N, D]; "concat": `MPNOutput.features`
            as the MPN gives it, all L layers concatenated ([N, L·D]) when it was trained with
            mpn_concat_layers, else the last layer's (the same as "last").

    Returns:
        [N, D] (or [N, L·D]) float32, L2-normalised pre-BN MPN features, on the embeddings'
        device. The MPN runs in eval mode (no dropout) under no_grad; its train/eval mode is
        restored afterwards.
    """
    x = as_embeddings(embeddings, "embeddings")
    return _refine(mpn, x, _check_indices(neighbourhoods, len(x), len(x), "embeddings"), chunk,
                   space)


def refine_queries(mpn: MessagePassingNetwork, queries: torch.Tensor, gallery: torch.Tensor,
                   neighbourhoods: torch.Tensor, *, chunk: int = 1024,
                   space: str = "last") -> torch.Tensor:
    """In-Shop (docs/method.md §8.2): graph = [query] + its gallery neighbours; returns the refined
    queries [Nq, F], L2-normalised (space as `refine`). The gallery keeps its backbone features,
    as the authors'."""
    q, g = as_embeddings(queries, "queries"), as_embeddings(gallery, "gallery")
    nbrs = _check_indices(neighbourhoods, len(q), len(g), "gallery")
    own = torch.arange(len(q), device=nbrs.device)[:, None]  # [Nq, 1]
    # Nodes: queries, then gallery items [Nq + Ng, D]; graphs index into them [Nq, batch].
    return _refine(mpn, torch.cat([q, g]), torch.cat([own, len(q) + nbrs], dim=1), chunk, space)


def refine_query_gallery(mpn: MessagePassingNetwork, queries: torch.Tensor, gallery: torch.Tensor,
                         *, k: int = 30, batch: int = 4, alpha: float = 2 / 3,
                         gallery_space: str = "backbone",
                         space: str = "last") -> tuple[torch.Tensor, torch.Tensor]:
    """MPN at inference for a query/gallery benchmark (In-Shop): (query features [Nq, F],
    gallery features [Ng, D or F]) to compare with each other.

    Queries are refined on [query + its batch−1 reciprocal gallery neighbours]. gallery_space
    says what they are compared with: 'backbone' (default, as the authors: refined queries
    against backbone gallery features, two different spaces) or 'refined' (each gallery item is
    refined too, on its own gallery-only reciprocal neighbourhood of `batch` nodes, so both
    sides are MPN outputs). space: the refined feature, as `refine` (with "concat" and a
    concatenating MPN the refined queries are wider than backbone gallery features: use
    gallery_space "refined")."""
    if gallery_space not in ("backbone", "refined"):
        raise ValueError(f"gallery_space {gallery_space!r}: use 'backbone' or 'refined'")
    hoods = reciprocal_neighbourhoods_query_gallery(queries, gallery, k, batch, alpha)
    refined_queries = refine_queries(mpn, queries, gallery, hoods, space=space)
    if gallery_space == "backbone":
        if refined_queries.shape[1] != gallery.shape[1]:  # space "concat", L > 1 layers
            raise ValueError(
                f"space 'concat' gives refined queries of width {refined_queries.shape[1]}, "
                f"the backbone gallery has {gallery.shape[1]}: use gallery_space='refined' "
                "(both sides MPN outputs) or space='last'.")
        return refined_queries, as_embeddings(gallery, "gallery")
    return refined_queries, refine(mpn, gallery, reciprocal_neighbourhoods(gallery, k, batch, alpha),
                                   space=space)


def _refine(mpn: MessagePassingNetwork, nodes: torch.Tensor, graphs: torch.Tensor,
            chunk: int, space: str) -> torch.Tensor:
    """MPN over nodes[graphs] in chunks of graphs; position 0 of each, normalised: [B, F]."""
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1 graphs per MPN call, got {chunk}.")
    if space not in SPACES:
        raise ValueError(f"space {space!r}: use 'last' (the last MPN layer's output) or 'concat' "
                         "(all layers' outputs concatenated).")
    # MPNOutput.features is [.., L·D] for a concatenating MPN, its layers in order: the last
    # layer's output is the last D columns (D = the nodes' width, which every layer keeps).
    width = nodes.shape[1] if space == "last" else None
    mpn_device = next(mpn.parameters()).device
    # Moved once, then gathered where the MPN runs (no copies on the CPU). fp32, no autocast:
    # SOP's 60,502 graphs of 7 nodes are ~3 TFLOP, a fraction of a second at a GPU's fp32 rate
    # (estimated, not measured), and bf16 would add noise to features that are ranked next.
    on_mpn, graphs = nodes.to(mpn_device), graphs.to(mpn_device)
    was_training = mpn.training
    mpn.eval()  # no dropout (docs/method.md §8.1 step 4)
    try:
        with torch.no_grad():  # on_mpn[graphs[c]]: [c, batch] → [c, batch, D]
            features = [mpn(on_mpn[graphs[s : s + chunk]], return_logits=False).features[:, 0]
                        for s in range(0, len(graphs), chunk)]  # [c, L·D or D] each
    finally:
        mpn.train(was_training)
    features = torch.cat(features)  # [B, L·D or D]
    if width is not None:
        features = features[:, -width:]  # [B, D]: the last layer
    return F.normalize(features, dim=1).to(nodes.device)


def _check_indices(idx: torch.Tensor, rows: int, size: int, of: str) -> torch.Tensor:
    idx = torch.as_tensor(idx)
    if idx.ndim != 2 or len(idx) != rows or idx.is_floating_point() or idx.numel() == 0:
        raise ValueError(f"neighbourhoods must be a non-empty integer [{rows}, batch] matrix (one "
                         f"row per graph), got shape {tuple(idx.shape)} and dtype {idx.dtype}.")
    if not (0 <= int(idx.min()) and int(idx.max()) < size):
        raise ValueError(f"neighbourhoods hold indices outside [0, {size}) of the {of}: build "
                         f"them from the same {of} with reciprocal_neighbourhoods*.")
    return idx.long()
