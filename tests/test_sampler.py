"""The class-balanced sampler reproduces CombineSampler's semantics (docs/method.md §3.1)."""

from collections import Counter

import numpy as np
import pytest

from ibdml.data.sampler import ClassBalancedBatchSampler, divisor_shapes


def labels_with_sizes(sizes):
    return np.concatenate([np.full(m, c) for c, m in enumerate(sizes)])


def test_batches_are_nc_chunks_of_ns_same_class_images():
    labels = labels_with_sizes([40] * 10)
    s = ClassBalancedBatchSampler(labels, n_c=3, n_s=9, seed=0)
    for batch in s:
        assert len(batch) == 27
        chunks = np.asarray(labels[batch]).reshape(3, 9)
        assert (chunks == chunks[:, :1]).all()  # each chunk is one class


def test_epoch_length_is_floor_plus_one_chunks_per_class():
    sizes = [40, 27, 5, 13, 9]
    s = ClassBalancedBatchSampler(labels_with_sizes(sizes), n_c=2, n_s=9, seed=1)
    chunks = sum(max(m, 9) // 9 + 1 for m in sizes)  # 5 + 4 + 2 + 2 + 2 = 15
    assert chunks == 15 and len(s) == 8 == len(list(s))  # 15 chunks topped up to 16


def test_every_image_appears_and_extras_come_from_the_class():
    labels = labels_with_sizes([20, 18, 3])
    s = ClassBalancedBatchSampler(labels, n_c=2, n_s=6, seed=2)
    seen = Counter(i for b in s for i in b)
    assert set(seen) == set(range(len(labels)))  # nothing dropped
    # class of 18 with n_s 6: 18 // 6 + 1 = 4 chunks = 24 slots (a whole chunk of repeats)
    assert sum(seen[i] for i in range(20, 38)) >= 24


def test_deterministic_per_seed_and_epoch():
    labels = labels_with_sizes([30] * 8)
    a = ClassBalancedBatchSampler(labels, 4, 5, seed=3)
    b = ClassBalancedBatchSampler(labels, 4, 5, seed=3)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.load_state_dict(b.state_dict())
    assert list(a) == list(b)
    assert list(ClassBalancedBatchSampler(labels, 4, 5, seed=4)) != list(b)


def test_divisor_shapes_redraw_keeps_batch_size():
    assert divisor_shapes(54) == [(2, 27), (3, 18), (6, 9), (9, 6), (18, 3), (27, 2)]
    labels = labels_with_sizes([60] * 30)
    s = ClassBalancedBatchSampler(labels, 6, 9, seed=0, batch_shape="divisors")
    shapes = set()
    for epoch in range(12):
        s.set_epoch(epoch)
        shapes.add(s.shape())
        assert all(len(b) == 54 for b in s)
    assert len(shapes) > 1


def test_divisors_needs_composite_batch():
    with pytest.raises(ValueError, match="divisor"):
        ClassBalancedBatchSampler(labels_with_sizes([10] * 5), 1, 3, batch_shape="divisors")


def test_ranks_take_interleaved_whole_batches_in_equal_numbers():
    """G processes share an epoch (docs/scale-out.md): rank r takes batches r, r+G, …, cut so
    that every rank takes floor(batches / G); no batch is split or taken twice."""
    labels = labels_with_sizes([30] * 7)
    whole = ClassBalancedBatchSampler(labels, 3, 5, seed=5)
    for epoch in (0, 1):
        whole.set_epoch(epoch)
        batches = list(whole)
        assert len(batches) == 17  # 7 classes × (30 // 5 + 1) = 49 chunks, topped up to 17 × 3
        for world in (2, 4):
            ranks = [ClassBalancedBatchSampler(labels, 3, 5, seed=5, rank=r, world_size=world)
                     for r in range(world)]
            shares = []
            for s in ranks:
                s.set_epoch(epoch)
                shares.append(list(s))
            share = len(batches) // world
            assert [len(s) for s in ranks] == [share] * world
            assert all(shares[r] == batches[r::world][:share] for r in range(world))
            taken = [i for r in range(world) for i in range(r, share * world, world)]
            assert sorted(taken) == list(range(share * world))  # disjoint, none left out early
            assert all(len(b) == 15 for s in shares for b in s)  # whole n_c × n_s batches


def test_too_many_ranks_for_an_epoch_is_refused():
    labels = labels_with_sizes([10] * 4)  # 4 × 3 chunks of 4 = 12 chunks = 3 batches of 4 × 4
    assert len(ClassBalancedBatchSampler(labels, 4, 4, rank=2, world_size=3)) == 1
    with pytest.raises(ValueError, match="3 batches of 4 × 4, fewer than the 4 processes"):
        ClassBalancedBatchSampler(labels, 4, 4, rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank 2 is not one of the 2"):
        ClassBalancedBatchSampler(labels, 4, 4, rank=2, world_size=2)
