"""The training loop, as a function (paper §3.3; docs/method.md §5–6).

RAdam with decoupled weight decay (the MPN in its own parameter group, at lr × mpn_lr_multiplier),
a MultiStep learning-rate schedule, label-smoothed cross-entropy on the backbone and MPN heads.
`Trainer` bundles everything one run mutates, so the run step (steps/train.py) can checkpoint it
in one piece and resume exactly: training 2 epochs equals training 1 and resuming for 1. Nothing
here touches a file.

On a GPU the network runs as device.py decides: bf16 autocast (unless amp: false), channels_last,
pinned asynchronous copies; and the losses are read back in blocks of steps, not every step (see
`train_epoch`). On the CPU all of this is off and the numbers are those of plain fp32.

On G processes (distributed.py, docs/scale-out.md) the model is wrapped in
DistributedDataParallel: each rank runs whole batches of its own (data/sampler.py), the backward
all-reduces the gradients to their mean over the ranks, and every rank takes the same optimiser
step. One process (G = 1) runs exactly as before, with no wrapper and no extra random draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ibdml import device as devices
from ibdml.config import Params
from ibdml.data.folder import Split
from ibdml.data.sampler import ClassBalancedBatchSampler
from ibdml.distributed import World, mean_over_ranks, rank_seed
from ibdml.losses import intra_batch_loss
from ibdml.model import IntraBatchModel, build_model
from ibdml.seeding import rng_state, seed_everything, set_rng_state


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
    world: World = field(default_factory=World)  # the processes training together
    replicated: nn.Module | None = None  # G > 1: the DDP wrapper of `model` the forward runs in

    @property
    def network(self) -> nn.Module:
        """What a training step runs: the DDP wrapper on several processes, else the model."""
        return self.model if self.replicated is None else self.replicated

    def state_dict(self) -> dict:
        """Tensors and plain Python values only (seeding.rng_state, the sampler's ints), so that
        a checkpoint of it loads with torch.load(weights_only=True). The model's keys are the
        unwrapped model's whatever the number of processes: evaluation and resume load it as
        they load a one-process run's."""
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


def build_trainer(p: Params, train: Split, device: torch.device,
                  world: World = World()) -> Trainer:
    """The model, optimiser, schedule and sampler of a run, seeded by p.seed.

    On G = world.size processes (docs/scale-out.md), every rank builds the same model (same
    seed; DDP also copies rank 0's weights to the others), takes its share of each epoch's
    batches and trains the model wrapped in DistributedDataParallel. Then one optimiser step
    sees G batches of n_c × n_s (an effective batch of G·n_c·n_s images, each batch its own MPN
    graph), DDP averages the gradients, so `lr` is the step size of that averaged gradient, and
    an epoch has G times fewer steps. lr is not scaled with G: that is the user's choice (the
    linear scaling rule, lr × G, is a common starting point). BatchNorm normalises each batch on
    its own rank; its running statistics are rank 0's (DDP broadcasts them every step)."""
    seed_everything(p.seed)
    model = devices.prepare_model(build_model(p, train.num_classes), device)  # CUDA: channels_last
    optimizer = torch.optim.RAdam(param_groups(model, p), lr=p.lr,
                                  weight_decay=p.weight_decay, decoupled_weight_decay=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, p.lr_milestones, p.lr_gamma)
    sampler = ClassBalancedBatchSampler(train.labels, p.n_c, p.n_s, seed=p.seed,
                                        batch_shape=p.batch_shape, rank=world.rank,
                                        world_size=world.size)
    t = Trainer(model, optimizer, scheduler, sampler, world=world)
    if world.size > 1:
        t.replicated = _replicate(model, p, device)
    return t


def param_groups(model: IntraBatchModel, p: Params) -> list[dict]:
    """The optimiser's parameter groups: group 0 the backbone at lr (steps/train.py logs group
    0's lr as the run's lr), group 1 the MPN, when there is one and mpn_lr_multiplier is not 1,
    at lr × mpn_lr_multiplier. The MultiStep schedule multiplies both by lr_gamma at each
    milestone, so their ratio stays. At multiplier 1 the MPN shares group 0: the same updates,
    and the optimiser state keeps the one-group layout of checkpoints written before the
    multiplier existed, so they still resume. Frozen parameters (the BN-neck bias, mpn.py) are
    left out."""
    backbone = [w for w in model.backbone.parameters() if w.requires_grad]
    mpn = [] if model.mpn is None else [w for w in model.mpn.parameters() if w.requires_grad]
    if not mpn or p.mpn_lr_multiplier == 1:
        return [{"params": backbone + mpn, "lr": p.lr}]
    return [{"params": backbone, "lr": p.lr},
            {"params": mpn, "lr": p.lr * p.mpn_lr_multiplier}]


def _replicate(model: IntraBatchModel, p: Params, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel. With loss_heads: backbone the MPN never runs, and with
    mpn_attention uniform or self its q and k are never used (mpn.py), so DDP must look for
    parameters that got no gradient (find_unused_parameters)."""
    from torch.nn.parallel import DistributedDataParallel

    unused = model.mpn is not None and (p.loss_heads != "both" or p.mpn_attention != "dot")
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=unused)


def train_epoch(t: Trainer, loader: Iterable, p: Params, device: torch.device,
                progress: bool) -> dict:
    """One pass of the loader (batches of images, labels, indices); returns the epoch's mean
    losses.

    The forward runs under `device.autocast` (bf16 on CUDA when p.amp; nothing on the CPU), the
    losses outside it in fp32 (losses.py). Each step's losses stay on the device and are read
    back every step on the CPU, where reading is free, but only every _GPU_READ_EVERY steps on a
    GPU: a read makes the host wait until the GPU has run everything queued, so the next steps
    could not be queued ahead. A non-finite loss is therefore caught before its optimiser step on
    the CPU, and up to _GPU_READ_EVERY − 1 steps later on a GPU; either way TrainingDiverged names
    the step where it appeared, and the in-memory weights are abandoned: the last good
    checkpoint is kept.

    On several processes (t.world), each rank runs its own batches through the DDP wrapper; its
    global generators are reseeded every epoch from (seed, rank, epoch) so that the ranks draw
    different augmentations; the returned means are over every rank's batches.
    """
    t.network.train()
    t.sampler.set_epoch(t.epoch)
    if t.world.size > 1:
        seed_everything(rank_seed(p.seed, t.world, t.epoch))
    bf16 = devices.bf16_override(p.amp)  # amp: bf16 on CUDA only; amp: false: fp32
    read_every = 1 if device.type == "cpu" else _GPU_READ_EVERY
    sums, steps, pending = {}, 0, []
    bar = tqdm(loader, desc=f"epoch {t.epoch + 1}/{p.epochs}", disable=not progress, leave=False)
    for images, labels, _ in bar:
        images = devices.to_device(images, device)  # [N, 3, S, S], channels_last on CUDA
        labels = labels.to(device, non_blocking=True)
        with devices.autocast(device, bf16):
            out = t.network(images, run_mpn=p.loss_heads == "both")
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
    means = {k: v / steps for k, v in sums.items()}
    return means if t.world.size == 1 else mean_over_ranks(means, device)


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
