"""The training step: train a run described by Params into its run folder (paper §3.3).

After every epoch the state needed to continue (trainer.Trainer: model, optimiser, scheduler,
sampler, RNG states) is checkpointed atomically together with the whole history, and history.json
is then written from it, so `train(..., resume=True)` continues an interrupted run from exactly
its state: on the CPU, training 2 epochs is bit-identical to training 1 and resuming for 1; on a
GPU the two are equal up to floating-point noise, cuDNN's kernels being non-deterministic
(docs/datasets.md, "On a GPU"). A kill at any moment loses nothing: a
checkpoint never exists without its history rows (a resumed run rewrites history.json from the
checkpoint), the checkpoint it replaces stays as previous.pt and is used when last.pt cannot be
read, and the run folder's lock (steps/rundir.py) keeps a second process out meanwhile. Before
training and after every epoch the MPN's attention on fixed probe batches is recorded into
<run>/attention/ (steps/attention.py). On a GPU, cuDNN autotuning is on for the duration of
`train` (device.py).

One run can train on several processes (p.nproc; distributed.py, docs/scale-out.md): `train`
launches them, or joins the torchrun job it runs in. Rank 0 alone holds the lock, writes the run
folder and evaluates, the other ranks wait for it at a barrier; the checkpoint holds the unwrapped
model, so evaluation and resume read it as a one-process run's. Resume loads that checkpoint on
every rank. Exact resume is promised for one process only: several processes reseed their
generators every epoch, but the sums their all-reduce makes are not promised bit-identical
(on CPUs with gloo they have been).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ibdml import device as devices
from ibdml import distributed
from ibdml.config import ParamError, Params
from ibdml.distributed import World
from ibdml.data.folder import ImageDataset, Split
from ibdml.data.loader import data_loader
from ibdml.data.check import check_run_inputs
from ibdml.data.transforms import train_transform
from ibdml.evaluation import evaluate_split, evaluate_test
from ibdml.metrics import summarise
from ibdml.probes import Probes, make_probes, records_attention
from ibdml.steps.attention import epoch_file, record_epoch, write_probe_info
from ibdml.steps.rundir import (RunFolderError, UnreadableFile, load_torch,
                                lock_held_for_children, prepare_run_dir, run_lock, save_torch,
                                write_json)
from ibdml.trainer import Trainer, build_trainer, train_epoch

# Test-only (tests/test_kill.py): with IBDML_TEST_PAUSE_AFTER=<point> training stops at that
# point, writes the file IBDML_TEST_PAUSE_MARKER names and sleeps, so that a test can SIGKILL the
# process exactly there. Points: "checkpoint" (last.pt replaced, history.json not yet written)
# and "batch" (two optimiser steps into the second epoch). Unset, nothing changes.
PAUSE_ENV, MARKER_ENV = "IBDML_TEST_PAUSE_AFTER", "IBDML_TEST_PAUSE_MARKER"


def train(p: Params, run_dir: str | Path, *, resume: bool = True, progress: bool = True,
          on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train the run described by `p` into `run_dir`; returns a summary. With resume=True an
    existing checkpoint in the folder is continued (a finished run returns at once); with
    resume=False its checkpoints are removed first and training starts over. `on_epoch`, when
    given, receives each new history row once it is checkpointed (a search reports it to its
    scheduler: steps/sweep.py). Holds the run folder's lock throughout: RunLocked when another
    process is writing it.

    Several processes (docs/scale-out.md; lr and batch semantics: trainer.build_trainer): with
    p.nproc > 1, outside a torch.distributed job, this starts p.nproc processes on this machine
    (torch's elastic launcher: distributed.launch), each calling train in that job, and returns
    rank 0's summary; on_epoch then receives the new rows once the processes have ended. Inside
    a job (`torchrun ... -m ibdml.cli train ...`: RANK, LOCAL_RANK, WORLD_SIZE set) train joins
    it, and nproc becomes the job's size (nproc 1 = whatever the job has). Rank 0 holds the lock,
    writes the run folder, evaluates and calls on_epoch; the other ranks' summaries have no
    history."""
    run_dir = Path(run_dir)
    world = distributed.job_world()
    if world is not None:
        p = _job_params(p, world)
        if world.size > 1:
            return _train_in_job(p, run_dir, resume, progress, on_epoch)
    elif p.nproc > 1:
        return _launch(p, run_dir, resume, progress, on_epoch)
    splits = check_run_inputs(p, progress)  # before params.yaml is written (docs/errors.md)
    with run_lock(run_dir):
        return _train(p, splits, prepare_run_dir(run_dir, p), resume, progress, on_epoch)


