"""The attention explorer without a browser: controls redraw the figures, a heatmap click selects
its row's node, and nothing interactive is built outside a Jupyter front end.
(tests/test_browser_explorer.py drives it in a real browser.)"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ibdml.config import load_params
from ibdml.explorer import AttentionExplorer, live_frontend
from ibdml.steps.attention import load_attention
from ibdml.steps.train import train

SMOKE = Path(__file__).parent.parent / "params" / "smoke.yaml"


@pytest.fixture(scope="module")
def rec(glyph_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("explorer") / "run"
    p = load_params(SMOKE, {"data_root": str(glyph_root), "epochs": 2, "attention_probes": 2})
    train(p, run, progress=False)
    return load_attention(run)


def bars_title(ex):
    return ex.bars.layout.title.text


def outlined_row(ex):
    (rect,) = [s for s in ex.heatmap.layout.shapes if s.type == "rect"]
    return (rect.y0 + rect.y1) / 2


def test_node_control_redraws_the_bars_and_moves_the_outline(rec):
    ex = AttentionExplorer(rec)
    assert bars_title(ex).startswith("node 0 ")
    before = [list(t.y) for t in ex.bars.data]
    ex.node.value = 5
    assert bars_title(ex).startswith("node 5 ")
    assert [list(t.y) for t in ex.bars.data] != before
    order = np.argsort(rec.labels[0], kind="stable")
    assert outlined_row(ex) == list(order).index(5)
    assert len(ex.bars.data) == 3 * len(rec.epochs)  # 3 epochs recorded: 0, 1, 2


def test_a_click_on_a_heatmap_row_selects_its_node(rec):
    ex = AttentionExplorer(rec)
    order = np.argsort(rec.labels[0], kind="stable")
    ex._clicked(ex.heatmap.data[0], SimpleNamespace(ys=[3], xs=[0]), None)
    assert ex.node.value == order[3]
    assert bars_title(ex).startswith(f"node {order[3]} ")


def test_epoch_layer_head_and_probe_controls_redraw_the_heatmap(rec):
    ex = AttentionExplorer(rec)
    z = np.asarray(ex.heatmap.data[0].z)
    ex.epoch.value = 0
    assert ex.heatmap.layout.title.text.startswith("attention, epoch 0")
    assert not np.array_equal(np.asarray(ex.heatmap.data[0].z), z)
    ex.head.value = 1
    assert "head 1" in ex.heatmap.layout.title.text and "head 1" in bars_title(ex)
    ex.node.value = 7
    ex.probe.value = 1
    assert ex.node.value == 0 and "probe 1" in bars_title(ex)
    assert ex.node.options[0][0].startswith(f"node 0 · class {rec.labels[1][0]} ")


def test_not_live_outside_a_jupyter_front_end(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert not live_frontend()
    monkeypatch.setenv("JPY_SESSION_NAME", "/notebooks/04_attention_evolution.ipynb")
    assert live_frontend()
