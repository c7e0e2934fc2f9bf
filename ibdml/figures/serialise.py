"""Figures to file contents, without writing anything: the steps write what these return
(through their atomic writers), the report inlines it.

    to_html(fig)       a plotly figure as a full HTML page that works offline: it loads
                       plotly.js from the file PLOTLY_JS beside it (written once per folder, from
                       `plotly_js()`) instead of a CDN or a copy in every page
    to_png(fig)        a matplotlib figure (Agg, nothing global touched) or a PIL image as PNG
    figure_files(...)  {file name: bytes} for a set of named figures, plotly.min.js included
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from plotly.offline import get_plotlyjs

PLOTLY_JS = "plotly.min.js"
PNG_DPI = 110


def to_html(fig: go.Figure, *, full_html: bool = True) -> str:
    """A full page that loads plotly.js from PLOTLY_JS in its own folder; full_html=False gives a
    <div> without plotly.js, for a page that loads plotly.js once itself (the report)."""
    return fig.to_html(include_plotlyjs="directory" if full_html else False, full_html=full_html)


def plotly_js() -> str:
    """The plotly.js bundle the pages of `to_html` load (write it as PLOTLY_JS beside them)."""
    return get_plotlyjs()


def to_png(fig: Figure | Image.Image) -> bytes:
    """PNG bytes of a matplotlib figure (rendered by Agg at PNG_DPI, trimmed to its content) or
    of a PIL image."""
    buf = io.BytesIO()
    if isinstance(fig, Image.Image):
        fig.save(buf, format="png")
    else:
        FigureCanvasAgg(fig)  # a figure made without pyplot has no canvas of its own
        fig.savefig(buf, format="png", dpi=PNG_DPI, bbox_inches="tight")
    return buf.getvalue()


def figure_files(figures: Mapping[str, Any]) -> dict[str, bytes]:
    """{stem: figure, or a tuple of figures} → {file name: contents}: a plotly figure becomes
    <stem>.html, a matplotlib figure or PIL image <stem>.png; PLOTLY_JS comes with any page.
    Example: {"attention_kl": (plotly fig, matplotlib fig)} → attention_kl.html,
    attention_kl.png, plotly.min.js."""
    files = {}
    for stem, figs in figures.items():
        for fig in figs if isinstance(figs, tuple) else (figs,):
            if isinstance(fig, go.Figure):
                files[f"{stem}.html"] = to_html(fig).encode()
            elif isinstance(fig, (Figure, Image.Image)):
                files[f"{stem}.png"] = to_png(fig)
            else:
                raise TypeError(f"{stem}: expected a plotly or matplotlib figure or a PIL image, "
                                f"got {type(fig).__name__}")
    if any(name.endswith(".html") for name in files):
        files[PLOTLY_JS] = plotly_js().encode()
    return files
