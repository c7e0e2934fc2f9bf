"""Probe batches: the MPN's attention recorded on fixed batches over training (paper claim 3).

The authors' code computes the attention weights and throws them away. To see whether nodes come
to attend to their own class, and whether that sharpens, the trainer draws a few probe batches
once per run (training classes, the training batch shape n_c × n_s, seeded) and passes them
through the model in eval mode under no_grad (no attention dropout; docs/method.md §13) before
training and after every epoch. Every layer's and head's N × N attention is kept;
steps/attention.py stores it, one float16 file per epoch, and reads it back as an `AttentionRun`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ibdml import device as devices
from ibdml.attention import Treatment, edge_case_verdicts, same_class_mass, summarise
from ibdml.config import Params
from ibdml.data.folder import ImageDataset, Split
from ibdml.data.transforms import eval_transform
from ibdml.evaluation import embed
from ibdml.model import IntraBatchModel

# The probes' own random stream: drawing them must not move the training RNG (resume is exact).
PROBE_STREAM = 7919


@dataclass
class Probes:
    images: torch.Tensor  # [P, N, 3, S, S] eval-transformed, loaded once per run
    labels: torch.Tensor  # [P, N] training-class labels
    indices: np.ndarray  # [P, N] positions in the train split
    bf16: bool | None = None  # device.autocast's switch: the precision training runs in (amp)


def draw_probe_indices(labels: np.ndarray, n_c: int, n_s: int, count: int,
                       seed: int) -> np.ndarray:
    """[count, n_c·n_s] train-split indices: each probe is n_c classes × n_s images, grouped by
    class like a training batch. Classes are distinct within a probe and, while there are enough,
    across probes (more classes seen); a class with fewer than n_s images (SOP) is only drawn when
    too few classes have n_s, and then repeats images, as the training sampler does."""
    rng = np.random.default_rng([seed, PROBE_STREAM])
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    full = [m for m in members if len(m) >= n_s]
    pool = full if len(full) >= n_c else members
    if len(pool) < n_c:
        raise ValueError(f"probe batches need n_c = {n_c} classes, the training split has "
                         f"{len(pool)}")
    probes, order = [], rng.permutation(len(pool))
    for i in range(count):
        if (i + 1) * n_c > len(order):  # every class used once: start a new pass
            order = np.concatenate([order, rng.permutation(len(pool))])
        for c in order[i * n_c:(i + 1) * n_c]:
            m = pool[c]
            probes.append(rng.choice(m, n_s, replace=len(m) < n_s))
    return np.concatenate(probes).reshape(count, n_c * n_s)  # [P·n_c, n_s] → [P, N]


def make_probes(split: Split, p: Params) -> Probes:
    """Draw the run's probe batches from the train split and load their images (test transform:
    the same pixels every epoch)."""
    indices = draw_probe_indices(split.labels, p.n_c, p.n_s, p.attention_probes, p.seed)
    data = ImageDataset(split, eval_transform(p))
    images = torch.stack([data[int(i)][0] for i in indices.ravel()])  # [P·N, 3, S, S]
    images = images.view(*indices.shape, *images.shape[1:])  # [P, N, 3, S, S]
    return Probes(images, torch.as_tensor(split.labels[indices]), indices,
                  devices.bf16_override(p.amp))


@torch.no_grad()
def record_attention(model: IntraBatchModel, probes: Probes, device: torch.device,
                     chunk: int = 256) -> torch.Tensor:
    """The MPN's attention on every probe, [L, P, H, N, N] float32 on the CPU. Eval mode: the
    backbone's BatchNorm uses its running statistics and no dropout is drawn, so the record is
    deterministic and the training RNG is untouched. The P probes are P graphs of one batched
    MPN call."""
    if model.mpn is None:
        raise ValueError("the model has no MPN (mpn_layers: 0): there is no attention to record")
    P, N = probes.labels.shape
    flat = probes.images.flatten(0, 1)  # [P·N, 3, S, S]
    embedding = embed(model, flat.split(chunk), device, probes.bf16)  # [P·N, D], eval mode
    with devices.autocast(device, probes.bf16):  # as in training: bf16 on CUDA when amp
        out = model.mpn(embedding.view(P, N, -1), return_attention=True, return_logits=False)
    return out.attention.float().cpu()  # [L, P, H, N, N]


@dataclass
class AttentionRun:
    """A run's recorded attention, as `ibdml.attention` reads it."""

    by_epoch: dict[int, np.ndarray]  # {epoch: [L, P, H, N, N] float16}
    labels: np.ndarray  # [P, N]
    info: dict  # probes.json

    @property
    def epochs(self) -> list[int]:
        return sorted(self.by_epoch)


def records_attention(p: Params) -> bool:
    """Whether a run records attention: probes asked for, and an MPN that runs in training."""
    return p.attention_probes > 0 and p.mpn_layers > 0 and p.loss_heads == "both"


def typical_node(rec: AttentionRun, *, layer: int, head: int, probe: int = 0) -> int:
    """The probe node whose attention to the other nodes of its class at the last epoch is the
    median of its batch: a representative node to show, not the best one."""
    a = rec.by_epoch[rec.epochs[-1]][layer, probe, head]  # [N, N]
    same = same_class_mass(a, rec.labels[probe], include_self=False)  # [N]
    return int(torch.argsort(same)[len(same) // 2])


def summarise_record(rec: AttentionRun, null_key_treatment: Treatment = "renormalise") -> dict:
    """What attention_summary.json holds (claim 3):

        summary       attention.summarise: per epoch/layer/head KL, entropy, same-class, null mass
        verdicts      attention.edge_case_verdicts at the last epoch (and "verdicts_start" at 0)
        claim         counts over heads: above chance at the end, KL up by more than 1 % of
                      log N, same-class mass (the node itself left out) up by more than the
                      chance margin (0.01)
        example       {layer, head, probe, node, class}: the head whose same-class mass (itself
                      left out) rose most, its typical node (the notebooks' default view)
    """
    summary = summarise(rec.by_epoch, rec.labels, null_key_treatment=null_key_treatment)
    end, start = edge_case_verdicts(summary), edge_case_verdicts(summary, epoch=rec.epochs[0])
    heads, tol = end["heads"], end["thresholds"]
    # a change counts when it exceeds the verdicts' own margins (1 % of log N; chance_margin)
    moved = [h["kl_change"] > 0.01 * summary["kl_max"] for h in heads]
    raised = [h["same_class_excl_self_change"] > tol["chance_margin"] for h in heads]
    best = max(heads, key=lambda h: h["same_class_excl_self_change"])
    node = typical_node(rec, layer=best["layer"], head=best["head"])
    return {
        "recorded": True, "epochs": rec.epochs, "summary": summary, "verdicts": end,
        "verdicts_start": start,
        "claim": {"heads": len(heads),
                  "above_chance": sum(h["above_chance"] for h in heads),
                  "kl_increased": sum(moved), "same_class_increased": sum(raised),
                  "near_uniform": sum(h["verdict"] == "near uniform" for h in heads),
                  "collapsed": sum(h["verdict"] == "collapsed" for h in heads)},
        "example": {"layer": best["layer"], "head": best["head"], "probe": 0, "node": node,
                    "class": int(rec.labels[0, node]),
                    "class_name": rec.info["class_names"][0][node]}}
