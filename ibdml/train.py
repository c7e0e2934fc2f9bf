"""The training loop, as a function (paper §3.3; METHOD_SPEC §5–6, Part 1).

RAdam with decoupled weight decay, a MultiStep learning-rate schedule, label-smoothed
cross-entropy on the backbone and MPN heads. After every epoch the state needed to continue
(model, optimiser, scheduler, sampler, RNG states) is checkpointed atomically and a row is
appended to history.json, so `train(..., resume=True)` continues an interrupted run exactly:
training 2 epochs equals training 1 and resuming for 1. Before training and after every epoch the
MPN's attention on fixed probe batches is recorded into <run>/attention/ (probes.py).

On a GPU the network runs as accel.py decides: bf16 autocast (unless amp: false), channels_last,
pinned asynchronous copies, loader workers sized from the machine, cuDNN autotuning for the
duration of `train`; and the losses are read back in blocks of steps, not every step (see
`train_epoch`). On the CPU all of this is off and the numbers are those of plain fp32.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from ibdml import accel
from ibdml.config import Params, check_batch_shape
from ibdml.data.datasets import load_splits
from ibdml.data.folder import ImageDataset, Split
from ibdml.data.sampler import ClassBalancedBatchSampler
from ibdml.data.transforms import train_transform
from ibdml.evaluation import evaluate_split, evaluate_test
from ibdml.losses import intra_batch_loss
from ibdml.model import IntraBatchModel, build_model
from ibdml.probes import (Probes, epoch_file, make_probes, record_epoch, records_attention,
                          write_probe_info)
from ibdml.runs import (prepare_run_dir, read_json, resolve_device, rng_state, save_torch,
                        seed_everything, set_rng_state, write_json)


# Steps between reads of the losses on a GPU (see `train_epoch`): each read makes the host wait
# until the GPU has drained its queue, so it happens once per 25 steps instead of every step.
_GPU_READ_EVERY = 25


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Trainer:
    """Everything one training run mutates, bundled so it can be checkpointed in one piece."""

    model: IntraBatchModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: ClassBalancedBatchSampler
    epoch: int = 0  # completed epochs
    best: float = -math.inf  # best selection R@1 so far

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                "epoch": self.epoch, "best": self.best, "rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.best = state["epoch"], state["best"]
        set_rng_state(state["rng"])


def build_trainer(p: Params, train: Split, device: torch.device) -> Trainer:
    seed_everything(p.seed)
    model = accel.prepare_model(build_model(p, train.num_classes), device)  # CUDA: channels_last
    params = [w for w in model.parameters() if w.requires_grad]  # the BN-neck bias stays frozen
    optimizer = torch.optim.RAdam(params, lr=p.lr, weight_decay=p.weight_decay,
                                  decoupled_weight_decay=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, p.lr_milestones, p.lr_gamma)
    sampler = ClassBalancedBatchSampler(train.labels, p.n_c, p.n_s, seed=p.seed,
                                        batch_shape=p.batch_shape)
    return Trainer(model, optimizer, scheduler, sampler)


def train_epoch(t: Trainer, loader: Iterable, p: Params, device: torch.device,
                progress: bool) -> dict:
    """One pass of the loader (batches of images, labels, indices); returns the epoch's mean
    losses.

    The forward runs under `accel.autocast` (bf16 on CUDA when p.amp; nothing on the CPU), the
    losses outside it in fp32 (losses.py). Each step's losses stay on the device and are read
    back every step on the CPU, where reading is free, but only every _GPU_READ_EVERY steps on a
    GPU: a read makes the host wait until the GPU has run everything queued, so the next steps
    could not be queued ahead. A non-finite loss is therefore caught before its optimiser step on
    the CPU, and up to _GPU_READ_EVERY − 1 steps later on a GPU; either way TrainingDiverged names
    the step where it appeared, and the in-memory weights are abandoned: the last good
    checkpoint is kept.
    """
    t.model.train()
    t.sampler.set_epoch(t.epoch)
    bf16 = accel.bf16_override(p)  # amp: bf16 on CUDA only; amp: false: fp32
    read_every = 1 if device.type == "cpu" else _GPU_READ_EVERY
    sums, steps, pending = {}, 0, []
    bar = tqdm(loader, desc=f"epoch {t.epoch + 1}/{p.epochs}", disable=not progress, leave=False)
    for images, labels, _ in bar:
        images = accel.to_device(images, device)  # [N, 3, S, S], channels_last on CUDA
        labels = labels.to(device, non_blocking=True)
        with accel.autocast(device, bf16):
            out = t.model(images, run_mpn=p.loss_heads == "both")
        loss, parts = intra_batch_loss(out, labels, smoothing=p.label_smoothing,
                                       temperature=p.temperature)
        pending.append({"total": loss.detach(), **parts})
        if len(pending) == read_every:
            steps = _read_losses(pending, sums, steps, t, p)
            bar.set_postfix(loss=f"{sums['total'] / steps:.3f}")
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
    if pending:
        steps = _read_losses(pending, sums, steps, t, p)
    return {k: v / steps for k, v in sums.items()}


def _read_losses(pending: list[dict[str, torch.Tensor]], sums: dict[str, float], steps: int,
                 t: Trainer, p: Params) -> int:
    """Read the pending steps' losses back in one copy, add them to `sums` (Python floats, in
    step order: the same sums as reading every step) and empty `pending`. Returns the number of
    steps read so far; raises TrainingDiverged at the first non-finite total."""
    names = list(pending[0])  # "total", then the parts
    values = torch.stack([torch.stack([step[n] for n in names]) for step in pending])
    values = values.double().cpu()  # [steps, parts]; fp32 → fp64 is exact
    finite = torch.isfinite(values[:, 0])
    if not finite.all():
        bad = int((~finite).nonzero()[0])
        raise TrainingDiverged(
            f"the loss became {float(values[bad, 0])} at epoch {t.epoch + 1}, step "
            f"{steps + bad + 1}; the last good checkpoint (epoch {t.epoch}) is kept. Lower lr "
            f"(now {p.lr}) or raise temperature (now {p.temperature}), then train again in a new "
            "run folder")
    for row in values.tolist():
        steps += 1
        for name, value in zip(names, row):
            sums[name] = sums.get(name, 0.0) + value
    pending.clear()
    return steps


def _evaluate(t: Trainer, splits: dict[str, Split], p: Params, device: torch.device) -> dict:
    """Metrics of the current backbone on val (when present) and on the test protocol (In-Shop:
    query → gallery), without NMI (cheap)."""
    row = {"test": evaluate_test(t.model, splits, p, device, nmi=False)[0]}
    if "val" in splits:
        row["val"] = evaluate_split(t.model, splits["val"], p, device, nmi=False)[0]
    return row


def _resume(t: Trainer, run_dir: Path) -> list[dict]:
    """Load the last checkpoint; keep only the history rows it covers."""
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu",
                       weights_only=False)
    t.load_state_dict(state)
    history_file = run_dir / "history.json"
    history = read_json(history_file) if history_file.is_file() else []
    return [row for row in history if row["epoch"] <= t.epoch]


def train(p: Params, run_dir: str | Path, *, resume: bool = True, progress: bool = True) -> dict:
    """Train the run described by `p` into `run_dir`; returns a summary. With resume=True an
    existing checkpoint in the folder is continued (a finished run returns at once)."""
    run_dir = prepare_run_dir(Path(run_dir), p)
    device = resolve_device(p.device)
    splits = load_splits(p, progress=progress)
    train_split = splits["train"]
    check_batch_shape(p, train_classes=train_split.num_classes,
                      largest_class=int(torch.as_tensor(train_split.labels).bincount().max()))
    t = build_trainer(p, train_split, device)
    history = []
    if resume and (run_dir / "checkpoints" / "last.pt").is_file():
        history = _resume(t, run_dir)
    loader = accel.data_loader(ImageDataset(train_split, train_transform(p)), p, device,
                               batch_sampler=t.sampler)
    with accel.cudnn_autotune(device):  # CUDA only; restored when training ends
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
