"""What the attention figures plot, computed once per figure (paper claim 3; docs/method.md
§13.3).

Each function here turns a summary (`ibdml.attention.summarise`) or a record of attention over
training into a small dataclass of plain numbers and strings. The interactive figures
(`attention_plotly`) and the static PNGs (`attention_matplotlib`) both draw from these, so the two
may differ in plotting library, never in what they show. Rows are renormalised over the N real
nodes (the null key's mass reported apart), as in docs/method.md §13.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.colors as plotly_colors
import torch

from ibdml.attention import (AttentionRecord, attention_at, class_sorted, distribution,
                             epoch_numbers, null_mass, spread_epochs, target_groups)

# One palette for both renderers: the node's own class green, other classes blue-grey, references
# (uniform attention, log N) grey; one colour per head, one line style per layer.
SAME_CLASS, OTHER_CLASS, REFERENCE = "#28aa50", "#788caa", "grey"
HEAD_COLOURS = tuple(plotly_colors.qualitative.Plotly)
KINDS = ("itself", "same class", "other class")


@dataclass
class Line:
    layer: int
    head: int
    values: list[float]  # [E] one value per summarised epoch

    @property
    def name(self) -> str:
        return f"layer {self.layer} · head {self.head}"

    @property
    def colour(self) -> str:
        return HEAD_COLOURS[self.head % len(HEAD_COLOURS)]


@dataclass
class Reference:
    """A dashed horizontal reference line, its label at the left or right end."""

    y: float
    text: str
    side: str = "left"  # "left" or "right"


@dataclass
class HeadCurves:
    """One curve per layer and head over the summarised epochs, with reference levels."""

    title: str
    y_title: str
    epochs: list[int]  # [E]
    lines: list[Line]  # L·H curves, layer-major
    references: list[Reference]
    y_range: tuple[float, float]
    x_title: str = "epoch (0 = before training)"


@dataclass
class NodeBars:
    """One node's renormalised attention row at a few epochs (the seed's Figure 2). Targets are in
    reading order: the node itself, its class, then the other classes in class order."""

    title: str
    epochs: list[int]  # [E] one panel each
    order: list[int]  # [N] target node at each bar position
    classes: list[int]  # [N] class of the target at each bar position
    kinds: dict[str, list[int]]  # kind (KINDS) → its bar positions
    weights: np.ndarray  # [E, N] renormalised row per panel, in bar order
    panel_titles: list[str]  # [E] null mass and same-class share of the row
    top: float  # y-axis top shared by every panel
    x_title: str = "target node (itself, its class, then the other classes)"

    @property
    def uniform(self) -> float:
        return 1 / len(self.order)

    def colours(self) -> list[str]:
        """[N] bar colours: green for the node's own class (itself included), else blue-grey."""
        other = set(self.kinds["other class"])
        return [OTHER_CLASS if i in other else SAME_CLASS for i in range(len(self.order))]


@dataclass
class Heatmap:
    """A probe batch's N × N attention at one epoch, rows renormalised, nodes sorted by class."""

    title: str
    weights: np.ndarray  # [N, N] renormalised rows, sources and targets sorted by class
    raw: np.ndarray  # [N, N] the recorded α, same order
    null: np.ndarray  # [N] each sorted row's null mass
    order: list[int]  # [N] sorted position → node
    classes: list[int]  # [N] class at each sorted position
    starts: list[int]  # sorted positions where a class starts

    @property
    def boundaries(self) -> list[float]:
        """Positions of the lines between classes."""
        return [k - 0.5 for k in self.starts[1:]]

    @property
    def ticks(self) -> tuple[list[float], list[str]]:
        """The middle of each class block and its label."""
        ends = self.starts[1:] + [len(self.order)]
        return ([(s + e - 1) / 2 for s, e in zip(self.starts, ends)],
                [f"class {self.classes[s]}" for s in self.starts])


def _head_lines(summary: dict, key: str) -> list[Line]:
    """summary[key][e][l][h] → one Line per layer and head."""
    return [Line(layer, head, [row[layer][head] for row in summary[key]])
            for layer in range(summary["layers"]) for head in range(summary["heads"])]


def kl_curves_data(summary: dict) -> HeadCurves:
    """KL from uniform per head over epochs (the seed's Figure 1): 0 = plain averaging, log N
    (log(N+1) with the null mass as an extra bin) = every node attends to one node only."""
    extra = summary["null_key_treatment"] == "extra_bin"
    top = summary["kl_max"]
    return HeadCurves(
        title="attention KL from uniform per head (mean over nodes and probes; "
              f"{'null mass as an extra bin' if extra else 'rows renormalised'})",
        y_title="KL(α_i ‖ uniform) [nats]", epochs=list(summary["epochs"]),
        lines=_head_lines(summary, "kl"),
        references=[Reference(top, f"log {'(N+1)' if extra else 'N'} = {top:.2f}: collapsed "
                                   "onto one node"),
                    Reference(0.0, "0: uniform (plain averaging)", "right")],
        y_range=(-0.05 * top, 1.12 * top))


