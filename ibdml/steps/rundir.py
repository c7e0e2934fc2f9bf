"""Run folders: one folder per experiment holding every file a later step needs
(docs/architecture.md, "Run folders").

    <run>/params.yaml        the resolved parameters (a run folder never changes parameters)
    <run>/checkpoints/       last.pt (every epoch), best.pt
    <run>/history.json       one row per epoch
    <run>/metrics.json       the evaluation of the selected checkpoint
    <run>/embeddings/        cached test embeddings
    <run>/attention/         the MPN's attention on probe batches over training
    <run>/.lock              the lock of the process writing the folder; .lock.holder: who

Every file is written atomically (temporary file + rename) with the permissions the user's umask
gives, so an interrupted run never leaves a half-written file behind that a later step would
trust. Every torch file is read with torch.load(weights_only=True): a run folder's files hold
tensors and plain Python values only, and a file that needs pickle to load is refused (it could
run code). The steps are the only code that reads or writes a run folder, and they do it through
this module.

One writer at a time. Each step that writes (train, evaluate_run, evaluate_mpn_inference,
summarise_run, save_figures, run_claims, and prepare_run_dir, which open_run calls) holds
`run_lock(run_dir)` while it runs: an exclusive flock on <run>/.lock, taken without waiting, so a
second process fails at once with RunLocked naming the holder's PID and host. The operating system
drops a flock when its process dies, so a killed run never leaves the folder locked, and the next
holder removes the temporary files a killed writer left. A notebook kernel therefore holds the
folder only while one of its steps runs, not for its whole life: open_run checks that the folder
is free (it takes and releases the lock while it claims params.yaml), and each step takes the lock
again while it writes; an idle JupyterLab kernel never blocks a command line run. Re-entrance:
filelock (4.x) keeps one lock object per path when asked (is_singleton=True) and counts nested
acquisitions on it per thread, so a step that calls another step on the same folder takes the
lock once; nothing here keeps a registry of its own. `ibdml run` holds the lock for the whole
pipeline and starts the notebook kernels with IBDML_RUN_LOCK_HELD=<absolute run folder>: in
those child processes run_lock finds the folder locked by their parent and goes on without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from filelock import FileLock, Timeout

from ibdml import device as devices
from ibdml.config import Params, load_params, make_params
from ibdml.model import IntraBatchModel, build_model


class RunFolderError(ValueError):
    """A folder that is not a run folder, or holds a run with other parameters."""


class RunLocked(RunFolderError):
    """Another live process is writing the run folder."""


class UnreadableFile(RunFolderError):
    """A file of a run folder is truncated or damaged."""


# Where Linux shows a process's umask (since 4.7); a test points it elsewhere to try the fallback.
PROC_STATUS = Path("/proc/self/status")


def _umask() -> int:
    """The process's umask. PROC_STATUS reads it without changing it; elsewhere os.umask must
    set a value to return the old one, and another thread creating a file in between would get
    that value: 0o077, too private rather than too open."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o077)
    os.umask(old)
    return old


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes 0600; a run folder's files get what the umask gives any new file
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# What _atomic's temporary files are called: ".<name>.<8 random characters>.tmp" (mkstemp).
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


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


