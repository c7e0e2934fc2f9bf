"""Attention figures build from a small synthetic record and carry the expected traces."""

import math

import numpy as np
import pytest
import torch

from ibdml.attention import distribution, summarise
from ibdml.mpn import attention_weights
from ibdml.viz import attention_heatmap, kl_curves, node_attention_bars, same_class_curves

E, L, P, H, N = 3, 2, 2, 2, 6


@pytest.fixture(scope="module")
def record():
    """[E, L, P, H, N, N] null-key attention sharpening over epochs; classes shuffled per probe."""
    torch.manual_seed(0)
    scores = torch.randn(E, L, P, H, N, N) * torch.arange(1, E + 1).view(E, 1, 1, 1, 1, 1)
    labels = torch.tensor([[2, 0, 1, 0, 2, 1], [0, 0, 0, 1, 1, 1]])
    return attention_weights(scores, null_key=True), labels


def hline_ys(fig):
    return sorted(s.y0 for s in fig.layout.shapes if s.y0 == s.y1)


def test_kl_curves_one_line_per_layer_head_with_uniform_and_collapsed_references(record):
    s = summarise(*record)
    fig = kl_curves(s)
    assert len(fig.data) == L * H and {t.name for t in fig.data} == {
        f"layer {l} · head {h}" for l in range(L) for h in range(H)}
    assert all(list(t.x) == [0, 1, 2] for t in fig.data)
    assert list(fig.data[L * H - 1].y) == [s["kl"][e][L - 1][H - 1] for e in range(E)]
    assert hline_ys(fig) == pytest.approx([0, math.log(N)])
    extra = kl_curves(summarise(*record, null_key_treatment="extra_bin"))
    assert hline_ys(extra) == pytest.approx([0, math.log(N + 1)])


def test_same_class_curves_show_the_uniform_level(record):
    s = summarise(*record)
    fig = same_class_curves(s)
    # probe 0: 2 of 6 nodes share each class, probe 1: 3 of 6 → mean 5/12
    assert len(fig.data) == L * H and hline_ys(fig) == pytest.approx([5 / 12])
    assert list(fig.data[0].y) == [s["same_class"][e][0][0] for e in range(E)]


def test_node_attention_bars_one_panel_per_epoch_n_bars_each(record):
    attn, labels = record
    node, probe = 2, 0  # class 1, shares it with node 5
    fig = node_attention_bars(attn, labels, layer=1, head=0, probe=probe, node=node)
    assert len(fig.data) == 3 * E  # itself, same class, other class per epoch
    for e in range(E):
        bars = [t for t in fig.data if t.yaxis == ("y" if e == 0 else f"y{e + 1}")]
        assert sum(len(t.x) for t in bars) == N
        by_kind = {t.name: [c[0] for c in t.customdata] for t in bars}
        assert by_kind == {"itself": [2], "same class": [5],
                           "other class": [1, 3, 0, 4]}  # other classes in class order
        assert [x for t in bars for x in t.x] == list(range(N))  # drawn in that order
        weights = {c[0]: w for t in bars for c, w in zip(t.customdata, t.y)}
        expected = distribution(attn[e, 1, probe, 0, node])
        assert [weights[j] for j in range(N)] == pytest.approx(expected.tolist())
    assert hline_ys(fig) == pytest.approx([1 / N] * E)
    assert list(fig.layout.xaxis.ticktext) == ["2", "5", "1", "3", "0", "4"]
    assert sum(t.showlegend is not False for t in fig.data) == 3  # one legend entry per kind


def test_node_attention_bars_picks_a_few_epochs_by_default_and_obeys_epochs():
    long = [torch.full((1, 1, 1, 4, 4), 0.25)] * 9
    labels = torch.tensor([[0, 0, 1, 1]])
    fig = node_attention_bars(long, labels, layer=0, head=0, probe=0, node=0)
    titles = [a.text.split(":")[0] for a in fig.layout.annotations if a.text.startswith("epoch")]
    assert titles == ["epoch 0", "epoch 2", "epoch 4", "epoch 6", "epoch 8"]
    chosen = node_attention_bars(long, labels, layer=0, head=0, probe=0, node=0, epochs=[3])
    assert len(chosen.data) == 3


def test_attention_heatmap_is_sorted_by_class_with_boundaries_and_hover(record):
    attn, labels = record
    fig = attention_heatmap(attn, labels, layer=0, head=1, probe=0, epoch=2)
    (heat,) = fig.data
    order = torch.argsort(labels[0], stable=True)  # nodes 1, 3 | 2, 5 | 0, 4
    assert order.tolist() == [1, 3, 2, 5, 0, 4]
    expected = distribution(attn[2, 0, 0, 1])[order][:, order]
    assert np.asarray(heat.z).shape == (N, N)
    np.testing.assert_allclose(np.asarray(heat.z), expected.numpy(), rtol=1e-6)
    boundaries = sorted({s.x0 for s in fig.layout.shapes if s.x0 == s.x1})
    assert boundaries == [1.5, 3.5] and len(fig.layout.shapes) == 4  # 2 vertical + 2 horizontal
    assert heat.text[0][2].startswith("source 1 (class 0) → target 2 (class 1)")
    assert list(fig.layout.xaxis.ticktext) == ["class 0", "class 1", "class 2"]
    fig.to_json()


def test_verdict_table_one_row_per_head_first_and_last_epoch(record):
    from ibdml.attention import edge_case_verdicts
    from ibdml.viz import verdict_table

    s = summarise(*record)
    table = verdict_table(edge_case_verdicts(s, epoch=0), edge_case_verdicts(s))
    lines = table.splitlines()
    assert lines[0].startswith("| layer · head | epoch 0 | epoch 2 |")
    assert len(lines) == 2 + L * H and lines[2].startswith("| 0 · 0 |")
