"""The message-passing network (MPN): the mini-batch as a complete graph, refined by multi-head
dot-product self-attention (paper §3.2; docs/method.md §4.2–4.3, Part 1).

Each layer is a post-LN transformer encoder layer over the nodes of a graph:
    a = MHA(h);  h = LN(h + drop(a));  h = LN(h + drop(W2 drop(ReLU(W1 h))))
Attention is computed densely and explicitly (N ≤ ~100 nodes), so every forward can hand back its
weights [layers, heads, N, N] without hooks. Inputs are batches of graphs [B, N, D]: training uses
one graph (the mini-batch), MPN at inference many small ones.

`attention` chooses how nodes weigh each other (an ablation; docs/method.md §4.3): "dot" is the
method; "uniform" gives every node the batch mean of the values; "self" gives each node only its
own value (no message passing). All three keep the same layers and parameters.

Under bf16 autocast (training on a GPU, accel.py) the projections and products run in bf16, the
LayerNorms in fp32 (autocast's own rule), and the attention softmax in fp32 (`attention_weights`),
so the weights handed back are fp32 whatever the autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def attention_weights(scores: torch.Tensor, null_key: bool) -> torch.Tensor:
    """Row-normalise attention scores [..., N, N] in fp32.

    null_key=True is the authors' scatter softmax (docs/method.md §4.3, §11 B9): an implicit extra
    key with logit 0 and a zero value, α_ij = exp(s_ij) / (1 + Σ_k exp(s_ik)), so rows sum to < 1.
    null_key=False is the standard softmax (rows sum to 1)."""
    scores = scores.float()
    if not null_key:
        return scores.softmax(-1)
    zero = scores.new_zeros(scores.shape[:-1] + (1,))
    return torch.cat([scores, zero], -1).softmax(-1)[..., :-1]  # [..., N, N+1] → [..., N, N]


ATTENTION_MODES = ("dot", "uniform", "self")


class MultiHeadDotProductAttention(nn.Module):
    """Multi-head attention over the nodes of each graph, weights computed explicitly.

    mode "dot": α = softmax(q·kᵀ/√(D/H) × scale), through the null key when null_key (the
    method). "uniform": α_ij = 1/N, so message_i = out(mean_j v_j) for every i. "self": α = I, so
    message_i = out(v_i). q and k exist in every mode but only "dot" uses them: the ablations
    keep the method's parameter set (and count) so that a comparison changes only how nodes
    weigh each other. scale multiplies the logits (> 1: sharper from the start); it and
    null_key only matter for "dot"."""

    def __init__(self, dim: int, heads: int, dropout: float, null_key: bool,
                 mode: str = "dot", scale: float = 1.0) -> None:
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        self.heads, self.null_key, self.mode, self.scale = heads, null_key, mode, scale
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        for lin in (self.q, self.k, self.v, self.out):  # authors: Xavier-uniform, zero bias
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.dropout = nn.Dropout(dropout)

    def weights(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, N, D] → attention [B, H, N, N] fp32 (rows sum to 1, < 1 with the null key)."""
        B, N, D = h.shape
        H, dh = self.heads, D // self.heads
        if self.mode == "uniform":  # plain averaging over the batch, no null key
            return h.new_full((B, H, N, N), 1 / N, dtype=torch.float32)
        if self.mode == "self":  # every node keeps only its own value
            return torch.eye(N, device=h.device).expand(B, H, N, N)
        q = self.q(h).view(B, N, H, dh).transpose(1, 2)  # [B, N, D] → [B, H, N, dh]
        k = self.k(h).view(B, N, H, dh).transpose(1, 2)  # [B, N, D] → [B, H, N, dh]
        # Per-head scaling 1/√(D/H), as the authors (the paper writes 1/√D), then the knob
        # (skipped at 1, so the method's scores stay bit for bit what they were).
        scores = q @ k.transpose(-2, -1) / math.sqrt(dh)  # [B, H, N, N]
        scores = scores if self.scale == 1 else scores * self.scale
        return attention_weights(scores, self.null_key)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, N, D] → (messages [B, N, D], attention [B, H, N, N])."""
        B, N, D = h.shape
        H, dh = self.heads, D // self.heads
        v = self.v(h).view(B, N, H, dh).transpose(1, 2)  # [B, N, D] → [B, H, N, dh]
        attn = self.weights(h)
        # Dropout on the weight matrix in every mode, so the modes differ only in the weights.
        msg = self.dropout(attn).to(v.dtype) @ v  # [B, H, N, dh]
        return self.out(msg.transpose(1, 2).reshape(B, N, D)), attn  # [B, N, H·dh]


class MPNLayer(nn.Module):
    """Post-LN encoder layer: attention + skip + LayerNorm, FFN (4·D, ReLU) + skip + LayerNorm."""

    def __init__(self, dim: int, heads: int, dropout: float, null_key: bool,
                 mode: str = "dot", scale: float = 1.0) -> None:
        super().__init__()
        self.attention = MultiHeadDotProductAttention(dim, heads, dropout, null_key, mode, scale)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim))
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, attn = self.attention(h)
        h = self.norm1(h + self.drop1(a))
        return self.norm2(h + self.drop2(self.ffn(h))), attn


class BNNeckClassifier(nn.Module):
    """BatchNorm1d with its bias frozen at 0, then a bias-free Linear with N(0, 0.001²) weights
    (docs/method.md §4.2 step 5)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.fc = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.fc.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, dim] → [M, C]
        return self.fc(self.bn(x))


@dataclass
class MPNOutput:
    features: torch.Tensor  # [B, N, D or L·D] refined node features, pre-BN, not normalised
    logits: torch.Tensor | None  # [B, N, C]; None when not asked for (MPN at inference)
    attention: torch.Tensor | None  # [L, B, H, N, N] fp32 when asked for, else None


class MessagePassingNetwork(nn.Module):
    """Linear(D, D) input projection (authors' dim_red, B11) → L MPN layers → BN-neck classifier
    on the last layer's output (or on the concatenation of all layers). `attention` is the mode
    of every layer (ATTENTION_MODES; "dot" = the method), `attention_scale` its logit factor."""

    def __init__(self, dim: int, num_classes: int, *, layers: int, heads: int, dropout: float,
                 null_key: bool, concat_layers: bool, attention: str = "dot",
                 attention_scale: float = 1.0) -> None:
        super().__init__()
        self.input_proj = nn.Linear(dim, dim)
        self.layers = nn.ModuleList(MPNLayer(dim, heads, dropout, null_key, attention,
                                             attention_scale) for _ in range(layers))
        self.concat_layers = concat_layers
        self.classifier = BNNeckClassifier(dim * layers if concat_layers else dim, num_classes)

    def forward(self, x: torch.Tensor, return_attention: bool = False,
                return_logits: bool = True) -> MPNOutput:
        """x [B, N, D]: B graphs of N nodes (L2-normalised embeddings). MPN at inference needs
        only the features: return_logits=False skips the classifier (on SOP, 11k classes, it
        would cost more than the message passing itself)."""
        h, outputs, attentions = self.input_proj(x), [], []
        for layer in self.layers:
            h, attn = layer(h)
            outputs.append(h)
            attentions.append(attn)
        features = torch.cat(outputs, -1) if self.concat_layers else h
        logits = None
        if return_logits:
            B, N, F_ = features.shape
            logits = self.classifier(features.reshape(B * N, F_)).view(B, N, -1)  # BN over all nodes
        attention = torch.stack(attentions) if return_attention else None  # [L, B, H, N, N]
        return MPNOutput(features, logits, attention)
