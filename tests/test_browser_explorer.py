"""The attention explorer in a real browser: 04_attention_evolution, parameterised for a smoke
run, opened in JupyterLab in headless Debian Chromium (Playwright, system executable), run to the
end; the explorer's heatmap and bar chart render, changing the node control redraws the bars, a
click on a heatmap row selects that node, and a screenshot is saved
(outputs/test-artifacts/attention_explorer.png)."""

from pathlib import Path

import numpy as np
import papermill
import pytest

import browser
from ibdml.config import load_params
from ibdml.pipeline import KERNEL, NOTEBOOKS
from ibdml.steps.attention import load_attention
from ibdml.steps.train import train

pytestmark = pytest.mark.browser
SMOKE = Path(__file__).parent.parent / "params" / "smoke.yaml"
NOTEBOOK = "04_attention_evolution.ipynb"


def node_of(title: str) -> int:
    """The bar chart's title starts "node 7 (class 3), ..."."""
    return int(title.split()[1])


def test_attention_explorer_in_jupyterlab(glyph_root, tmp_path):
    browser.require_browser()
    timer = browser.Timer()
    root = tmp_path / "lab"
    run = root / "run"
    overrides = {"data_root": str(glyph_root), "epochs": 2}
    train(load_params(SMOKE, overrides), run, progress=False)
    # The notebook as a user would run it by hand: its parameters cell set, not executed yet.
    papermill.execute_notebook(str(NOTEBOOKS / NOTEBOOK), str(root / NOTEBOOK), prepare_only=True,
                               kernel_name=KERNEL, progress_bar=False,
                               parameters={"params_file": str(SMOKE), "run_dir": str(run),
                                           "overrides": overrides})
    timer.mark("smoke run trained")
    with browser.jupyter_lab(root) as lab, browser.chromium_page(viewport=(1400, 1000)) as page:
        browser.open_notebook(page, lab, NOTEBOOK)
        browser.run_all_cells(page, timeout=240)
        timer.mark("notebook run in the browser")
        last = page.locator(".jp-Notebook .jp-Cell").count() - 1
        out = browser.cell_output(page, last)  # the explorer's cell
        heatmap = browser.wait_for_plotly(page, 0, scope=out)
        bars = browser.wait_for_plotly(page, 1, scope=out)
        assert browser.plotly_title(heatmap).startswith("attention, epoch 2")
        start = browser.plotly_title(bars)
        assert start.startswith("node ")
        sizes = browser.plotly_bar_sizes(bars)
        assert sum(len(s) for s in sizes) == 3 * 16  # epochs 0, 1, 2 × 16 nodes
        timer.mark("explorer rendered")

        # the heatmap's row 0 (sorted by class) is the first node of the lowest class
        first = int(np.argsort(load_attention(run).labels[0], kind="stable")[0])
        # the node control (<select>s: layer, head, probe, node): a node that is neither
        target = next(n for n in range(16) if n not in (node_of(start), first))
        node_select = out.locator(".widget-dropdown select").nth(3)
        node_select.select_option(value=node_select.locator("option").nth(target)
                                  .get_attribute("value"))
        title = browser.wait_for_plot_change(page, bars, browser.plotly_title, start)
        assert node_of(title) == target
        assert browser.plotly_bar_sizes(bars) != sizes  # the SVG bars were redrawn
        ticks = [t for t in bars.locator(".xaxislayer-above text").all_text_contents() if t]
        assert ticks[0] == str(target)  # the node itself comes first
        timer.mark("node control → bars")

        # a real click on the heatmap's row 0 selects that node
        browser.click_plot(page, heatmap, x=3, y=0)
        title = browser.wait_for_plot_change(page, bars, browser.plotly_title, title)
        assert node_of(title) == first
        assert node_select.evaluate("s => s.selectedIndex") == first
        timer.mark("heatmap click → node")

        shots = browser.save_screenshot(page, tmp_path / "attention_explorer.png",
                                        browser.artifact_path("attention_explorer.png"),
                                        locator=out)
        assert all(p.stat().st_size > 20_000 for p in shots)
        errors = [e for e in page.console_errors if "pageerror" in e]
        assert not errors, errors
    print("\n" + timer.report())
