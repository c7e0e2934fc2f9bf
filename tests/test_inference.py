"""MPN at inference (docs/method.md §8.1, §8.2): batched refinement on reciprocal
neighbourhoods equals one MPN call per graph, for a set against itself and for In-Shop's queries
against a gallery. The neighbourhoods themselves are tested in test_neighbourhoods.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench_scripts import load_bench
from ibdml.inference import refine, refine_queries, refine_query_gallery
from ibdml.mpn import MessagePassingNetwork
from ibdml.neighbourhoods import reciprocal_neighbourhoods, reciprocal_neighbourhoods_query_gallery

bench = load_bench("mpn_inference")  # its embedding generators


def make_mpn(dim: int = 16, concat: bool = False) -> MessagePassingNetwork:
    torch.manual_seed(0)
    return MessagePassingNetwork(dim, 5, layers=2, heads=2, dropout=0.1, null_key=True,
                                 concat_layers=concat)


def one_graph_at_a_time(mpn: MessagePassingNetwork, graphs: list[torch.Tensor]) -> torch.Tensor:
    """The MPN output at position 0 of each graph [batch, D], one call each, normalised."""
    mpn.eval()
    with torch.no_grad():
        return F.normalize(torch.stack([mpn(g[None]).features[0, 0] for g in graphs]), dim=1)


@pytest.mark.parametrize("concat", [False, True])
def test_batched_refinement_equals_one_call_per_graph(concat):
    x = bench.clustered_embeddings(90, dim=16, seed=0)
    nbrs = reciprocal_neighbourhoods(x, k=8, batch=5)
    mpn = make_mpn(concat=concat).train()
    refined = refine(mpn, x, nbrs, chunk=32, space="concat")  # 3 chunks, the last one short
    assert mpn.training  # mode restored
    assert not refined.requires_grad and refined.dtype == torch.float32
    assert refined.shape == (90, 32 if concat else 16)
    want = one_graph_at_a_time(mpn, [x[row] for row in nbrs])  # eval: no dropout
    torch.testing.assert_close(refined, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(refined.norm(dim=1), torch.ones(90))
    # The graph matters: each sample with another sample's neighbours gets other features.
    others = torch.cat([nbrs[:, :1], nbrs[:, 1:].roll(1, dims=0)], dim=1)
    assert not torch.allclose(refine(mpn, x, others, space="concat"), refined, atol=1e-3)


def layers_by_hand(mpn: MessagePassingNetwork, graph: torch.Tensor) -> list[torch.Tensor]:
    """Each MPN layer's output at position 0 of one graph [batch, D], run layer by layer."""
    mpn.eval()
    with torch.no_grad():
        h, outputs = mpn.input_proj(graph[None]), []
        for layer in mpn.layers:
            h, _ = layer(h)
            outputs.append(h[0, 0])  # [D]
    return outputs


def test_refine_keeps_the_last_layer_by_default_and_the_concatenation_on_request():
    # A 2-layer MPN trained with mpn_concat_layers: its features are [layer 1 | layer 2].
    x = bench.clustered_embeddings(30, dim=16, seed=5)
    nbrs = reciprocal_neighbourhoods(x, k=6, batch=4)
    mpn = make_mpn(concat=True)
    by_hand = [layers_by_hand(mpn, x[row]) for row in nbrs]  # 30 × [layer 1, layer 2]
    last = F.normalize(torch.stack([layers[1] for layers in by_hand]), dim=1)  # [30, 16]
    both = F.normalize(torch.stack([torch.cat(layers) for layers in by_hand]), dim=1)  # [30, 32]
    torch.testing.assert_close(refine(mpn, x, nbrs), last, atol=1e-5, rtol=0)
    torch.testing.assert_close(refine(mpn, x, nbrs, space="concat"), both, atol=1e-5, rtol=0)
    # Without concatenation the two spaces are the same feature.
    plain = make_mpn(concat=False)
    torch.testing.assert_close(refine(plain, x, nbrs), refine(plain, x, nbrs, space="concat"))
    q, _ = refine_query_gallery(mpn, x[:5], x[5:], k=6, batch=4)  # the queries: last layer too
    assert q.shape == (5, 16)
    # concatenated queries [5, 32] cannot be compared with a backbone gallery [25, 16]
    with pytest.raises(ValueError, match="width 32, the backbone gallery has 16: use "
                                         "gallery_space='refined'"):
        refine_query_gallery(mpn, x[:5], x[5:], k=6, batch=4, space="concat")
    q, g = refine_query_gallery(mpn, x[:5], x[5:], k=6, batch=4, space="concat",
                                gallery_space="refined")
    assert q.shape == (5, 32) and g.shape == (25, 32)
    with pytest.raises(ValueError, match="space 'first': use 'last'"):
        refine(mpn, x, nbrs, space="first")


