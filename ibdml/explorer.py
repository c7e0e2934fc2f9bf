"""The attention explorer: ipywidgets controls around two plotly FigureWidgets, for JupyterLab.

Layer, head, probe batch and epoch pick the batch's attention matrix (`attention_heatmap`); the
node control, or a click on a row of the heatmap, picks the node whose attention over epochs the
bar chart shows (`node_attention_bars`, the seed's Figure 2), and that row is outlined in red.
The figures are the pure functions of `ibdml.figures.attention`: this module only wires controls
to them.

Widgets need a live front end: clicks and control changes reach the kernel only from a displayed
widget. Under papermill nothing would ever answer, so notebooks ask `live_frontend()` first and
build nothing interactive there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ipywidgets as widgets
import plotly.graph_objects as go

from ibdml.attention import class_order, spread_epochs
from ibdml.probes import AttentionRun
from ibdml.figures.attention import attention_heatmap, node_attention_bars

HIGHLIGHT = "red"


def live_frontend() -> bool:
    """Whether this kernel serves a notebook open in a Jupyter front end (JupyterLab, Notebook 7):
    the Jupyter server starts such kernels with JPY_SESSION_NAME set; papermill, nbclient and
    plain Python do not."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


def _copy_into(target: go.FigureWidget, source: go.Figure) -> None:
    """Show `source` in `target` without replacing its traces (their click handlers stay): same
    trace count and types, new data and layout, sent to the browser as one update."""
    with target.batch_update():
        for old, new in zip(target.data, source.data):
            old.update(new.to_plotly_json(), overwrite=True)
        target.layout = source.layout


class AttentionExplorer:
    """Explore a run's recorded attention. Display it in a notebook (it shows `.widget`)."""

    def __init__(self, rec: AttentionRun, *, layer: int = 0, head: int = 0, probe: int = 0,
                 node: int = 0, epoch: int | None = None,
                 bar_epochs: Sequence[int] | None = None) -> None:
        self.rec = rec
        L, P, H = rec.by_epoch[rec.epochs[0]].shape[:3]  # [L, P, H, N, N]
        self.bar_epochs = list(bar_epochs) if bar_epochs is not None else spread_epochs(rec.epochs)
        pick = dict(style={"description_width": "initial"})
        self.layer = widgets.Dropdown(options=[(f"layer {i}", i) for i in range(L)], value=layer,
                                      description="layer", **pick)
        self.head = widgets.Dropdown(options=[(f"head {i}", i) for i in range(H)], value=head,
                                     description="head", **pick)
        self.probe = widgets.Dropdown(options=[(f"probe batch {i}", i) for i in range(P)],
                                      value=probe, description="probe", **pick)
        self.epoch = widgets.SelectionSlider(options=rec.epochs, value=epoch if epoch is not None
                                             else rec.epochs[-1], description="heatmap epoch",
                                             continuous_update=False, **pick)
        self.node = widgets.Dropdown(options=self._node_options(probe), value=node,
                                     description="node", **pick)
        self.heatmap = go.FigureWidget(self._heatmap_figure())
        self.bars = go.FigureWidget(self._bars_figure())
        self.heatmap.data[0].on_click(self._clicked)
        for control in (self.layer, self.head, self.epoch):
            control.observe(self._redraw_heatmap, names="value")
        self.layer.observe(self._redraw_bars, names="value")
        self.head.observe(self._redraw_bars, names="value")
        self.probe.observe(self._probe_changed, names="value")
        self.node.observe(self._node_changed, names="value")
        hint = widgets.HTML("Click a row of the heatmap (a source node) or pick a node to see its "
                            "attention over training.")
        self.widget = widgets.VBox([
            widgets.HBox([self.layer, self.head, self.probe, self.epoch]),
            widgets.HBox([self.node, hint]),
            widgets.HBox([self.heatmap, self.bars])])

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget)

    # ---- figures ------------------------------------------------------------------------------

    def _node_options(self, probe: int) -> list[tuple[str, int]]:
        labels, names = self.rec.labels[probe], self.rec.info["class_names"][probe]
        return [(f"node {i} · class {int(labels[i])} ({names[i]})", i) for i in range(len(labels))]

    def _heatmap_figure(self) -> go.Figure:
        fig = attention_heatmap(self.rec.by_epoch, self.rec.labels, layer=self.layer.value,
                                head=self.head.value, probe=self.probe.value,
                                epoch=self.epoch.value)
        n = len(self.rec.labels[self.probe.value])
        row = self._order().index(self.node.value)  # the node's position once sorted by class
        fig.add_shape(type="rect", x0=-0.5, x1=n - 0.5, y0=row - 0.5, y1=row + 0.5,
                      line=dict(color=HIGHLIGHT, width=2))
        return fig.update_layout(width=560, height=520)

    def _bars_figure(self) -> go.Figure:
        fig = node_attention_bars(self.rec.by_epoch, self.rec.labels, layer=self.layer.value,
                                  head=self.head.value, probe=self.probe.value,
                                  node=self.node.value, epochs=self.bar_epochs)
        return fig.update_layout(width=620, title_font_size=12)

    def _order(self) -> list[int]:
        """Sorted heatmap position → node of the current probe."""
        return class_order(self.rec.labels[self.probe.value]).tolist()

    # ---- events -------------------------------------------------------------------------------

    def _redraw_heatmap(self, _change=None) -> None:
        _copy_into(self.heatmap, self._heatmap_figure())

    def _redraw_bars(self, _change=None) -> None:
        _copy_into(self.bars, self._bars_figure())

    def _node_changed(self, _change) -> None:
        self._redraw_heatmap()  # moves the red outline
        self._redraw_bars()

    def _probe_changed(self, change) -> None:
        with self.node.hold_trait_notifications():
            self.node.options = self._node_options(change["new"])
            self.node.value = 0
        self._redraw_heatmap()
        self._redraw_bars()

    def _clicked(self, _trace, points, _state) -> None:
        """A click on the heatmap: its y is the sorted row, i.e. a source node."""
        if points.ys:
            self.node.value = self._order()[int(points.ys[0])]
