"""The class-balanced batch sampler: n_c classes × n_s images per batch.

It reproduces the semantics of the authors' CombineSampler (docs/method.md §3.1, §11 B20):
every class is cut into chunks of n_s images, with floor(m / n_s) + 1 chunks per class of m
images (the last chunk is topped up with other images of the class, so some images appear twice
in an epoch), the chunks are shuffled globally, topped up to a multiple of n_c with copies of
random chunks, and each batch is n_c consecutive chunks. The same class can land twice in one
batch, as in the original.

Randomness comes from the sampler's own generator, derived from (seed, epoch): an epoch's batches
depend on nothing else, so resuming at any epoch reproduces the uninterrupted run.

On G processes (distributed.py) every rank builds the same sampler (same seed) and takes whole
batches of the same epoch: rank r the batches r, r+G, r+2G, …, cut to floor(batches / G) so that
every rank takes as many (DistributedDataParallel needs equal step counts); the last
(batches mod G) batches of the epoch are left out. A batch is never split: the MPN needs all of
it on one device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def divisor_shapes(batch_size: int) -> list[tuple[int, int]]:
    """(n_c, n_s) pairs with n_c·n_s = batch_size and 2 ≤ n_c ≤ batch_size / 2 (authors' CUB
    NumberSampler, docs/method.md §3.2). For 54: (2,27) (3,18) (6,9) (9,6) (18,3) (27,2)."""
    return [(d, batch_size // d) for d in range(2, batch_size // 2 + 1) if batch_size % d == 0]


class ClassBalancedBatchSampler:
    """Yields batches (lists of dataset indices) of n_c chunks of n_s same-class images.

    labels: [N] class label of every dataset item. Use as `DataLoader(batch_sampler=...)` and call
    `set_epoch(e)` before each epoch. rank / world_size: this process's share of each epoch, the
    batches rank, rank + world_size, … (see the module docstring); 0 / 1 is the whole epoch.
    """

    def __init__(self, labels: Sequence[int], n_c: int, n_s: int, *, seed: int = 0,
                 batch_shape: str = "fixed", rank: int = 0, world_size: int = 1) -> None:
        labels = np.asarray(labels)
        self.classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.n_c, self.n_s, self.seed, self.batch_shape = n_c, n_s, seed, batch_shape
        if batch_shape == "divisors" and not divisor_shapes(n_c * n_s):
            raise ValueError(f"batch_shape divisors: batch size {n_c * n_s} has no divisor "
                             "between 2 and half of it; use batch_shape: fixed")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} processes' 0 … "
                             f"{world_size - 1}")
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        if world_size > 1:
            self._check_shares()

    def _check_shares(self) -> None:
        """Every rank must get at least one batch in every epoch, whatever its shape."""
        n_c, n_s = self.n_c, self.n_s
        shapes = [(n_c, n_s)] if self.batch_shape == "fixed" else divisor_shapes(n_c * n_s)
        fewest = min(self._epoch_batches(*shape) for shape in shapes)
        if fewest < self.world_size:
            raise ValueError(f"an epoch has {fewest} batches of {n_c} × {n_s}, fewer than the "
                             f"{self.world_size} processes that share it; use nproc ≤ "
                             f"{fewest} or smaller batches")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def shape(self) -> tuple[int, int]:
        """This epoch's (n_c, n_s): fixed, or redrawn among the divisor shapes."""
        if self.batch_shape == "fixed":
            return self.n_c, self.n_s
        shapes = divisor_shapes(self.n_c * self.n_s)
        return shapes[np.random.default_rng([self.seed, self.epoch, 1]).integers(len(shapes))]

    def _class_chunks(self, members: np.ndarray, n_s: int, rng: np.random.Generator) -> np.ndarray:
        """One class's chunks, [floor(m / n_s) + 1, n_s] (docs/method.md §3.1 steps 1–3)."""
        members = rng.permutation(members)
        if len(members) < n_s:  # step 2: pad small classes with repeats
            members = np.concatenate([members, rng.choice(members, n_s - len(members))])
        m = len(members)
        extra = (m // n_s + 1) * n_s - m  # step 3: always ≥ 1, a whole chunk when n_s divides m
        members = np.concatenate([members, rng.choice(members, extra, replace=False)])
        return members.reshape(-1, n_s)  # [chunks, n_s]

    def _chunks(self) -> np.ndarray:
        n_c, n_s = self.shape()
        rng = self._rng()
        chunks = np.concatenate([self._class_chunks(c, n_s, rng) for c in self.classes])
        chunks = chunks[rng.permutation(len(chunks))]  # step 4: global shuffle
        missing = -len(chunks) % n_c  # step 5: top up to a multiple of n_c
        if missing:
            chunks = np.concatenate([chunks, chunks[rng.choice(len(chunks), missing, replace=False)]])
        return chunks.reshape(-1, n_c * n_s)  # [batches, n_c·n_s], step 6

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._chunks()  # [batches, n_c·n_s]: the whole epoch, alike on every rank
        share = len(batches) // self.world_size  # every rank takes as many
        for batch in batches[self.rank::self.world_size][:share]:
            yield batch.tolist()

    def __len__(self) -> int:
        """Batches this rank takes in the current epoch."""
        return self._epoch_batches(*self.shape()) // self.world_size

    def _epoch_batches(self, n_c: int, n_s: int) -> int:
        """Batches in a whole epoch of shape n_c × n_s (docs/method.md §3.1 steps 3–6)."""
        chunks = sum(max(len(c), n_s) // n_s + 1 for c in self.classes)
        return -(-chunks // n_c)

    def state_dict(self) -> dict:
        """Plain ints, so that a checkpoint holding it loads with weights_only=True."""
        return {"seed": int(self.seed), "epoch": int(self.epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = state["seed"], state["epoch"]
