"""The attention figures as static PNGs, drawn with matplotlib.

The interactive versions are plotly figures (`ibdml.viz`); plotly's own PNG export needs kaleido,
which needs a Chrome it cannot download on machines without internet. These PNGs show the same
data with the same conventions (rows renormalised as in METHOD_SPEC §13, same-class targets green,
the node itself hatched, uniform attention grey dashed), for the report, slides and papers.
Each function draws one figure, saves it atomically and returns the path.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch
# Figure objects, not pyplot: nothing global changes (a notebook's backend stays as it is) and no
# window or display is ever needed.
from matplotlib.figure import Figure

from ibdml.attention import (AttentionRecord, attention_at, class_sorted, distribution,
                             epoch_numbers, null_mass, spread_epochs, target_groups)
from ibdml.runs import write_bytes

SAME_CLASS, OTHER_CLASS, REFERENCE = "#28aa50", "#788caa", "grey"
LAYER_STYLES = ("-", ":", "--", "-.")


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(Path(path), buf.getvalue())
    return Path(path)


def head_curves_png(summary: dict, key: str, path: Path) -> Path:
    """summary[key][e][l][h] (key "kl" or "same_class", from `attention.summarise`) per head over
    epochs, with the references of `viz.kl_curves` / `viz.same_class_curves`."""
    fig = Figure(figsize=(7.5, 4))
    ax = fig.subplots()
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for layer in range(summary["layers"]):
        for head in range(summary["heads"]):
            ax.plot(summary["epochs"], [row[layer][head] for row in summary[key]], marker="o",
                    ms=3, color=colours[head % len(colours)],
                    ls=LAYER_STYLES[layer % len(LAYER_STYLES)],
                    label=f"layer {layer} · head {head}")
    if key == "kl":
        top = summary["kl_max"]
        ax.axhline(top, color=REFERENCE, ls="--", lw=1)
        ax.axhline(0, color=REFERENCE, ls="--", lw=1)
        ax.text(0, top, f" log N = {top:.2f}: one node only", va="bottom", color=REFERENCE)
        ax.text(0, 0, " 0: uniform (plain averaging)", va="bottom", color=REFERENCE)
        ax.set(ylim=(-0.05 * top, 1.12 * top), ylabel="KL(α_i ‖ uniform) [nats]",
               title="attention KL from uniform per head (mean over nodes and probes)")
    else:
        ax.axhline(summary["same_class_uniform"], color=REFERENCE, ls="--", lw=1)
        ax.text(0, summary["same_class_uniform"], " uniform attention (chance)", va="bottom",
                color=REFERENCE)
        ax.set(ylim=(0, 1.02), ylabel="same-class attention mass",
               title="same-class share of attention per head (mean over nodes and probes)")
    ax.set_xlabel("epoch (0 = before training)")
    ax.legend(fontsize=8, loc="center right")
    return _save(fig, path)


def node_bars_png(attention_by_epoch: AttentionRecord, labels, path: Path, *, layer: int,
                  head: int, probe: int, node: int, epochs: Sequence[int] | None = None) -> Path:
    """`viz.node_attention_bars` (the seed's Figure 2) as a PNG: one panel per epoch."""
    shown = list(epochs) if epochs is not None else spread_epochs(epoch_numbers(attention_by_epoch))
    y = torch.as_tensor(labels)[probe]  # [N]
    groups = target_groups(y, node)
    order = [j for targets in groups.values() for j in targets]
    fig = Figure(figsize=(max(6, 0.16 * len(order) + 2), 1.7 * len(shown) + 0.8))
    axes = fig.subplots(len(shown), 1, sharex=True, sharey=True, squeeze=False)
    for ax, e in zip(axes[:, 0], shown):
        row = attention_at(attention_by_epoch, e)[layer, probe, head, node]  # [N]
        p = distribution(row)[order].numpy()
        colours = [OTHER_CLASS if y[j] != y[node] else SAME_CLASS for j in order]
        bars = ax.bar(range(len(order)), p, color=colours, width=0.85)
        bars[0].set_hatch("//")
        bars[0].set_edgecolor("black")
        ax.axhline(1 / len(order), color=REFERENCE, ls="--", lw=1)
        ax.set_title(f"epoch {e}: null mass {float(null_mass(row)):.2f}, same class "
                     f"{float(p[:1 + len(groups['same class'])].sum()):.2f}", fontsize=9)
        ax.set_ylabel("weight")
    axes[-1, 0].set_xticks(range(len(order)), [str(j) for j in order], fontsize=6, rotation=90)
    axes[-1, 0].set_xlabel("target node (itself hatched, its class green, then the other classes)")
    fig.suptitle(f"node {node} (class {int(y[node])}), layer {layer}, head {head}, probe {probe}; "
                 "grey dashed = uniform 1/N", fontsize=10)
    return _save(fig, path)


def heatmap_png(attention_by_epoch: AttentionRecord, labels, path: Path, *, layer: int,
                head: int, probe: int, epoch: int) -> Path:
    """`viz.attention_heatmap` as a PNG: rows renormalised, nodes sorted by class."""
    a = attention_at(attention_by_epoch, epoch)[layer, probe, head]  # [N, N]
    y = torch.as_tensor(labels)[probe]
    p, order, starts = class_sorted(a, y)
    fig = Figure(figsize=(6.2, 5.4))
    ax = fig.subplots()
    im = ax.imshow(p.numpy(), cmap="viridis", vmin=0, interpolation="nearest")
    for k in starts[1:]:
        ax.axhline(k - 0.5, color="white", lw=1)
        ax.axvline(k - 0.5, color="white", lw=1)
    ends = starts[1:] + [len(order)]
    centres = [(s + e - 1) / 2 for s, e in zip(starts, ends)]
    names = [f"class {int(y[order[s]])}" for s in starts]
    ax.set_xticks(centres, names, rotation=90, fontsize=7)
    ax.set_yticks(centres, names, fontsize=7)
    ax.set(xlabel="target (sorted by class)", ylabel="source (sorted by class)",
           title=f"attention, epoch {epoch}, layer {layer}, head {head}, probe {probe}")
    fig.colorbar(im, ax=ax, label="weight (row renormalised)")
    return _save(fig, path)

