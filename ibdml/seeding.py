"""Seeds and random-number states: one seed starts a run, and the states a checkpoint carries let
a resumed run draw exactly what an uninterrupted one would have drawn."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (torch seeds every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global generators' states, to be stored with a checkpoint: tensors and plain Python
    values only (numpy's key as a list of ints), so that the checkpoint loads with
    torch.load(weights_only=True) (steps/rundir.py)."""
    # {bit_generator, state: {key, pos}, has_gauss, gauss}
    numpy = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(),
            "numpy": {**numpy, "state": {"key": numpy["state"]["key"].tolist(),
                                         "pos": int(numpy["state"]["pos"])}},
            "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next): plain
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state({**numpy, "state": {
        "key": np.asarray(numpy["state"]["key"], dtype=np.uint32), "pos": numpy["state"]["pos"]}})
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
