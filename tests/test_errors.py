"""Every bad input of docs/errors.md, through the real `ibdml` command: one line on stderr,
`ibdml: error: ...` naming the file or parameter, the problem and the fix; exit code 2 (Ctrl-C:
130); no traceback; every file that existed before is unchanged, and no half-written file is left.

One case per row of the docs table, with the row's id. Parameter errors run `python -m ibdml.cli`
in a subprocess (they never import torch, so that takes a moment); the others call `cli.main` in
this process, because they need torch and, for a few, a failure planted in the middle of training
(a NaN loss, a full disk, Ctrl-C). Those resume a run made once per module (`trained`: one epoch
of three), each on its own copy. A last test sends a real SIGINT to a real process.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import signal
import subprocess
import sys
import time
import urllib.error
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

import ibdml.steps.train as train_step
import ibdml.trainer as trainer
from ibdml.cli import main
from test_benchmarks import make_cub

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "params" / "smoke.yaml")
DOCS = ROOT / "docs" / "errors.md"


def base_args(glyph_root: Path) -> list[str]:
    """The trained run's parameters: three epochs, evaluated only after the last."""
    return [SMOKE, "-p", f"data_root={glyph_root}", "-p", "epochs=3", "-p", "eval_every=0",
            "-p", "baselines=false", "-p", "attention_probes=1"]


def skipped_epoch(*args, **kw) -> dict:
    """train_epoch without its steps (seconds on 2 cores): what follows an epoch still runs."""
    return {"total": 1.0}


