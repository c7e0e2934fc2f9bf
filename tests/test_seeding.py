"""Random-generator states in checkpoints (ibdml/seeding.py): the global generators come back as
they were; the CUDA state is the one device a run trains on, taken only in a process that uses
CUDA; a checkpoint carrying one CUDA state per GPU of another machine resumes with one visible GPU.

CUDA is faked (torch.cuda.is_initialized, current_device, get_rng_state, set_rng_state): every
test runs on a CPU-only machine and holds unchanged on one with GPUs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import ibdml.trainer as trainer_module
from ibdml import seeding
from ibdml.config import make_params
from ibdml.data.folder import Split


def _refuse(*args, **kwargs):
    raise AssertionError("CUDA was asked for in a process that does not use it")


def fake_cuda(monkeypatch, *, initialised: bool, current: int = 0, visible: int = 1) -> list:
    """CUDA as a machine with `visible` GPUs shows it, current device `current`; returns the list
    that records each set_rng_state(state, index). A process that has not initialised CUDA
    refuses every state call, as asking would initialise it; set_rng_state_all, which indexes
    every state it is given, is refused always (it is what broke resuming on fewer GPUs)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialised)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current if initialised else _refuse())
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", _refuse)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", _refuse)
    if initialised:
        monkeypatch.setattr(torch.cuda, "get_rng_state",
                            lambda index: torch.full((4,), index, dtype=torch.uint8))
        monkeypatch.setattr(torch.cuda, "set_rng_state",
                            lambda state, index: calls.append((state.tolist(), index)))
    else:
        monkeypatch.setattr(torch.cuda, "get_rng_state", _refuse)
        monkeypatch.setattr(torch.cuda, "set_rng_state", _refuse)
    return calls


def state_of_device(index: int) -> torch.Tensor:
    return torch.full((4,), index, dtype=torch.uint8)


def test_global_generators_come_back_as_they_were(monkeypatch):
    fake_cuda(monkeypatch, initialised=False)
    seeding.seed_everything(3)
    saved = seeding.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2).tolist())
    seeding.seed_everything(99)
    seeding.set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(2).tolist()) == first


def test_a_process_without_cuda_saves_and_restores_no_cuda_state(monkeypatch):
    # A GPU is visible but the run is on the CPU: no CUDA call (each would initialise CUDA),
    # even when resuming a GPU run's checkpoint.
    fake_cuda(monkeypatch, initialised=False, visible=2)
    state = seeding.rng_state()
    assert state["cuda"] == []
    seeding.set_rng_state({**state, "cuda": [state_of_device(0), state_of_device(1)]})


def test_a_run_on_a_gpu_saves_the_state_of_its_device_only(monkeypatch):
    fake_cuda(monkeypatch, initialised=True, current=1, visible=4)  # e.g. DDP rank 1
    assert [s.tolist() for s in seeding.rng_state()["cuda"]] == [[1] * 4]


@pytest.mark.parametrize("saved, current, restored", [
    ([0], 0, 0),  # this format: the run's device, onto the current one
    ([5], 1, 5),  # ... whatever index it had on the machine that wrote it
    ([0, 1], 0, 0),  # the old format, one state per GPU, resumed with one visible GPU
    ([0, 1], 1, 1),  # ... the state of the device in use, when the old machine had it
    ([0, 1], 3, 0),  # ... else the first device's
])
def test_cuda_state_goes_onto_the_current_device(monkeypatch, saved, current, restored):
    calls = fake_cuda(monkeypatch, initialised=True, current=current, visible=current + 1)
    state = {**seeding.rng_state(), "cuda": [state_of_device(i) for i in saved]}
    seeding.set_rng_state(state)
    assert calls == [([restored] * 4, current)]


def test_a_checkpoint_with_two_cuda_states_resumes_on_one_gpu(monkeypatch):
    # A trainer's whole state, as a 2-GPU machine wrote it before one state per run, loads on a
    # machine that shows one GPU (CUDA_VISIBLE_DEVICES=0): set_rng_state_all raised IndexError.
    p = make_params({"embedding_dim": 16, "image_size": 32, "n_c": 2, "n_s": 2})
    labels = np.repeat(np.arange(3), 2)
    split = Split("train", [f"image_{i}" for i in range(6)], labels, ["a", "b", "c"])
    state = trainer_module.build_trainer(p, split, torch.device("cpu")).state_dict()
    state["rng"]["cuda"] = [state_of_device(0), state_of_device(1)]
    calls = fake_cuda(monkeypatch, initialised=True, current=0, visible=1)
    resumed = trainer_module.build_trainer(p, split, torch.device("cpu"))
    resumed.load_state_dict(state)
    assert calls == [([0] * 4, 0)]