# Set by `ibdml run` in its notebook kernels' environment: the run folder whose lock the parent
# process holds for them (see the module docstring).
LOCK_HELD_ENV = "IBDML_RUN_LOCK_HELD"
LOCK, HOLDER = ".lock", ".lock.holder"


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the run folder's lock for the body (the folder is made if missing); yields the folder.
    Raises RunLocked at once when another process holds it. Re-entrant within a thread."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # one lock object per path while it is held: nested run_lock calls count on it (filelock)
    lock = FileLock(run_dir / LOCK, timeout=0, is_singleton=True)
    try:
        lock.acquire()
    except Timeout:
        if not _held_by_parent(run_dir):
            raise RunLocked(_locked_message(run_dir)) from None
        lock = None  # the parent process holds it for this one (LOCK_HELD_ENV)
    if lock is None:
        yield run_dir
        return
    try:
        if lock.lock_counter == 1:  # taken now, not re-entered
            _remove_temporaries(run_dir)
            write_json(run_dir / HOLDER, {"pid": os.getpid(), "host": socket.gethostname(),
                                          "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                          "command": " ".join(sys.argv)[:300]})
        yield run_dir
    finally:
        if lock.lock_counter == 1:
            (run_dir / HOLDER).unlink(missing_ok=True)
        lock.release()


@contextlib.contextmanager
def lock_held_for_children(run_dir: str | Path) -> Iterator[None]:
    """Tell the processes started in the body (the pipeline's notebook kernels, a run's training
    processes), which inherit this environment, that this process holds run_dir's lock for them
    (LOCK_HELD_ENV); restored afterwards."""
    before = os.environ.get(LOCK_HELD_ENV)
    os.environ[LOCK_HELD_ENV] = str(Path(run_dir).resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(LOCK_HELD_ENV, None)
        else:
            os.environ[LOCK_HELD_ENV] = before


def _held_by_parent(run_dir: Path) -> bool:
    held = os.environ.get(LOCK_HELD_ENV)
    return bool(held) and Path(held).resolve() == run_dir.resolve()


def _locked_message(run_dir: Path) -> str:
    """Who holds the lock, from <run>/.lock.holder; a holder that has just taken the lock may
    not have written it yet, so it is waited for a moment."""
    holder: dict = {}
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            holder = read_json(run_dir / HOLDER)
            break
        time.sleep(0.05)
    pid, host = holder.get("pid", "(unknown)"), holder.get("host", "(unknown host)")
    since = f" since {holder['since']} ({holder.get('command', '')})" if "since" in holder else ""
    return (f"run folder {run_dir} is in use by process {pid} on {host}{since}; wait for it to "
            f"finish, or stop process {pid} on {host}; if that process is gone, run again: a "
            "lock left by a dead process on this host is taken over")


def _remove_temporaries(run_dir: Path) -> None:
    """Remove the temporary files of interrupted atomic writes. Called by a process that has
    just taken the lock: any left can only belong to a writer that died. A nested folder with
    its own lock (a claims study's runs) is left to its own holder."""
    for folder, subfolders, files in os.walk(run_dir):
        subfolders[:] = [d for d in subfolders if not (Path(folder) / d / LOCK).exists()]
        for name in files:
            if TEMPORARY.fullmatch(name):
                (Path(folder) / name).unlink(missing_ok=True)


def save_figures(run_dir: Path, figures: dict) -> list[Path]:
    """Write {stem: figure or (figures, ...)} into <run>/figures/ (figures.serialise.figure_files:
    plotly → <stem>.html, matplotlib or PIL → <stem>.png); returns the paths written."""
    from ibdml.figures.serialise import figure_files  # plotly and matplotlib: only when drawing

    folder = Path(run_dir) / "figures"
    written = []
    with run_lock(run_dir):
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
    aside, which are updated). Holds the folder's lock meanwhile: RunLocked when it is busy."""
    run_dir = Path(run_dir)
    path = params_path(run_dir)
    with run_lock(run_dir):
        if not path.is_file():
            write_text(path, p.to_yaml())
            return run_dir
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


def open_run(params_file: str | Path | None, run_dir: str | Path,
             overrides: dict[str, Any] | None = None) -> Params:
    """What every notebook does first: validate its parameters and claim the run folder.
    A bad value raises ParamError naming it; another run's folder raises RunFolderError, and a
    folder another process is writing raises RunLocked. The lock is not kept: each step takes it
    while it writes (see the module docstring)."""
    p = load_params(params_file, overrides)
    prepare_run_dir(Path(run_dir), p)
    return p


def load_torch(path: Path) -> Any:
    """A file a step saved with `save_torch` (checkpoints, embedding caches), on the CPU, read
    with weights_only=True: tensors and plain Python values only. A file that needs pickle is
    refused (RunFolderError); a truncated or damaged one raises UnreadableFile."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "safe_globals" in str(e):  # torch names the Python object it refused to build
            raise RunFolderError(
                f"{path} holds pickled Python objects that ibdml does not load (they could run "
                "code); it was not written by this version of ibdml — retrain, or load it "
                "yourself with torch.load(weights_only=False) if you trust its source") from None
        raise UnreadableFile(_damaged(path, e)) from e
    except (RuntimeError, EOFError, ValueError) as e:
        raise UnreadableFile(_damaged(path, e)) from e


def _damaged(path: Path, error: Exception) -> str:
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{path} is truncated or damaged and cannot be read ({detail[:160]})"


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