@pytest.fixture(scope="module")
def trained(glyph_root, tmp_path_factory) -> Path:
    """A run folder holding one epoch of three (its steps skipped): last.pt, history.json,
    attention records."""
    run, calls = tmp_path_factory.mktemp("trained") / "run", []

    def one_epoch_then_ctrl_c(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return skipped_epoch()

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")  # no steps
        mp.setattr(train_step, "train_epoch", one_epoch_then_ctrl_c)
        assert main(["train", *base_args(glyph_root), "--out", str(run)]) == 130
    assert (run / "checkpoints" / "last.pt").is_file()
    return run


@pytest.fixture(scope="module")
def cub(tmp_path_factory) -> Path:
    """A tiny CUB-200-2011 copy in the official layout: 2 training classes of 2 and 1 images."""
    return make_cub(tmp_path_factory.mktemp("cub") / "CUB_200_2011")


@dataclass
class Env:
    """What a case builds on: its own folder, the shared data, and the trained run."""

    tmp: Path
    glyph_root: Path
    cub_root: Path
    trained: Path
    later: list[Callable[[], object]] = field(default_factory=list)  # clean-ups, after the case

    @property
    def out(self) -> Path:
        """A run folder that does not exist yet."""
        return self.tmp / "new-run"

    def base(self) -> list[str]:
        return base_args(self.glyph_root)

    def run(self) -> Path:
        """A copy of the trained run, made on first use."""
        if not (self.tmp / "run").exists():
            shutil.copytree(self.trained, self.tmp / "run")
        return self.tmp / "run"

    def cub(self) -> Path:
        """A copy of the tiny CUB tree, to damage."""
        if not (self.tmp / "cub").exists():
            shutil.copytree(self.cub_root, self.tmp / "cub")
        return self.tmp / "cub"


@dataclass(frozen=True)
class Case:
    make: Callable[[Env, pytest.MonkeyPatch], list[str]]  # sets up, returns the command line
    says: tuple[str, ...]  # what the line names: the file or parameter, the problem, the fix
    code: int = 2
    in_subprocess: bool = False
    trains: bool = False  # progress bars may come before the message
    new_files: bool = False  # the failure may come after a new file was written


CASES: dict[str, Case] = {}


def case(id: str, *says: str, **kw) -> Callable:
    def register(make):
        CASES[id] = Case(make, says, **kw)
        return make
    return register


# --- parameters --------------------------------------------------------------------------------


def params_file(env: Env, text: str) -> Path:
    path = env.tmp / "my.yaml"
    path.write_text(text)
    return path


@case("params-yaml-syntax", "my.yaml line 3", "expected ',' or ']'", "starts on line 2",
      "fix the YAML syntax", in_subprocess=True)
def _(env, mp):
    return ["train", str(params_file(env, "epochs: 3\nlr: [0.1\nseed: 1\n")), "--out", str(env.out)]


@case("params-duplicate-key", "my.yaml line 4", "lr is given twice (first on line 2)", "keep one",
      in_subprocess=True)
def _(env, mp):
    path = params_file(env, "epochs: 3\nlr: 0.1\nseed: 1\nlr: 0.01\n")
    return ["train", str(path), "--out", str(env.out)]


@case("params-unknown-key", "my.yaml", "unknown parameter epoch (did you mean epochs?)",
      "ibdml params", in_subprocess=True)
def _(env, mp):
    return ["train", str(params_file(env, "epoch: 3\n")), "--out", str(env.out)]


@case("params-wrong-type", "parameter epochs", "'three' is a str", "int", in_subprocess=True)
def _(env, mp):
    return ["train", str(params_file(env, "epochs: three\n")), "--out", str(env.out)]


@case("params-out-of-range", "parameter lr", "out of range", "[1e-07, 1.0]", in_subprocess=True)
def _(env, mp):
    return ["train", SMOKE, "-p", "lr=5", "--out", str(env.out)]


@case("override-not-key-value", "-p 'noequals'", "not key=value", "-p epochs=3",
      in_subprocess=True)
def _(env, mp):
    return ["train", SMOKE, "-p", "noequals", "--out", str(env.out)]


@case("override-not-yaml", "-p 'lr_milestones=[30, 50'", "not YAML", "write a list as [30, 50]",
      in_subprocess=True)
def _(env, mp):
    return ["train", SMOKE, "-p", "lr_milestones=[30, 50", "--out", str(env.out)]


def cub_args(root: Path, *more: str) -> list[str]:
    return [SMOKE, "-p", "dataset=cub200", "-p", f"data_root={root}", "-p",
            "attention_probes=0", *more]


@case("n_c-above-class-count", "parameter n_c", "only 2 classes", "use n_c ≤ 2")
def _(env, mp):
    return ["train", *cub_args(env.cub_root, "-p", "official_counts=false"), "--out", str(env.out)]


# --- data --------------------------------------------------------------------------------------


@case("data-folder-missing", "nowhere does not exist", "parameter data_root",
      "ibdml check-data cub200 PATH")
def _(env, mp):
    return ["train", *cub_args(env.tmp / "nowhere"), "--out", str(env.out)]


@case("data-images-missing", "1 of 6 listed images are missing on disk, e.g. ",
      "Bird_1_0000.jpg", "extract the missing files", "parameter data_root")
def _(env, mp):
    (env.cub() / "images" / "001.Bird_1" / "Bird_1_0000.jpg").unlink()
    return ["train", *cub_args(env.cub(), "-p", "official_counts=false"), "--out", str(env.out)]


@case("data-counts-differ", "2 splits differ from the expected counts",
      "train: 2 classes and 3 images, expected 100 and 5,864", "official_counts: false")
def _(env, mp):
    return ["train", *cub_args(env.cub_root), "--out", str(env.out)]


@case("data-listing-unreadable", "cannot read ", "images.txt", "utf-8",
      "ibdml check-data cub200 PATH")
def _(env, mp):
    (env.cub() / "images.txt").write_bytes(b"\xff\xfe\x00garbage\n")
    return ["train", *cub_args(env.cub(), "-p", "official_counts=false"), "--out", str(env.out)]


@case("data-image-unreadable", "cannot read image ", ".png (cannot identify image file)",
      "ibdml check-data", trains=True, new_files=True)
def _(env, mp):
    shutil.copytree(env.glyph_root, env.tmp / "glyphs")
    for image in (env.tmp / "glyphs").rglob("*.png"):
        image.write_bytes(b"not a png")
    # one DataLoader worker: its error comes back with the worker's traceback in its message
    return ["train", SMOKE, "-p", f"data_root={env.tmp / 'glyphs'}", "-p", "num_workers=1",
            "--out", str(env.out)]


# --- numbers that go bad -----------------------------------------------------------------------


@case("loss-not-finite", "the loss became nan at epoch 2, step 1", "checkpoint (epoch 1) is kept",
      "Lower lr", trains=True)
def _(env, mp):
    real = trainer.intra_batch_loss

    def nan_loss(*args, **kw):
        loss, parts = real(*args, **kw)
        return loss * float("nan"), parts

    mp.setattr(trainer, "intra_batch_loss", nan_loss)
    return ["train", *env.base(), "--out", str(env.run())]


@case("embeddings-not-finite", "the embeddings of run ", "hold NaN or inf (64 of 64 rows)",
      "lower lr", "check-data")
def _(env, mp):
    last = env.run() / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    state["model"]["backbone.embed.weight"].fill_(float("nan"))
    torch.save(state, last)
    return ["evaluate", str(env.run())]


# --- weights -----------------------------------------------------------------------------------


@case("weights-wrong-shape", "gray.pth does not fit resnet18", "conv1.weight has shape "
      "[64, 1, 7, 7] in the file, resnet18 expects [64, 3, 7, 7]", "give a torchvision resnet18")
def _(env, mp):
    torch.save({"conv1.weight": torch.zeros(64, 1, 7, 7)}, env.tmp / "gray.pth")
    return ["train", *env.base(), "-p", f"pretrained={env.tmp / 'gray.pth'}", "--out",
            str(env.out)]


@case("weights-offline", "imagenet needs resnet18-f37072fd.pth", "could not be downloaded",
      "hub/checkpoints/resnet18-f37072fd.pth", "or set pretrained to its path")
def _(env, mp):
    from torchvision.models import ResNet18_Weights

    def offline(self, **kw):
        raise urllib.error.URLError("no network")

    mp.setattr(torch.hub, "get_dir", lambda: str(env.tmp / "hub"))
    mp.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    return ["train", *env.base(), "-p", "pretrained=imagenet", "--out", str(env.out)]


# --- run folders -------------------------------------------------------------------------------


@case("folder-other-params", "holds a run with other parameters", "epochs: 3 → 4",
      "use another --out")
def _(env, mp):
    return ["train", *env.base(), "-p", "epochs=4", "--out", str(env.run())]


@case("folder-not-writable", "cannot write into ", "read-only/run (Permission denied",
      "use another --out")
def _(env, mp):
    # The tests may run as root, who may write anywhere: the refusal is planted in os.mkdir.
    real, refused = os.mkdir, env.tmp / "read-only"

    def mkdir(path, *args, **kw):
        if Path(path) == refused or refused in Path(path).parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, *args, **kw)

    mp.setattr(os, "mkdir", mkdir)
    return ["train", *env.base(), "--out", str(refused / "run")]


