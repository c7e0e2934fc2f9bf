"""Proof of the real-browser harness (tests/browser.py) on a small self-made notebook.

JupyterLab + headless system Chromium: run all cells, see the plotly FigureWidget render, change
an ipywidgets Dropdown and see the figure's title and bars change, click a heatmap row and see the
Python on_click callback set the Dropdown, and save a screenshot.
"""

import textwrap

import nbformat
import pytest

import browser

pytestmark = pytest.mark.browser

SETUP = """\
import ipywidgets as widgets
import plotly.graph_objects as go

SERIES = {"alpha": [1, 3, 2, 4], "beta": [4, 1, 3, 2], "gamma": [2, 2, 5, 1]}
NODES = ["n0", "n1", "n2", "n3"]
"""

WIDGETS = """\
dropdown = widgets.Dropdown(options=list(SERIES), value="alpha", description="series")
bars = go.FigureWidget(
    go.Bar(x=NODES, y=SERIES["alpha"]),
    layout=dict(title=dict(text="series alpha"), width=520, height=300,
                margin=dict(l=40, r=10, t=40, b=30)),
)
heat = go.FigureWidget(
    go.Heatmap(z=list(SERIES.values()), x=NODES, y=list(SERIES), showscale=False),
    layout=dict(title=dict(text="click a row"), width=520, height=260,
                margin=dict(l=60, r=10, t=40, b=30)),
)
clicked = widgets.Label("clicked: nothing")


def show_series(change):
    with bars.batch_update():
        bars.data[0].y = SERIES[change["new"]]
        bars.layout.title.text = f"series {change['new']}"


def select_row(trace, points, state):
    # Heatmap clicks carry the row's y label; point_inds holds (row, col) pairs.
    clicked.value = f"clicked: ys={list(points.ys)} inds={list(points.point_inds)}"
    if points.ys:
        dropdown.value = points.ys[0]


dropdown.observe(show_series, names="value")
heat.data[0].on_click(select_row)
widgets.VBox([dropdown, bars, heat, clicked])
"""


def write_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(WIDGETS)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_widget_notebook_in_real_browser(tmp_path):
    browser.require_browser()
    timer = browser.Timer()
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "explorer.ipynb")
    with browser.jupyter_lab(root) as lab:
        timer.mark("server up")
        with browser.chromium_page() as page:
            timer.mark("chromium up")
            browser.open_notebook(page, lab, "explorer.ipynb")
            timer.mark("notebook open, kernel idle")
            state = browser.run_all_cells(page)
            assert [c["count"] for c in state["cells"]] == [1, 2]
            timer.mark("cells run")

            bars = browser.wait_for_plotly(page, 0)
            heat = browser.wait_for_plotly(page, 1)
            timer.mark("plots rendered")
            assert browser.plotly_title(bars) == "series alpha"
            traces = browser.plotly_traces(bars)
            assert traces[0]["type"] == "bar" and list(traces[0]["y"]) == [1, 3, 2, 4]
            (sizes_before,) = browser.plotly_bar_sizes(bars)  # one bar trace, 4 bars
            assert len(sizes_before) == 4 and all(s > 0 for s in sizes_before)
            assert sizes_before[0] < sizes_before[3]  # y = 1 ... 4

            select = page.locator(".widget-dropdown select")
            assert select.input_value() == "alpha"
            select.select_option("gamma")
            title = browser.wait_for_plot_change(page, bars, browser.plotly_title, "series alpha")
            assert title == "series gamma"
            assert list(browser.plotly_traces(bars)[0]["y"]) == [2, 2, 5, 1]
            (sizes_after,) = browser.plotly_bar_sizes(bars)
            assert sizes_after != sizes_before  # the SVG bars were redrawn
            assert max(sizes_after) == sizes_after[2]  # y = [2, 2, 5, 1]
            timer.mark("dropdown -> figure")

            # A real mouse click on the heatmap's row "beta" (category index 1) fires on_click,
            # whose Python callback sets the dropdown, which redraws the bar chart.
            browser.click_plot(page, heat, x="n2", y=1)  # a category name or index
            page.wait_for_function(
                "() => document.querySelector('.widget-dropdown select').value === 'beta'",
                timeout=10_000,
            )
            assert browser.wait_for_plot_change(
                page, bars, browser.plotly_title, "series gamma") == "series beta"
            label = page.locator(".widget-label", has_text="clicked:").inner_text()
            assert "beta" in label, label
            timer.mark("heatmap click -> dropdown")

            shots = browser.save_screenshot(page, tmp_path / "browser_harness.png",
                                            browser.artifact_path("browser_harness.png"),
                                            locator=browser.cell_output(page, 1))
            assert all(p.stat().st_size > 10_000 for p in shots)
            timer.mark("screenshot")
            errors = [e for e in page.console_errors if "pageerror" in e]
            assert not errors, errors
    timer.mark("teardown")
    print("\n" + timer.report())
    print(textwrap.indent("\n".join(map(str, shots)), "  screenshot: "))
