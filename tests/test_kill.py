"""Killing training loses nothing (steps/train.py): `ibdml train` is SIGKILLed in the middle of
an epoch, and right after a checkpoint replaced last.pt but before history.json was written;
training again then ends exactly where an uninterrupted run does (weights, optimiser, sampler
and RNG states, history but its timings, attention records) and leaves no temporary file."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ibdml.config import load_params
from ibdml.steps.rundir import TEMPORARY, load_torch
from ibdml.steps.train import MARKER_ENV, PAUSE_ENV, train

SMOKE = Path(__file__).parent.parent / "params" / "smoke.yaml"
ROOT = Path(__file__).resolve().parent.parent
# Two epochs, and no DataLoader workers: the smallest run with an epoch to resume.
# device: cpu: bit-for-bit comparisons hold on the CPU only (docs/usage.md, "Running an experiment")
SETTINGS = {"epochs": 2, "num_workers": 0, "device": "cpu"}
TIMINGS = {"seconds", "images_per_second", "attention_seconds"}


@pytest.fixture(scope="module")
def straight(glyph_root, tmp_path_factory):
    """An uninterrupted run."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(load_params(SMOKE, {"data_root": str(glyph_root), **SETTINGS}), run, progress=False)
    return run


def killed_at(point: str, run: Path, glyph_root: Path) -> None:
    """Start `ibdml train` into `run`, wait until it pauses at `point` (PAUSE_ENV), SIGKILL it."""
    marker = run.parent / f"paused-{point}"
    overrides = [a for k, v in {"data_root": glyph_root, **SETTINGS}.items()
                 for a in ("-p", f"{k}={v}")]
    with open(run.parent / f"{point}.log", "w") as log:  # tqdm's bars would fill a pipe
        process = subprocess.Popen(
            [sys.executable, "-m", "ibdml.cli", "train", str(SMOKE), *overrides, "--out", str(run)],
            cwd=ROOT, stdout=log, stderr=log,
            env={**os.environ, PAUSE_ENV: point, MARKER_ENV: str(marker)})
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert process.poll() is None, (run.parent / f"{point}.log").read_text()
            assert time.monotonic() < deadline, "training never reached the pause point"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()


def resume(run: Path, glyph_root: Path) -> None:
    train(load_params(SMOKE, {"data_root": str(glyph_root), **SETTINGS}), run, progress=False)


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in history]


def assert_same(a, b, where: str) -> None:
    """Equal nested checkpoint contents, tensors bit for bit."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_run(straight: Path, resumed: Path) -> None:
    for name in ("last.pt", "previous.pt"):
        a, b = (load_torch(r / "checkpoints" / name) for r in (straight, resumed))
        a["history"], b["history"] = without_timings(a["history"]), without_timings(b["history"])
        assert_same(a, b, name)  # model, optimizer, scheduler, sampler, rng, epoch, history
    history = [without_timings(json.loads((r / "history.json").read_text()))
               for r in (straight, resumed)]
    assert history[0] == history[1] and [row["epoch"] for row in history[1]] == [1, 2]
    records = [sorted((r / "attention").glob("epoch_*.npy")) for r in (straight, resumed)]
    assert [p.name for p in records[1]] == ["epoch_0000.npy", "epoch_0001.npy", "epoch_0002.npy"]
    assert [p.read_bytes() for p in records[0]] == [p.read_bytes() for p in records[1]]
    assert not [p for p in resumed.rglob("*") if TEMPORARY.fullmatch(p.name)]


def test_killed_in_the_middle_of_an_epoch(straight, glyph_root, tmp_path):
    run = tmp_path / "run"
    killed_at("batch", run, glyph_root)  # two steps into epoch 2
    assert load_torch(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1]
    resume(run, glyph_root)
    assert_same_run(straight, run)


def test_killed_between_the_checkpoint_and_the_history(straight, glyph_root, tmp_path):
    run = tmp_path / "run"
    killed_at("checkpoint", run, glyph_root)  # epoch 1's last.pt written, history.json not yet
    assert load_torch(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (run / "history.json").exists()
    # what a kill in the middle of an atomic write leaves behind
    (run / "checkpoints" / ".last.pt.zz9k2m1q.tmp").write_bytes(b"half a checkpoint")
    resume(run, glyph_root)
    assert_same_run(straight, run)
