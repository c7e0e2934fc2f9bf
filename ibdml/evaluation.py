"""Evaluating a split, a training checkpoint, and a whole run (metrics.json).

The test features are the L2-normalised backbone embeddings; the MPN is dropped (paper §3.4).
Metrics come from one exact k-NN search (metrics.evaluate). A Glyphs run also records two
baselines that any trained backbone must beat: k-NN on raw pixels, and the network as initialised
(DESIGN.md: early epochs dip below the untrained network, so always show both).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ibdml.config import Params
from ibdml.data.datasets import load_splits
from ibdml.data.folder import ImageDataset, Split
from ibdml.data.transforms import eval_transform
from ibdml.metrics import evaluate
from ibdml.model import IntraBatchModel, build_model
from ibdml.runs import (environment, read_json, read_run_params, resolve_device, save_torch,
                        write_json)


def split_loader(split: Split, p: Params, device: torch.device) -> DataLoader:
    return DataLoader(ImageDataset(split, eval_transform(p)), batch_size=p.eval_batch_size,
                      shuffle=False, num_workers=worker_count(p, device),
                      pin_memory=device.type == "cuda")


def worker_count(p: Params, device: torch.device) -> int:
    """DataLoader workers: on a small CPU machine the cores are better spent on the network."""
    if p.num_workers >= 0:
        return p.num_workers
    cores = len(os.sched_getaffinity(0))
    return min(8, cores - 1) if device.type == "cuda" else (0 if cores <= 4 else min(4, cores // 2))


@torch.no_grad()
def embed(model: IntraBatchModel, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Normalised backbone embeddings [N, D] (float32, CPU) of a loader's images, in order."""
    model.eval()
    return torch.cat([model.backbone(images.to(device))[0].float().cpu()
                      for images, _, _ in loader])


def evaluate_split(model: IntraBatchModel, split: Split, p: Params, device: torch.device,
                   *, nmi: bool) -> tuple[dict, torch.Tensor]:
    """Metrics of the backbone on one split, and its embeddings."""
    emb = embed(model, split_loader(split, p, device), device)
    return evaluate(emb, split.labels, p.recall_ks, nmi=nmi, seed=p.seed), emb


@torch.no_grad()
def raw_pixel_baseline(split: Split, p: Params) -> dict:
    """k-NN on the test-transformed pixels, flattened and L2-normalised."""
    loader = split_loader(split, p, torch.device("cpu"))
    pixels = torch.cat([images.flatten(1) for images, _, _ in loader])  # [N, 3·H·W]
    return evaluate(torch.nn.functional.normalize(pixels, dim=1), split.labels, p.recall_ks,
                    nmi=p.nmi, seed=p.seed)


def untrained_baseline(split: Split, p: Params, num_classes: int, device: torch.device) -> dict:
    """The network as training starts from it (same seed, same initialisation)."""
    torch.manual_seed(p.seed)
    model = build_model(p, num_classes).to(device)
    return evaluate_split(model, split, p, device, nmi=p.nmi)[0]


def protocol(p: Params) -> str:
    return {"last": "paper (last epoch)", "val": "fair (epoch selected on validation classes)",
            "test": "optimistic (epoch selected on the test set)"}[p.select_on]


def selected_checkpoint(run_dir: Path, p: Params) -> Path:
    name = "last.pt" if p.select_on == "last" else "best.pt"
    path = Path(run_dir) / "checkpoints" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; train the run first "
                                f"(`ibdml train {Path(run_dir) / 'params.yaml'} --out {run_dir}`)")
    return path


def evaluate_run(run_dir: Path, progress: bool = True) -> dict:
    """Evaluate the run's selected checkpoint on the test split; write metrics.json (and cache the
    test embeddings). Baselines are computed once and kept in baselines.json."""
    start, run_dir = time.time(), Path(run_dir)
    p = read_run_params(run_dir)
    device = resolve_device(p.device)
    splits = load_splits(p, progress=progress)
    ckpt = torch.load(selected_checkpoint(run_dir, p), map_location="cpu", weights_only=False)
    model = build_model(p, splits["train"].num_classes).to(device)
    model.load_state_dict(ckpt["model"])
    metrics, emb = evaluate_split(model, splits["test"], p, device, nmi=p.nmi)
    save_torch(run_dir / "embeddings" / "test.pt",
               {"embeddings": emb, "labels": torch.as_tensor(splits["test"].labels),
                "epoch": ckpt["epoch"]})
    result = {**metrics, "protocol": protocol(p), "split": "test", "epoch": ckpt["epoch"],
              "select_on": p.select_on, "optimistic": p.select_on == "test"}
    if p.baselines:
        result["baselines"] = baselines(run_dir, p, splits, device)
    result.update(params=p.to_dict(), environment=environment(device),
                  seconds=round(time.time() - start, 2))
    write_json(run_dir / "metrics.json", result)
    return result


def baselines(run_dir: Path, p: Params, splits: dict[str, Split], device: torch.device) -> dict:
    path = run_dir / "baselines.json"
    if path.is_file():
        return read_json(path)
    result = {"raw_pixels": raw_pixel_baseline(splits["test"], p),
              "untrained": untrained_baseline(splits["test"], p, splits["train"].num_classes,
                                              device)}
    write_json(path, result)
    return result


