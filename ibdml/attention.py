"""Attention records over training: how far each node's attention is from plain averaging, how much
of it reaches the node's own class, and how much goes to the authors' null key (paper claim 3;
docs/method.md §13.3).

A record is what the trainer stores for fixed probe batches, in eval mode under no_grad:
    attention_by_epoch[e]  [L, P, H, N, N]  epoch e (0 = before training), L MPN layers, P probe
                                            batches, H heads; row i = node i's weights over the
                                            batch's N nodes (rows sum ≤ 1 with the null key)
    labels                 [P, N]           the class of every probe node
`attention_by_epoch` is a list (index = epoch), a dict {epoch: array} (when only some epochs were
recorded) or one stacked [E, L, P, H, N, N] array; numpy or torch, float16 or float32.

The authors' rows are α_ij = exp(s_ij) / (1 + Σ_k exp(s_ik)) (docs/method.md §4.3): the missing
1 − Σ_j α_ij goes to an implicit key with a zero value, the "null mass". Every per-row distance
from uniform therefore names its `null_key_treatment` (§13 asks to state the choice):
    "renormalise" (default)  divide the row by its sum and compare with uniform over the N nodes:
                             where does the attention that reaches real nodes go? The null mass
                             is reported on its own, so nothing is lost.
    "extra_bin"              keep 1 − Σα as an (N+1)-th bin and compare with uniform over N+1.
                             All-zero scores through the null softmax give α_ij = 1/(N+1): exactly
                             this uniform (and, renormalised, exactly 1/N).
Same-class and self mass are always fractions of the renormalised row.

Same-class mass counting the node itself can be raised by attending to oneself alone: a head that
keeps its node's own value (self mass 1) has same-class mass 1. The measure that such a head cannot
hide behind leaves the node out: same_class_excl_self_i = Σ_{j ≠ i, y_j = y_i} p_ij, still a
fraction of the whole renormalised row over the N real nodes (not renormalised over N − 1), so
that same_class_excl_self + self_mass + other-class mass = 1. Its chance level is what uniform
attention gives, (n_same_i − 1)/N; self mass is reported on its own (chance 1/N).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

# A list of [L, P, H, N, N] arrays (index = epoch), {epoch: array}, or one stacked tensor/ndarray.
AttentionRecord = Sequence[Any] | Mapping[int, Any] | torch.Tensor
Treatment = Literal["renormalise", "extra_bin"]
TREATMENTS = ("renormalise", "extra_bin")
# Stored fp16 weights are rounded by ≤ 2^-11 each, so a row summing to 1 may read 1.0005.
ROW_SUM_TOLERANCE = 1e-2
METRICS = ("kl", "entropy", "same_class", "same_class_excl_self", "null_mass", "self_mass")


def as_attention(attn: Any) -> torch.Tensor:
    """Attention rows [..., N] (numpy or torch) as a checked float tensor (fp16/bf16 → fp32)."""
    a = torch.as_tensor(attn)
    if not a.is_floating_point():
        raise TypeError(f"attention must be floating point, got {a.dtype}")
    a = a.float() if a.dtype in (torch.float16, torch.bfloat16) else a
    if a.ndim == 0 or a.shape[-1] == 0:
        raise ValueError(f"attention must have rows [..., N] with N ≥ 1, got {tuple(a.shape)}")
    if not torch.all(a >= 0):  # also catches NaN
        raise ValueError("attention weights must be finite and ≥ 0: pass the normalised weights "
                         "(MPNOutput.attention), not the scores before the softmax")
    if a.numel() and (worst := float(a.sum(-1).max())) > 1 + ROW_SUM_TOLERANCE:
        raise ValueError(f"attention rows sum to up to {worst:.3f} > 1: the last dimension must "
                         "be the keys of one receiving node (row i = node i's weights)")
    return a


def null_mass(attn: Any) -> torch.Tensor:
    """[..., N] → [...]: 1 − Σ_j α_ij, the weight the null key takes (0 without the null key).

    Clamped at 0 to absorb rounding of stored rows. Example: α_i = [0.5, 0.3, 0.0] → 0.2."""
    return (1 - as_attention(attn).sum(-1)).clamp_min(0)


def distribution(attn: Any, null_key_treatment: Treatment = "renormalise") -> torch.Tensor:
    """[..., N] → [..., N] (renormalise) or [..., N+1] (extra_bin, null mass last): rows summing to
    1. A row with no weight on real nodes is undefined when renormalised and comes out NaN.

    Example: α_i = [0.4, 0.2, 0.2] → renormalise [0.5, 0.25, 0.25]; extra_bin [0.4, 0.2, 0.2, 0.2].
    """
    if null_key_treatment not in TREATMENTS:
        raise ValueError(f"null_key_treatment must be one of {TREATMENTS}, got "
                         f"{null_key_treatment!r}")
    a = as_attention(attn)
    if null_key_treatment == "renormalise":
        return a / a.sum(-1, keepdim=True)
    return torch.cat([a, null_mass(a).unsqueeze(-1)], -1)


def kl_from_uniform(attn: Any, null_key_treatment: Treatment = "renormalise") -> torch.Tensor:
    """[..., N] → [...]: KL(p_i ‖ U_K) = Σ_j p_ij log(K p_ij) = log K − H(p_i) in nats, where p is
    the row after `null_key_treatment` (renormalised by default, K = N; extra_bin: K = N + 1).
    0·log 0 = 0, so zero weights are fine. 0 for a uniform row, log K for a one-hot row.

    Example (N = 4): [0.25]*4 → 0; [1, 0, 0, 0] → log 4 ≈ 1.386; [0.5, 0.5, 0, 0] → log 2.
    With the null key, [0.2]*4 → 0 under both treatments (uniform over 4 and over 5 bins)."""
    p = distribution(attn, null_key_treatment)
    return torch.xlogy(p, p.shape[-1] * p).sum(-1)


def entropy(attn: Any, null_key_treatment: Treatment = "renormalise") -> torch.Tensor:
    """[..., N] → [...]: H(p_i) = −Σ_j p_ij log p_ij in nats, p as in `kl_from_uniform`, so that
    kl_from_uniform = log K − entropy. exp(H) is the effective number of nodes attended to.

    Example: [0.5, 0.5, 0, 0] → log 2 (two nodes); [0.25]*4 → log 4."""
    p = distribution(attn, null_key_treatment)
    return -torch.xlogy(p, p).sum(-1)


def same_class_mask(labels: Any, include_self: bool = True) -> torch.Tensor:
    """labels [..., N] → [..., N, N] bool: y_j == y_i (j == i excluded unless include_self)."""
    y = torch.as_tensor(labels)
    same = y.unsqueeze(-1) == y.unsqueeze(-2)
    if not include_self:
        same = same & ~torch.eye(y.shape[-1], dtype=torch.bool)
    return same


def same_class_mass(attn: Any, labels: Any, include_self: bool = True) -> torch.Tensor:
    """attn [..., N, N], labels [..., N] broadcasting against attn's leading dims (for attn
    [L, P, H, N, N] and labels [P, N] pass labels[:, None]) → [..., N]: Σ_{j: y_j = y_i} p_ij over
    the renormalised row, i.e. the fraction of node i's attention on real nodes that reaches its
    own class. include_self=False leaves out j = i (still a fraction of the whole row). Compare
    with `uniform_same_class`: what plain averaging would give.

    Example: labels [0, 0, 1, 1], α_0 = [0.4, 0.2, 0.1, 0.1] (null mass 0.2) → p_0 = [0.5, 0.25,
    0.125, 0.125] → 0.75 (0.25 without itself); uniform level 2/4 = 0.5 (1/4 without itself)."""
    p = distribution(attn, "renormalise")
    if p.shape[-1] != p.shape[-2]:
        raise ValueError(f"attention must be square [..., N, N] (sources × targets of one batch), "
                         f"got {tuple(p.shape)}")
    return (p * same_class_mask(labels, include_self)).sum(-1)


def uniform_same_class(labels: Any, include_self: bool = True) -> torch.Tensor:
    """labels [..., N] → [..., N] float64: n_same_i / N, the same-class mass of uniform attention.
    Example: labels [0, 0, 1, 1] → [0.5]*4 (include_self=False: [0.25]*4)."""
    mask = same_class_mask(labels, include_self)
    return mask.sum(-1, dtype=torch.float64) / mask.shape[-1]


def self_mass(attn: Any) -> torch.Tensor:
    """[..., N, N] → [..., N]: p_ii of the renormalised row (near 1: the node ignores the batch)."""
    return distribution(attn, "renormalise").diagonal(dim1=-2, dim2=-1)


def epoch_numbers(attention_by_epoch: AttentionRecord) -> list[int]:
    """The recorded epochs in order: a dict's keys, else 0 … len − 1."""
    if isinstance(attention_by_epoch, Mapping):
        return sorted(int(e) for e in attention_by_epoch)
    return list(range(len(attention_by_epoch)))