def same_class_curves_data(summary: dict) -> HeadCurves:
    """Each head's attention on the node's own class, the node itself left out, over epochs,
    against the level uniform attention gives ((n_same − 1) / N, docs/method.md §13.3): above it,
    nodes attend to their classmates more than plain averaging does. Leaving the node out keeps a
    head that attends to itself alone (`self_mass_curves_data`) from reading as class-selective."""
    return HeadCurves(
        title="same-class share of attention per head, the node itself left out (mean over "
              "nodes and probes; rows renormalised over the N nodes)",
        y_title="same-class mass without itself", epochs=list(summary["epochs"]),
        lines=_head_lines(summary, "same_class_excl_self"),
        references=[Reference(summary["same_class_excl_self_uniform"],
                              "uniform attention (chance): (n_same − 1)/N")],
        y_range=(0.0, 1.02))


def self_mass_curves_data(summary: dict) -> HeadCurves:
    """Each head's attention on the node itself over epochs: 1/N under uniform attention, 1 when
    every node attends to itself alone (no message passing, like mpn_attention: self)."""
    return HeadCurves(
        title="attention on the node itself per head (mean over nodes and probes; rows "
              "renormalised)",
        y_title="self mass", epochs=list(summary["epochs"]),
        lines=_head_lines(summary, "self_mass"),
        references=[Reference(1 / summary["nodes"], "uniform attention: 1/N", "right"),
                    Reference(1.0, "1: each node attends to itself alone")],
        y_range=(0.0, 1.08))


def node_bars_data(attention_by_epoch: AttentionRecord, labels: torch.Tensor | np.ndarray, *,
                   layer: int, head: int, probe: int, node: int,
                   epochs: Sequence[int] | None = None) -> NodeBars:
    """One node's attention over its batch at `epochs` (default: up to 5 spread over training)."""
    shown = list(epochs) if epochs is not None else spread_epochs(epoch_numbers(attention_by_epoch))
    y = torch.as_tensor(labels)[probe]  # [N]
    groups = target_groups(y, node)
    order = [j for kind in KINDS for j in groups[kind]]  # [N] bar position → target
    starts = np.cumsum([0] + [len(groups[kind]) for kind in KINDS])
    kinds = {kind: list(range(starts[i], starts[i + 1])) for i, kind in enumerate(KINDS)}
    rows = torch.stack([attention_at(attention_by_epoch, e)[layer, probe, head, node]
                        for e in shown])  # [E, N] the node's raw row per epoch
    weights = distribution(rows)[:, order].numpy()  # [E, N] renormalised, in bar order
    same = weights[:, :starts[2]].sum(1)  # [E] itself and its class
    # A row with all its mass on the null key has no distribution over nodes (NaN, drawn empty).
    titles = [f"epoch {e}: null mass {float(m):.2f}, " + (f"same class {s:.2f}" if np.isfinite(s)
                                                         else "nothing on the batch's nodes")
              for e, m, s in zip(shown, null_mass(rows), same)]
    finite = weights[np.isfinite(weights)]
    return NodeBars(
        title=f"node {node} (class {int(y[node])}), layer {layer}, head {head}, probe {probe}: "
              "its attention over the batch; grey dashed = uniform 1/N",
        epochs=shown, order=order, classes=[int(y[j]) for j in order], kinds=kinds,
        weights=weights, panel_titles=titles,
        top=max(float(finite.max()) if finite.size else 0.0, 1 / len(order)))


def heatmap_data(attention_by_epoch: AttentionRecord, labels: torch.Tensor | np.ndarray, *,
                 layer: int, head: int, probe: int, epoch: int) -> Heatmap:
    """A probe batch's attention matrix at one epoch (row = source node), sorted by class."""
    a = attention_at(attention_by_epoch, epoch)[layer, probe, head]  # [N, N]
    y = torch.as_tensor(labels)[probe]  # [N]
    p, order, starts = class_sorted(a, y)  # p: [N, N] sorted both ways
    return Heatmap(
        title=f"attention, epoch {epoch}, layer {layer}, head {head}, probe {probe} (rows "
              "renormalised)",
        weights=p.numpy(), raw=a[order][:, order].numpy(), null=null_mass(a)[order].numpy(),
        order=order.tolist(), classes=y[order].tolist(), starts=starts)
