"""The run folder's lock between real processes (steps/rundir.py): while one process holds it, a
second `ibdml train` or `ibdml evaluate` on the folder stops at once with exit code 2 and a
message naming the holder; once the holder is killed, the next process takes the lock over."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ibdml.config import load_params
from ibdml.steps.rundir import LOCK_HELD_ENV, RunLocked, prepare_run_dir, run_lock, write_json

SMOKE = str(Path(__file__).parent.parent / "params" / "smoke.yaml")
ROOT = Path(__file__).resolve().parent.parent

# Takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLD = ("import sys\nfrom ibdml.steps.rundir import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n")


@pytest.fixture
def holder(tmp_path, glyph_root):
    """(run folder, process holding its lock)."""
    run = prepare_run_dir(tmp_path / "run", load_params(SMOKE, {"data_root": str(glyph_root)}))
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout.readline() == "held\n"
    yield run, process
    process.kill()
    process.wait()


def ibdml(*args):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ibdml.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    return done, time.perf_counter() - start


def test_a_second_process_stops_at_once_naming_the_holder(holder, glyph_root):
    run, process = holder
    named = f"in use by process {process.pid} on {socket.gethostname()}"
    train, seconds = ibdml("train", SMOKE, "-p", f"data_root={glyph_root}", "--out", str(run))
    assert train.returncode == 2, train.stderr
    assert train.stderr.startswith(f"ibdml: error: run folder {run} is {named}")
    assert "Traceback" not in train.stderr and seconds < 60  # imports only, no training
    assert not (run / "checkpoints").exists()
    evaluate, _ = ibdml("evaluate", str(run))
    assert evaluate.returncode == 2 and named in evaluate.stderr
    start = time.perf_counter()
    with pytest.raises(RunLocked, match=f"{named}.*stop process {process.pid}"):
        with run_lock(run):
            pass
    assert time.perf_counter() - start < 2  # never waits for the holder


def test_a_child_of_the_holder_goes_on(holder, monkeypatch):
    run, _ = holder
    monkeypatch.setenv(LOCK_HELD_ENV, str(run.resolve()))  # as `ibdml run` sets for its kernels
    with run_lock(run):
        write_json(run / "x.json", 1)


def test_a_killed_holders_lock_is_taken_over(holder):
    run, process = holder
    process.kill()  # SIGKILL: no clean-up of its own
    process.wait()
    assert json.loads((run / ".lock.holder").read_text())["pid"] == process.pid  # stale record
    with run_lock(run):
        assert json.loads((run / ".lock.holder").read_text())["pid"] == os.getpid()
