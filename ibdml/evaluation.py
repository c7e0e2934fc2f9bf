"""Evaluating a split, a training checkpoint, and a whole run (metrics.json).

The test features are the L2-normalised backbone embeddings; the MPN is dropped (paper §3.4).
Metrics come from one exact k-NN search (metrics.evaluate), or for In-Shop from its query →
gallery search (metrics.evaluate_query_gallery, METHOD_SPEC §7.3). A Glyphs run also records two
baselines that any trained backbone must beat: k-NN on raw pixels, and the network as initialised
(DESIGN.md: early epochs dip below the untrained network, so always show both).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ibdml import accel
from ibdml.config import Params
from ibdml.data.datasets import load_splits, test_split_names
from ibdml.data.folder import ImageDataset, Split
from ibdml.data.transforms import eval_transform
from ibdml.metrics import evaluate, evaluate_query_gallery
from ibdml.model import IntraBatchModel, build_model
from ibdml.runs import (environment, read_json, read_run_params, resolve_device, save_torch,
                        write_json)


def split_loader(split: Split, p: Params, device: torch.device) -> DataLoader:
    return accel.data_loader(ImageDataset(split, eval_transform(p)), p, device,
                             batch_size=p.eval_batch_size)


@torch.no_grad()
def embed(model: IntraBatchModel, loader: DataLoader, device: torch.device,
          bf16: bool | None = None) -> torch.Tensor:
    """Normalised backbone embeddings [N, D] (float32, CPU) of a loader's images, in order; on a
    GPU under bf16 autocast (accel.py), the normalised features in fp32."""
    model.eval()
    with accel.autocast(device, bf16):
        features = [model.backbone(accel.to_device(images, device))[0].float()
                    for images, _, _ in loader]  # [B, D] each, on the device
    return torch.cat(features).cpu()  # one copy to the host


def embed_split(model: IntraBatchModel, split: Split, p: Params,
                device: torch.device) -> torch.Tensor:
    """`embed` of a split's test-transformed images, in the run's precision."""
    return embed(model, split_loader(split, p, device), device, accel.bf16_override(p))


def evaluate_split(model: IntraBatchModel, split: Split, p: Params, device: torch.device,
                   *, nmi: bool) -> tuple[dict, torch.Tensor]:
    """Metrics of the backbone on one split, and its embeddings."""
    emb = embed_split(model, split, p, device)
    return evaluate(emb, split.labels, p.recall_ks, nmi=nmi, seed=p.seed), emb


def test_metrics(features: dict[str, torch.Tensor], splits: dict[str, Split], p: Params,
                 nmi: bool) -> dict:
    """metrics.json's keys for the run's test protocol, from the test splits' features: the test
    split searched against itself, or In-Shop's queries against its gallery."""
    if "query" in features:
        return evaluate_query_gallery(features["query"], splits["query"].labels,
                                      features["gallery"], splits["gallery"].labels,
                                      p.recall_ks, nmi=nmi, seed=p.seed)
    return evaluate(features["test"], splits["test"].labels, p.recall_ks, nmi=nmi, seed=p.seed)


