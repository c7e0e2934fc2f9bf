"""The attention figures drawn interactively with plotly, from `attention_data`'s dataclasses:
hover shows every plotted number, and the explorer (`ibdml.explorer`) updates them in place."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ibdml.figures.attention_data import (OTHER_CLASS, REFERENCE, HeadCurves, Heatmap, NodeBars,
                                          SAME_CLASS)

LAYER_DASHES = ("solid", "dot", "dash", "dashdot", "longdash")


def head_curves(data: HeadCurves) -> go.Figure:
    """One line per layer/head (colour = head, dash = layer) and the dashed references."""
    fig = go.Figure()
    for line in data.lines:
        fig.add_scatter(x=data.epochs, y=line.values, mode="lines+markers", name=line.name,
                        legendgroup=f"layer {line.layer}",
                        line=dict(color=line.colour,
                                  dash=LAYER_DASHES[line.layer % len(LAYER_DASHES)]))
    for ref in data.references:
        fig.add_hline(y=ref.y, line_dash="dash", line_color=REFERENCE, annotation_text=ref.text,
                      annotation_position=f"top {ref.side}")
    fig.update_layout(title=data.title, xaxis_title=data.x_title, yaxis_title=data.y_title,
                      height=420, margin=dict(t=60, b=40, l=60, r=20))
    return fig.update_yaxes(range=list(data.y_range))


def node_bars(data: NodeBars) -> go.Figure:
    """One stacked panel per epoch, so it reads top to bottom; x = bar position (no category
    state to go stale in a widget), one trace per kind of target and panel."""
    panels, n = len(data.epochs), len(data.order)
    fig = make_subplots(rows=panels, cols=1, shared_xaxes=True, subplot_titles=data.panel_titles,
                        vertical_spacing=min(0.08, 0.3 / panels))
    for panel, weights in enumerate(data.weights, start=1):  # weights: [N] in bar order
        for kind, positions in data.kinds.items():
            itself = kind == "itself"
            fig.add_bar(x=positions, y=weights[positions].tolist(), name=kind, legendgroup=kind,
                        showlegend=panel == 1, row=panel, col=1,
                        marker=dict(color=OTHER_CLASS if kind == "other class" else SAME_CLASS,
                                    pattern_shape="/" if itself else "",
                                    line=dict(color="black", width=1.5 if itself else 0)),
                        customdata=[[data.order[i], data.classes[i]] for i in positions],
                        hovertemplate="target %{customdata[0]} (class %{customdata[1]}): "
                                      "%{y:.3f}<extra></extra>")
    fig.add_hline(y=data.uniform, line_dash="dash", line_color=REFERENCE, row="all", col=1)
    fig.update_xaxes(tickmode="array", tickvals=list(range(n)),
                     ticktext=[str(j) for j in data.order], range=[-0.5, n - 0.5])
    fig.update_xaxes(title_text=data.x_title, row=panels, col=1)
    # an explicit range: the same scale in every panel, and nothing left to a widget's autorange
    fig.update_yaxes(matches="y", title_text="weight", range=[0, 1.1 * data.top])
    return fig.update_layout(title=data.title, barmode="overlay",
                             height=160 + 190 * panels, margin=dict(t=90, b=50, l=60, r=20))


def _hover(data: Heatmap) -> list[list[str]]:
    """[N][N] hover text: source and target node and class, weight, raw α, the row's null mass."""
    n, o, c = len(data.order), data.order, data.classes
    return [[f"source {o[i]} (class {c[i]}) → target {o[j]} (class {c[j]})<br>weight "
             f"{float(data.weights[i, j]):.3f} (α {float(data.raw[i, j]):.3f}; row null mass "
             f"{float(data.null[i]):.2f})" for j in range(n)] for i in range(n)]


def heatmap(data: Heatmap) -> go.Figure:
    """The sorted matrix, white lines between classes, one tick per class, row 0 on top."""
    n = len(data.order)
    fig = go.Figure(go.Heatmap(z=data.weights.tolist(), text=_hover(data),
                               hovertemplate="%{text}<extra></extra>", colorscale="Viridis",
                               zmin=0, colorbar_title="weight"))
    for k in data.boundaries:
        fig.add_vline(x=k, line_color="white", line_width=1.5)
        fig.add_hline(y=k, line_color="white", line_width=1.5)
    centres, names = data.ticks
    ticks = dict(tickmode="array", tickvals=centres, ticktext=names)
    fig.update_xaxes(title_text="target (sorted by class)", range=[-0.5, n - 0.5],
                     constrain="domain", **ticks)
    fig.update_yaxes(title_text="source (sorted by class)", range=[n - 0.5, -0.5],
                     scaleanchor="x", constrain="domain", **ticks)
    return fig.update_layout(title=data.title, height=560, width=640,
                             margin=dict(t=60, b=50, l=80, r=20))