def spread_epochs(recorded: Sequence[int], at_most: int = 5) -> list[int]:
    """All recorded epochs if few, else `at_most` spread evenly, always the first and the last.
    Example: 0 … 8, at_most 5 → [0, 2, 4, 6, 8]."""
    recorded = list(recorded)
    if len(recorded) <= at_most:
        return recorded
    picks = {round(i * (len(recorded) - 1) / (at_most - 1)) for i in range(at_most)}
    return [recorded[i] for i in sorted(picks)]


def attention_at(attention_by_epoch: AttentionRecord, epoch: int) -> torch.Tensor:
    """The checked [L, P, H, N, N] record of one epoch (an epoch number, not a position)."""
    if epoch not in epoch_numbers(attention_by_epoch):
        raise KeyError(f"epoch {epoch} was not recorded; recorded epochs: "
                       f"{epoch_numbers(attention_by_epoch)}")
    if isinstance(attention_by_epoch, Mapping):
        attention_by_epoch = {int(e): a for e, a in attention_by_epoch.items()}
    a = as_attention(attention_by_epoch[epoch])
    if a.ndim != 5 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"epoch {epoch}: attention must be [layers, probes, heads, N, N], got "
                         f"{tuple(a.shape)}")
    return a


def target_groups(labels: Any, node: int) -> dict[str, list[int]]:
    """labels [N] → the targets of `node`'s row in reading order: {"itself": [node], "same class":
    its class, "other class": the rest in class order}. Example: labels [2, 0, 1, 0, 2, 1],
    node 2 → {"itself": [2], "same class": [5], "other class": [1, 3, 0, 4]}."""
    y = torch.as_tensor(labels).tolist()
    same = [j for j in range(len(y)) if y[j] == y[node] and j != node]
    other = sorted((j for j in range(len(y)) if y[j] != y[node]), key=lambda j: (y[j], j))
    return {"itself": [node], "same class": same, "other class": other}


