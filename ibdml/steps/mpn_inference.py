"""The MPN-at-inference step (paper claim 2; docs/method.md §8): refine every cached test
embedding with the trained MPN on its reciprocal k-NN neighbourhood, then evaluate the refined
features exactly as the backbone's.

    <run>/mpn_inference.json          {without_mpn, with_mpn} with metrics.json's keys, and the
                                      paired bootstrap difference of with − without
    <run>/outcomes/mpn_inference_with.npz   the refined features' per-query outcomes (the
                                      backbone's are the evaluation's outcomes/test.npz)
    <run>/embeddings/test_refined.pt  the refined embeddings and the neighbourhoods
    <run>/figures/mpn_neighbourhoods.png
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from ibdml import device as devices
from ibdml.config import Params
from ibdml.data.splits import load_splits
from ibdml.evaluation import query_gallery_r1_transitions, r1_transitions, test_outcomes
from ibdml.figures.gallery import gallery_image
from ibdml.gallery_metrics import query_gallery_outcomes
from ibdml.inference import refine, refine_query_gallery
from ibdml.metrics import QueryOutcomes, query_outcomes, summarise
from ibdml.model import IntraBatchModel
from ibdml.neighbourhoods import reciprocal_neighbourhoods
from ibdml.steps.evaluate import read_outcomes, write_outcomes
from ibdml.steps.rundir import (load_model, load_torch, read_run_params, run_lock, save_figures,
                                save_torch, write_json)
from ibdml.uncertainty import paired_bootstrap_difference

# What the refined feature is (the `mpn_inference_space` parameter; docs/method.md §8.1).
SPACES = {"last": "the last MPN layer's output",
          "concat": "the concatenation of all MPN layers' outputs"}


def evaluate_mpn_inference(run_dir: Path) -> dict:
    """Refine, evaluate and write mpn_inference.json (and the refined-embedding cache); returns
    the result. A run without an MPN records with_mpn = null. Holds the run folder's lock
    (steps/rundir.py): RunLocked while another process writes the folder."""
    run_dir, p = Path(run_dir), read_run_params(run_dir)  # first: no lock file in a non-run
    with run_lock(run_dir):
        return _evaluate_mpn_inference(run_dir, p)


def _evaluate_mpn_inference(run_dir: Path, p: Params) -> dict:
    cache = load_torch(run_dir / "embeddings" / "test.pt")
    without = _backbone_outcomes(run_dir, cache, p)
    result = {"without_mpn": summarise(without, seed=p.seed), "with_mpn": None,
              "split": "+".join(cache["splits"]), "epoch": cache["epoch"],
              "k": p.mpn_inference_k, "batch": p.mpn_inference_batch,
              "alpha": p.mpn_inference_alpha, "mpn_inference_space": p.mpn_inference_space,
              "feature_space": "queries and references both in MPN-output space (refined: "
                               f"{SPACES[p.mpn_inference_space]})"}
    if p.mpn_layers > 0:
        model = load_model(run_dir, p, devices.resolve_device(p.device))[0]
        refine_run = _refine_query_gallery if p.dataset == "inshop" else _refine_test
        with_mpn, details = refine_run(model, cache, p, run_dir)
        write_outcomes(run_dir, "mpn_inference_with", with_mpn)
        result.update(details, with_mpn=summarise(with_mpn, seed=p.seed),
                      paired_difference=paired_differences(without, with_mpn, p.seed))
    write_json(run_dir / "mpn_inference.json", result)
    return result


def _backbone_outcomes(run_dir: Path, cache: dict, p: Params) -> QueryOutcomes:
    """The backbone's test outcomes: those the evaluation step wrote, or (a run evaluated before
    outcomes were kept) recomputed from the cached test embeddings, identically, and not written:
    outcomes/test.npz is the evaluation step's file."""
    try:
        return read_outcomes(run_dir, "test")
    except FileNotFoundError:
        sizes = cache["splits"]  # {split: rows}, stacked in order
        features = dict(zip(sizes, cache["embeddings"].split(list(sizes.values()))))
        labels = dict(zip(sizes, cache["labels"].split(list(sizes.values()))))
        return test_outcomes(features, labels, p, p.nmi)


def paired_differences(without: QueryOutcomes, with_mpn: QueryOutcomes, seed: int) -> dict:
    """{metric: paired_bootstrap_difference(without, with_mpn, metric)} for R@1, MAP@R, and NMI
    when both sides have clusters: with − without, on the same queries."""
    metrics = ["R@1", "MAP@R"]
    if without.clusters is not None and with_mpn.clusters is not None:
        metrics.append("NMI")
    return {m: paired_bootstrap_difference(without, with_mpn, m, seed=seed) for m in metrics}


