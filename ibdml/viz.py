"""Figures and tables: pure functions from a run's files to plotly figures and markdown.

Nothing here waits for a widget or needs a browser: every figure is a plain `go.Figure` that a
notebook shows, the report embeds as HTML, and `save_figure` writes to the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import plotly.colors as plotly_colors
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from PIL import Image, ImageDraw, ImageOps

from ibdml.attention import (AttentionRecord, attention_at, class_sorted, distribution,
                             epoch_numbers, null_mass, spread_epochs,
                             target_groups)
from ibdml.runs import write_text

CORRECT, WRONG = (40, 170, 80), (220, 50, 50)


def training_curves(history: list[dict]) -> go.Figure:
    """Loss per head, learning rate, and R@1 / MAP@R per evaluated epoch (val and test)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss per head", "learning rate",
                                                        "retrieval (backbone features)"))
    epochs = [r["epoch"] for r in history]
    for head in history[0]["loss"] if history else []:
        fig.add_scatter(x=epochs, y=[r["loss"][head] for r in history], name=f"loss: {head}",
                        row=1, col=1)
    fig.add_scatter(x=epochs, y=[r["lr"] for r in history], name="lr", row=1, col=2)
    for split, dash in (("val", "dot"), ("test", "solid")):
        rows = [r for r in history if split in r]
        for key, label in (("r1", "R@1"), ("map", "MAP@R")):
            y = [r[split]["recall_at_k"]["1"] if key == "r1" else r[split]["map_at_r"] for r in rows]
            if rows:
                fig.add_scatter(x=[r["epoch"] for r in rows], y=y, name=f"{split} {label}",
                                line_dash=dash, row=1, col=3)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=360, margin=dict(t=40, b=40, l=40, r=20))
    return fig


def recall_table(rows: dict[str, dict], ks: Sequence[int]) -> str:
    """Markdown table in the paper's format (percentages): one row per named metrics dict
    (keys recall_at_k, map_at_r, nmi as in metrics.json)."""
    head = " | ".join(f"R@{k}" for k in ks)
    lines = [f"| | {head} | NMI | MAP@R |", "|---" * (len(ks) + 3) + "|"]
    for name, m in rows.items():
        recalls = " | ".join(f"{100 * m['recall_at_k'][str(k)]:.1f}" for k in ks)
        nmi = "–" if m.get("nmi") is None else f"{100 * m['nmi']:.1f}"
        lines.append(f"| {name} | {recalls} | {nmi} | {100 * m['map_at_r']:.1f} |")
    return "\n".join(lines)


