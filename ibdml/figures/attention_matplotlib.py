"""The attention figures drawn with matplotlib, for static PNGs (the report, slides, papers), from
the same `attention_data` dataclasses as the interactive plotly figures. plotly's own PNG export
needs kaleido, which needs a Chrome it cannot download on machines without internet.

Figure objects, not pyplot: nothing global changes (a notebook's backend stays as it is) and no
window or display is ever needed. `ibdml.figures.to_png` turns one into PNG bytes.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from ibdml.figures.attention_data import REFERENCE, HeadCurves, Heatmap, NodeBars

LAYER_STYLES = ("-", ":", "--", "-.")


def head_curves(data: HeadCurves) -> Figure:
    """One line per layer/head (colour = head, line style = layer) and the dashed references."""
    fig = Figure(figsize=(7.5, 4))
    ax = fig.subplots()
    for line in data.lines:
        ax.plot(data.epochs, line.values, marker="o", ms=3, color=line.colour,
                ls=LAYER_STYLES[line.layer % len(LAYER_STYLES)], label=line.name)
    left, right = min(data.epochs), max(data.epochs)
    for ref in data.references:
        ax.axhline(ref.y, color=REFERENCE, ls="--", lw=1)
        at_left = ref.side == "left"
        ax.text(left if at_left else right, ref.y, f" {ref.text} ", va="bottom",
                ha="left" if at_left else "right", color=REFERENCE)
    ax.set(ylim=data.y_range, xlabel=data.x_title, ylabel=data.y_title)
    ax.set_title(data.title, fontsize=9)
    ax.legend(fontsize=8, loc="center right")
    return fig


def node_bars(data: NodeBars) -> Figure:
    """One panel per epoch, sharing both axes; the node itself hatched."""
    n, panels = len(data.order), len(data.epochs)
    fig = Figure(figsize=(max(6, 0.16 * n + 2), 1.7 * panels + 0.8))
    axes = fig.subplots(panels, 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    colours = data.colours()
    for ax, weights, title in zip(axes, data.weights, data.panel_titles):  # weights: [N]
        bars = ax.bar(range(n), weights, color=colours, width=0.85)
        for i in data.kinds["itself"]:
            bars[i].set_hatch("//")
            bars[i].set_edgecolor("black")
        ax.axhline(data.uniform, color=REFERENCE, ls="--", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set(ylabel="weight", ylim=(0, 1.1 * data.top))
    axes[-1].set_xticks(range(n), [str(j) for j in data.order], fontsize=6, rotation=90)
    axes[-1].set_xlabel(data.x_title)
    fig.suptitle(data.title, fontsize=10)
    return fig


def heatmap(data: Heatmap) -> Figure:
    """The sorted matrix, white lines between classes, one tick per class, row 0 on top."""
    fig = Figure(figsize=(6.2, 5.4))
    ax = fig.subplots()
    im = ax.imshow(data.weights, cmap="viridis", vmin=0, interpolation="nearest")
    for k in data.boundaries:
        ax.axhline(k, color="white", lw=1)
        ax.axvline(k, color="white", lw=1)
    centres, names = data.ticks
    ax.set_xticks(centres, names, rotation=90, fontsize=7)
    ax.set_yticks(centres, names, fontsize=7)
    ax.set(xlabel="target (sorted by class)", ylabel="source (sorted by class)")
    ax.set_title(data.title, fontsize=9)
    fig.colorbar(im, ax=ax, label="weight")
    return fig
