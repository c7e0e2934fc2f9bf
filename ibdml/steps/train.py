"""The training step: train a run described by Params into its run folder (paper §3.3).

After every epoch the state needed to continue (trainer.Trainer: model, optimiser, scheduler,
sampler, RNG states) is checkpointed atomically and a row is appended to history.json, so
`train(..., resume=True)` continues an interrupted run exactly: training 2 epochs equals training
1 and resuming for 1. Before training and after every epoch the MPN's attention on fixed probe
batches is recorded into <run>/attention/ (steps/attention.py). On a GPU, cuDNN autotuning is on
for the duration of `train` (device.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ibdml import device as devices
from ibdml.config import Params, check_batch_shape
from ibdml.data.folder import ImageDataset, Split
from ibdml.data.loader import data_loader
from ibdml.data.splits import load_splits
from ibdml.data.transforms import train_transform
from ibdml.evaluation import evaluate_split, evaluate_test
from ibdml.probes import Probes, make_probes, records_attention
from ibdml.steps.attention import epoch_file, record_epoch, write_probe_info
from ibdml.steps.rundir import load_torch, prepare_run_dir, read_json, save_torch, write_json
from ibdml.trainer import Trainer, build_trainer, train_epoch


def _evaluate(t: Trainer, splits: dict[str, Split], p: Params, device: torch.device) -> dict:
    """Metrics of the current backbone on val (when present) and on the test protocol (In-Shop:
    query → gallery), without NMI (cheap)."""
    row = {"test": evaluate_test(t.model, splits, p, device, nmi=False)[0]}
    if "val" in splits:
        row["val"] = evaluate_split(t.model, splits["val"], p, device, nmi=False)[0]
    return row


def _resume(t: Trainer, run_dir: Path) -> list[dict]:
    """Load the last checkpoint; keep only the history rows it covers."""
    t.load_state_dict(load_torch(run_dir / "checkpoints" / "last.pt"))
    history_file = run_dir / "history.json"
    history = read_json(history_file) if history_file.is_file() else []
    return [row for row in history if row["epoch"] <= t.epoch]


def train(p: Params, run_dir: str | Path, *, resume: bool = True, progress: bool = True) -> dict:
    """Train the run described by `p` into `run_dir`; returns a summary. With resume=True an
    existing checkpoint in the folder is continued (a finished run returns at once)."""
    run_dir = prepare_run_dir(Path(run_dir), p)
    device = devices.resolve_device(p.device)
    splits = load_splits(p, progress=progress)
    train_split = splits["train"]
    check_batch_shape(p, train_classes=train_split.num_classes,
                      largest_class=int(torch.as_tensor(train_split.labels).bincount().max()))
    t = build_trainer(p, train_split, device)
    history = []
    if resume and (run_dir / "checkpoints" / "last.pt").is_file():
        history = _resume(t, run_dir)
    loader = data_loader(ImageDataset(train_split, train_transform(p)), p.num_workers, device,
                         batch_sampler=t.sampler)
    with devices.cudnn_autotune(device):  # CUDA only; restored when training ends
        probes = _start_recording(t, train_split, p, run_dir, device)
        while t.epoch < p.epochs:
            start = time.time()
            losses = train_epoch(t, loader, p, device, progress)
            lr = t.optimizer.param_groups[0]["lr"]
            t.scheduler.step()
            t.epoch += 1
            seconds = time.time() - start
            row = {"epoch": t.epoch, "loss": losses, "lr": lr, "seconds": round(seconds, 2),
                   "images_per_second": round(len(t.sampler) * p.batch_size / seconds, 1)}
            due = p.eval_every and t.epoch % p.eval_every == 0 or t.epoch == p.epochs
            if due:
                row.update(_evaluate(t, splits, p, device))
            if probes is not None:  # before the checkpoint: a checkpointed epoch has its record
                row["attention_seconds"] = round(record_epoch(t.model, probes, run_dir, t.epoch,
                                                              device), 3)
            _checkpoint(t, row, run_dir, p)
            history.append(row)
            write_json(run_dir / "history.json", history)
            if progress:
                tqdm.write(_describe(row))
    return {"run_dir": str(run_dir), "epochs": t.epoch, "history": history}


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


def _checkpoint(t: Trainer, row: dict, run_dir: Path, p: Params) -> None:
    """last.pt every epoch; best.pt when the selection split's R@1 improves."""
    state = t.state_dict()
    selection = {"val": row.get("val"), "test": row.get("test")}.get(p.select_on)
    if selection is not None and selection["recall_at_k"]["1"] > t.best:
        t.best = state["best"] = selection["recall_at_k"]["1"]
        save_torch(run_dir / "checkpoints" / "best.pt", state)
    save_torch(run_dir / "checkpoints" / "last.pt", state)


def _describe(row: dict) -> str:
    text = f"epoch {row['epoch']}: loss {row['loss']['total']:.3f}, {row['seconds']:.0f} s"
    for split in ("val", "test"):
        if split in row:
            m = row[split]
            text += f", {split} R@1 {m['recall_at_k']['1']:.3f} MAP@R {m['map_at_r']:.3f}"
    return text
