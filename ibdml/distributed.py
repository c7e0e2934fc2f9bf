"""One training run on several processes with torch.distributed (DDP; docs/scale-out.md).

The MPN needs a whole n_c × n_s batch on one device (the batch is one graph; the authors'
DataParallel would split it: docs/method.md §6.3), so a run on G processes (ranks) never splits
a batch: every rank draws whole batches from the same seeded sampler, rank r taking the epoch's
batches r, r+G, … (data/sampler.py), and DistributedDataParallel averages the gradients, so one
optimiser step sees G batches (trainer.py). Rank 0 alone writes the run folder (steps/train.py).

Everything here runs on torch's engines: the elastic launcher (torchrun's) starts the processes,
a process group (gloo on CPUs, nccl on GPUs) carries the collectives. This module holds the parts
that touch no run folder: who this process is (`World`), the backend and the device of a rank,
the process group's life, and the launcher call. It writes no files (the launcher keeps its logs
in a temporary folder of its own).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ibdml.config import ParamError
from ibdml.data.loader import cpu_cores

# How long a rank waits in a collective: the other ranks wait at a barrier while rank 0
# evaluates and writes a checkpoint, which on SOP or In-Shop takes minutes. A rank that dies is
# noticed sooner: the launcher (torchrun, or `launch`) stops the others when one fails.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


class WorkerFailed(RuntimeError):
    """A process of a launched training job failed; the message is its error."""


@dataclass(frozen=True)
class World:
    """This process's place in a job: rank (0 … size−1 over all nodes), local rank (on this
    node; selects the GPU) and size (the number of processes). World() is one process."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and evaluates."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here; nothing to wait for in a one-process world."""
        if self.size == 1:
            return
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def job_world() -> World | None:
    """The job this process was started in, from the variables torchrun and the elastic
    launcher set (RANK, LOCAL_RANK, WORLD_SIZE); None outside such a job."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    if not all(n in os.environ for n in names):
        return None
    rank, local_rank, size = (int(os.environ[n]) for n in names)
    return World(rank, local_rank, size)


def backend(device: torch.device) -> str:
    """The collective backend for a rank's device: nccl between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device a rank trains on: cuda:LOCAL_RANK on GPUs (one GPU per process), else `device`.
    ParamError when the node has fewer GPUs than processes."""
    if device.type != "cuda" or world.size == 1:
        return device
    if world.local_rank >= torch.cuda.device_count():
        raise ParamError(f"parameter nproc: process {world.local_rank} of this node needs GPU "
                         f"{world.local_rank}, but {torch.cuda.device_count()} are visible; "
                         "start at most one process per GPU (or use device: cpu)")
    return torch.device("cuda", world.local_rank)


def check_gpus(nproc: int, device: torch.device) -> None:
    """ParamError when `nproc` processes on this machine cannot each have a GPU of their own."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ParamError(f"parameter nproc: {nproc} processes need {nproc} GPUs, but "
                         f"{torch.cuda.device_count()} are visible; use nproc ≤ "
                         f"{torch.cuda.device_count()} (or device: cpu)")


def rank_seed(seed: int, world: World, epoch: int) -> int:
    """The seed of a rank's global generators for one epoch (augmentation, dropout): different
    on every rank, so that the ranks do not draw the same crops, and fixed by (seed, rank,
    epoch), so that an epoch draws the same whatever happened before it."""
    return int(np.random.SeedSequence([seed, world.rank, epoch]).generate_state(1)[0])


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the job this process runs in (job_world: torchrun or `launch`), with the backend of
    `device`, for the body; yields this process's World. On CUDA the rank's GPU becomes the
    current one; on the CPU the node's cores are shared between its processes unless
    OMP_NUM_THREADS says otherwise (torchrun sets it to 1, the elastic launcher does not). The
    group is destroyed on exit."""
    world = job_world()
    if world is None:
        raise RuntimeError("not in a torch.distributed job: RANK, LOCAL_RANK and WORLD_SIZE are "
                           "not set; start it with torchrun, or set nproc and call train()")
    if device.type == "cuda":
        torch.cuda.set_device(rank_device(device, world))
    elif "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
        torch.set_num_threads(max(1, cpu_cores() // local))
    dist.init_process_group(backend(device), timeout=COLLECTIVE_TIMEOUT)  # env:// rendezvous
    try:
        yield world
    finally:
        dist.destroy_process_group()


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over the ranks (all-reduce), the same on every rank. With equal
    step counts on every rank, the mean of per-rank epoch means is the mean over all batches."""
    names = list(values)
    total = torch.tensor([values[n] for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(total)  # sum over ranks
    return dict(zip(names, (total / dist.get_world_size()).tolist()))


def launch(entrypoint: Callable[..., Any], nproc: int, args: tuple) -> Any:
    """Run entrypoint(*args) in `nproc` new processes on this machine with torch's elastic
    launcher (what `torchrun --standalone --nproc-per-node=nproc` does, callable from Python and
    so from a notebook) and return rank 0's result. `entrypoint` must be importable (a module's
    top-level function): the processes are spawned. Each process finds RANK, LOCAL_RANK and
    WORLD_SIZE in its environment and joins with `process_group`. No restarts: a failing process
    stops the others, and WorkerFailed carries the first error (its traceback is logged above).
    Ctrl-C stops every process and raises KeyboardInterrupt."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=f"ibdml-{uuid.uuid4()}", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0)  # "standalone"
    try:
        return elastic_launch(config, entrypoint)(*args)[0]
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = failure.message  # the error file's {"message": "Type: text", ...}, or text
        message = message.get("message", message) if isinstance(message, dict) else message
        raise WorkerFailed(f"training process {rank} of {nproc} failed: {message}") from None
    except SignalException as e:
        if e.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise
