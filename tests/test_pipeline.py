"""The notebook pipeline on smoke parameters: every notebook runs under papermill and writes its
JSON files; a second run skips finished steps; a bad parameter stops at the first notebook with
the parameter's message and leaves earlier outputs intact; a dead kernel is a failed step with a
one-line message; notebooks keep one contract, and run under plain papermill from the repository
root or from notebooks/ with only `-p run_dir`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

from ibdml import cli, pipeline
from ibdml.config import ParamError
from ibdml.pipeline import NOTEBOOKS, KernelDied, PipelineError, run_pipeline, steps
from ibdml.report import build_report
from ibdml.steps.rundir import RunFolderError

# The parameters every notebook receives from the pipeline (docs/architecture.md).
CONTRACT = ("params_file", "run_dir", "overrides")

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"


@pytest.fixture(scope="module")
def pipeline_run(glyph_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("pipeline") / "run"
    logs: list[str] = []
    state = run_pipeline(SMOKE, run, {"data_root": str(glyph_root)}, log=logs.append)
    return run, state, logs


def test_every_step_ran_and_wrote_its_files(pipeline_run):
    run, state, _ = pipeline_run
    assert [s.name for s in steps()][:4] == ["01_train", "02_evaluate", "03_mpn_inference",
                                             "04_attention_evolution"]
    assert all(state[s.name]["status"] == "done" for s in steps())
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["epoch"] == 1 and history[-1]["loss"]["total"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["recall_at_k"]) == {"1", "2", "4", "8"}
    assert all(0 <= v <= 1 for v in metrics["recall_at_k"].values())
    assert 0 <= metrics["map_at_r"] <= 1 and 0 <= metrics["nmi"] <= 1
    mpn = json.loads((run / "mpn_inference.json").read_text())
    keys = ("recall_at_k", "map_at_r", "nmi", "standard_error")
    assert mpn["without_mpn"] == {k: metrics[k] for k in keys}
    assert set(mpn["with_mpn"]) == set(keys)
    assert all(0 <= v <= 1 for v in mpn["with_mpn"]["recall_at_k"].values())
    assert sum(mpn["r1_transitions"].values()) == 64  # every test image once
    assert (run / "figures" / "mpn_neighbourhoods.png").is_file()
    assert (run / "figures" / "training_curves.html").is_file()
    assert (run / "figures" / "retrieval_gallery.png").stat().st_size > 1000
    attention = json.loads((run / "attention_summary.json").read_text())
    assert attention["recorded"] and attention["epochs"] == [0, 1]
    assert len(attention["verdicts"]["heads"]) == 2  # 1 layer × 2 heads
    for name in ("kl", "same_class", "node", "heatmap"):
        assert (run / "figures" / f"attention_{name}.html").is_file()
        assert (run / "figures" / f"attention_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for s in steps():  # executed notebooks are kept, with their outputs
        executed = nbformat.read(run / "notebooks" / f"{s.name}.ipynb", as_version=4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")


def test_second_run_skips_finished_steps(pipeline_run, glyph_root):
    run, _, _ = pipeline_run
    before = {p: p.stat().st_mtime_ns for p in (run / "notebooks").glob("*.ipynb")}
    logs: list[str] = []
    run_pipeline(SMOKE, run, {"data_root": str(glyph_root)}, log=logs.append)
    assert len([line for line in logs if "skipped" in line]) == len(steps())
    assert before == {p: p.stat().st_mtime_ns for p in (run / "notebooks").glob("*.ipynb")}


def test_report_is_self_contained(pipeline_run):
    run, _, _ = pipeline_run
    page = build_report(run).read_text()
    assert "<script>" in page and "<script src=" not in page  # plotly.js embedded, no CDN
    assert "R@1" in page and "baseline: raw pixels" in page
    assert 'href="notebooks/01_train.ipynb"' in page and 'href="metrics.json"' in page
    assert "data:image/png;base64" in page  # the gallery is inlined
    assert "MPN at inference" in page
    assert "Attention over training" in page and "<b>" in page  # the verdicts, bold


def test_bad_parameter_stops_at_first_notebook_and_keeps_outputs(pipeline_run, glyph_root):
    run, _, _ = pipeline_run
    kept = {name: (run / name).read_bytes() for name in ("metrics.json", "history.json")}
    with pytest.raises(PipelineError) as e:
        run_pipeline(SMOKE, run, {"data_root": str(glyph_root), "n_c": 99}, force=True,
                     log=lambda _: None)
    message = str(e.value)
    assert message.startswith("01_train failed in cell")
    assert "ParamError" in message and "parameter n_c: 99" in message
    assert kept == {name: (run / name).read_bytes() for name in kept}
    failed = nbformat.read(run / "notebooks" / "01_train.ipynb", as_version=4)
    assert failed.metadata.papermill.exception
    state = json.loads((run / "pipeline.json").read_text())
    assert state["01_train"]["status"] == "failed" and state["02_evaluate"]["status"] == "done"


def test_other_parameters_never_share_a_run_folder(pipeline_run, glyph_root):
    run, _, _ = pipeline_run
    with pytest.raises(RunFolderError, match="epochs: 1 → 2"):
        run_pipeline(SMOKE, run, {"data_root": str(glyph_root), "epochs": 2}, log=lambda _: None)


def test_unknown_step(tmp_path):
    with pytest.raises(PipelineError, match="no such notebook.*01_train"):
        run_pipeline(SMOKE, tmp_path / "r", only=["99_nothing"], log=lambda _: None)


ALL_NOTEBOOKS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
VIEWERS = {"06_search": ["search_dir"]}  # reads a search folder (steps/sweep.py), trains nothing


@pytest.mark.parametrize("source", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_contract_and_clean_commit(source):
    # pipeline steps take exactly the contract; a study notebook (05_claims) may add its own; a
    # viewer of a folder that is not a run (06_search) takes that folder alone
    names = list(papermill.inspect_notebook(str(source)))
    if source.stem in VIEWERS:
        assert names == VIEWERS[source.stem]
    else:
        assert names[:len(CONTRACT)] == list(CONTRACT)
        assert names == list(CONTRACT) or source.stem not in {s.name for s in steps()}
    nb = nbformat.read(source, as_version=4)
    assert nb.metadata.kernelspec.name == "ibdml"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "commit without outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    first_code_after = nb.cells[nb.cells.index(tagged[0]) + 1:]
    opening = next(c for c in first_code_after if c.cell_type == "code")
    if source.stem not in VIEWERS:
        assert "open_run(params_file, run_dir, overrides)" in opening.source


def test_notebooks_folder_is_found():
    assert NOTEBOOKS.is_dir()


def test_headless_kernels_never_see_the_calling_jupyter_session(tmp_path, monkeypatch):
    # `!ibdml run …` in a notebook: the calling kernel's JPY_SESSION_NAME must not reach the
    # papermill kernel, or `live_frontend()` there would build widgets nobody answers.
    from ibdml import pipeline

    monkeypatch.setenv("JPY_SESSION_NAME", "/home/user/calling.ipynb")
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "ibdml", "display_name": "ibdml", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("from ibdml.explorer import live_frontend\n"
                                          "assert not live_frontend(), 'sees a front end'")]
    source = tmp_path / "probe.ipynb"
    nbformat.write(nb, source)
    pipeline._execute(source, tmp_path / "out" / "probe.ipynb", {}, tmp_path)
    assert (tmp_path / "out" / "probe.ipynb").is_file()
    assert os.environ["JPY_SESSION_NAME"] == "/home/user/calling.ipynb"  # restored


# --- a dead kernel (killed, out of memory) is a failed step ----------------------------------


def notebook(path: Path, *sources: str) -> Path:
    """A notebook with a parameters cell of the contract, then one code cell per source."""
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "ibdml", "display_name": "ibdml", "language": "python"}
    parameters = nbformat.v4.new_code_cell('params_file = None\nrun_dir = None\noverrides = {}')
    parameters.metadata.tags = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_markdown_cell("dies"),
                *map(nbformat.v4.new_code_cell, sources)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_a_killed_kernel_is_recorded_as_a_failed_step(tmp_path):
    # A real kernel killed mid-cell (SIGKILL, as the out-of-memory killer sends).
    notebooks = tmp_path / "notebooks"
    notebook(notebooks / "01_dies.ipynb", "x = 1",
             "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "never = True")
    run = tmp_path / "run"
    with pytest.raises(KernelDied) as e:
        run_pipeline(SMOKE, run, {"epochs": 1}, notebook_dir=notebooks, log=lambda _: None)
    executed = run.resolve() / "notebooks" / "01_dies.ipynb"
    # cells: parameters, the injected parameters, x = 1, the kill: In [4]
    assert str(e.value) == (
        f"the kernel of 01_dies died (killed or out of memory) while running cell 4; see "
        f"{executed}; re-run `ibdml run {SMOKE} -p epochs=1 --out {run}` to resume")
    state = json.loads((run / "pipeline.json").read_text())["01_dies"]
    assert state["status"] == "failed" and state["notebook"] == str(executed)
    assert state["message"] == str(e.value)
    assert executed.is_file()


def test_the_cli_reports_a_dead_kernel_in_one_line_and_exits_2(tmp_path, monkeypatch, capsys,
                                                               glyph_root):
    # papermill's engine raises nbclient's DeadKernelError after saving the executed notebook.
    from nbclient.exceptions import DeadKernelError

    def dies_in_third_code_cell(source, executed, **kwargs):
        nb = nbformat.read(notebook(Path(executed), "a = 1", "b = 2", "c = 3"), as_version=4)
        for cell in nb.cells[:4]:  # the markdown cell counts for papermill, not for In [N]
            cell.metadata.papermill = {"start_time": "2026-01-01T00:00:00"}
        nbformat.write(nb, executed)
        raise DeadKernelError("Kernel died")

    step = pipeline.Step("02_evaluate", NOTEBOOKS / "02_evaluate.ipynb")
    monkeypatch.setattr(pipeline, "steps", lambda notebook_dir: [step])
    monkeypatch.setattr(pipeline, "stream_notebook_output", lambda: None)
    monkeypatch.setattr(papermill, "execute_notebook", dies_in_third_code_cell)
    run = tmp_path / "run"
    data = f"data_root={glyph_root}"
    argv = ["run", str(SMOKE), "-p", data, "--out", str(run), "--only", "02_evaluate"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "ibdml: error: the kernel of 02_evaluate died (killed or out of memory) while running "
        "cell 3; see ")
    assert f"re-run `ibdml run {SMOKE} -p {data} --out {run} --only 02_evaluate` to resume" in err
    state = json.loads((run / "pipeline.json").read_text())["02_evaluate"]
    assert state["status"] == "failed" and "cell 3" in state["message"]


# --- plain papermill: paths relative to the working directory, defaults from the project -----


def test_notebook_paths_resolve_from_any_working_directory(tmp_path, monkeypatch):
    default_run = ROOT / "outputs" / "glyphs"  # its params.yaml once `make run` has made it
    own = default_run / "params.yaml"
    default_params = own if own.is_file() else ROOT / "params" / "glyphs.yaml"
    tmp_path = tmp_path.resolve()
    for cwd in (ROOT, ROOT / "notebooks", tmp_path):  # tmp_path: found from ibdml's location
        monkeypatch.chdir(cwd)
        assert pipeline.notebook_paths(None, None) == (default_params, default_run)
        assert pipeline.notebook_paths("params/smoke.yaml", "r") == (SMOKE, cwd / "r")
        assert pipeline.notebook_paths(None, None, "outputs/claims")[1] == ROOT / "outputs/claims"
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.yaml").write_text("epochs: 1\n")
    assert pipeline.notebook_paths(None, "run") == (run / "params.yaml", run)  # the run's own
    with pytest.raises(ParamError, match="parameters file nope.yaml does not exist"):
        pipeline.notebook_paths("nope.yaml", "run")


@pytest.mark.parametrize("cwd", [ROOT, ROOT / "notebooks"], ids=["repository root", "notebooks"])
def test_plain_papermill_with_only_run_dir(pipeline_run, tmp_path, cwd):
    # The evaluation notebook on a trained run, as a user types it; run_dir relative to the cwd.
    run = tmp_path / "run"
    shutil.copytree(pipeline_run[0], run)
    (run / "metrics.json").unlink()
    executed = tmp_path / "out.ipynb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JPY_")}
    done = subprocess.run(
        [sys.executable, "-m", "papermill", os.path.relpath(NOTEBOOKS / "02_evaluate.ipynb", cwd),
         str(executed), "-p", "run_dir", os.path.relpath(run, cwd), "--no-progress-bar"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["recall_at_k"]["1"] >= 0