def gallery_image(query_paths: Sequence[Path], neighbour_paths: Sequence[Sequence[Path]],
                  correct: np.ndarray, captions: Sequence[Sequence[str]] | None = None,
                  tile: int = 64, border: int = 4) -> Image.Image:
    """A grid: one row per query (first column, grey frame), then its neighbours in rank order,
    each framed green (same class as the query) or red. correct: [Q, k] bool; captions: an
    optional [Q, k] text under each neighbour."""
    rows, k = len(query_paths), len(neighbour_paths[0]) if neighbour_paths else 0
    text = 14 if captions is not None else 0
    step, row_step = tile + 2 * border, tile + 2 * border + text
    canvas = Image.new("RGB", (step * (k + 1) + border * 2, row_step * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (q, neighbours) in enumerate(zip(query_paths, neighbour_paths)):
        cells = [(q, (128, 128, 128))] + [(n, CORRECT if ok else WRONG)
                                          for n, ok in zip(neighbours, correct[r])]
        for c, (path, colour) in enumerate(cells):
            with Image.open(path) as im:
                framed = ImageOps.expand(im.convert("RGB").resize((tile, tile)), border, colour)
            x = c * step + (2 * border if c else 0)
            canvas.paste(framed, (x, r * row_step))
            if captions is not None and c:
                draw.text((x + 2, r * row_step + step), captions[r][c - 1], fill="black")
    return canvas


def gallery_figure(image: Image.Image, k: int) -> go.Figure:
    fig = go.Figure(go.Image(z=np.asarray(image)))
    fig.update_layout(title=f"queries (grey) and their top-{k} neighbours: green = same class, "
                            "red = other class", margin=dict(t=40, b=10, l=10, r=10),
                      height=max(300, image.height + 60), width=max(400, image.width + 20))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def save_figure(fig: go.Figure, path: Path) -> Path:
    """Write a figure as an HTML file that works offline: plotly.js is written once beside it
    (plotly.min.js) instead of being fetched from a CDN or repeated in every file."""
    write_text(path, fig.to_html(include_plotlyjs="directory", full_html=True))
    js = Path(path).parent / "plotly.min.js"
    if not js.is_file():
        from plotly.offline import get_plotlyjs
        write_text(js, get_plotlyjs())
    return path


# ---- Attention over training (paper claim 3; METHOD_SPEC §13), from ibdml.attention records ----

SAME_CLASS, OTHER_CLASS, REFERENCE = "rgb(40,170,80)", "rgb(120,140,170)", "grey"
LAYER_DASHES = ("solid", "dot", "dash", "dashdot", "longdash")


def _head_curves(summary: dict, key: str, title: str, y_title: str) -> go.Figure:
    """One line per layer/head of summary[key][e][l][h] over the summarised epochs: colour = head,
    dash = layer."""
    fig, epochs = go.Figure(), summary["epochs"]
    colours = plotly_colors.qualitative.Plotly
    for layer in range(summary["layers"]):
        for head in range(summary["heads"]):
            fig.add_scatter(x=epochs, y=[row[layer][head] for row in summary[key]],
                            mode="lines+markers", name=f"layer {layer} · head {head}",
                            legendgroup=f"layer {layer}",
                            line=dict(color=colours[head % len(colours)],
                                      dash=LAYER_DASHES[layer % len(LAYER_DASHES)]))
    fig.update_layout(title=title, xaxis_title="epoch (0 = before training)", yaxis_title=y_title,
                      height=420, margin=dict(t=60, b=40, l=60, r=20))
    return fig


def kl_curves(summary: dict) -> go.Figure:
    """KL from uniform per head over epochs (the seed's Figure 1), from `attention.summarise`:
    0 = plain averaging, the dashed log N (log(N+1) with the extra null bin) = one node only."""
    extra = summary["null_key_treatment"] == "extra_bin"
    fig = _head_curves(summary, "kl", "attention KL from uniform per head (mean over nodes and "
                       f"probes; {'null mass as an extra bin' if extra else 'rows renormalised'})",
                       "KL(α_i ‖ uniform) [nats]")
    top = summary["kl_max"]
    fig.add_hline(y=top, line_dash="dash", line_color=REFERENCE, annotation_position="top left",
                  annotation_text=f"log {'(N+1)' if extra else 'N'} = {top:.2f}: collapsed onto "
                                  "one node")
    fig.add_hline(y=0, line_dash="dash", line_color=REFERENCE, annotation_position="top right",
                  annotation_text="0: uniform (plain averaging)")
    return fig.update_yaxes(range=[-0.05 * top, 1.12 * top])


def same_class_curves(summary: dict) -> go.Figure:
    """Same-class share of each head's attention over epochs, with the level plain averaging gives
    (n_same / N): above it, nodes attend more strongly to their own class."""
    self_note = "" if summary["include_self"] else ", self excluded"
    fig = _head_curves(summary, "same_class", "same-class share of attention per head (mean over "
                       f"nodes and probes; rows renormalised{self_note})",
                       "same-class attention mass")
    fig.add_hline(y=summary["same_class_uniform"], line_dash="dash", line_color=REFERENCE,
                  annotation_text="uniform attention (chance)", annotation_position="top left")
    return fig.update_yaxes(range=[0, 1.02])


def node_attention_bars(attention_by_epoch: AttentionRecord, labels: torch.Tensor | np.ndarray, *,
                        layer: int, head: int, probe: int, node: int,
                        epochs: Sequence[int] | None = None) -> go.Figure:
    """One node's attention over its batch (the seed's Figure 2): one stacked panel per epoch
    (default: up to 5 spread over training), so a static PNG reads top to bottom. Bars are the
    renormalised row (METHOD_SPEC §13), targets ordered: itself (hatched), its class (green), then
    the other classes in class order (blue-grey); the grey dashed line is uniform, 1/N. Each panel
    title gives the row's null mass and same-class share."""
    shown = list(epochs) if epochs is not None else spread_epochs(epoch_numbers(attention_by_epoch))
    y = torch.as_tensor(labels)[probe]  # [N]
    n = y.shape[0]
    kinds = target_groups(y, node)
    order = [j for targets in kinds.values() for j in targets]
    rows = [attention_at(attention_by_epoch, e)[layer, probe, head, node] for e in shown]  # [N]
    titles = [f"epoch {e}: null mass {float(null_mass(r)):.2f}, same class "
              f"{float(distribution(r)[y == y[node]].sum()):.2f}" for e, r in zip(shown, rows)]
    fig = make_subplots(rows=len(shown), cols=1, shared_xaxes=True, subplot_titles=titles,
                        vertical_spacing=min(0.08, 0.3 / len(shown)))
    position = {j: i for i, j in enumerate(order)}  # x = position: no category state to go stale
    for panel, row in enumerate(rows, start=1):
        p = distribution(row)
        for kind, targets in kinds.items():
            fig.add_bar(x=[position[j] for j in targets], y=p[targets].tolist(), name=kind,
                        legendgroup=kind, showlegend=panel == 1, row=panel, col=1,
                        marker=dict(color=OTHER_CLASS if kind == "other class" else SAME_CLASS,
                                    pattern_shape="/" if kind == "itself" else "",
                                    line=dict(color="black", width=1.5 if kind == "itself" else 0)),
                        customdata=[[j, int(y[j])] for j in targets],
                        hovertemplate="target %{customdata[0]} (class %{customdata[1]}): "
                                      "%{y:.3f}<extra></extra>")
    fig.add_hline(y=1 / n, line_dash="dash", line_color=REFERENCE, row="all", col=1)
    fig.update_xaxes(tickmode="array", tickvals=list(range(n)), ticktext=[str(j) for j in order],
                     range=[-0.5, n - 0.5])
    fig.update_xaxes(title_text="target node (itself, its class, then the other classes)",
                     row=len(shown), col=1)
    top = max(max(float(distribution(r).max()) for r in rows), 1 / n)
    # an explicit range: the same scale in every panel, and nothing left to a widget's autorange
    fig.update_yaxes(matches="y", title_text="weight", range=[0, 1.1 * top])
    return fig.update_layout(
        title=f"node {node} (class {int(y[node])}), layer {layer}, head {head}, probe {probe}: its "
              "attention over the batch; grey dashed = uniform 1/N", barmode="overlay",
        height=160 + 190 * len(shown), margin=dict(t=90, b=50, l=60, r=20))


def attention_heatmap(attention_by_epoch: AttentionRecord, labels: torch.Tensor | np.ndarray, *,
                      layer: int, head: int, probe: int, epoch: int) -> go.Figure:
    """A probe batch's N × N attention (row = source node, renormalised as in §13) with nodes sorted
    by class, white lines between classes; hover names source/target node and class, the weight,
    the raw α and the row's null mass."""
    a = attention_at(attention_by_epoch, epoch)[layer, probe, head]  # [N, N]
    y = torch.as_tensor(labels)[probe]
    p, order, starts = class_sorted(a, y)
    raw, null, ys = a[order][:, order], null_mass(a)[order], y[order].tolist()
    n = len(ys)
    text = [[f"source {int(order[i])} (class {ys[i]}) → target {int(order[j])} (class {ys[j]})<br>"
             f"weight {float(p[i, j]):.3f} (α {float(raw[i, j]):.3f}; row null mass "
             f"{float(null[i]):.2f})" for j in range(n)] for i in range(n)]
    fig = go.Figure(go.Heatmap(z=p.tolist(), text=text, hovertemplate="%{text}<extra></extra>",
                               colorscale="Viridis", zmin=0, colorbar_title="weight"))
    for k in starts[1:]:
        fig.add_vline(x=k - 0.5, line_color="white", line_width=1.5)
        fig.add_hline(y=k - 0.5, line_color="white", line_width=1.5)
    centres = [(s + e - 1) / 2 for s, e in zip(starts, starts[1:] + [n])]
    ticks = dict(tickmode="array", tickvals=centres, ticktext=[f"class {ys[s]}" for s in starts])
    fig.update_xaxes(title_text="target (sorted by class)", range=[-0.5, n - 0.5],
                     constrain="domain", **ticks)
    fig.update_yaxes(title_text="source (sorted by class)", range=[n - 0.5, -0.5],  # row 0 on top
                     scaleanchor="x", constrain="domain", **ticks)
    return fig.update_layout(title=f"attention, epoch {epoch}, layer {layer}, head {head}, probe "
                                   f"{probe} (rows renormalised)", height=560, width=640,
                             margin=dict(t=60, b=50, l=80, r=20))


def save_attention_figures(run_dir: Path, by_epoch: AttentionRecord,
                           labels: torch.Tensor | np.ndarray, summary: dict, *, layer: int,
                           head: int, probe: int, node: int) -> dict[str, tuple[Path, Path]]:
    """The four attention figures of a run, each as interactive HTML (plotly) and static PNG
    (matplotlib, `ibdml.static_figures`), in <run>/figures/attention_*.{html,png}; the heatmap
    shows the last recorded epoch. Returns {name: (html, png)}."""
    from ibdml import static_figures as static

    out, last = Path(run_dir) / "figures", epoch_numbers(by_epoch)[-1]
    view = dict(layer=layer, head=head, probe=probe)
    figures = {
        "kl": (kl_curves(summary), lambda path: static.head_curves_png(summary, "kl", path)),
        "same_class": (same_class_curves(summary),
                       lambda path: static.head_curves_png(summary, "same_class", path)),
        "node": (node_attention_bars(by_epoch, labels, node=node, **view),
                 lambda path: static.node_bars_png(by_epoch, labels, path, node=node, **view)),
        "heatmap": (attention_heatmap(by_epoch, labels, epoch=last, **view),
                    lambda path: static.heatmap_png(by_epoch, labels, path, epoch=last, **view)),
    }
    return {name: (save_figure(fig, out / f"attention_{name}.html"),
                   png(out / f"attention_{name}.png")) for name, (fig, png) in figures.items()}


def verdict_table(start: dict, end: dict) -> str:
    """Markdown: each layer/head's edge-case verdict (`attention.edge_case_verdicts`) before
    training and at the end, with its KL, effective nodes and same-class mass against chance."""
    lines = [f"| layer · head | epoch {start['epoch']} | epoch {end['epoch']} | "
             "KL (share of log N) | effective nodes | same-class mass (chance) |", "|---|---|---|---|---|---|"]
    for s, e in zip(start["heads"], end["heads"]):
        lines.append(f"| {e['layer']} · {e['head']} | {s['verdict']} | **{e['verdict']}** | "
                     f"{s['kl']:.3f} → {e['kl']:.3f} ({e['kl_fraction']:.0%}) | "
                     f"{s['effective_nodes']:.1f} → {e['effective_nodes']:.1f} | "
                     f"{s['same_class']:.3f} → {e['same_class']:.3f} "
                     f"({e['same_class_uniform']:.3f}) |")
    return "\n".join(lines)
