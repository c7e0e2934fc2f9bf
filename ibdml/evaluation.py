"""Evaluating a model: embed a split with the backbone, score it, and the two baselines.

The test features are the L2-normalised backbone embeddings; the MPN is dropped (paper §3.4).
Metrics come from the per-query outcomes of one exact k-NN search (metrics.query_outcomes), or
for In-Shop of its query → gallery search (gallery_metrics.query_gallery_outcomes, docs/method.md
§7.3), summarised with their standard errors (metrics.summarise). A Glyphs run also records
two baselines that any trained backbone must beat: k-NN on raw pixels, and the network as
initialised (early epochs of a short run can dip below the untrained network: docs/datasets.md).
Nothing here touches a run folder: steps/evaluate.py writes the results.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ibdml import device as devices
from ibdml.config import Params
from ibdml.data.folder import ImageDataset, Split
from ibdml.data.loader import data_loader
from ibdml.data.splits import test_split_names
from ibdml.data.transforms import eval_transform
from ibdml.gallery_metrics import query_gallery_outcomes
from ibdml.metrics import QueryOutcomes, query_outcomes, summarise
from ibdml.model import IntraBatchModel, build_model
from ibdml.retrieval import nearest_neighbours


def split_loader(split: Split, p: Params, device: torch.device) -> DataLoader:
    """The split's test-transformed images, in order, in batches of eval_batch_size."""
    return data_loader(ImageDataset(split, eval_transform(p)), p.num_workers, device,
                       batch_size=p.eval_batch_size)


@torch.no_grad()
def embed(model: IntraBatchModel, batches: Iterable[torch.Tensor], device: torch.device,
          bf16: bool | None = None) -> torch.Tensor:
    """Normalised backbone embeddings [N, D] (float32, on `device`) of batches of images
    [B, 3, S, S], in order, in eval mode; on a GPU under bf16 autocast (device.py), the
    normalised features in fp32."""
    model.eval()
    with devices.autocast(device, bf16):
        features = [model.backbone(devices.to_device(images, device))[0].float()
                    for images in batches]  # [B, D] each, on the device
    return torch.cat(features)


def embed_split(model: IntraBatchModel, split: Split, p: Params,
                device: torch.device) -> torch.Tensor:
    """`embed` of a split's test-transformed images, in the run's precision, on the CPU."""
    batches = (images for images, _, _ in split_loader(split, p, device))
    return embed(model, batches, device, devices.bf16_override(p.amp)).cpu()


def evaluate_split(model: IntraBatchModel, split: Split, p: Params, device: torch.device,
                   *, nmi: bool) -> tuple[dict, torch.Tensor]:
    """Metrics of the backbone on one split (with standard errors), and its embeddings."""
    emb = embed_split(model, split, p, device)
    outcomes = query_outcomes(emb, split.labels, p.recall_ks, nmi=nmi, seed=p.seed,
                              kmeans=p.kmeans)
    return summarise(outcomes, seed=p.seed), emb


def test_outcomes(features: dict[str, torch.Tensor], labels: dict[str, np.ndarray], p: Params,
                  nmi: bool) -> QueryOutcomes:
    """Per-query outcomes of the run's test protocol, from the test splits' features and labels
    ({"test": ...} or In-Shop's {"query": ..., "gallery": ...}): the test split searched against
    itself, or In-Shop's queries against its gallery."""
    if "query" in features:
        return query_gallery_outcomes(features["query"], labels["query"], features["gallery"],
                                      labels["gallery"], p.recall_ks, nmi=nmi, seed=p.seed,
                                      kmeans=p.kmeans)
    return query_outcomes(features["test"], labels["test"], p.recall_ks, nmi=nmi, seed=p.seed,
                          kmeans=p.kmeans)


def evaluate_test(model: IntraBatchModel, splits: dict[str, Split], p: Params,
                  device: torch.device, *, nmi: bool
                  ) -> tuple[QueryOutcomes, dict[str, torch.Tensor]]:
    """Per-query outcomes of the backbone on the test split(s) (metrics.summarise gives their
    metrics and standard errors), and their embeddings {split: [N, D]}."""
    features = {name: embed_split(model, splits[name], p, device)
                for name in test_split_names(p)}
    labels = {name: splits[name].labels for name in features}
    return test_outcomes(features, labels, p, nmi), features


@torch.no_grad()
def raw_pixel_baseline(splits: dict[str, Split], p: Params) -> dict:
    """k-NN on the test-transformed pixels, flattened and L2-normalised."""
    features = {}
    for name in test_split_names(p):
        loader = split_loader(splits[name], p, torch.device("cpu"))
        pixels = torch.cat([images.flatten(1) for images, _, _ in loader])  # [N, 3·H·W]
        features[name] = torch.nn.functional.normalize(pixels, dim=1)
    labels = {name: splits[name].labels for name in features}
    return summarise(test_outcomes(features, labels, p, p.nmi), seed=p.seed)


def untrained_baseline(splits: dict[str, Split], p: Params, device: torch.device) -> dict:
    """The network as training starts from it (same seed, same initialisation)."""
    torch.manual_seed(p.seed)
    model = devices.prepare_model(build_model(p, splits["train"].num_classes), device)
    return summarise(evaluate_test(model, splits, p, device, nmi=p.nmi)[0], seed=p.seed)


def protocol(p: Params) -> str:
    """How the reported epoch was chosen (docs/protocol.md)."""
    return {"last": "paper (last epoch)", "val": "fair (epoch selected on validation classes)",
            "test": "optimistic (epoch selected on the test set)"}[p.select_on]


def r1_transitions(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> dict:
    """How refinement moved each query's nearest neighbour: counts of R@1 hit/miss before
    (backbone) → after (refined), e.g. {"miss→hit": 120, ...}."""
    labels = torch.as_tensor(labels)
    hits = [labels[nearest_neighbours(x, k=1, exclude_self=True)[1][:, 0]] == labels
            for x in (before, after)]
    return _transitions(*hits)


def query_gallery_r1_transitions(queries: tuple[torch.Tensor, torch.Tensor],
                                 galleries: tuple[torch.Tensor, torch.Tensor],
                                 query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> dict:
    """`r1_transitions` for In-Shop: (before, after) query features against (before, after)
    gallery features; a hit is a same-item nearest gallery image."""
    ql, gl = torch.as_tensor(query_labels), torch.as_tensor(gallery_labels)
    hits = [gl[nearest_neighbours(q, g, k=1)[1][:, 0]] == ql for q, g in zip(queries, galleries)]
    return _transitions(*hits)


def _transitions(before: torch.Tensor, after: torch.Tensor) -> dict:
    """[N] bool hits before and after → {"hit→hit": n, "hit→miss": n, ...}."""
    name = {True: "hit", False: "miss"}
    return {f"{name[a]}→{name[b]}": int(((before == a) & (after == b)).sum())
            for a in (True, False) for b in (True, False)}
