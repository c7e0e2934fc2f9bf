"""The full network: backbone + MPN over the mini-batch graph (paper Fig. 2).

Training: every image of the n_c × n_s batch is embedded by the backbone; the L2-normalised
embeddings are the nodes of one complete graph that the MPN refines; both the backbone's aux
classifier and the MPN classifier are trained with cross-entropy (losses.py). Test: the MPN is
dropped and the normalised backbone embedding is the feature (or the MPN refines reciprocal k-NN
batches, inference.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ibdml.backbone import Backbone
from ibdml.config import Params
from ibdml.mpn import MessagePassingNetwork


@dataclass
class ModelOutput:
    embedding: torch.Tensor  # [N, D] L2-normalised backbone embedding, fp32
    backbone_logits: torch.Tensor  # [N, C] aux classifier (bf16 under autocast)
    mpn_logits: torch.Tensor | None  # [N, C], None when the MPN did not run (bf16 under autocast)
    attention: torch.Tensor | None  # [L, H, N, N] fp32, when asked for


class IntraBatchModel(nn.Module):
    def __init__(self, backbone: Backbone, mpn: MessagePassingNetwork | None) -> None:
        super().__init__()
        self.backbone, self.mpn = backbone, mpn

    def forward(self, images: torch.Tensor, *, run_mpn: bool = True,
                return_attention: bool = False) -> ModelOutput:
        embedding, backbone_logits = self.backbone(images)
        # fp32 under any autocast: CUDA autocast already normalises in fp32, CPU autocast would
        # leave bf16. Without autocast the embedding is fp32 and .float() returns it unchanged.
        embedding = embedding.float()
        if self.mpn is None or not run_mpn:
            return ModelOutput(embedding, backbone_logits, None, None)
        out = self.mpn(embedding[None], return_attention)  # the batch is one graph: [1, N, D]
        attention = out.attention[:, 0] if return_attention else None  # [L, 1, H, N, N] → [L, H, N, N]
        return ModelOutput(embedding, backbone_logits, out.logits[0], attention)


def build_model(p: Params, num_classes: int) -> IntraBatchModel:
    """The network a Params describes, for `num_classes` training classes."""
    backbone = Backbone(p.backbone, num_classes, embedding_dim=p.embedding_dim,
                        pooling=p.pooling, pretrained=p.pretrained)
    mpn = None
    if p.mpn_layers > 0:
        mpn = MessagePassingNetwork(p.embedding_dim, num_classes, layers=p.mpn_layers,
                                    heads=p.mpn_heads, dropout=p.mpn_dropout,
                                    null_key=p.attention_null_key,
                                    concat_layers=p.mpn_concat_layers,
                                    attention=p.mpn_attention,
                                    attention_scale=p.attention_scale)
    return IntraBatchModel(backbone, mpn)
