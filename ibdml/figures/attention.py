"""The attention figures (paper claim 3; docs/method.md §13.3): the KL-from-uniform curves per
head (the seed's Figure 1), the same-class share without the node itself against chance, the
self mass, one node's attention over epochs (the seed's Figure 2) and a probe batch's attention
matrix sorted by class; and the verdict table.

Each figure's data is computed once (`attention_data`) and drawn by plotly for notebooks, the
report and the explorer (`attention_plotly`), or by matplotlib for PNGs (`attention_matplotlib`).
Nothing here reads or writes a file: `attention_figures` returns every figure a run saves, and
the attention step writes them (with `ibdml.figures.figure_files`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib.figure import Figure

from ibdml.attention import AttentionRecord, epoch_numbers
from ibdml.figures import attention_matplotlib as static
from ibdml.figures import attention_plotly as interactive
from ibdml.figures.attention_data import (HeadCurves, Heatmap, NodeBars, heatmap_data,
                                          kl_curves_data, node_bars_data, same_class_curves_data,
                                          self_mass_curves_data)

# each figure's data → (its plotly renderer, its matplotlib renderer)
RENDERERS = {HeadCurves: (interactive.head_curves, static.head_curves),
             NodeBars: (interactive.node_bars, static.node_bars),
             Heatmap: (interactive.heatmap, static.heatmap)}

__all__ = ["HeadCurves", "Heatmap", "NodeBars", "attention_figures", "attention_heatmap",
           "heatmap_data", "kl_curves", "kl_curves_data", "node_attention_bars",
           "node_bars_data", "same_class_curves", "same_class_curves_data", "self_mass_curves",
           "self_mass_curves_data", "verdict_table"]


def kl_curves(summary: dict) -> go.Figure:
    """KL from uniform per head over epochs, from `attention.summarise` (interactive)."""
    return interactive.head_curves(kl_curves_data(summary))


def same_class_curves(summary: dict) -> go.Figure:
    """Same-class share per head over epochs, the node itself left out, against chance
    ((n_same − 1)/N), from `attention.summarise`."""
    return interactive.head_curves(same_class_curves_data(summary))


def self_mass_curves(summary: dict) -> go.Figure:
    """Attention on the node itself per head over epochs (1/N uniform, 1 self only)."""
    return interactive.head_curves(self_mass_curves_data(summary))


def node_attention_bars(attention_by_epoch: AttentionRecord, labels: torch.Tensor | np.ndarray,
                        *, layer: int, head: int, probe: int, node: int,
                        epochs: Sequence[int] | None = None) -> go.Figure:
    """One node's attention over its batch, one panel per epoch (default: up to 5 spread over
    training): itself hatched, its class green, the other classes blue-grey in class order,
    uniform 1/N grey dashed; each panel title gives the row's null mass and same-class share."""
    return interactive.node_bars(node_bars_data(attention_by_epoch, labels, layer=layer,
                                                head=head, probe=probe, node=node,
                                                epochs=epochs))


def attention_heatmap(attention_by_epoch: AttentionRecord, labels: torch.Tensor | np.ndarray,
                      *, layer: int, head: int, probe: int, epoch: int) -> go.Figure:
    """A probe batch's N × N attention at `epoch` (row = source node, renormalised), nodes sorted
    by class, white lines between classes; hover names source/target node and class, the weight,
    the raw α and the row's null mass."""
    return interactive.heatmap(heatmap_data(attention_by_epoch, labels, layer=layer, head=head,
                                            probe=probe, epoch=epoch))


def attention_figures(summary: dict, attention_by_epoch: AttentionRecord,
                      labels: torch.Tensor | np.ndarray, *, layer: int, head: int, probe: int,
                      node: int) -> dict[str, tuple[go.Figure, Figure]]:
    """The five attention figures a run saves, {file stem: (plotly figure, matplotlib figure)},
    each pair drawn from one computation of its data: attention_kl, attention_same_class (the
    node itself left out), attention_self, attention_node (`node` at up to 5 epochs) and
    attention_heatmap (the last recorded epoch)."""
    view = dict(layer=layer, head=head, probe=probe)
    last = epoch_numbers(attention_by_epoch)[-1]
    data = {
        "attention_kl": kl_curves_data(summary),
        "attention_same_class": same_class_curves_data(summary),
        "attention_self": self_mass_curves_data(summary),
        "attention_node": node_bars_data(attention_by_epoch, labels, node=node, **view),
        "attention_heatmap": heatmap_data(attention_by_epoch, labels, epoch=last, **view)}
    return {stem: tuple(draw(d) for draw in RENDERERS[type(d)]) for stem, d in data.items()}


def verdict_table(start: dict, end: dict) -> str:
    """Markdown: each layer/head's edge-case verdict (`attention.edge_case_verdicts`) before
    training and at the end, with its KL, effective nodes, same-class mass without the node itself
    against chance ((n_same − 1)/N) and self mass."""
    lines = [f"| layer · head | epoch {start['epoch']} | epoch {end['epoch']} | "
             "KL (share of log N) | effective nodes | same-class mass without itself (chance) | "
             "self mass |", "|---|---|---|---|---|---|---|"]
    for s, e in zip(start["heads"], end["heads"]):
        lines.append(f"| {e['layer']} · {e['head']} | {s['verdict']} | **{e['verdict']}** | "
                     f"{s['kl']:.3f} → {e['kl']:.3f} ({e['kl_fraction']:.0%}) | "
                     f"{s['effective_nodes']:.1f} → {e['effective_nodes']:.1f} | "
                     f"{s['same_class_excl_self']:.3f} → {e['same_class_excl_self']:.3f} "
                     f"({e['same_class_excl_self_uniform']:.3f}) | "
                     f"{s['self_mass']:.3f} → {e['self_mass']:.3f} |")
    return "\n".join(lines)
