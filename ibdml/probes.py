"""Probe batches: the MPN's attention recorded on fixed batches over training (paper claim 3).

The authors' code computes the attention weights and throws them away. To see whether nodes come
to attend to their own class, and whether that sharpens, the trainer draws a few probe batches
once per run (training classes, the training batch shape n_c × n_s, seeded) and passes them
through the model in eval mode under no_grad (no attention dropout; METHOD_SPEC §13, "Recommended
definitions") before training and after every epoch. Every layer's and head's N × N attention is
kept, in float16, one file per epoch, so an interrupted run resumes without rewriting history and
a 70-epoch paper run stays small (SOP: 4 probes × 8 heads × 90² × 2 bytes = 0.5 MB an epoch).

    <run>/attention/probes.json      labels [P][N], train-split indices [P][N], image paths,
                                     class names, and what the arrays hold
    <run>/attention/epoch_0000.npy   [L, P, H, N, N] float16 after epoch e (0 = before training)

`load_attention(run_dir)` returns the record in the form `ibdml.attention` analyses;
`summarise_run(run_dir)` writes <run>/attention_summary.json: the per-head curves, the edge-case
verdicts and the node the notebooks show by default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ibdml.accel import autocast, bf16_override, to_device
from ibdml.attention import Treatment, edge_case_verdicts, same_class_mass, summarise
from ibdml.config import Params
from ibdml.data.folder import ImageDataset, Split
from ibdml.data.transforms import eval_transform
from ibdml.model import IntraBatchModel
from ibdml.runs import (RunFolderError, environment, read_json, read_run_params, write_json,
                        write_npy)

FOLDER = "attention"
# The probes' own random stream: drawing them must not move the training RNG (resume is exact).
PROBE_STREAM = 7919


@dataclass
class Probes:
    images: torch.Tensor  # [P, N, 3, S, S] eval-transformed, loaded once per run
    labels: torch.Tensor  # [P, N] training-class labels
    indices: np.ndarray  # [P, N] positions in the train split
    bf16: bool | None = None  # accel.autocast's switch: the precision training runs in (amp)


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
                  bf16_override(p))


@torch.no_grad()
def record_attention(model: IntraBatchModel, probes: Probes, device: torch.device,
                     chunk: int = 256) -> torch.Tensor:
    """The MPN's attention on every probe, [L, P, H, N, N] float32 on the CPU. Eval mode: the
    backbone's BatchNorm uses its running statistics and no dropout is drawn, so the record is
    deterministic and the training RNG is untouched. The P probes are P graphs of one batched
    MPN call."""
    if model.mpn is None:
        raise ValueError("the model has no MPN (mpn_layers: 0): there is no attention to record")
    model.eval()
    P, N = probes.labels.shape
    flat = probes.images.flatten(0, 1)  # [P·N, 3, S, S]
    with autocast(device, probes.bf16):  # as in training: bf16 on CUDA when amp, softmax fp32
        embedding = torch.cat([model.backbone(to_device(flat[i:i + chunk], device))[0].float()
                               for i in range(0, len(flat), chunk)])  # [P·N, D]
        out = model.mpn(embedding.view(P, N, -1), return_attention=True, return_logits=False)
    return out.attention.float().cpu()  # [L, P, H, N, N]


def epoch_file(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / FOLDER / f"epoch_{epoch:04d}.npy"


def write_probe_info(run_dir: Path, probes: Probes, split: Split, p: Params) -> None:
    """probes.json: who is in each probe batch, and how to read the epoch files."""
    write_json(Path(run_dir) / FOLDER / "probes.json", {
        "layout": "epoch_EEEE.npy: float16 [layers, probes, heads, N, N]; row i = node i's "
                  "weights over its batch (rows sum < 1 with the null key: 1 − sum is its mass); "
                  "epoch 0 = before training; eval mode, no_grad",
        "layers": p.mpn_layers, "probes": p.attention_probes, "heads": p.mpn_heads,
        "nodes": p.batch_size, "n_c": p.n_c, "n_s": p.n_s, "null_key": p.attention_null_key,
        "labels": probes.labels.tolist(), "indices": probes.indices.tolist(),
        "class_names": [[split.class_names[int(c)] for c in row] for row in probes.labels],
        "paths": [[str(split.paths[int(i)]) for i in row] for row in probes.indices]})


def save_epoch(run_dir: Path, epoch: int, attention: torch.Tensor) -> None:
    write_npy(epoch_file(run_dir, epoch), attention.to(torch.float16).numpy())


def record_epoch(model: IntraBatchModel, probes: Probes, run_dir: Path, epoch: int,
                 device: torch.device) -> float:
    """Record and save one epoch's attention; returns the seconds it took."""
    start = time.perf_counter()
    save_epoch(run_dir, epoch, record_attention(model, probes, device))
    return time.perf_counter() - start


@dataclass
class AttentionRun:
    """A run's recorded attention, as `ibdml.attention` reads it."""

    by_epoch: dict[int, np.ndarray]  # {epoch: [L, P, H, N, N] float16}
    labels: np.ndarray  # [P, N]
    info: dict  # probes.json

    @property
    def epochs(self) -> list[int]:
        return sorted(self.by_epoch)