def _refine_test(model: IntraBatchModel, cache: dict, p: Params,
                 run_dir: Path) -> tuple[QueryOutcomes, dict]:
    """One test set searched against itself: every image refined on its neighbourhood."""
    start = time.time()
    hoods = reciprocal_neighbourhoods(cache["embeddings"], k=p.mpn_inference_k,
                                      batch=p.mpn_inference_batch, alpha=p.mpn_inference_alpha)
    built = time.time()
    refined = refine(model.mpn, cache["embeddings"], hoods, space=p.mpn_inference_space)
    save_torch(run_dir / "embeddings" / "test_refined.pt",
               {"embeddings": refined, "neighbourhoods": hoods, "epoch": cache["epoch"]})
    seconds = {"neighbourhoods": round(built - start, 2),
               "refinement": round(time.time() - built, 2)}
    outcomes = query_outcomes(refined, cache["labels"], p.recall_ks, nmi=p.nmi, seed=p.seed,
                              kmeans=p.kmeans)
    return outcomes, {"seconds": seconds, "r1_transitions": r1_transitions(
        cache["embeddings"], refined, cache["labels"])}


def _refine_query_gallery(model: IntraBatchModel, cache: dict, p: Params,
                          run_dir: Path) -> tuple[QueryOutcomes, dict]:
    """In-Shop (docs/method.md §8.2): each query refined on its 4-node graph of reciprocal
    gallery neighbours, compared with the backbone gallery (authors) or a gallery refined on its
    own neighbourhoods (`mpn_inference_gallery_space`)."""
    nq = cache["splits"]["query"]
    emb, labels = cache["embeddings"], cache["labels"]
    q, g, ql, gl = emb[:nq], emb[nq:], labels[:nq], labels[nq:]
    start = time.time()
    rq, rg = refine_query_gallery(model.mpn, q, g, k=p.mpn_inference_k,
                                  batch=p.mpn_inference_batch, alpha=p.mpn_inference_alpha,
                                  gallery_space=p.mpn_inference_gallery_space,
                                  space=p.mpn_inference_space)
    refined_gallery = p.mpn_inference_gallery_space == "refined"
    seconds = {"refinement": round(time.time() - start, 2)}
    # NMI clusters queries and gallery together: only meaningful in one feature space
    outcomes = query_gallery_outcomes(rq, ql, rg, gl, p.recall_ks, nmi=p.nmi and refined_gallery,
                                      seed=p.seed, kmeans=p.kmeans)
    space = SPACES[p.mpn_inference_space]
    return outcomes, {
        "seconds": seconds,
        "r1_transitions": query_gallery_r1_transitions((q, rq), (g, rg), ql, gl),
        "feature_space": (f"queries and gallery both refined ({space})" if refined_gallery else
                          f"refined queries ({space}) against backbone gallery features "
                          "(authors)")}


def neighbourhood_examples(run_dir: Path, queries: int = 6, seed: int = 0
                           ) -> tuple[list[Path], list[list[Path]], np.ndarray, list[list[str]]]:
    """A few test queries with the other members of their MPN-at-inference neighbourhood: paths,
    same-class flags [Q, batch−1], and captions "cosine before → after refinement"."""
    p = read_run_params(run_dir)
    split = load_splits(p, progress=False)["test"]
    base = load_torch(Path(run_dir) / "embeddings" / "test.pt")["embeddings"]
    refined = load_torch(Path(run_dir) / "embeddings" / "test_refined.pt")
    picked = np.random.default_rng(seed).choice(len(split), min(queries, len(split)), replace=False)
    members = refined["neighbourhoods"][picked][:, 1:]  # [Q, batch-1], row 0 is the query itself
    # [Q, 1, D] · [Q, batch-1, D] → [Q, batch-1]
    sims = [(x[picked][:, None, :] * x[members]).sum(-1)
            for x in (base, refined["embeddings"])]
    captions = [[f"{b:.2f}→{a:.2f}" for b, a in zip(rb, ra)] for rb, ra in zip(*sims)]
    members = members.numpy()
    return ([split.paths[i] for i in picked], [[split.paths[j] for j in row] for row in members],
            split.labels[members] == split.labels[picked][:, None], captions)


def neighbourhood_gallery(run_dir: Path, queries: int = 6, seed: int = 0) -> Image.Image:
    """`neighbourhood_examples` drawn as one image with their captions (figures.gallery), saved as
    <run>/figures/mpn_neighbourhoods.png and returned."""
    image = gallery_image(*neighbourhood_examples(run_dir, queries, seed))
    save_figures(run_dir, {"mpn_neighbourhoods": image})
    return image
