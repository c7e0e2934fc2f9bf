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