def class_order(labels: Any) -> torch.Tensor:
    """labels [N] → [N] the nodes sorted by class, stable (within a class, batch order).
    Example: [2, 0, 1, 0] → [1, 3, 2, 0]."""
    return torch.argsort(torch.as_tensor(labels), stable=True)


def class_sorted(attn: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """One batch's attention [N, N] and labels [N] → (renormalised rows with sources and targets
    sorted by class [N, N], the order (sorted position → node) [N], the sorted positions where a
    class starts). Stable: within a class, nodes keep their batch order."""
    y = torch.as_tensor(labels)
    order = class_order(y)
    ys = y[order].tolist()
    starts = [0] + [k for k in range(1, len(ys)) if ys[k] != ys[k - 1]]
    return distribution(attn)[order][:, order], order, starts


def node_metrics(attn: torch.Tensor, labels: torch.Tensor, null_key_treatment: Treatment,
                 include_self: bool) -> dict[str, torch.Tensor]:
    """attn [L, P, H, N, N], labels [P, N] → each of METRICS per receiving node, [L, P, H, N]."""
    lab = labels[:, None]  # [P, 1, N]: broadcasts over heads
    return {"kl": kl_from_uniform(attn, null_key_treatment),
            "entropy": entropy(attn, null_key_treatment),
            "same_class": same_class_mass(attn, lab, include_self),
            "same_class_excl_self": same_class_mass(attn, lab, include_self=False),
            "null_mass": null_mass(attn), "self_mass": self_mass(attn)}


def summarise(attention_by_epoch: AttentionRecord, labels: Any, *,
              null_key_treatment: Treatment = "renormalise",
              include_self: bool = True) -> dict[str, Any]:
    """Means over probe batches and receiving nodes, per epoch, layer and head (plain floats):

        epochs             [E] recorded epoch numbers (0 = before training)
        layers, probes, heads, nodes   L, P, H, N
        null_key_treatment, include_self   the choices made
        kl_max             log K (K = N, or N + 1 for extra_bin): KL of a one-hot row
        kl, entropy, null_mass   nested lists [E][L][H]
        same_class_excl_self     [E][L][H] Σ_{j ≠ i, y_j = y_i} p_ij: mass on the node's class
                                 without itself, a fraction of the row over all N real nodes
        same_class_excl_self_uniform   mean_i (n_same_i − 1) / N: its chance level, what uniform
                                 attention gives (labels only: one number for every e, l, h)
        self_mass                [E][L][H] p_ii (uniform attention: 1/N)
        same_class         [E][L][H] same-class mass with the node itself when include_self (the
                           default; kept for continuity), else = same_class_excl_self
        same_class_uniform mean n_same / N (include_self) or (n_same − 1) / N: its chance level
        most_selective_head  {layer, head, same_class_excl_self, excess}: the head with the
                           highest same_class_excl_self − chance at the last epoch

    summary["kl"][e][l][h] is the curve of §13. Rows that are undefined when renormalised (all
    mass on the null key) are left out of the means (NaN if a whole head is). Attention on the
    node alone (mpn_attention: self) gives kl = log N, self_mass 1, same_class_excl_self 0;
    uniform attention gives kl 0 and same_class_excl_self at its chance level."""
    y = torch.as_tensor(labels)
    epochs = epoch_numbers(attention_by_epoch)
    if not epochs:
        raise ValueError("attention_by_epoch is empty: record at least epoch 0")
    out: dict[str, Any] = {m: [] for m in METRICS}
    for e in epochs:
        a = attention_at(attention_by_epoch, e)
        if y.shape != a.shape[1:2] + a.shape[-1:]:
            raise ValueError(f"labels must be [probes, N] = {[a.shape[1], a.shape[-1]]} to match "
                             f"epoch {e}'s attention {tuple(a.shape)}, got {list(y.shape)}")
        for m, v in node_metrics(a, y, null_key_treatment, include_self).items():
            out[m].append(v.double().nanmean(dim=(1, 3)).tolist())  # [L, P, H, N] → [L, H]
    L, P, H, N = a.shape[:4]
    k = N + 1 if null_key_treatment == "extra_bin" else N
    chance = float(uniform_same_class(y, include_self=False).double().mean())
    return {"epochs": epochs, "layers": L, "probes": P, "heads": H, "nodes": N,
            "null_key_treatment": null_key_treatment, "include_self": include_self,
            "kl_max": math.log(k),
            "same_class_uniform": float(uniform_same_class(y, include_self).double().mean()),
            "same_class_excl_self_uniform": chance, **out,
            "most_selective_head": most_selective_head(out["same_class_excl_self"][-1], chance)}


def most_selective_head(excl_self: list[list[float]], chance: float) -> dict[str, Any]:
    """excl_self [L][H] (one epoch's same_class_excl_self) → {layer, head, same_class_excl_self,
    excess = same_class_excl_self − chance} of the head with the largest excess. NaN heads (all
    mass on the null key) never win unless every head is NaN; ties go to the first head."""
    flat = [(layer, head, v) for layer, row in enumerate(excl_self) for head, v in enumerate(row)]
    layer, head, v = max(flat, key=lambda t: -math.inf if math.isnan(t[2]) else t[2])
    return {"layer": layer, "head": head, "same_class_excl_self": v, "excess": v - chance}


def edge_case_verdicts(summary: dict[str, Any], *, epoch: int | None = None,
                       uniform_kl_fraction: float = 0.05, collapsed_nodes: float = 2.0,
                       chance_margin: float = 0.01) -> dict[str, Any]:
    """Label every layer/head at `epoch` (default: the last recorded) by its mean KL:

        "near uniform"  KL < uniform_kl_fraction · kl_max. KL = f·log N is what attention spread
                        evenly over N^(1−f) nodes gives: 0.05 → 44 of 54 nodes; plain averaging.
        "collapsed"     effective nodes exp(kl_max − KL) = exp(entropy) ≤ collapsed_nodes: 2 is
                        "a couple of nodes", the seed document's degenerate case, whatever N is
                        (with extra_bin the null key counts as one of them).
        "selective"     neither: peaked, yet spread over more than a couple of nodes.
    above_chance: same-class mass *without the node itself* > its uniform level (n_same − 1)/N +
    chance_margin (0.01 keeps a near-uniform head's wobble from counting), so that a head attending
    to each node alone is not counted as attending to its class. Thresholds apply to means over
    nodes, so a head whose nodes are half one-hot and half uniform reads "selective". The *_change
    entries: since the first recorded epoch (epoch 0: before training).

    Returns {"epoch", "thresholds", "heads": [{layer, head, kl, kl_fraction, effective_nodes,
    verdict, same_class_excl_self, same_class_excl_self_uniform, self_mass, above_chance,
    same_class, same_class_uniform (with the node itself when summary["include_self"]),
    kl_change, same_class_change, same_class_excl_self_change}, ...]}."""
    epochs = summary["epochs"]
    if epoch is not None and epoch not in epochs:
        raise KeyError(f"epoch {epoch} is not in the summary; summarised epochs: {epochs}")
    e = len(epochs) - 1 if epoch is None else epochs.index(epoch)
    kl_max, chance = summary["kl_max"], summary["same_class_excl_self_uniform"]
    heads = []
    for layer in range(summary["layers"]):
        for head in range(summary["heads"]):
            at = {m: summary[m][e][layer][head] for m in METRICS}
            first = {m: summary[m][0][layer][head] for m in METRICS}
            kl, excl = at["kl"], at["same_class_excl_self"]
            nodes = math.exp(kl_max - kl)
            verdict = ("near uniform" if kl < uniform_kl_fraction * kl_max
                       else "collapsed" if nodes <= collapsed_nodes else "selective")
            heads.append({"layer": layer, "head": head, "kl": kl,
                          "kl_fraction": kl / kl_max if kl_max else 0.0, "effective_nodes": nodes,
                          "verdict": verdict, "same_class_excl_self": excl,
                          "same_class_excl_self_uniform": chance, "self_mass": at["self_mass"],
                          "above_chance": excl > chance + chance_margin,
                          "same_class": at["same_class"],
                          "same_class_uniform": summary["same_class_uniform"],
                          "kl_change": kl - first["kl"],
                          "same_class_change": at["same_class"] - first["same_class"],
                          "same_class_excl_self_change": excl - first["same_class_excl_self"]})
    return {"epoch": epochs[e], "heads": heads,
            "thresholds": {"uniform_kl_fraction": uniform_kl_fraction,
                           "collapsed_nodes": collapsed_nodes, "chance_margin": chance_margin}}
