"""The notebook pipeline: `ibdml run PARAMS` executes notebooks/NN_*.ipynb in order with papermill.

Each notebook receives the same three parameters (the parameter contract):

    params_file   the run's parameters YAML
    run_dir       the run folder: every file a notebook reads or writes lives there
    overrides     {key: value} applied on top of params_file

and writes its executed copy to <run>/notebooks/. <run>/pipeline.json records which steps
finished, so running the same command again skips them (training itself resumes from its last
checkpoint); --force redoes them. A failing notebook stops the pipeline with the notebook's name,
the failing cell and the error; a kernel that dies (killed, out of memory) stops it the same way.
Everything written before stays, and so does the failed notebook; pipeline.json records the
failed step with its notebook and message.

A notebook run by hand or by plain papermill resolves its paths with `notebook_paths`: relative
paths are relative to the kernel's working directory, and None picks the project's defaults
(docs/usage.md, "The notebooks in JupyterLab").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ibdml.config import ParamError, load_params
from ibdml.steps.rundir import (lock_held_for_children, prepare_run_dir, read_json, run_lock,
                                write_json)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "ibdml"
DEFAULT_PARAMS = "params/glyphs.yaml"  # a notebook's parameters file when none is given


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names it, the cell and the error."""


class KernelDied(PipelineError):
    """A notebook's kernel died (killed, out of memory); the message is one line: the notebook,
    the cell, the executed notebook and the command that resumes."""


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


