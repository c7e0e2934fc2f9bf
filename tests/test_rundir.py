"""Run folders (steps/rundir.py): atomic writes keep the user's umask and leave nothing behind,
torch files load only with weights_only=True, an unreadable last.pt falls back to previous.pt,
and the folder's lock is re-entrant, names its holder and clears a dead writer's temporaries."""

import json
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from ibdml.steps import rundir
from ibdml.steps.rundir import (LOCK_HELD_ENV, RunFolderError, RunLocked, UnreadableFile,
                                load_torch, run_lock, save_torch, write_json)
from ibdml.steps.train import load_checkpoint, save_checkpoint


@pytest.fixture
def umask():
    """set(mask): change the process's umask for the test; restored after it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_keep_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    write_json(tmp_path / "x.json", {"a": 1})
    save_torch(tmp_path / "x.pt", {"a": torch.zeros(2)})
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == mode  # not mkstemp's 0600
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == mode


def test_umask_without_proc(tmp_path, umask, monkeypatch):
    monkeypatch.setattr(rundir, "PROC_STATUS", tmp_path / "no-such-file")
    umask(0o027)
    write_json(tmp_path / "x.json", {})
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o640
    assert os.umask(0o027) == 0o027  # the fallback put the umask back


class Interrupting:
    """Ctrl-C in the middle of a write."""

    def __reduce__(self):
        raise KeyboardInterrupt


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    save_torch(tmp_path / "x.pt", {"old": 1})
    with pytest.raises(Exception):
        save_torch(tmp_path / "x.pt", {"f": lambda: 0})  # lambdas do not pickle
    with pytest.raises(KeyboardInterrupt):
        save_torch(tmp_path / "x.pt", {"w": torch.zeros(3), "i": Interrupting()})
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    assert load_torch(tmp_path / "x.pt") == {"old": 1}


class Exploit:
    """What a malicious checkpoint could hold: unpickling it would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_files_that_need_pickle_are_refused(tmp_path):
    torch.save({"rng": np.random.get_state()}, tmp_path / "numpy.pt")  # an older ibdml's last.pt
    torch.save({"x": Exploit(tmp_path / "pwned")}, tmp_path / "exploit.pt")
    for name in ("numpy.pt", "exploit.pt"):
        with pytest.raises(RunFolderError, match="holds pickled Python objects that ibdml does "
                           "not load.*weights_only=False\\) if you trust its source") as e:
            load_torch(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and not isinstance(e.value, UnreadableFile)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch, on plain.pt
def test_damaged_files_say_so(tmp_path):
    save_torch(tmp_path / "ok.pt", {"w": torch.arange(1000.0)})
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[:len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"a": 1}))
    for name in ("truncated.pt", "garbage.pt", "empty.pt", "plain.pt"):
        with pytest.raises(UnreadableFile, match="is truncated or damaged"):
            load_torch(tmp_path / name)
    assert torch.equal(load_torch(tmp_path / "ok.pt")["w"], torch.arange(1000.0))


def test_an_unreadable_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    for epoch in (1, 2):
        save_checkpoint(tmp_path, {"epoch": epoch, "history": [{"epoch": epoch}]})
    folder = tmp_path / "checkpoints"
    assert load_torch(folder / "previous.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path)["epoch"] == 2
    last = folder / "last.pt"
    last.write_bytes(last.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match="last.pt is truncated.*resuming from .*previous.pt "
                      "\\(epoch 1\\)"):
        assert load_checkpoint(tmp_path)["epoch"] == 1
    last.unlink()  # a kill between the rotation and the new last.pt
    with pytest.warns(UserWarning, match="last.pt is missing"):
        assert load_checkpoint(tmp_path)["epoch"] == 1
    last.write_bytes(b"garbage")
    (folder / "previous.pt").write_bytes(b"garbage")
    with pytest.raises(RunFolderError, match="no checkpoint to resume from: .*last.pt is "
                       "truncated or damaged.*previous.pt is truncated or damaged.*delete") as e:
        load_checkpoint(tmp_path)
    assert str(folder) in str(e.value)


def test_the_lock_is_reentrant_and_records_its_holder(tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        holder = json.loads((run / ".lock.holder").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with run_lock(str(run)):  # a step calling another step on the same folder
            write_json(run / "x.json", 1)
        assert (run / ".lock.holder").is_file()  # still held by the outer one
    assert not (run / ".lock.holder").exists()
    with run_lock(run):  # released: taken again
        pass


def test_a_held_lock_is_refused_with_its_holder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    other = FileLock(run / ".lock")  # another holder (a separate open file, as in another process)
    with other:
        write_json(run / ".lock.holder", {"pid": 4242, "host": "gpu7", "since": "now"})
        with pytest.raises(RunLocked, match=f"run folder {run} is in use by process 4242 on "
                           "gpu7.*stop process 4242 on gpu7.*taken over"):
            with run_lock(run):
                pass
        monkeypatch.setenv(LOCK_HELD_ENV, str(tmp_path / "elsewhere"))
        with pytest.raises(RunLocked):
            with run_lock(run):
                pass
        monkeypatch.setenv(LOCK_HELD_ENV, str(run.resolve()))
        with run_lock(run):  # the parent holds it for this process (`ibdml run`'s kernels)
            write_json(run / "x.json", 1)
        assert json.loads((run / ".lock.holder").read_text())["pid"] == 4242  # untouched
    with run_lock(run):  # free, with the variable still set: taken as usual
        assert json.loads((run / ".lock.holder").read_text())["pid"] == os.getpid()


def test_taking_the_lock_removes_a_dead_writers_temporaries(tmp_path):
    run = tmp_path / "run"
    left = [run / "checkpoints" / ".last.pt.k2j4_x9q.tmp", run / ".history.json.abcdefgh.tmp"]
    kept = [run / "notes.tmp", run / "checkpoints" / "last.pt",
            run / "nested" / ".metrics.json.abcdefgh.tmp"]  # nested: a folder with its own lock
    for path in left + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (run / "nested" / ".lock").touch()
    with run_lock(run):
        assert not any(p.exists() for p in left)
        assert all(p.exists() for p in kept)