class FullDisk(io.RawIOBase):
    """A file on a disk that fills up after `room` bytes: then write raises ENOSPC."""

    def __init__(self, file, room: int) -> None:
        super().__init__()
        self.file, self.room = file, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)


@case("disk-full", "no space left on the device while writing into ", "/run",
      "what was written before is kept", "run the same command again", trains=True,
      new_files=True)
def _(env, mp):
    real = torch.save  # meeting ENOSPC half-way, it raises a RuntimeError from the OSError

    def full(obj, f, *args, **kw):
        return real(obj, FullDisk(f, room=10_000), *args, **kw)

    mp.setattr(torch, "save", full)
    mp.setattr(train_step, "train_epoch", skipped_epoch)
    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")  # no steps
    return ["train", *env.base(), "--out", str(env.run())]


@case("checkpoint-unreadable", "last.pt is truncated or damaged", "previous.pt is missing",
      "--restart")
def _(env, mp):
    last = env.run() / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a copy cut short
    return ["train", *env.base(), "--out", str(env.run())]


# Holds a run folder's lock as another `ibdml train` would: an flock on <run>/.lock, and who.
HOLD = """import fcntl, json, os, socket, sys, time
lock = open(sys.argv[1] + "/.lock", "a")
fcntl.flock(lock, fcntl.LOCK_EX)
json.dump({"pid": os.getpid(), "host": socket.gethostname(), "command": "ibdml train ...",
           "since": time.strftime("%Y-%m-%d %H:%M:%S")}, open(sys.argv[1] + "/.lock.holder", "w"))
print("held", flush=True)
sys.stdin.read()
"""


@case("folder-in-use", "/run is in use by process ", "wait for it to finish")
def _(env, mp):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(env.run())], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    env.later.append(lambda: (holder.stdin.close(), holder.wait(30)))
    assert holder.stdout.readline() == "held\n"
    return ["train", *env.base(), "--out", str(env.run())]


# --- many runs ---------------------------------------------------------------------------------


def search_args(env: Env, *extra: str) -> list[str]:
    space = env.tmp / "space.yaml"
    space.write_text("lr: {loguniform: [1.0e-4, 1.0e-2]}\nepochs: 1\n")
    return ["sweep", SMOKE, "-p", f"data_root={env.glyph_root}", "--space", str(space),
            "--trials", "2", "--out", str(env.tmp / "search"), *extra]


@case("ray-unreachable", "cannot reach a Ray cluster at 127.0.0.1:", "ray start --head",
      "leave out --address")
def _(env, mp):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    return search_args(env, "-p", "val_fraction=0.25", "--address", f"127.0.0.1:{port}")


@case("search-without-validation", "a search selects on a validation split",
      "set val_fraction > 0")
def _(env, mp):
    return search_args(env)


@case("search-other-settings", "/search holds a search with other settings (trials_requested",
      "run the same command to resume it, or give another --out")