def top_k_excluding_self(embeddings: torch.Tensor, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices [Q, k] of the k nearest rows of embeddings [N, D] for the query rows `queries` [Q],
    the query itself excluded by index. A Q × N product: for a handful of queries."""
    sims = embeddings[queries] @ embeddings.T  # [Q, N]
    sims[np.arange(len(queries)), queries] = -torch.inf
    return sims.topk(k, dim=1).indices.numpy()


def retrieval_examples(run_dir: Path, queries: int = 8, k: int = 5, seed: int = 0
                       ) -> tuple[list[Path], list[list[Path]], np.ndarray]:
    """A few random test queries, the paths of their top-k neighbours from the cached test
    embeddings, and whether each neighbour shares the query's class ([Q, k] bool)."""
    p = read_run_params(run_dir)
    emb = torch.load(Path(run_dir) / "embeddings" / "test.pt", weights_only=False)["embeddings"]
    split = load_splits(p, progress=False)["test"]
    picked = np.random.default_rng(seed).choice(len(split), min(queries, len(split)), replace=False)
    idx = top_k_excluding_self(emb, picked, k)
    return ([split.paths[i] for i in picked], [[split.paths[j] for j in row] for row in idx],
            split.labels[idx] == split.labels[picked][:, None])


def r1_transitions(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> dict:
    """How refinement moved each query's nearest neighbour: counts of R@1 hit/miss before
    (backbone) → after (refined), e.g. {"miss→hit": 120, ...}."""
    from ibdml.retrieval import nearest_neighbours

    labels = torch.as_tensor(labels)
    hits = [labels[nearest_neighbours(x, k=1, exclude_self=True)[1][:, 0]] == labels
            for x in (before, after)]
    name = {True: "hit", False: "miss"}
    return {f"{name[a]}→{name[b]}": int(((hits[0] == a) & (hits[1] == b)).sum())
            for a in (True, False) for b in (True, False)}


def neighbourhood_examples(run_dir: Path, queries: int = 6, seed: int = 0
                           ) -> tuple[list[Path], list[list[Path]], np.ndarray, list[list[str]]]:
    """A few test queries with the other members of their MPN-at-inference neighbourhood: paths,
    same-class flags [Q, batch−1], and captions "cosine before → after refinement"."""
    p = read_run_params(run_dir)
    split = load_splits(p, progress=False)["test"]
    base = torch.load(Path(run_dir) / "embeddings" / "test.pt", weights_only=False)["embeddings"]
    refined = torch.load(Path(run_dir) / "embeddings" / "test_refined.pt", weights_only=False)
    picked = np.random.default_rng(seed).choice(len(split), min(queries, len(split)), replace=False)
    members = refined["neighbourhoods"][picked][:, 1:]  # [Q, batch-1], row 0 is the query itself
    sims = [(x[picked][:, None, :] * x[members]).sum(-1)  # [Q, 1, D] · [Q, batch-1, D] → [Q, batch-1]
            for x in (base, refined["embeddings"])]
    captions = [[f"{b:.2f}→{a:.2f}" for b, a in zip(rb, ra)] for rb, ra in zip(*sims)]
    members = members.numpy()
    return ([split.paths[i] for i in picked], [[split.paths[j] for j in row] for row in members],
            split.labels[members] == split.labels[picked][:, None], captions)


def evaluate_mpn_inference(run_dir: Path) -> dict:
    """Claim 2 (METHOD_SPEC §8): refine every cached test embedding with the trained MPN on its
    reciprocal k-NN neighbourhood, then evaluate the refined features exactly as the backbone's.
    Writes mpn_inference.json ({without_mpn, with_mpn} with metrics.json's keys) and caches the
    refined embeddings and neighbourhoods. A run without an MPN records with_mpn = null."""
    from ibdml.inference import reciprocal_neighbourhoods, refine

    run_dir, p = Path(run_dir), read_run_params(run_dir)
    cache = torch.load(run_dir / "embeddings" / "test.pt", weights_only=False)
    keys = ("recall_at_k", "map_at_r", "nmi")
    without = {k: read_json(run_dir / "metrics.json")[k] for k in keys}
    result = {"without_mpn": without, "with_mpn": None, "split": "test", "epoch": cache["epoch"],
              "k": p.mpn_inference_k, "batch": p.mpn_inference_batch,
              "alpha": p.mpn_inference_alpha,
              "feature_space": "queries and references both in MPN-output space (refined)"}
    if p.mpn_layers > 0:
        model = build_model(p, load_splits(p, progress=False)["train"].num_classes)
        model.load_state_dict(torch.load(selected_checkpoint(run_dir, p), map_location="cpu",
                                          weights_only=False)["model"])
        start = time.time()
        hoods = reciprocal_neighbourhoods(cache["embeddings"], k=p.mpn_inference_k,
                                          batch=p.mpn_inference_batch, alpha=p.mpn_inference_alpha)
        built = time.time()
        refined = refine(model.mpn, cache["embeddings"], hoods)
        result["seconds"] = {"neighbourhoods": round(built - start, 2),
                             "refinement": round(time.time() - built, 2)}
        result["with_mpn"] = evaluate(refined, cache["labels"], p.recall_ks, nmi=p.nmi,
                                      seed=p.seed)
        result["r1_transitions"] = r1_transitions(cache["embeddings"], refined, cache["labels"])
        save_torch(run_dir / "embeddings" / "test_refined.pt",
                   {"embeddings": refined, "neighbourhoods": hoods, "epoch": cache["epoch"]})
    write_json(run_dir / "mpn_inference.json", result)
    return result