def _job_params(p: Params, world: World) -> Params:
    """`p` with nproc set to the size of the job this process runs in (torchrun decides it);
    ParamError when p asks for another number."""
    if p.nproc not in (1, world.size):
        raise ParamError(f"parameter nproc: {p.nproc}, but this torch.distributed job has "
                         f"{world.size} processes (WORLD_SIZE); set nproc to {world.size}, or "
                         "leave it at 1 to take the job's size")
    return dataclasses.replace(p, nproc=world.size)


def _launch(p: Params, run_dir: Path, resume: bool, progress: bool,
            on_epoch: Callable[[dict], None] | None) -> dict:
    """Train in p.nproc new processes (distributed.launch) and return rank 0's summary. This
    process checks the inputs first (once: Glyphs renders its cache here) and claims the run
    folder, so that a bad input or a busy folder fails here with its own error; it holds the
    folder's lock until the processes end, and rank 0 writes under it (LOCK_HELD_ENV, as the
    notebooks of `ibdml run` do: steps/rundir.py)."""
    distributed.check_gpus(p.nproc, devices.resolve_device(p.device))
    check_run_inputs(p, progress)
    with run_lock(run_dir), lock_held_for_children(run_dir):
        prepare_run_dir(run_dir, p)
        result = distributed.launch(_train_rank, p.nproc, (p, run_dir, resume, progress))
    for row in result["new_rows"] if on_epoch is not None else []:
        on_epoch(row)
    return result["summary"]


def _train_rank(p: Params, run_dir: Path, resume: bool, progress: bool) -> dict:
    """What each launched process runs: train in the job, keeping rank 0's new history rows for
    the launching process's on_epoch."""
    rows: list[dict] = []
    summary = train(p, run_dir, resume=resume, progress=progress, on_epoch=rows.append)
    return {"summary": summary, "new_rows": rows}


def _train_in_job(p: Params, run_dir: Path, resume: bool, progress: bool,
                  on_epoch: Callable[[dict], None] | None) -> dict:
    """Train as one rank of the job this process runs in; the process group lasts as long."""
    with distributed.process_group(devices.resolve_device(p.device)) as world:
        # rank 0 checks first (Glyphs renders its cache once); the others read what it made
        splits = check_run_inputs(p, progress) if world.is_main else None
        world.barrier()
        if not world.is_main:
            return _train(p, check_run_inputs(p, False), run_dir, resume, False, None, world)
        with run_lock(run_dir):
            return _train(p, splits, prepare_run_dir(run_dir, p), resume, progress, on_epoch,
                          world)


