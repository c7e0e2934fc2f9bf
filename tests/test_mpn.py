"""The MPN: explicit attention with the authors' null key, equivariance, shapes."""

import math

import pytest
import torch

from ibdml.mpn import MessagePassingNetwork, MultiHeadDotProductAttention, attention_weights


def make_mpn(layers=2, heads=4, null_key=True, concat=False, dim=32, classes=5):
    torch.manual_seed(0)
    return MessagePassingNetwork(dim, classes, layers=layers, heads=heads, dropout=0.1,
                                 null_key=null_key, concat_layers=concat).eval()


def test_null_key_rows_sum_below_one_and_softmax_rows_to_one():
    scores = torch.randn(2, 3, 7, 7) * 3
    null = attention_weights(scores, null_key=True)
    plain = attention_weights(scores, null_key=False)
    assert (null.sum(-1) < 1).all() and (null > 0).all()
    torch.testing.assert_close(plain.sum(-1), torch.ones(2, 3, 7))
    # α = exp(s) / (1 + Σ exp(s)) exactly (docs/method.md §4.3)
    torch.testing.assert_close(null, scores.exp() / (1 + scores.exp().sum(-1, keepdim=True)))


def test_attention_matches_hand_computed_three_node_example():
    att = MultiHeadDotProductAttention(dim=2, heads=1, dropout=0.0, null_key=True).eval()
    with torch.no_grad():
        for lin in (att.q, att.k, att.v, att.out):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # [1, 3, 2]
    msg, attn = att(h)
    # scores s_ij = <h_i, h_j> / sqrt(2); row 0: [1, 0, 1] / sqrt(2)
    s = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 2]]) / math.sqrt(2)
    expected = s.exp() / (1 + s.exp().sum(1, keepdim=True))
    torch.testing.assert_close(attn[0, 0], expected)
    torch.testing.assert_close(msg[0], expected @ h[0])


@pytest.mark.parametrize("null_key", [True, False])
def test_permutation_equivariance(null_key):
    mpn = make_mpn(null_key=null_key)
    x = torch.nn.functional.normalize(torch.randn(1, 9, 32), dim=-1)
    perm = torch.randperm(9)
    with torch.no_grad():
        a, b = mpn(x, return_attention=True), mpn(x[:, perm], return_attention=True)
    torch.testing.assert_close(b.features, a.features[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.logits, a.logits[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.attention, a.attention[..., perm, :][..., perm],
                               atol=1e-6, rtol=1e-5)


def test_shapes_attention_and_concat():
    mpn = make_mpn(layers=3, heads=4, concat=True)
    out = mpn(torch.randn(5, 7, 32), return_attention=True)  # 5 graphs of 7 nodes
    assert out.features.shape == (5, 7, 96) and out.logits.shape == (5, 7, 5)
    assert out.attention.shape == (3, 5, 4, 7, 7)
    assert mpn(torch.randn(1, 4, 32)).attention is None


def test_graphs_in_a_batch_do_not_talk():
    mpn = make_mpn()
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        together = mpn(x).features
        alone = mpn(x[1:]).features
    torch.testing.assert_close(together[1:], alone, atol=1e-5, rtol=1e-5)


def test_bn_neck_bias_frozen_and_classifier_init():
    mpn = make_mpn()
    assert not mpn.classifier.bn.bias.requires_grad
    assert mpn.classifier.fc.bias is None
    assert mpn.classifier.fc.weight.std() < 0.01


def test_features_without_logits_are_the_same():
    mpn = make_mpn()
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        full, bare = mpn(x), mpn(x, return_logits=False)
    assert bare.logits is None
    torch.testing.assert_close(full.features, bare.features)


def ablation_attention(mode, N=5, dim=8, heads=2):
    torch.manual_seed(0)
    att = MultiHeadDotProductAttention(dim, heads, dropout=0.3, null_key=True, mode=mode).eval()
    return att, torch.randn(1, N, dim)  # h [1, N, D]


def test_uniform_attention_gives_every_node_the_batch_mean_of_the_values():
    att, h = ablation_attention("uniform")
    with torch.no_grad():
        msg, attn = att(h)
        expected = att.out(att.v(h).mean(1, keepdim=True)).expand_as(msg)  # out(mean_j v_j)
    torch.testing.assert_close(msg, expected)
    torch.testing.assert_close(attn, torch.full((1, 2, 5, 5), 1 / 5))  # rows sum to 1: no null key


def test_self_attention_gives_each_node_its_own_value():
    att, h = ablation_attention("self")
    with torch.no_grad():
        msg, attn = att(h)
        expected = att.out(att.v(h))  # out(v_i) for every node i
    torch.testing.assert_close(msg, expected)
    torch.testing.assert_close(attn, torch.eye(5).expand(1, 2, 5, 5))


@pytest.mark.parametrize("mode", ["uniform", "self"])
def test_ablations_keep_the_parameter_set_and_stay_equivariant(mode):
    torch.manual_seed(0)
    dot = make_mpn()
    torch.manual_seed(0)
    ablation = MessagePassingNetwork(32, 5, layers=2, heads=4, dropout=0.1, null_key=True,
                                     concat_layers=False, attention=mode).eval()
    assert [n for n, _ in ablation.named_parameters()] == [n for n, _ in dot.named_parameters()]
    x = torch.randn(1, 7, 32)
    perm = torch.randperm(7)
    with torch.no_grad():
        a, b = ablation(x, return_attention=True), ablation(x[:, perm], return_attention=True)
    torch.testing.assert_close(b.features, a.features[:, perm], atol=1e-5, rtol=1e-5)
    assert a.attention.shape == (2, 1, 4, 7, 7)


def test_unknown_attention_mode_is_refused():
    with pytest.raises(ValueError, match="dot"):
        MultiHeadDotProductAttention(8, 2, dropout=0.0, null_key=True, mode="mean")


def test_attention_scale_one_is_the_method_and_larger_scales_sharpen():
    torch.manual_seed(0)
    h = torch.randn(1, 9, 16)
    entropies = []
    for scale in (1.0, 4.0):
        torch.manual_seed(1)
        att = MultiHeadDotProductAttention(16, 2, 0.0, null_key=False, scale=scale).eval()
        with torch.no_grad():
            entropies.append(-torch.xlogy(att(h)[1], att(h)[1]).sum(-1).mean())
        if scale == 1.0:  # unchanged: softmax(q·k / √(D/H)) by hand
            q = att.q(h).view(1, 9, 2, 8).transpose(1, 2)
            k = att.k(h).view(1, 9, 2, 8).transpose(1, 2)
            torch.testing.assert_close(att(h)[1], (q @ k.transpose(-2, -1) / math.sqrt(8))
                                       .softmax(-1))
    assert entropies[1] < entropies[0]
