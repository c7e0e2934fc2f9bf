"""Run folders: one folder per experiment holding every file a later step needs
(docs/architecture.md, "Run folders").

    <run>/params.yaml        the resolved parameters (a run folder never changes parameters)
    <run>/checkpoints/       last.pt (every epoch), best.pt (select_on val/test)
    <run>/history.json       one row per epoch
    <run>/metrics.json       the evaluation of the selected checkpoint
    <run>/embeddings/        cached test embeddings
    <run>/attention/         the MPN's attention on probe batches over training

Every file is written atomically (temporary file + rename), so an interrupted run never leaves a
half-written file behind that a later step would trust. The steps are the only code that reads
or writes a run folder, and they do it through this module.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ibdml import device as devices
from ibdml.config import Params, load_params, make_params
from ibdml.model import IntraBatchModel, build_model


class RunFolderError(ValueError):
    """A folder that is not a run folder, or holds a run with other parameters."""


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600: a run folder's files are for others to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_torch(path: Path, obj: Any) -> None:
    _atomic(Path(path), lambda f: torch.save(obj, f))


def write_npy(path: Path, array: np.ndarray) -> None:
    _atomic(Path(path), lambda f: np.save(f, array))


def save_figures(run_dir: Path, figures: dict) -> list[Path]:
    """Write {stem: figure or (figures, ...)} into <run>/figures/ (figures.serialise.figure_files:
    plotly → <stem>.html, matplotlib or PIL → <stem>.png); returns the paths written."""
    from ibdml.figures.serialise import figure_files  # plotly and matplotlib: only when drawing

    folder = Path(run_dir) / "figures"
    written = []
    for name, data in figure_files(figures).items():
        write_bytes(folder / name, data)
        written.append(folder / name)
    return written


def params_path(run_dir: Path) -> Path:
    return Path(run_dir) / "params.yaml"


def read_run_params(run_dir: Path) -> Params:
    path = params_path(run_dir)
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no params.yaml); train first with "
                          "`ibdml train PARAMS --out RUN_DIR`")
    return make_params(yaml.safe_load(path.read_text()))


# Where the data lives and how fast it is read: a run can move between machines or disks and stay
# the same run, so these may change; params.yaml then records the new values.
LOCATION_PARAMS = ("data_root", "num_workers", "eval_batch_size")


def prepare_run_dir(run_dir: Path, p: Params) -> Path:
    """Create the run folder with its params.yaml, or check that an existing one was made with
    the same parameters: two parameter sets never share a folder silently (LOCATION_PARAMS
    aside, which are updated)."""
    run_dir = Path(run_dir)
    path = params_path(run_dir)
    if path.is_file():
        # A parameter missing from the file was added after the run was made: the run used the
        # behaviour its default describes (new parameters default to the old behaviour).
        old = {**Params().to_dict(), **(yaml.safe_load(path.read_text()) or {})}
        changed = {k: (old.get(k), v) for k, v in p.to_dict().items() if old.get(k) != v}
        differ = {k: c for k, c in changed.items() if k not in LOCATION_PARAMS}
        if differ:
            diff = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in sorted(differ.items()))
            raise RunFolderError(f"run folder {run_dir} holds a run with other parameters "
                                 f"({diff}); use another --out, or delete the folder to start "
                                 "over")
        if changed:
            write_text(path, p.to_yaml())
        return run_dir
    write_text(path, p.to_yaml())
    return run_dir


def open_run(params_file: str | Path | None, run_dir: str | Path,
             overrides: dict[str, Any] | None = None) -> Params:
    """What every notebook does first: validate its parameters and claim the run folder.
    A bad value raises ParamError naming it; another run's folder raises RunFolderError."""
    p = load_params(params_file, overrides)
    prepare_run_dir(Path(run_dir), p)
    return p


def load_torch(path: Path) -> Any:
    """A file a step saved with `save_torch` (checkpoints, embedding caches), on the CPU."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def selected_checkpoint(run_dir: Path, p: Params) -> Path:
    """The checkpoint the run reports: last.pt, or best.pt under select_on val/test."""
    name = "last.pt" if p.select_on == "last" else "best.pt"
    path = Path(run_dir) / "checkpoints" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; train the run first "
                                f"(`ibdml train {Path(run_dir) / 'params.yaml'} --out {run_dir}`)")
    return path


def load_model(run_dir: Path, p: Params, device: torch.device) -> tuple[IntraBatchModel, int]:
    """The selected checkpoint's model on `device`, and its epoch. The number of training
    classes is the aux classifier's: no need to read the dataset again."""
    state = load_torch(selected_checkpoint(run_dir, p))
    weights = state["model"]
    model = build_model(p, weights["backbone.classifier.weight"].shape[0])  # [C, D]
    model.load_state_dict(weights)
    return devices.prepare_model(model, device), state["epoch"]


def environment(device: torch.device) -> dict[str, Any]:
    """What a JSON sidecar records about where a number came from (docs/protocol.md)."""
    try:
        import faiss
        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "faiss": faiss_version, "platform": platform.platform(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "git": _git_commit()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
