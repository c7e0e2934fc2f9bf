"""Seeds and random-number states: one seed starts a run, and the states a checkpoint carries let
a resumed run draw exactly what an uninterrupted one would have drawn (a resumed run is then
bit-identical on the CPU, and equal up to cuDNN's floating-point noise on a GPU: docs/datasets.md,
"On a GPU")."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators. torch also seeds every CUDA device,
    lazily: a process that never uses CUDA never initialises it for this."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global generators' states, to be stored with a checkpoint: tensors and plain Python
    values only (numpy's key as a list of ints), so that the checkpoint loads with
    torch.load(weights_only=True) (steps/rundir.py).

    "cuda" is [the CUDA generator state of the device this process trains on] in a process that
    uses CUDA, and [] in one that does not (a run with device: cpu), which this never initialises
    (see `_cuda_rng_states`)."""
    # {bit_generator, state: {key, pos}, has_gauss, gauss}
    numpy = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(),
            "numpy": {**numpy, "state": {"key": numpy["state"]["key"].tolist(),
                                         "pos": int(numpy["state"]["pos"])}},
            "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next): plain
            "cuda": _cuda_rng_states()}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned. The CUDA state goes onto the current device, and only in
    a process that uses CUDA: a run with device: cpu resuming a GPU run's checkpoint leaves CUDA
    alone. A checkpoint may carry one CUDA state per GPU of the machine that wrote it (the format
    before one state per run); it resumes with any number of visible GPUs
    (`cuda_state_for_device`)."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state({**numpy, "state": {
        "key": np.asarray(numpy["state"]["key"], dtype=np.uint32), "pos": numpy["state"]["pos"]}})
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state["cuda"] and torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        torch.cuda.set_rng_state(cuda_state_for_device(state["cuda"], index), index)


def cuda_state_for_device(states: list[torch.Tensor], index: int) -> torch.Tensor:
    """Which of a checkpoint's CUDA generator states [S] (S ≥ 1) resumes on CUDA device `index`.

    One state (this format): the state of the device the run trained on, whatever its index
    there, so states[0] on any device. Several (checkpoints whose "cuda" held every visible
    GPU's state, torch.cuda.get_rng_state_all): states[index], the state this device had, when
    the writing machine had that device; else states[0], the first device's, which is where a
    one-process run trains (device: cuda is the current device, cuda:0 unless set otherwise).
    Restoring every state (set_rng_state_all) would raise IndexError with fewer visible GPUs.
    """
    return states[index] if index < len(states) else states[0]


def _cuda_rng_states() -> list[torch.Tensor]:
    """[the current CUDA device's generator state] when this process has initialised CUDA, else
    []. A run on a GPU has: its model is on the device before anything is checkpointed, and it
    trains on the current device (distributed.py sets each rank's own). A run on the CPU has not,
    and asking would initialise CUDA (torch.cuda.get_rng_state does) on any machine with a GPU.
    One device only: training uses one, and one state per visible GPU would not resume where
    fewer are visible."""
    if not torch.cuda.is_initialized():
        return []
    return [torch.cuda.get_rng_state(torch.cuda.current_device())]
