"""Label-smoothed, temperature-scaled cross-entropy on both heads."""

import torch

from ibdml.losses import intra_batch_loss, smoothed_cross_entropy
from ibdml.model import ModelOutput


def test_matches_hand_written_formula():
    torch.manual_seed(0)
    z, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    eps, T = 0.1, 0.2
    q = torch.full((6, 5), eps / 5) + (1 - eps) * torch.nn.functional.one_hot(y, 5)
    expected = -(q * torch.log_softmax(z / T, 1)).sum(1).mean()
    torch.testing.assert_close(smoothed_cross_entropy(z, y, smoothing=eps, temperature=T), expected)


def test_lower_temperature_sharpens():
    z, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    hot = smoothed_cross_entropy(z, y, smoothing=0.0, temperature=0.2)
    cold = smoothed_cross_entropy(z, y, smoothing=0.0, temperature=1.0)
    assert hot < cold


def test_total_is_sum_of_heads_and_mpn_part_only_when_run():
    z1, z2, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    out = ModelOutput(torch.randn(4, 8), z1, z2, None)
    total, parts = intra_batch_loss(out, y, smoothing=0.1, temperature=0.5)
    assert set(parts) == {"backbone", "mpn"}
    assert abs(float(total) - parts["backbone"] - parts["mpn"]) < 1e-5
    _, parts = intra_batch_loss(ModelOutput(out.embedding, z1, None, None), y,
                                smoothing=0.1, temperature=0.5)
    assert set(parts) == {"backbone"}
