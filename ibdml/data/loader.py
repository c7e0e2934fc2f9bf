"""DataLoaders sized from the machine: how many workers decode and augment images, and whether
batches are pinned for an asynchronous copy to the GPU."""

from __future__ import annotations

import os
from typing import Iterable

import torch
from torch.utils.data import DataLoader, Dataset

# Workers for a GPU: enough to decode and augment ~1,500 images/s at 227 px (a few ms of one core
# each), one core left for the training process itself.
_GPU_MAX_WORKERS = 16


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(num_workers: int, device: torch.device) -> int:
    """DataLoader workers: `num_workers` when set (≥ 0), else sized from the machine. For a GPU,
    one per core but one, at most 16: decoding and augmenting 227-px images is what limits a GPU
    run. On a CPU the cores are better spent on the network: none on ≤ 4 cores, else ≤ 4."""
    if num_workers >= 0:
        return num_workers
    cores = cpu_cores()
    if device.type == "cuda":
        return max(0, min(_GPU_MAX_WORKERS, cores - 1))
    return 0 if cores <= 4 else min(4, cores // 2)


def data_loader(dataset: Dataset, num_workers: int, device: torch.device, *, batch_size: int = 1,
                batch_sampler: Iterable[list[int]] | None = None) -> DataLoader:
    """A DataLoader over `dataset`, in order: batches of `batch_size` (evaluation) or those of
    `batch_sampler` (training), with `worker_count` workers and pinned memory on CUDA (the copy
    to the GPU overlaps compute). Workers are not persistent: they would keep their random
    streams across epochs, so a resumed run would augment differently from a straight one
    (training promises exact resume)."""
    return DataLoader(dataset, batch_size=batch_size, batch_sampler=batch_sampler,
                      num_workers=worker_count(num_workers, device),
                      pin_memory=device.type == "cuda")
