"""The notebook pipeline: `ibdml run PARAMS` executes notebooks/NN_*.ipynb in order with papermill.

Each notebook receives the same three parameters (the parameter contract):

    params_file   the run's parameters YAML
    run_dir       the run folder: every file a notebook reads or writes lives there
    overrides     {key: value} applied on top of params_file

and writes its executed copy to <run>/notebooks/. <run>/pipeline.json records which steps
finished, so running the same command again skips them (training itself resumes from its last
checkpoint); --force redoes them. A failing notebook stops the pipeline with the notebook's name,
the failing cell and the error; everything written before stays, and so does the failed notebook.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ibdml.config import ParamError, load_params
from ibdml.report import build_report
from ibdml.steps.rundir import prepare_run_dir, read_json, write_json

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "ibdml"


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names it, the cell and the error."""


@dataclass
class Step:
    name: str  # e.g. "01_train"
    source: Path


def _is_study(path: Path) -> bool:
    """A study notebook (05_claims) drives several runs of its own: its metadata says
    {"ibdml": {"study": true}}, and `ibdml run` leaves it out."""
    import nbformat

    return bool(nbformat.read(path, as_version=4).metadata.get("ibdml", {}).get("study"))


def steps(notebook_dir: Path = NOTEBOOKS) -> list[Step]:
    """The pipeline's notebooks (one run each), in the order of their number prefix."""
    found = [p for p in sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb")) if not _is_study(p)]
    if not found:
        raise PipelineError(f"no notebooks NN_*.ipynb in {notebook_dir}")
    return [Step(path.stem, path) for path in found]


def _select(all_steps: list[Step], only: list[str] | None) -> list[Step]:
    if not only:
        return all_steps
    names = {s.name for s in all_steps}
    unknown = [o for o in only if o not in names]
    if unknown:
        raise PipelineError(f"--only {', '.join(unknown)}: no such notebook; the steps are "
                            f"{', '.join(sorted(names))}")
    return [s for s in all_steps if s.name in only]


def _claim(params_file: str | Path, run_dir: Path, overrides: dict[str, Any] | None) -> None:
    """Refuse, before running anything, a run folder that holds a run with other parameters.
    Invalid parameters are left to the first notebook, which stops in its first cell with the
    parameter's message (as it does when run by hand)."""
    try:
        p = load_params(params_file, overrides)
    except ParamError:
        return
    prepare_run_dir(run_dir, p)


def run_pipeline(params_file: str | Path, run_dir: str | Path,
                 overrides: dict[str, Any] | None = None, *, only: list[str] | None = None,
                 force: bool = False, notebook_dir: Path = NOTEBOOKS,
                 log: Callable[[str], None] = print) -> dict:
    """Execute the pipeline's notebooks into run_dir, then write <run>/report.html; returns the
    pipeline state ({step: {status, seconds, finished}})."""
    run_dir = Path(run_dir).resolve()
    _claim(params_file, run_dir, overrides)
    state_file = run_dir / "pipeline.json"
    state = read_json(state_file) if state_file.is_file() else {}
    parameters = {"params_file": str(Path(params_file).resolve()), "run_dir": str(run_dir),
                  "overrides": dict(overrides or {})}
    for step in _select(steps(notebook_dir), only):
        executed = run_dir / "notebooks" / f"{step.name}.ipynb"
        if state.get(step.name, {}).get("status") == "done" and executed.is_file() and not force:
            log(f"[{step.name}] done before, skipped (--force to redo)")
            continue
        log(f"[{step.name}] running → {executed}")
        start = time.time()
        try:
            _execute(step.source, executed, parameters, notebook_dir)
        except PipelineError:
            state[step.name] = {"status": "failed", "seconds": round(time.time() - start, 1)}
            write_json(state_file, state)
            raise
        state[step.name] = {"status": "done", "seconds": round(time.time() - start, 1),
                            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(state_file, state)
        log(f"[{step.name}] done in {state[step.name]['seconds']:.0f} s")
    log(f"report: {build_report(run_dir)}")
    return state


def _execute(source: Path, executed: Path, parameters: dict[str, Any],
             notebook_dir: Path) -> None:
    """Run one notebook with papermill into `executed`; a failing cell is a PipelineError naming
    it (the executed notebook is kept)."""
    import papermill

    executed.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _no_jupyter_session():
            papermill.execute_notebook(source, executed, parameters=parameters,
                                       kernel_name=KERNEL, cwd=str(notebook_dir),
                                       log_output=True, progress_bar=False)
    except papermill.PapermillExecutionError as e:
        raise PipelineError(
            f"{source.stem} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
            f"The executed notebook is kept for inspection: {executed}\n"
            "Outputs written so far are kept; fix the cause and run the same command again "
            "to resume.") from None


@contextlib.contextmanager
def _no_jupyter_session():
    """Papermill's kernels inherit this process's environment. Started from inside Jupyter (a
    `!ibdml run …` cell, or `run_pipeline` called in a notebook), that holds the JPY_SESSION_NAME
    the server gave the calling kernel, and `explorer.live_frontend()` in the headless kernel
    would then build widgets nobody can answer. Removed while papermill runs, restored after."""
    session = os.environ.pop("JPY_SESSION_NAME", None)
    try:
        yield
    finally:
        if session is not None:
            os.environ["JPY_SESSION_NAME"] = session


def run_claims_notebook(params_file: str | Path, study_dir: str | Path, seeds: list[int],
                        overrides: dict[str, Any] | None = None, *,
                        notebook_dir: Path = NOTEBOOKS,
                        log: Callable[[str], None] = print) -> Path:
    """`ibdml claims`: execute 05_claims (both variants × every seed, resuming what is done) into
    <study>/notebooks/05_claims.ipynb; returns <study>/claims.json."""
    study_dir = Path(study_dir).resolve()
    source = notebook_dir / "05_claims.ipynb"
    executed = study_dir / "notebooks" / source.name
    log(f"[{source.stem}] running → {executed}")
    _execute(source, executed, {"params_file": str(Path(params_file).resolve()),
                                "run_dir": str(study_dir), "overrides": dict(overrides or {}),
                                "seeds": list(seeds)}, notebook_dir)
    return study_dir / "claims.json"


def stream_notebook_output() -> None:
    """Show what the notebooks print while they run (papermill logs cell output at INFO)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("    %(message)s"))
    # papermill's cell markers and reprs of rich outputs are noise in a terminal.
    handler.addFilter(lambda r: not re.match(r"(Executing|Ending) Cell|<.* object>$|"
                                             r"(Input|Output) Notebook|Working directory|"
                                             r"Executing notebook with kernel", r.getMessage()))
    logger = logging.getLogger("papermill")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