def test_refinement_does_not_depend_on_the_chunk():
    x = bench.clustered_embeddings(40, dim=16, seed=3)
    nbrs = reciprocal_neighbourhoods(x, k=6, batch=4)
    mpn = make_mpn()
    whole = refine(mpn, x, nbrs)
    torch.testing.assert_close(refine(mpn, x, nbrs, chunk=1), whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(refine(mpn, x.numpy(), nbrs.numpy(), chunk=7), whole,
                               atol=1e-5, rtol=0)


def test_refine_queries_uses_query_then_gallery_neighbours():
    queries = bench.clustered_embeddings(20, dim=16, seed=1)
    gallery = bench.clustered_embeddings(50, dim=16, seed=2)
    nbrs = reciprocal_neighbourhoods_query_gallery(queries, gallery, k=6, batch=4)
    mpn = make_mpn().train()
    refined = refine_queries(mpn, queries, gallery, nbrs, chunk=7)
    assert mpn.training
    want = one_graph_at_a_time(mpn, [torch.cat([queries[i, None], gallery[nbrs[i]]])
                                     for i in range(20)])  # [4, D] each
    torch.testing.assert_close(refined, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(refined.norm(dim=1), torch.ones(20))


def test_query_gallery_feature_spaces():
    queries = bench.clustered_embeddings(20, dim=16, seed=1)
    gallery = bench.clustered_embeddings(50, dim=16, seed=2)
    mpn = make_mpn().eval()
    q, g = refine_query_gallery(mpn, queries, gallery, k=6, batch=4)  # authors: backbone gallery
    nbrs = reciprocal_neighbourhoods_query_gallery(queries, gallery, k=6, batch=4)
    torch.testing.assert_close(q, refine_queries(mpn, queries, gallery, nbrs))
    torch.testing.assert_close(g, gallery)
    q2, g2 = refine_query_gallery(mpn, queries, gallery, k=6, batch=4, gallery_space="refined")
    torch.testing.assert_close(q2, q)
    torch.testing.assert_close(g2, refine(mpn, gallery, reciprocal_neighbourhoods(gallery, 6, 4)))
    assert not torch.allclose(g2, gallery)
    # alpha reaches the neighbourhoods: the same as building them with it.
    q3, _ = refine_query_gallery(mpn, queries, gallery, k=6, batch=3, alpha=0.5)
    loose = reciprocal_neighbourhoods_query_gallery(queries, gallery, k=6, batch=3, alpha=0.5)
    torch.testing.assert_close(q3, refine_queries(mpn, queries, gallery, loose))
    with pytest.raises(ValueError, match="gallery_space 'both': use 'backbone' or 'refined'"):
        refine_query_gallery(mpn, queries, gallery, k=6, gallery_space="both")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_refine_on_a_gpu_mpn_matches_the_cpu_and_returns_on_the_embeddings_device():
    x = bench.clustered_embeddings(60, dim=16, seed=4)
    nbrs = reciprocal_neighbourhoods(x, k=6, batch=4)
    mpn = make_mpn()
    on_cpu = refine(mpn, x, nbrs)
    on_gpu = refine(mpn.cuda(), x, nbrs)  # the MPN decides where it runs
    assert on_gpu.device == x.device
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=0)
    assert refine(mpn, x.cuda(), nbrs.cuda()).device.type == "cuda"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_refine_checks_neighbourhoods_and_chunk():
    x = bench.gaussian_embeddings(20, dim=16)
    mpn = make_mpn()
    with pytest.raises(ValueError, match=r"outside \[0, 20\) of the embeddings"):
        refine(mpn, x, torch.full((20, 3), 20))
    with pytest.raises(ValueError, match=r"outside \[0, 20\)"):
        refine(mpn, x, torch.full((20, 3), -1))
    with pytest.raises(ValueError, match=r"integer \[20, batch\] matrix \(one row per graph\)"):
        refine(mpn, x, torch.zeros(19, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="one row per graph"):
        refine(mpn, x, torch.zeros(20, 3))  # floats
    with pytest.raises(ValueError, match="chunk must be ≥ 1 graphs per MPN call, got 0"):
        refine(mpn, x, torch.zeros(20, 3, dtype=torch.long), chunk=0)


def test_refine_queries_checks_its_inputs():
    queries = bench.gaussian_embeddings(5, dim=16)
    gallery = bench.gaussian_embeddings(8, dim=16)
    mpn = make_mpn()
    with pytest.raises(ValueError, match=r"outside \[0, 8\) of the gallery"):
        refine_queries(mpn, queries, gallery, torch.full((5, 3), 8))
    with pytest.raises(ValueError, match=r"integer \[5, batch\] matrix"):
        refine_queries(mpn, queries, gallery, torch.zeros(4, 3, dtype=torch.long))
    nan = queries.clone()
    nan[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"queries has 1 of 5 rows with NaN or inf \(rows \[2\]\)"):
        refine_queries(mpn, nan, gallery, torch.zeros(5, 3, dtype=torch.long))
