"""The retrieval gallery: queries and their nearest neighbours as one image, framed by whether
each neighbour shares the query's class (also the MPN-at-inference neighbourhoods, with
captions). The image is built from the dataset's image files; nothing is written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageOps

QUERY, CORRECT, WRONG = (128, 128, 128), (40, 170, 80), (220, 50, 50)


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
        cells = [(q, QUERY)] + [(n, CORRECT if ok else WRONG)
                                for n, ok in zip(neighbours, correct[r])]
        for c, (path, colour) in enumerate(cells):
            with Image.open(path) as im:
                framed = ImageOps.expand(im.convert("RGB").resize((tile, tile)), border, colour)
            x = c * step + (2 * border if c else 0)  # a gap between the query and its row
            canvas.paste(framed, (x, r * row_step))
            if captions is not None and c:
                draw.text((x + 2, r * row_step + step), captions[r][c - 1], fill="black")
    return canvas


def gallery_figure(image: Image.Image, k: int) -> go.Figure:
    """The gallery image as a plotly figure (zoom and pan in a notebook), titled with its legend."""
    fig = go.Figure(go.Image(z=np.asarray(image)))  # [H, W, 3] uint8
    fig.update_layout(title=f"queries (grey) and their top-{k} neighbours: green = same class, "
                            "red = other class", margin=dict(t=40, b=10, l=10, r=10),
                      height=max(300, image.height + 60), width=max(400, image.width + 20))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig
