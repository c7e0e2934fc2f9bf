"""Label-smoothed, temperature-scaled cross-entropy on both heads (paper Sec. 3; docs/method.md §5).

Targets are q = (1 − ε)·onehot + ε/C and the logits are divided by the temperature T before the
softmax (T < 1 sharpens). The total loss is the sum of the backbone (aux) and the MPN terms with
weights 1 and 1; with loss_heads 'backbone' (authors' SOP config, B6) only the aux term is used.

Precision: on a GPU the forward runs under bf16 autocast (accel.py) and the logits come out in
bf16; the losses cast them to fp32 first and are meant to be computed outside the autocast block,
so log-softmax, the smoothing sum and the mean are all fp32. For fp32 logits (CPU) the cast
returns the tensor itself: nothing changes.
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
                     temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts {'backbone': …, 'mpn': …} (the MPN part only when it ran), the
    parts as detached 0-d fp32 tensors on the logits' device: reading a number back from a GPU
    makes the host wait for it, so the trainer reads them in blocks (train.py)."""
    parts = {"backbone": smoothed_cross_entropy(out.backbone_logits, labels,
                                                smoothing=smoothing, temperature=temperature)}
    if out.mpn_logits is not None:
        parts["mpn"] = smoothed_cross_entropy(out.mpn_logits, labels,
                                              smoothing=smoothing, temperature=temperature)
    total = sum(parts.values())
    return total, {k: v.detach() for k, v in parts.items()}
