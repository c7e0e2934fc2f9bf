"""How the network runs on its device: precision, memory format, host → device copies, loaders.

One policy, decided from the device, so that training, evaluation, the attention probes and the
benchmark all run the network the same way (METHOD_SPEC Part 1 row "precision", §14):

                      CUDA                                       CPU
    precision         bf16 autocast; attention softmax and       fp32, no autocast: results stay
                      losses in fp32 (mpn.py, losses.py)         bit-identical to plain fp32
    memory format     channels_last, model and images            unchanged
    images            pinned, copied with non_blocking=True      nothing to copy
    loader workers    min(cores − 1, 16), pinned memory          0 on ≤ 4 cores, else ≤ 4
    cuDNN             autotuned conv algorithms (in training)    -
    k-NN search       on the GPU (retrieval.py, inference.py)    CPU (faiss or numpy BLAS)

Why: the authors trained fp32 (Apex AMP came on release day, METHOD_SPEC §6.3) with 1-worker
loaders and a CPU k-NN (§14 "Training throughput killers"). bf16 has fp32's exponent range, so
no GradScaler is needed; convolutions in channels_last run on the tensor cores without layout
transposes. On a CPU, bf16 autocast is slow on most machines and would change every number,
hence nothing changes there.

Every choice can be forced (`bf16=`, `channels_last=`): the tests exercise the GPU precision
path on the CPU with `torch.autocast("cpu", dtype=torch.bfloat16)`, and the benchmark can turn
autocast off. Nothing here sets a process-wide flag at import; `cudnn_autotune` sets one for the
duration of a `with` block only.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ibdml.config import Params

# Workers for a GPU: enough to decode and augment ~1,500 images/s at 227 px (a few ms of one core
# each), one core left for the training process itself.
_GPU_MAX_WORKERS = 16


# --- Precision and memory format --------------------------------------------------------------


def bf16_enabled(device: torch.device, bf16: bool | None = None) -> bool:
    """Whether the network runs under bf16 autocast: on CUDA unless `bf16` says otherwise."""
    return device.type == "cuda" if bf16 is None else bf16


def bf16_override(p: Params) -> bool | None:
    """The `bf16` argument a run's parameters ask for: None (the device decides: bf16 on CUDA)
    when p.amp, False (fp32 everywhere) when not."""
    return None if p.amp else False


def channels_last_enabled(device: torch.device, channels_last: bool | None = None) -> bool:
    """Whether model and images use channels_last: on CUDA unless `channels_last` says otherwise."""
    return device.type == "cuda" if channels_last is None else channels_last


def autocast(device: torch.device,
             bf16: bool | None = None) -> contextlib.AbstractContextManager:
    """The context to run the network's forward in: bf16 autocast on CUDA, nothing on the CPU.

    bf16=True forces bf16 autocast on any device (on the CPU: torch.autocast("cpu", bfloat16)),
    bf16=False turns it off. Compute the losses outside it: they cast to fp32 themselves."""
    if not bf16_enabled(device, bf16):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def prepare_model(model: nn.Module, device: torch.device,
                  channels_last: bool | None = None) -> nn.Module:
    """Move `model` to `device` (in place; returned for chaining), in channels_last on CUDA: the
    4-D conv weights are re-laid out, everything else is unchanged. The state dict keeps the
    same values; loading it into a model of either layout copies them into that layout."""
    model = model.to(device)
    if channels_last_enabled(device, channels_last):
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(images: torch.Tensor, device: torch.device,
              channels_last: bool | None = None) -> torch.Tensor:
    """A batch of images [N, 3, H, W] on `device`: copied asynchronously (the loader pins its
    batches on CUDA), then re-laid out as channels_last on the device, where it is cheap."""
    images = images.to(device, non_blocking=True)
    if channels_last_enabled(device, channels_last):
        images = images.contiguous(memory_format=torch.channels_last)
    return images


@contextlib.contextmanager
def cudnn_autotune(device: torch.device) -> Iterator[None]:
    """On CUDA, let cuDNN time its convolution algorithms for each new input shape and keep the
    fastest (training repeats one batch shape, so the search is paid once). This is a
    process-wide flag: it is set only inside this block and restored on exit. Algorithms chosen by
    timing may differ between runs; GPU training is not bit-reproducible anyway (cuDNN's
    backward passes accumulate with atomics). Does nothing on the CPU."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def search_device(device: torch.device) -> torch.device:
    """Where bulk tensor work on data held on `device` runs (k-NN search, reciprocal
    neighbourhoods): that CUDA device, else the current CUDA device when one is visible
    (METHOD_SPEC §14: X Xᵀ in row chunks and topk on the GPU takes seconds even for SOP), else
    the CPU. Callers hand results back on `device`."""
    if device.type == "cuda":
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


# --- Data loading -----------------------------------------------------------------------------


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(p: Params, device: torch.device) -> int:
    """DataLoader workers: p.num_workers when set (≥ 0), else sized from the machine. For a GPU,
    one per core but one, at most 16: decoding and augmenting 227-px images is what limits a GPU
    run. On a CPU the cores are better spent on the network: none on ≤ 4 cores, else ≤ 4."""
    if p.num_workers >= 0:
        return p.num_workers
    cores = cpu_cores()
    if device.type == "cuda":
        return max(0, min(_GPU_MAX_WORKERS, cores - 1))
    return 0 if cores <= 4 else min(4, cores // 2)


def data_loader(dataset: Dataset, p: Params, device: torch.device, *, batch_size: int = 1,
                batch_sampler: Iterable[list[int]] | None = None) -> DataLoader:
    """A DataLoader over `dataset`, in order: batches of `batch_size` (evaluation) or those of
    `batch_sampler` (training), with `worker_count` workers and pinned memory on CUDA (the copy
    to the GPU overlaps compute). Workers are not persistent: they would keep their random
    streams across epochs, so a resumed run would augment differently from a straight one
    (train.py promises exact resume)."""
    return DataLoader(dataset, batch_size=batch_size, batch_sampler=batch_sampler,
                      num_workers=worker_count(p, device), pin_memory=device.type == "cuda")