def resume_command(command: str, params_file: str | Path, out: str | Path,
                   overrides: dict[str, Any] | None, *extra: str) -> str:
    """The shell command that runs `ibdml <command>` again with the same parameters and folder
    (what a failure message tells the user to re-run)."""
    words = ["ibdml", command, str(params_file)]
    for key, value in (overrides or {}).items():
        words += ["-p", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return shlex.join([*words, "--out", str(out), *extra])


def run_pipeline(params_file: str | Path, run_dir: str | Path,
                 overrides: dict[str, Any] | None = None, *, only: list[str] | None = None,
                 force: bool = False, notebook_dir: Path = NOTEBOOKS,
                 log: Callable[[str], None] = print) -> dict:
    """Execute the pipeline's notebooks into run_dir, then write <run>/report.html; returns the
    pipeline state ({step: {status, seconds, finished}}; a failed step: {status, seconds,
    notebook, message})."""
    from ibdml.report import build_report  # plotly: only once the notebooks have run

    rerun = resume_command("run", params_file, run_dir, overrides,
                           *(["--only", *only] if only else []))
    run_dir = Path(run_dir).resolve()
    # One lock for the whole pipeline; its kernels, this process's children, write under it
    # (docs/errors.md).
    with run_lock(run_dir), lock_held_for_children(run_dir):
        _claim(params_file, run_dir, overrides)
        parameters = {"params_file": str(Path(params_file).resolve()), "run_dir": str(run_dir),
                      "overrides": dict(overrides or {})}
        state = _run_steps(_select(steps(notebook_dir), only), run_dir, parameters, force,
                           notebook_dir, log, rerun)
        log(f"report: {build_report(run_dir)}")
    return state


def _run_steps(selected: list, run_dir: Path, parameters: dict[str, Any], force: bool,
               notebook_dir: Path, log: Callable[[str], None], rerun: str) -> dict:
    """Execute the selected steps in order, recording each in <run>/pipeline.json."""
    state_file = run_dir / "pipeline.json"
    state = read_json(state_file) if state_file.is_file() else {}
    for step in selected:
        executed = run_dir / "notebooks" / f"{step.name}.ipynb"
        if state.get(step.name, {}).get("status") == "done" and executed.is_file() and not force:
            log(f"[{step.name}] done before, skipped (--force to redo)")
            continue
        log(f"[{step.name}] running → {executed}")
        start = time.time()
        try:
            _execute(step.source, executed, parameters, notebook_dir, rerun=rerun)
        except PipelineError as e:
            state[step.name] = {"status": "failed", "seconds": round(time.time() - start, 1),
                                "notebook": str(executed), "message": str(e)}
            write_json(state_file, state)
            raise
        state[step.name] = {"status": "done", "seconds": round(time.time() - start, 1),
                            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(state_file, state)
        log(f"[{step.name}] done in {state[step.name]['seconds']:.0f} s")
    return state


def _execute(source: Path, executed: Path, parameters: dict[str, Any], notebook_dir: Path, *,
             rerun: str | None = None) -> None:
    """Run one notebook with papermill into `executed`; a failing cell is a PipelineError naming
    it, a dead kernel a KernelDied naming the cell it was running (the executed notebook is kept
    either way). `rerun`: the command that resumes, for the messages."""
    import papermill
    from nbclient.exceptions import DeadKernelError  # papermill's execution engine

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
    except DeadKernelError:
        cell = _dying_cell(executed)
        where = f"while running cell {cell}" if cell else "before it ran a cell"
        again = f"`{rerun}`" if rerun else "the same command"
        raise KernelDied(f"the kernel of {source.stem} died (killed or out of memory) {where}; "
                         f"see {executed}; re-run {again} to resume") from None


def _dying_cell(executed: Path) -> int | None:
    """The number (In [N], counted over code cells) of the last cell papermill started in the
    executed notebook, which it saves as each cell starts and once more when the kernel is gone;
    None when no cell had started or the notebook cannot be read."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except (OSError, ValueError):  # missing, or not a notebook (NotJSONError is a ValueError)
        return None
    code = [c for c in nb.cells if c.cell_type == "code"]
    started = [n for n, c in enumerate(code, 1)
               if c.metadata.get("papermill", {}).get("start_time")]
    return started[-1] if started else None


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


# The study notebooks: {command: (notebook, the file it writes into the study folder)}.
STUDIES = {"claims": ("05_claims.ipynb", "claims.json"),
           "attention-study": ("07_attention_study.ipynb", "attention_study.json")}


def run_study_notebook(command: str, params_file: str | Path, study_dir: str | Path,
                       seeds: list[int], overrides: dict[str, Any] | None = None, *,
                       address: str | None = None, settings: list[str] | None = None,
                       notebook_dir: Path = NOTEBOOKS,
                       log: Callable[[str], None] = print) -> Path:
    """`ibdml claims` / `ibdml attention-study`: execute the study's notebook (every run of the
    study as Ray tasks, on a local Ray or the cluster at `address`, resuming what is done) into
    <study>/notebooks/; returns the summary file it writes (STUDIES). `settings` (the attention
    study only) restricts it to some of its settings."""
    notebook, summary = STUDIES[command]
    rerun = resume_command(command, params_file, study_dir, overrides, "--seeds",
                           *map(str, seeds), *(["--address", address] if address else []),
                           *(["--settings", *settings] if settings else []))
    study_dir = Path(study_dir).resolve()
    source = notebook_dir / notebook
    executed = study_dir / "notebooks" / source.name
    log(f"[{source.stem}] running → {executed}")
    _execute(source, executed, {"params_file": str(Path(params_file).resolve()),
                                "run_dir": str(study_dir), "overrides": dict(overrides or {}),
                                "seeds": list(seeds), "address": address,
                                **({"settings": settings} if settings else {})}, notebook_dir,
             rerun=rerun)
    return study_dir / summary


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


# --- paths in a notebook run by hand (docs/usage.md, "The notebooks in JupyterLab") -----------


def project_root(start: Path | None = None) -> Path | None:
    """The project folder (the one holding params/ and notebooks/): the working directory or
    the nearest folder above it that is one, else the checkout ibdml is imported from; None
    when neither is."""
    start = Path.cwd() if start is None else Path(start).resolve()
    for folder in (start, *start.parents, NOTEBOOKS.parent):
        if (folder / "params").is_dir() and (folder / "notebooks").is_dir():
            return folder
    return None


def notebook_paths(params_file: str | Path | None, run_dir: str | Path | None,
                   default_run_dir: str = "") -> tuple[Path, Path]:
    """A notebook's (params_file, run_dir) as absolute paths, from its parameters cell.

    Relative paths are relative to the kernel's working directory (papermill: where it was
    started, or its --cwd; JupyterLab: the notebook's folder); a relative params_file that is
    not there is also looked up in the project folder (`project_root`). Defaults (None):
    run_dir → <project>/<default_run_dir> (default: outputs/<params file name>, as `ibdml run`);
    params_file → the run folder's params.yaml when it has one (a notebook pointed at an
    existing run takes that run's parameters), else <project>/params/glyphs.yaml.
    """
    root = project_root()
    if run_dir is None:
        if root is None:
            raise ParamError(f"run_dir is not set and {Path.cwd()} is not inside the project "
                             "(no params/ and notebooks/ above it): pass -p run_dir DIR")
        name = Path(params_file).stem if params_file else Path(DEFAULT_PARAMS).stem
        run_dir = root / (default_run_dir or f"outputs/{name}")
    run = Path(run_dir).expanduser().resolve()
    if params_file is None:
        own = run / "params.yaml"
        return (own if own.is_file() else _find_params(DEFAULT_PARAMS, root)), run
    return _find_params(params_file, root), run


def _find_params(params_file: str | Path, root: Path | None) -> Path:
    path = Path(params_file).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path] + (
        [root / path] if root is not None else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ParamError(f"parameters file {params_file} does not exist (looked for "
                     f"{' and '.join(map(str, candidates))}); pass one of params/*.yaml")
