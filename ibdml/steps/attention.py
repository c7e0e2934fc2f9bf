"""The attention step: the probe batches' attention on disk, and its summary (paper claim 3).

    <run>/attention/probes.json      labels [P][N], train-split indices [P][N], image paths,
                                     class names, and what the arrays hold
    <run>/attention/epoch_0000.npy   [L, P, H, N, N] float16 after epoch e (0 = before training)
    <run>/attention_summary.json     per-head curves, edge-case verdicts, the node to show;
                                     ["summary"] is attention.summarise: kl, self_mass,
                                     same_class_excl_self [E][L][H] and its chance level
                                     same_class_excl_self_uniform, kl_max, epochs, ...
    <run>/figures/attention_*.{html,png}

One file per epoch, so an interrupted run resumes without rewriting history and a 70-epoch paper
run stays small (SOP: 4 probes × 8 heads × 90² × 2 bytes = 0.5 MB an epoch). The probes are drawn
and recorded by ibdml.probes; training (steps/train.py) calls `record_epoch` after every epoch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ibdml.attention import Treatment
from ibdml.config import Params
from ibdml.data.folder import Split
from ibdml.model import IntraBatchModel
from ibdml.figures.attention import attention_figures
from ibdml.probes import (AttentionRun, Probes, record_attention, records_attention,
                          summarise_record)
from ibdml.steps.rundir import (RunFolderError, environment, read_json, read_run_params,
                                run_lock, save_figures, write_json, write_npy)

FOLDER = "attention"


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
        "mpn_attention": p.mpn_attention,  # uniform: rows 1/N; self: the identity (mpn.py)
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


def summarise_run(run_dir: str | Path, *,
                  null_key_treatment: Treatment = "renormalise") -> dict:
    """Summarise <run>/attention/ (claim 3) into <run>/attention_summary.json (per-head curves,
    edge-case verdicts, the claim's counts over heads, the node to show: probes.summarise_record)
    and draw the attention figures into <run>/figures/ (HTML and PNG); returns the summary. A run
    that records no attention gets {"recorded": false, "reason": ...} and no figures."""
    run_dir, p = Path(run_dir), read_run_params(run_dir)  # first: no lock file in a non-run
    with run_lock(run_dir):  # RunLocked while another process writes the folder (rundir.py)
        return _summarise_run(run_dir, p, null_key_treatment)


def _summarise_run(run_dir: Path, p: Params, null_key_treatment: Treatment) -> dict:
    if not records_attention(p):
        reason = ("mpn_layers is 0" if p.mpn_layers == 0 else "attention_probes is 0"
                  if p.attention_probes == 0 else "loss_heads is backbone: the MPN never trains")
        result = {"recorded": False, "reason": f"this run records no attention: {reason}"}
        write_json(run_dir / "attention_summary.json", result)
        return result
    rec = load_attention(run_dir)
    result = {**summarise_record(rec, null_key_treatment), "params": p.to_dict(),
              "environment": environment(torch.device("cpu"))}
    write_json(run_dir / "attention_summary.json", result)
    example = result["example"]
    save_figures(run_dir, attention_figures(result["summary"], rec.by_epoch, rec.labels,
                                            layer=example["layer"], head=example["head"],
                                            probe=example["probe"], node=example["node"]))
    return result
