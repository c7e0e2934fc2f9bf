"""Where and how the network runs: device choice, precision, memory format, host → device copies.

One policy, decided from the device, so that training, evaluation, the attention probes and the
benchmarks run the network the same way (docs/method.md §14; docs/datasets.md, "On a GPU"):

                      CUDA                                       CPU
    precision         bf16 autocast on compute capability        fp32, no autocast: results stay
                      ≥ 8.0, attention softmax and losses in     bit-identical to plain fp32
                      fp32 (mpn.py, losses.py); else (amp:
                      false, or an older GPU) fp32 with TF32 off
    memory format     channels_last, model and images            unchanged
    images            pinned, copied with non_blocking=True      nothing to copy
    cuDNN             autotuned conv algorithms (in training)    -
    k-NN search       on the GPU (retrieval.py, inference.py)    CPU; a CPU run never touches CUDA

bf16 has fp32's exponent range, so no GradScaler is needed; convolutions in channels_last run on
the tensor cores without layout transposes. Before compute capability 8.0 (V100, T4) cuDNN has no
bf16 convolutions, so bf16 would be emulated; such GPUs run fp32. On a CPU, bf16 autocast is slow
on most machines and would change every number, hence nothing changes there. Nothing here sets a
process-wide flag at import; `cudnn_autotune` and `exact_fp32` set theirs for the duration of a
`with` block only.
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
    """Whether the network runs under bf16 autocast: bf16=True or False decides; None (the
    device decides) means on a CUDA device of compute capability ≥ 8.0 (Ampere and later), not
    on older GPUs nor on the CPU. The capability is read only for a CUDA device."""
    if bf16 is not None:
        return bf16
    # Not torch.cuda.is_bf16_supported(): it also says yes where bf16 is only emulated, and
    # before 8.0 cuDNN has no bf16 convolutions (docs/datasets.md, "On a GPU").
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def bf16_override(amp: bool) -> bool | None:
    """The `bf16` argument a run's `amp` parameter asks for: None (the device decides: bf16 on
    CUDA of compute capability ≥ 8.0) when amp, False (fp32 everywhere) when not."""
    return None if amp else False


def channels_last_enabled(device: torch.device) -> bool:
    """Whether model and images use channels_last: on CUDA only."""
    return device.type == "cuda"


def autocast(device: torch.device,
             bf16: bool | None = None) -> contextlib.AbstractContextManager:
    """The context to run the network's forward in: bf16 autocast where `bf16_enabled`, else
    fp32: on CUDA with TF32 off (`exact_fp32`), on the CPU nothing at all.

    bf16=True forces bf16 autocast on any device (on the CPU: torch.autocast("cpu", bfloat16)),
    bf16=False turns it off. Compute the losses outside it: they cast to fp32 themselves."""
    if not bf16_enabled(device, bf16):
        return exact_fp32(device, bf16=False)
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


def exact_fp32(device: torch.device,
               bf16: bool | None = None) -> contextlib.AbstractContextManager:
    """The context a run's fp32 work on CUDA goes in, so that fp32 means fp32: where the network
    does not run in bf16 (`bf16_enabled(device, bf16)` false: amp: false, or a GPU older than
    8.0), TF32 is off for cuBLAS products and cuDNN convolutions inside the block and the flags
    are restored on exit, exceptions included. torch leaves TF32 on for cuDNN by default, so on
    Ampere and later "fp32" convolutions would otherwise round their inputs to a 10-bit
    mantissa. Nothing on the CPU, nor under bf16 (torch's defaults are kept there). `autocast`
    enters it around each forward; enter it around a whole training run too, for the backward
    passes, which run outside autocast."""
    if device.type != "cuda" or bf16_enabled(device, bf16):
        return contextlib.nullcontext()
    return _tf32_off()


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def search_device(device: torch.device) -> torch.device:
    """Where bulk tensor work on data held on `device` runs (k-NN search, reciprocal
    neighbourhoods): that CUDA device (with its index: cuda is the current device); for data
    elsewhere, the current CUDA device when this process already uses CUDA (X Xᵀ in row chunks
    and top-k on the GPU takes seconds even at SOP size), else `device` itself. Callers hand
    results back on `device`.

    "Already uses CUDA" (torch.cuda.is_initialized) is how the run's device reaches the search
    without being passed through every metric: a run on a GPU has its model there before it
    embeds anything, so its embeddings, kept on the CPU, are searched on its GPU (each DDP rank's
    own, distributed.py); a run with device: cpu has not, and its searches stay on the CPU and
    never initialise CUDA. A script that wants a GPU search of CPU tensors passes CUDA tensors."""
    if device.type == "cuda":
        return device if device.index is not None else torch.device(
            "cuda", torch.cuda.current_device())
    if torch.cuda.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return device
