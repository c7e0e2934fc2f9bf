"""Attention figures build from a small synthetic record, carry the expected traces, and the
interactive (plotly) and static (matplotlib) versions show the same data."""

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ibdml.attention import distribution, edge_case_verdicts, summarise
from ibdml.figures import attention_matplotlib as static
from ibdml.figures import attention_plotly as interactive
from ibdml.figures.attention import (attention_figures, attention_heatmap, heatmap_data,
                                     kl_curves, kl_curves_data, node_attention_bars,
                                     node_bars_data, same_class_curves, same_class_curves_data,
                                     self_mass_curves, self_mass_curves_data, verdict_table)
from ibdml.mpn import attention_weights

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
    assert "log (N+1)" in extra.layout.annotations[0].text


def test_same_class_curves_leave_the_node_out_and_show_the_uniform_level(record):
    s = summarise(*record)
    fig = same_class_curves(s)
    # probe 0: 1 classmate of 6 nodes, probe 1: 2 of 6 → chance (n_same − 1)/N = 1/4
    assert len(fig.data) == L * H and hline_ys(fig) == pytest.approx([1 / 4])
    assert list(fig.data[0].y) == [s["same_class_excl_self"][e][0][0] for e in range(E)]
    assert "left out" in fig.layout.title.text


def test_self_mass_curves_between_uniform_and_self_only(record):
    s = summarise(*record)
    fig = self_mass_curves(s)
    assert len(fig.data) == L * H and hline_ys(fig) == pytest.approx([1 / N, 1])
    assert list(fig.data[-1].y) == [s["self_mass"][e][L - 1][H - 1] for e in range(E)]


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


def test_node_bars_panel_titles_give_null_mass_and_same_class_share(record):
    attn, labels = record
    data = node_bars_data(attn, labels, layer=0, head=1, probe=0, node=2, epochs=[1])
    row = attn[1, 0, 0, 1, 2]  # [N]
    same = float(distribution(row)[[2, 5]].sum())
    assert data.panel_titles == [f"epoch 1: null mass {1 - float(row.sum()):.2f}, same class "
                                 f"{same:.2f}"]
    assert data.top == pytest.approx(max(float(distribution(row).max()), 1 / N))


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


# ---- the two renderers draw the same data ------------------------------------------------------

def test_head_curves_plotly_lines_and_matplotlib_lines_are_the_same_data(record):
    s = summarise(*record)
    for data in (kl_curves_data(s), same_class_curves_data(s), self_mass_curves_data(s)):
        fig, png = interactive.head_curves(data), static.head_curves(data)
        (ax,) = png.axes
        curves = [line for line in ax.lines if len(line.get_xdata()) == E]
        assert len(curves) == len(fig.data) == L * H
        for trace, line, expected in zip(fig.data, curves, data.lines):
            assert list(trace.y) == list(line.get_ydata()) == expected.values
            assert list(trace.x) == list(line.get_xdata()) == data.epochs
            assert trace.name == line.get_label() == expected.name
        references = sorted(line.get_ydata()[0] for line in ax.lines if line not in curves)
        assert references == pytest.approx(hline_ys(fig))
        assert ax.get_ylim() == pytest.approx(tuple(fig.layout.yaxis.range))


def test_node_bars_plotly_heights_equal_matplotlib_heights(record):
    attn, labels = record
    data = node_bars_data(attn, labels, layer=1, head=1, probe=1, node=4)
    fig, png = interactive.node_bars(data), static.node_bars(data)
    axes = [ax for ax in png.axes if ax.patches]
    assert len(axes) == E
    for e, ax in enumerate(axes):
        heights = [bar.get_height() for bar in ax.patches]  # [N] in bar order
        traces = [t for t in fig.data if t.yaxis == ("y" if e == 0 else f"y{e + 1}")]
        plotted = dict(x for t in traces for x in zip(t.x, t.y))  # bar position → height
        assert heights == pytest.approx([plotted[i] for i in range(N)])
        assert heights == pytest.approx(data.weights[e].tolist())
        assert [bar.get_hatch() for bar in ax.patches] == ["//"] + [None] * (N - 1)
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == list(fig.layout.xaxis.ticktext)


def test_heatmap_plotly_z_equals_matplotlib_image(record):
    attn, labels = record
    data = heatmap_data(attn, labels, layer=1, head=0, probe=1, epoch=1)
    fig, png = interactive.heatmap(data), static.heatmap(data)
    image = png.axes[0].get_images()[0].get_array()  # [N, N]
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), np.asarray(image))
    assert [t.get_text() for t in png.axes[0].get_xticklabels()] == list(fig.layout.xaxis.ticktext)


def test_attention_figures_returns_each_saved_figure_in_both_libraries(record):
    attn, labels = record
    figures = attention_figures(summarise(*record), attn, labels, layer=0, head=1, probe=1,
                                node=3)
    assert list(figures) == ["attention_kl", "attention_same_class", "attention_self",
                             "attention_node", "attention_heatmap"]
    for fig, png in figures.values():
        assert isinstance(png, Figure) and fig.layout.title.text
    heat, heat_png = figures["attention_heatmap"]
    assert heat.layout.title.text.startswith(f"attention, epoch {E - 1}, layer 0, head 1")
    assert heat_png.axes[0].get_title() == heat.layout.title.text
    assert figures["attention_node"][0].layout.title.text.startswith("node 3 (class 1), layer 0")


def test_a_node_with_all_its_mass_on_the_null_key_draws_an_empty_panel(record):
    # an MPN trained with a 10x learning rate saturated this way on Glyphs: every row of a
    # head put its whole weight on the null key for an epoch (docs/results.md, the attention study)
    attn, labels = record
    attn = attn.clone()
    attn[1, 0, 1, 1] = 0.0  # epoch 1, layer 0, probe 1, head 1: every row all on the null key
    data = node_bars_data(attn, labels, layer=0, head=1, probe=1, node=3)
    assert data.panel_titles[1] == "epoch 1: null mass 1.00, nothing on the batch's nodes"
    assert np.isnan(data.weights[1]).all() and np.isfinite(data.weights[[0, 2]]).all()
    assert math.isfinite(data.top) and data.top >= 1 / N
    figures = attention_figures(summarise(attn, labels), attn, labels, layer=0, head=1,
                                probe=1, node=3)
    for fig, png in figures.values():
        png.canvas.draw()  # matplotlib refuses NaN axis limits only when it draws


def test_verdict_table_one_row_per_head_first_and_last_epoch(record):
    s = summarise(*record)
    table = verdict_table(edge_case_verdicts(s, epoch=0), edge_case_verdicts(s))
    lines = table.splitlines()
    assert lines[0].startswith("| layer · head | epoch 0 | epoch 2 |")
    assert len(lines) == 2 + L * H and lines[2].startswith("| 0 · 0 |")
    assert "without itself (chance)" in lines[0] and lines[0].endswith("self mass |")
