"""Where and how the network runs: device choice, precision, memory format, host → device copies.

One policy, decided from the device, so that training, evaluation, the attention probes and the
benchmarks run the network the same way (docs/method.md §14):

                      CUDA                                       CPU
    precision         bf16 autocast; attention softmax and       fp32, no autocast: results stay
                      losses in fp32 (mpn.py, losses.py)         bit-identical to plain fp32
    memory format     channels_last, model and images            unchanged
    images            pinned, copied with non_blocking=True      nothing to copy
    cuDNN             autotuned conv algorithms (in training)    -
    k-NN search       on the GPU (retrieval.py, inference.py)    CPU

bf16 has fp32's exponent range, so no GradScaler is needed; convolutions in channels_last run on
the tensor cores without layout transposes. On a CPU, bf16 autocast is slow on most machines and
would change every number, hence nothing changes there. Nothing here sets a process-wide flag at
import; `cudnn_autotune` sets one for the duration of a `with` block only.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    """The device of a run's `device` parameter: auto = CUDA when visible, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("parameter device: cuda, but no CUDA device is visible; use auto or cpu")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        "cpu" if name == "auto" else name)


def bf16_enabled(device: torch.device, bf16: bool | None = None) -> bool:
    """Whether the network runs under bf16 autocast: on CUDA unless `bf16` says otherwise."""
    return device.type == "cuda" if bf16 is None else bf16


def bf16_override(amp: bool) -> bool | None:
    """The `bf16` argument a run's `amp` parameter asks for: None (the device decides: bf16 on
    CUDA) when amp, False (fp32 everywhere) when not."""
    return None if amp else False


def channels_last_enabled(device: torch.device) -> bool:
    """Whether model and images use channels_last: on CUDA only."""
    return device.type == "cuda"


def autocast(device: torch.device,
             bf16: bool | None = None) -> contextlib.AbstractContextManager:
    """The context to run the network's forward in: bf16 autocast on CUDA, nothing on the CPU.

    bf16=True forces bf16 autocast on any device (on the CPU: torch.autocast("cpu", bfloat16)),
    bf16=False turns it off. Compute the losses outside it: they cast to fp32 themselves."""
    if not bf16_enabled(device, bf16):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device` (in place; returned for chaining), in channels_last on CUDA: the
    4-D conv weights are re-laid out, everything else is unchanged. The state dict keeps the
    same values; loading it into a model of either layout copies them into that layout."""
    model = model.to(device)
    if channels_last_enabled(device):
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of images [N, 3, H, W] on `device`: copied asynchronously (the loader pins its
    batches on CUDA), then re-laid out as channels_last on the device, where it is cheap."""
    images = images.to(device, non_blocking=True)
    if channels_last_enabled(device):
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
    neighbourhoods): that CUDA device, else the current CUDA device when one is visible (X Xᵀ in
    row chunks and top-k on the GPU takes seconds even at SOP size), else the CPU. Callers hand
    results back on `device`."""
    if device.type == "cuda":
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device