def load_attention(run_dir: str | Path) -> AttentionRun:
    """Read <run>/attention/. Epoch files of another shape than probes.json describes (a run
    folder written by something else) are an error, not a silent mix."""
    folder = Path(run_dir) / FOLDER
    info_file = folder / "probes.json"
    if not info_file.is_file():
        raise RunFolderError(f"{folder} holds no attention record (no probes.json): train with "
                             "attention_probes ≥ 1 and mpn_layers ≥ 1 to record one")
    info = read_json(info_file)
    expected = (info["layers"], info["probes"], info["heads"], info["nodes"], info["nodes"])
    by_epoch = {}
    for f in sorted(folder.glob("epoch_*.npy")):
        a = np.load(f)
        if a.shape != expected:
            raise RunFolderError(f"{f} holds attention of shape {a.shape}, probes.json says "
                                 f"{expected}; the folder mixes two runs: train into a new one")
        by_epoch[int(f.stem.split("_")[1])] = a
    if not by_epoch:
        raise RunFolderError(f"{folder} has probes.json but no epoch_*.npy: training stopped "
                             "before the first record; run the training again to resume")
    return AttentionRun(by_epoch, np.asarray(info["labels"], dtype=np.int64), info)


def storage_bytes(p: Params) -> int:
    """Bytes of attention a run with these parameters writes (epochs + 1 records)."""
    per_epoch = p.mpn_layers * p.attention_probes * p.mpn_heads * p.batch_size ** 2 * 2
    return per_epoch * (p.epochs + 1)


def records_attention(p: Params) -> bool:
    """Whether a run records attention: probes asked for, and an MPN that runs in training."""
    return p.attention_probes > 0 and p.mpn_layers > 0 and p.loss_heads == "both"



def typical_node(rec: AttentionRun, *, layer: int, head: int, probe: int = 0) -> int:
    """The probe node whose same-class attention at the last epoch is the median of its batch: a
    representative node to show, not the best one."""
    a = rec.by_epoch[rec.epochs[-1]][layer, probe, head]  # [N, N]
    same = same_class_mass(a, rec.labels[probe])  # [N]
    return int(torch.argsort(same)[len(same) // 2])


def summarise_run(run_dir: str | Path, *,
                  null_key_treatment: Treatment = "renormalise") -> dict:
    """Summarise <run>/attention/ (claim 3) into <run>/attention_summary.json and return it:

        recorded      false (with the reason) for a run that records no attention
        summary       attention.summarise: per epoch/layer/head KL, entropy, same-class, null mass
        verdicts      attention.edge_case_verdicts at the last epoch (and "verdicts_start" at 0)
        claim         counts over heads: above chance at the end, KL up by more than 1 % of
                      log N, same-class mass up by more than the chance margin (0.01)
        example       {layer, head, probe, node, class}: the head whose same-class mass rose most,
                      its typical node (the notebooks' default view)
    """
    run_dir, p = Path(run_dir), read_run_params(run_dir)
    if not records_attention(p):
        reason = ("mpn_layers is 0" if p.mpn_layers == 0 else "attention_probes is 0"
                  if p.attention_probes == 0 else "loss_heads is backbone: the MPN never trains")
        result = {"recorded": False, "reason": f"this run records no attention: {reason}"}
        write_json(run_dir / "attention_summary.json", result)
        return result
    rec = load_attention(run_dir)
    summary = summarise(rec.by_epoch, rec.labels, null_key_treatment=null_key_treatment)
    end, start = edge_case_verdicts(summary), edge_case_verdicts(summary, epoch=rec.epochs[0])
    heads, tol = end["heads"], end["thresholds"]
    # a change counts when it exceeds the verdicts' own margins (1 % of log N; chance_margin)
    moved = [h["kl_change"] > 0.01 * summary["kl_max"] for h in heads]
    raised = [h["same_class_change"] > tol["chance_margin"] for h in heads]
    best = max(heads, key=lambda h: h["same_class_change"])
    node = typical_node(rec, layer=best["layer"], head=best["head"])
    result = {
        "recorded": True, "epochs": rec.epochs, "summary": summary, "verdicts": end,
        "verdicts_start": start,
        "claim": {"heads": len(heads),
                  "above_chance": sum(h["above_chance"] for h in heads),
                  "kl_increased": sum(moved), "same_class_increased": sum(raised),
                  "near_uniform": sum(h["verdict"] == "near uniform" for h in heads),
                  "collapsed": sum(h["verdict"] == "collapsed" for h in heads)},
        "example": {"layer": best["layer"], "head": best["head"], "probe": 0, "node": node,
                    "class": int(rec.labels[0, node]),
                    "class_name": rec.info["class_names"][0][node]},
        "params": p.to_dict(), "environment": environment(torch.device("cpu"))}
    write_json(run_dir / "attention_summary.json", result)
    return result