def evaluate_test(model: IntraBatchModel, splits: dict[str, Split], p: Params,
                  device: torch.device, *, nmi: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """Metrics of the backbone on the test split(s), and their embeddings {split: [N, D]}."""
    features = {name: embed_split(model, splits[name], p, device)
                for name in test_split_names(p)}
    return test_metrics(features, splits, p, nmi), features


@torch.no_grad()
def raw_pixel_baseline(splits: dict[str, Split], p: Params) -> dict:
    """k-NN on the test-transformed pixels, flattened and L2-normalised."""
    features = {}
    for name in test_split_names(p):
        loader = split_loader(splits[name], p, torch.device("cpu"))
        pixels = torch.cat([images.flatten(1) for images, _, _ in loader])  # [N, 3·H·W]
        features[name] = torch.nn.functional.normalize(pixels, dim=1)
    return test_metrics(features, splits, p, p.nmi)


def untrained_baseline(splits: dict[str, Split], p: Params, device: torch.device) -> dict:
    """The network as training starts from it (same seed, same initialisation)."""
    torch.manual_seed(p.seed)
    model = accel.prepare_model(build_model(p, splits["train"].num_classes), device)
    return evaluate_test(model, splits, p, device, nmi=p.nmi)[0]


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
    model = accel.prepare_model(build_model(p, splits["train"].num_classes), device)
    model.load_state_dict(ckpt["model"])
    metrics, features = evaluate_test(model, splits, p, device, nmi=p.nmi)
    # One cache for every dataset: the test split(s) stacked in order, with their sizes (In-Shop:
    # the queries first, then the gallery).
    save_torch(run_dir / "embeddings" / "test.pt",
               {"embeddings": torch.cat(list(features.values())),
                "labels": torch.cat([torch.as_tensor(splits[n].labels) for n in features]),
                "splits": {n: len(f) for n, f in features.items()}, "epoch": ckpt["epoch"]})
    result = {**metrics, "protocol": protocol(p), "split": "+".join(features),
              "epoch": ckpt["epoch"],
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
    result = {"raw_pixels": raw_pixel_baseline(splits, p),
              "untrained": untrained_baseline(splits, p, device)}
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
    embeddings, and whether each neighbour shares the query's class ([Q, k] bool). In-Shop:
    queries from the query split, neighbours from the gallery."""
    p = read_run_params(run_dir)
    cache = torch.load(Path(run_dir) / "embeddings" / "test.pt", weights_only=False)
    splits = load_splits(p, progress=False)
    emb = cache["embeddings"]
    if p.dataset == "inshop":
        nq = cache["splits"]["query"]
        query, gallery = splits["query"], splits["gallery"]
        picked = np.random.default_rng(seed).choice(nq, min(queries, nq), replace=False)
        idx = (emb[picked] @ emb[nq:].T).topk(k, dim=1).indices.numpy()  # [Q, k] gallery rows
    else:
        query = gallery = splits["test"]
        picked = np.random.default_rng(seed).choice(len(query), min(queries, len(query)),
                                                    replace=False)
        idx = top_k_excluding_self(emb, picked, k)
    return ([query.paths[i] for i in picked], [[gallery.paths[j] for j in row] for row in idx],
            gallery.labels[idx] == query.labels[picked][:, None])


def r1_transitions(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> dict:
    """How refinement moved each query's nearest neighbour: counts of R@1 hit/miss before
    (backbone) → after (refined), e.g. {"miss→hit": 120, ...}."""
    from ibdml.retrieval import nearest_neighbours

    labels = torch.as_tensor(labels)
    hits = [labels[nearest_neighbours(x, k=1, exclude_self=True)[1][:, 0]] == labels
            for x in (before, after)]
    return _transitions(*hits)


def query_gallery_r1_transitions(queries: tuple[torch.Tensor, torch.Tensor],
                                 galleries: tuple[torch.Tensor, torch.Tensor],
                                 query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> dict:
    """`r1_transitions` for In-Shop: (before, after) query features against (before, after)
    gallery features; a hit is a same-item nearest gallery image."""
    from ibdml.retrieval import nearest_neighbours

    ql, gl = torch.as_tensor(query_labels), torch.as_tensor(gallery_labels)
    hits = [gl[nearest_neighbours(q, g, k=1)[1][:, 0]] == ql for q, g in zip(queries, galleries)]
    return _transitions(*hits)


def _transitions(before: torch.Tensor, after: torch.Tensor) -> dict:
    """[N] bool hits before and after → {"hit→hit": n, "hit→miss": n, ...}."""
    name = {True: "hit", False: "miss"}
    return {f"{name[a]}→{name[b]}": int(((before == a) & (after == b)).sum())
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
    # [Q, 1, D] · [Q, batch-1, D] → [Q, batch-1]
    sims = [(x[picked][:, None, :] * x[members]).sum(-1)
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
    result = {"without_mpn": without, "with_mpn": None, "split": "+".join(cache["splits"]),
              "epoch": cache["epoch"], "k": p.mpn_inference_k, "batch": p.mpn_inference_batch,
              "alpha": p.mpn_inference_alpha,
              "feature_space": "queries and references both in MPN-output space (refined)"}
    if p.mpn_layers > 0 and p.dataset == "inshop":
        result.update(_refine_query_gallery_run(_trained_model(run_dir, p), cache, p))
    elif p.mpn_layers > 0:
        model = _trained_model(run_dir, p)
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


def _trained_model(run_dir: Path, p: Params) -> IntraBatchModel:
    """The selected checkpoint's model on the run's device (MPN at inference runs there). The
    number of training classes is the aux classifier's: no need to read the dataset again."""
    state = torch.load(selected_checkpoint(run_dir, p), map_location="cpu",
                       weights_only=False)["model"]
    model = build_model(p, state["backbone.classifier.weight"].shape[0])  # [C, D]
    model.load_state_dict(state)
    return model.to(resolve_device(p.device))


def _refine_query_gallery_run(model: IntraBatchModel, cache: dict, p: Params) -> dict:
    """MPN at inference for In-Shop (METHOD_SPEC §8.2): each query refined on its 4-node graph
    of reciprocal gallery neighbours, compared with the backbone gallery (authors) or a gallery
    refined on its own neighbourhoods (`mpn_inference_gallery_space`)."""
    from ibdml.inference import refine_query_gallery

    nq = cache["splits"]["query"]
    emb, labels = cache["embeddings"], cache["labels"]
    q, g, ql, gl = emb[:nq], emb[nq:], labels[:nq], labels[nq:]
    start = time.time()
    rq, rg = refine_query_gallery(model.mpn, q, g, k=p.mpn_inference_k,
                                  batch=p.mpn_inference_batch, alpha=p.mpn_inference_alpha,
                                  gallery_space=p.mpn_inference_gallery_space)
    refined_gallery = p.mpn_inference_gallery_space == "refined"
    return {
        "seconds": {"refinement": round(time.time() - start, 2)},
        # NMI clusters queries and gallery together: only meaningful in one feature space
        "with_mpn": evaluate_query_gallery(rq, ql, rg, gl, p.recall_ks,
                                           nmi=p.nmi and refined_gallery, seed=p.seed),
        "r1_transitions": query_gallery_r1_transitions((q, rq), (g, rg), ql, gl),
        "feature_space": ("queries and gallery both refined" if refined_gallery else
                          "refined queries against backbone gallery features (authors)")}