def _train(p: Params, splits: dict[str, Split], run_dir: Path, resume: bool,
           progress: bool, on_epoch: Callable[[dict], None] | None,
           world: World = World()) -> dict:
    device = distributed.rank_device(devices.resolve_device(p.device), world)
    train_split = splits["train"]
    t = build_trainer(p, train_split, device, world)
    history = _resume(t, run_dir) if resume else _forget_checkpoints(run_dir, world)
    loader = data_loader(ImageDataset(train_split, train_transform(p)), p.num_workers, device,
                         batch_sampler=t.sampler)
    if os.environ.get(PAUSE_ENV) == "batch":
        loader = _PausingLoader(loader, t)
    # CUDA only, restored when training ends: cuDNN autotuning, and TF32 off unless bf16
    with devices.cudnn_autotune(device), devices.exact_fp32(device, devices.bf16_override(p.amp)):
        probes = _start_recording(t, train_split, p, run_dir, device) if world.is_main else None
        while t.epoch < p.epochs:
            start = time.time()
            losses = train_epoch(t, loader, p, device, progress)
            lr = t.optimizer.param_groups[0]["lr"]
            t.scheduler.step()
            t.epoch += 1
            row = _epoch_row(t, losses, lr, time.time() - start, p)
            if not world.is_main:
                world.barrier()  # while rank 0 evaluates and writes
                continue
            due = p.eval_every and t.epoch % p.eval_every == 0 or t.epoch == p.epochs
            if due:
                row.update(_evaluate(t, splits, p, device))
            if probes is not None:  # before the checkpoint: a checkpointed epoch has its record
                row["attention_seconds"] = round(record_epoch(t.model, probes, run_dir, t.epoch,
                                                              device), 3)
            history.append(row)
            _checkpoint(t, history, run_dir, p)
            _test_pause("checkpoint")
            write_json(run_dir / "history.json", history)  # from what the checkpoint holds
            if progress:
                tqdm.write(_describe(row))
            if on_epoch is not None:
                on_epoch(row)
            world.barrier()
    return {"run_dir": str(run_dir), "epochs": t.epoch, "history": history}


def _epoch_row(t: Trainer, losses: dict, lr: float, seconds: float, p: Params) -> dict:
    """An epoch's history row before evaluation: its losses (the mean over every rank's
    batches), lr, time, the images per second of all processes together and, when there are
    several, their number."""
    images = len(t.sampler) * p.batch_size * t.world.size  # len(sampler): this rank's batches
    row = {"epoch": t.epoch, "loss": losses, "lr": lr, "seconds": round(seconds, 2),
           "images_per_second": round(images / seconds, 1)}
    if t.world.size > 1:
        row["processes"] = t.world.size
    return row


def _evaluate(t: Trainer, splits: dict[str, Split], p: Params, device: torch.device) -> dict:
    """Metrics of the current backbone, without NMI (cheap): on val when present, and on the test
    protocol (In-Shop: query → gallery) unless the run selects on val. A run that selects on val
    never looks at test while training: its test split is evaluated once, at the end
    (docs/protocol.md)."""
    row = {}
    if p.select_on != "val":
        row["test"] = summarise(evaluate_test(t.model, splits, p, device, nmi=False)[0],
                                seed=p.seed)
    if "val" in splits:
        row["val"] = evaluate_split(t.model, splits["val"], p, device, nmi=False)[0]
    return row


def _resume(t: Trainer, run_dir: Path) -> list[dict]:
    """Load the last checkpoint, if any, and return its history, rewriting history.json from
    it: a kill between the checkpoint and history.json lost nothing. Every rank loads the state;
    rank 0 alone keeps the history and writes."""
    if not has_checkpoint(run_dir):
        return []
    state = load_checkpoint(run_dir)
    t.load_state_dict(state)
    if not t.world.is_main:
        return []
    write_json(run_dir / "history.json", state["history"])
    return state["history"]


