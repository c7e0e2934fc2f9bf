"""Label-smoothed, temperature-scaled cross-entropy on both heads (paper Sec. 3; METHOD_SPEC §5).

Targets are q = (1 − ε)·onehot + ε/C and the logits are divided by the temperature T before the
softmax (T < 1 sharpens). The total loss is the sum of the backbone (aux) and the MPN terms with
weights 1 and 1; with loss_heads 'backbone' (authors' SOP config, B6) only the aux term is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ibdml.model import ModelOutput


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, smoothing: float,
                           temperature: float) -> torch.Tensor:
    """Mean over the batch of −Σ_k q_k log softmax(z / T)_k. logits [N, C], labels [N].
    Computed in fp32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float() / temperature, labels, label_smoothing=smoothing)


def intra_batch_loss(out: ModelOutput, labels: torch.Tensor, *, smoothing: float,
                     temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts {'backbone': …, 'mpn': …} (the MPN part only when it ran)."""
    parts = {"backbone": smoothed_cross_entropy(out.backbone_logits, labels,
                                                smoothing=smoothing, temperature=temperature)}
    if out.mpn_logits is not None:
        parts["mpn"] = smoothed_cross_entropy(out.mpn_logits, labels,
                                              smoothing=smoothing, temperature=temperature)
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}