def _(env, mp):
    argv = search_args(env, "-p", "val_fraction=0.25")
    (env.tmp / "search").mkdir()
    (env.tmp / "search" / "search.json").write_text(json.dumps({
        "params_file": SMOKE, "overrides": {"data_root": str(env.glyph_root),
                                            "val_fraction": 0.25},
        "space": {"epochs": 1, "lr": {"loguniform": [1e-4, 1e-2]}}, "trials_requested": 8,
        "scheduler": "asha", "metric": "val map_at_r", "trials": [], "chosen": None}))
    return argv


@case("ctrl-c", "interrupted", "run the same command again to resume", code=130, trains=True)
def _(env, mp):
    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    mp.setattr(trainer, "intra_batch_loss", interrupted)
    return ["train", *env.base(), "--out", str(env.run())]


# --- the test ----------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (the run-folder lock's own files left out)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".lock")}


def run_cli(argv: list[str], in_subprocess: bool, cwd: Path, capsys) -> tuple[int, str]:
    if in_subprocess:
        done = subprocess.run([sys.executable, "-m", "ibdml.cli", *argv], capture_output=True,
                              text=True, cwd=cwd, timeout=120)
        return done.returncode, done.stderr
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("id", list(CASES))
def test_a_bad_input_is_one_line_and_changes_nothing(id, glyph_root, cub, trained, tmp_path,
                                                     monkeypatch, capsys):
    c = CASES[id]
    env = Env(tmp_path, glyph_root, cub, trained)
    try:
        argv = c.make(env, monkeypatch)
        before = snapshot(tmp_path)
        code, err = run_cli(argv, c.in_subprocess, tmp_path, capsys)
    finally:
        for clean_up in env.later:
            clean_up()
    assert code == c.code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]  # \r ends a progress bar's line
    assert lines and lines[-1].startswith("ibdml: error: " if c.code == 2 else "ibdml: "), err
    assert sum(line.startswith("ibdml") for line in lines) == 1 and (c.trains or len(lines) == 1)
    for words in c.says:
        assert words in lines[-1], f"{words!r} not in {lines[-1]!r}"
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before, "a file written before was changed"
    assert c.new_files or after.keys() == before.keys(), "something was written"
    assert not [k for k in after if k.endswith(".tmp")], "a half-written file was left"


def test_the_fixes_the_messages_give_are_accepted_in_the_same_folder(cub, tmp_path, monkeypatch,
                                                                     capsys):
    """A subset refused for its counts, then a batch too wide for it: nothing is written, so the
    corrected parameters start in the same folder (training is stopped at its first step)."""
    out = ["--out", str(tmp_path / "run")]
    assert main(["train", *cub_args(cub), *out]) == 2
    assert "official_counts: false" in capsys.readouterr().err
    assert main(["train", *cub_args(cub, "-p", "official_counts=false"), *out]) == 2
    assert "use n_c ≤ 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "intra_batch_loss", interrupted)
    fixed = cub_args(cub, "-p", "official_counts=false", "-p", "n_c=2", "-p", "n_s=2")
    assert main(["train", *fixed, *out]) == 130
    assert "n_c: 2" in (tmp_path / "run" / "params.yaml").read_text()


def test_ctrl_c_in_a_real_process_is_one_line(glyph_root, trained, tmp_path):
    """SIGINT, as a terminal sends it, once the resumed run's progress bar shows: exit 130, one
    line, no traceback, and the run folder as it was."""
    run = shutil.copytree(trained, tmp_path / "run")
    before = snapshot(run)
    process = subprocess.Popen([sys.executable, "-m", "ibdml.cli", "train",
                                *base_args(glyph_root), "--out", str(run)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = b""
    try:
        while b"epoch 2/3" not in err:  # the bar of the resumed epoch: training has started
            chunk = os.read(process.stderr.fileno(), 4096)
            assert chunk, f"the process ended before training: {err.decode()}"
            err += chunk
        time.sleep(0.1)  # into the epoch's first step, not inside tqdm drawing its bar
        process.send_signal(signal.SIGINT)
        err = (err + process.stderr.read()).decode()
        assert process.wait(60) == 130
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in err
    assert err.splitlines()[-1] == ("ibdml: interrupted; what was written is kept: run the same "
                                    "command again to resume")
    assert snapshot(run) == before


def documented_rows() -> list[tuple[str, int]]:
    """(id, exit code) of each row of docs/errors.md's table."""
    rows = re.findall(r"^\| `([\w-]+)` \|.*\| (\d+) \|$", DOCS.read_text(), flags=re.MULTILINE)
    return [(id, int(code)) for id, code in rows]


def test_the_docs_table_has_exactly_the_tested_rows():
    assert documented_rows() == [(id, c.code) for id, c in CASES.items()], (
        "docs/errors.md and tests/test_errors.py list different rows: keep one row per case")