def _forget_checkpoints(run_dir: Path, world: World) -> list[dict]:
    """Training starts over (resume=False): the checkpoints of the run it replaces go (rank 0
    removes them), so that a kill before the first epoch ends can never resume that run
    instead."""
    for name in ("last.pt", "previous.pt") if world.is_main else ():
        (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    return []


def _start_recording(t: Trainer, split: Split, p: Params, run_dir: Path,
                     device: torch.device) -> Probes | None:
    """Draw the probe batches and record the current epoch's attention (epoch 0: before
    training) unless it is on disk already; None when the run records no attention."""
    if not records_attention(p):
        return None
    probes = make_probes(split, p)
    write_probe_info(run_dir, probes, split, p)
    if not epoch_file(run_dir, t.epoch).is_file():
        record_epoch(t.model, probes, run_dir, t.epoch, device)
    return probes


def _checkpoint(t: Trainer, history: list[dict], run_dir: Path, p: Params) -> None:
    """last.pt every epoch, with the history so far; best.pt when the selection split's R@1
    improves."""
    state = {**t.state_dict(), "history": history}
    row = history[-1]
    selection = {"val": row.get("val"), "test": row.get("test")}.get(p.select_on)
    if selection is not None and selection["recall_at_k"]["1"] > t.best:
        t.best = state["best"] = selection["recall_at_k"]["1"]
        save_torch(run_dir / "checkpoints" / "best.pt", state)
    save_checkpoint(run_dir, state)


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Write <run>/checkpoints/last.pt, keeping the one it replaces as previous.pt: a last.pt
    that is ever unreadable still leaves the epoch before it to resume from."""
    folder = Path(run_dir) / "checkpoints"
    last, previous, upcoming = folder / "last.pt", folder / "previous.pt", folder / "next.pt"
    save_torch(upcoming, state)  # a full disk fails here, with last.pt and previous.pt unchanged
    if last.is_file():  # a kill in between leaves last.pt, which load_checkpoint uses
        previous.unlink(missing_ok=True)
        os.link(last, previous)
    os.replace(upcoming, last)
    return last


def has_checkpoint(run_dir: Path) -> bool:
    folder = Path(run_dir) / "checkpoints"
    return (folder / "last.pt").is_file() or (folder / "previous.pt").is_file()


def load_checkpoint(run_dir: Path) -> dict:
    """The state in <run>/checkpoints/last.pt; when it is missing or unreadable, the one in
    previous.pt, with a warning. RunFolderError when neither can be read."""
    folder = Path(run_dir) / "checkpoints"
    last, previous = folder / "last.pt", folder / "previous.pt"
    try:
        return load_torch(last)
    except (UnreadableFile, FileNotFoundError) as e:
        problem = str(e) if isinstance(e, UnreadableFile) else f"{last} is missing"
    try:
        state = load_torch(previous)
    except (UnreadableFile, FileNotFoundError) as e:
        second = str(e) if isinstance(e, UnreadableFile) else f"{previous} is missing"
        raise RunFolderError(f"no checkpoint to resume from: {problem}, and {second}; delete "
                             f"{folder} to train from scratch (or train with --restart)"
                             ) from None
    warnings.warn(f"{problem}; resuming from {previous} (epoch {state['epoch']})", stacklevel=2)
    return state


class _PausingLoader:
    """Test-only (see PAUSE_ENV): the loader, pausing two batches into the second epoch. Each
    iter() makes its DataLoader iterator at once, as iter(DataLoader) does: that draws a seed
    from torch's generator, so the run draws what an unpaused one would."""

    def __init__(self, loader, t: Trainer) -> None:
        self.loader, self.t = loader, t

    def __iter__(self):
        return self._batches(iter(self.loader))

    def _batches(self, batches):
        for i, batch in enumerate(batches):
            if self.t.epoch == 1 and i == 2:
                _test_pause("batch")
            yield batch


def _test_pause(point: str) -> None:
    """Test-only (see PAUSE_ENV): write the marker file and sleep when `point` is asked for."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    Path(os.environ[MARKER_ENV]).write_text(str(os.getpid()))
    time.sleep(600)


def _describe(row: dict) -> str:
    text = f"epoch {row['epoch']}: loss {row['loss']['total']:.3f}, {row['seconds']:.0f} s"
    for split in ("val", "test"):
        if split in row:
            m = row[split]
            text += f", {split} R@1 {m['recall_at_k']['1']:.3f} MAP@R {m['map_at_r']:.3f}"
    return text
