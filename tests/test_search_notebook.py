"""notebooks/06_search under papermill on a synthetic search.json (the shape `ibdml sweep` writes,
tests/test_figures_search.py): it shows the trials table, the parallel coordinates, the learning
curves and the chosen configuration; a missing search.json stops the first cell with the file and
the command that makes it. The notebook is committed clean and is not a pipeline step."""

import json

import nbformat
import papermill
import pytest

from ibdml.pipeline import KERNEL, NOTEBOOKS, steps
from test_figures_search import synthetic_search

SOURCE = NOTEBOOKS / "06_search.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"


def execute(search_dir, executed):
    papermill.execute_notebook(str(SOURCE), str(executed),
                               parameters={"search_dir": str(search_dir)}, kernel_name=KERNEL,
                               cwd=str(search_dir), progress_bar=False)
    return nbformat.read(executed, as_version=4)


def outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_the_notebook_shows_the_search(tmp_path):
    search_dir = tmp_path / "search"
    search_dir.mkdir()
    (search_dir / "search.json").write_text(json.dumps(synthetic_search()))
    nb = execute(search_dir, tmp_path / "06_search.ipynb")
    markdown = "\n".join(o["data"]["text/markdown"] for o in outputs(nb)
                         if "text/markdown" in o.get("data", {}))
    assert "5 of 6 requested trials" in markdown
    assert "| trial | status | lr | weight_decay |" in markdown and "**t2** (chosen)" in markdown
    assert "**Chosen: trial t2**" in markdown and "| test (evaluated once) | 55.0 |" in markdown
    plots = [o["data"][PLOTLY] for o in outputs(nb) if PLOTLY in o.get("data", {})]
    assert [p["data"][0]["type"] for p in plots] == ["parcoords", "scatter"]
    assert "log10 lr" in [d["label"] for d in plots[0]["data"][0]["dimensions"]]
    assert "t3 (stopped early)" in [line["name"] for line in plots[1]["data"]]


def test_a_missing_search_names_the_file_and_the_command(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as e:
        execute(tmp_path, tmp_path / "06_search.ipynb")
    assert e.value.ename == "FileNotFoundError"
    assert f"{tmp_path.resolve() / 'search.json'} does not exist" in e.value.evalue
    assert "ibdml sweep params/glyphs.yaml --space params/search/glyphs.yaml" in e.value.evalue


def test_committed_clean_with_one_parameter_and_not_a_pipeline_step():
    assert list(papermill.inspect_notebook(str(SOURCE))) == ["search_dir"]
    nb = nbformat.read(SOURCE, as_version=4)
    assert nb.metadata.kernelspec.name == KERNEL
    assert all(not c.outputs and c.execution_count is None
               for c in nb.cells if c.cell_type == "code")
    assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])] == [nb.cells[1]]
    assert "06_search" not in [s.name for s in steps()]
