"""Training figures and tables, the retrieval gallery, and the serialisers (figures to file
contents, nothing written)."""

import io

import numpy as np
import plotly.graph_objects as go
import pytest
from matplotlib.figure import Figure
from PIL import Image

from ibdml.figures import PLOTLY_JS, figure_files, to_html, to_png
from ibdml.figures.gallery import CORRECT, QUERY, WRONG, gallery_figure, gallery_image
from ibdml.figures.training import history_table, recall_table, training_curves


def metrics(r1, r2, map_r, nmi=None):
    return {"recall_at_k": {"1": r1, "2": r2}, "map_at_r": map_r, "nmi": nmi}


HISTORY = [
    {"epoch": 1, "loss": {"total": 2.0, "backbone": 1.25, "mpn": 0.75}, "lr": 1e-4,
     "seconds": 3.2},
    {"epoch": 2, "loss": {"total": 1.5, "backbone": 0.75, "mpn": 0.75}, "lr": 1e-5,
     "seconds": 2.9, "test": metrics(0.5, 0.6, 0.125), "val": metrics(0.25, 0.5, 0.0625)},
]


def test_training_curves_a_line_per_loss_head_lr_and_evaluated_split():
    fig = training_curves(HISTORY)
    names = [t.name for t in fig.data]
    assert names == ["loss: total", "loss: backbone", "loss: mpn", "lr", "val R@1", "val MAP@R",
                     "test R@1", "test MAP@R"]
    test_r1 = fig.data[names.index("test R@1")]
    assert list(test_r1.x) == [2] and list(test_r1.y) == [0.5]
    assert fig.layout.yaxis2.type == "log"
    assert len(training_curves([]).data) == 1  # an empty history: just the (empty) lr line


def test_recall_table_in_percent_with_a_dash_for_missing_nmi():
    table = recall_table({"a": metrics(0.5, 0.625, 0.25, nmi=0.75), "b": metrics(1, 1, 1)},
                         [1, 2])
    assert table.splitlines() == ["| | R@1 | R@2 | NMI | MAP@R |", "|---|---|---|---|---|",
                                  "| a | 50.0 | 62.5 | 75.0 | 25.0 |",
                                  "| b | 100.0 | 100.0 | – | 100.0 |"]


def test_history_table_one_row_per_epoch_test_scores_where_evaluated():
    lines = history_table(HISTORY).splitlines()
    assert lines[0] == "| epoch | loss | backbone | MPN | lr | s | test R@1 | test MAP@R |"
    assert lines[2] == "| 1 | 2.000 | 1.250 | 0.750 | 0.0001 | 3 | – | – |"
    assert lines[3] == "| 2 | 1.500 | 0.750 | 0.750 | 1e-05 | 3 | 0.500 | 0.125 |"
    ce_only = [{"epoch": 1, "loss": {"total": 1.0, "backbone": 1.0}, "lr": 0.1, "seconds": 1}]
    assert history_table(ce_only).splitlines()[2] == "| 1 | 1.000 | 1.000 | – | 0.1 | 1 | – | – |"


def test_gallery_frames_queries_grey_and_neighbours_by_class(tmp_path):
    paths = []
    for i, shade in enumerate((0, 255, 128)):
        paths.append(tmp_path / f"{i}.png")
        Image.new("L", (10, 10), shade).save(paths[-1])
    correct = np.array([[True, False]])
    image = gallery_image([paths[0]], [[paths[1], paths[2]]], correct, tile=8, border=2)
    step = 8 + 2 * 2
    assert image.size == (step * 3 + 4, step)
    assert image.getpixel((0, 0)) == QUERY  # the query's frame
    assert image.getpixel((step + 4, 0)) == CORRECT and image.getpixel((2 * step + 4, 0)) == WRONG
    assert image.getpixel((step + 4 + 5, 5)) == (255, 255, 255)  # the first neighbour's pixels
    captioned = gallery_image([paths[0]], [[paths[1], paths[2]]], correct, [["a", "b"]], tile=8,
                              border=2)
    assert captioned.height == step + 14  # a line of text under each row
    fig = gallery_figure(image, k=2)
    assert np.asarray(fig.data[0].z).shape == (step, step * 3 + 4, 3)
    assert "top-2" in fig.layout.title.text


def test_to_html_loads_plotly_from_beside_it_or_not_at_all():
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    page = to_html(fig)
    assert page.startswith("<html>") or page.lower().startswith("<!doctype html>")
    assert f'src="{PLOTLY_JS}"' in page
    fragment = to_html(fig, full_html=False)
    assert "<html" not in fragment and "<script src" not in fragment and PLOTLY_JS not in fragment


def test_to_png_of_a_matplotlib_figure_and_a_pil_image():
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [0, 1])
    data = to_png(fig)
    assert data[:4] == b"\x89PNG"
    assert Image.open(io.BytesIO(data)).size[0] > 100  # 2 in at 110 dpi, trimmed
    image = Image.new("RGB", (5, 3), (1, 2, 3))
    again = Image.open(io.BytesIO(to_png(image)))
    assert again.size == (5, 3) and again.getpixel((0, 0)) == (1, 2, 3)


def test_figure_files_names_each_figure_by_its_kind():
    plot, static = go.Figure(), Figure(figsize=(1, 1))
    files = figure_files({"a": (plot, static), "b": Image.new("RGB", (2, 2))})
    assert sorted(files) == ["a.html", "a.png", "b.png", PLOTLY_JS]
    assert f'src="{PLOTLY_JS}"'.encode() in files["a.html"]
    assert files["a.png"][:4] == files["b.png"][:4] == b"\x89PNG"
    assert len(files[PLOTLY_JS]) > 1_000_000  # the whole plotly.js bundle
    assert PLOTLY_JS not in figure_files({"b": static})
    with pytest.raises(TypeError, match="c: expected"):
        figure_files({"c": "not a figure"})
