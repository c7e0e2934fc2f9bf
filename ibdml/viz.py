"""Figures and tables: pure functions from a run's files to plotly figures and markdown.

Nothing here waits for a widget or needs a browser: every figure is a plain `go.Figure` that a
notebook shows, the report embeds as HTML, and `save_figure` writes to the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from PIL import Image, ImageOps

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
                  correct: np.ndarray, tile: int = 64, border: int = 4) -> Image.Image:
    """A grid: one row per query (first column), then its neighbours in rank order, each framed
    green (same class as the query) or red. correct: [Q, k] bool."""
    rows, k = len(query_paths), len(neighbour_paths[0]) if neighbour_paths else 0
    step = tile + 2 * border
    canvas = Image.new("RGB", (step * (k + 1) + border * 2, step * rows), "white")
    for r, (q, neighbours) in enumerate(zip(query_paths, neighbour_paths)):
        cells = [(q, (128, 128, 128))] + [(n, CORRECT if ok else WRONG)
                                          for n, ok in zip(neighbours, correct[r])]
        for c, (path, colour) in enumerate(cells):
            with Image.open(path) as im:
                framed = ImageOps.expand(im.convert("RGB").resize((tile, tile)), border, colour)
            canvas.paste(framed, (c * step + (2 * border if c else 0), r * step))
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
