"""The evaluation step: score a run's selected checkpoint on the test split (docs/protocol.md).

    <run>/metrics.json         test metrics with standard errors, protocol, baselines, ...
    <run>/outcomes/test.npz    the per-query outcomes behind them (`read_outcomes`)
    <run>/baselines.json       raw-pixel k-NN and the untrained network (computed once)
    <run>/embeddings/test.pt   the test embeddings, for MPN at inference and the examples
    <run>/figures/retrieval_gallery.png
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image
import torch

from ibdml import device as devices
from ibdml.config import Params
from ibdml.data.folder import Split
from ibdml.data.splits import load_splits
from ibdml.evaluation import evaluate_test, protocol, raw_pixel_baseline, untrained_baseline
from ibdml.figures.gallery import gallery_image
from ibdml.metrics import QueryOutcomes, summarise
from ibdml.retrieval import nearest_neighbours, nearest_neighbours_of_rows
from ibdml.steps.rundir import (environment, load_model, load_torch, read_json, read_run_params,
                                run_lock, save_figures, save_torch, write_bytes, write_json)

# Which step writes each outcomes file (`read_outcomes` names it when the file is missing).
OUTCOME_STEPS = {"test": "ibdml evaluate RUN (notebook 02_evaluate)",
                 "mpn_inference_with": "notebook 03_mpn_inference (evaluate_mpn_inference)"}


def evaluate_run(run_dir: Path, progress: bool = True) -> dict:
    """Evaluate the run's selected checkpoint on the test split; write metrics.json (and cache the
    test embeddings). Baselines are computed once and kept in baselines.json. Holds the run
    folder's lock (steps/rundir.py): RunLocked while another process writes the folder."""
    start, run_dir = time.time(), Path(run_dir)
    p = read_run_params(run_dir)  # first: a folder that holds no run gets no lock file
    with run_lock(run_dir):
        return _evaluate_run(run_dir, p, start, progress)


def _evaluate_run(run_dir: Path, p: Params, start: float, progress: bool) -> dict:
    device = devices.resolve_device(p.device)
    splits = load_splits(p, progress=progress)
    model, epoch = load_model(run_dir, p, device)
    outcomes, features = evaluate_test(model, splits, p, device, nmi=p.nmi)
    metrics = summarise(outcomes, seed=p.seed)
    write_outcomes(run_dir, "test", outcomes)
    # One cache for every dataset: the test split(s) stacked in order, with their sizes (In-Shop:
    # the queries first, then the gallery).
    save_torch(run_dir / "embeddings" / "test.pt",
               {"embeddings": torch.cat(list(features.values())),
                "labels": torch.cat([torch.as_tensor(splits[n].labels) for n in features]),
                "splits": {n: len(f) for n, f in features.items()}, "epoch": epoch})
    result = {**metrics, "protocol": protocol(p), "split": "+".join(features), "epoch": epoch,
              "select_on": p.select_on, "optimistic": p.select_on == "test"}
    if p.baselines:
        result["baselines"] = baselines(run_dir, p, splits, device)
    result.update(params=p.to_dict(), environment=environment(device),
                  seconds=round(time.time() - start, 2))
    write_json(run_dir / "metrics.json", result)
    return result


def write_outcomes(run_dir: Path, name: str, outcomes: QueryOutcomes) -> Path:
    """<run>/outcomes/<name>.npz: the per-query outcomes as plain arrays (np.savez, no pickle);
    clusters are left out when None. Returns the path."""
    arrays = {"ks": np.asarray(outcomes.ks, dtype=np.int64), "hits": outcomes.hits,
              "average_precision": outcomes.average_precision, "labels": outcomes.labels}
    if outcomes.clusters is not None:
        arrays["clusters"] = outcomes.clusters
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = Path(run_dir) / "outcomes" / f"{name}.npz"
    write_bytes(path, buffer.getvalue())
    return path


def read_outcomes(run_dir: Path, name: str) -> QueryOutcomes:
    """The outcomes `write_outcomes` wrote: name "test" (evaluation: the backbone's features) or
    "mpn_inference_with" (MPN at inference: the refined features). A missing file is an error naming the step that
    writes it."""
    path = Path(run_dir) / "outcomes" / f"{name}.npz"
    if not path.is_file():
        step = OUTCOME_STEPS.get(name, "the step that writes it")
        raise FileNotFoundError(f"{path} does not exist: run {step} first (outcomes known: "
                                f"{', '.join(OUTCOME_STEPS)}).")
    with np.load(path, allow_pickle=False) as f:
        return QueryOutcomes(ks=tuple(int(k) for k in f["ks"]), hits=f["hits"].astype(bool),
                             average_precision=f["average_precision"], labels=f["labels"],
                             clusters=f["clusters"] if "clusters" in f.files else None)


def baselines(run_dir: Path, p: Params, splits: dict[str, Split], device: torch.device) -> dict:
    """baselines.json, computed on the first evaluation and read back after."""
    path = run_dir / "baselines.json"
    if path.is_file():
        return read_json(path)
    result = {"raw_pixels": raw_pixel_baseline(splits, p),
              "untrained": untrained_baseline(splits, p, device)}
    write_json(path, result)
    return result


def retrieval_examples(run_dir: Path, queries: int = 8, k: int = 5, seed: int = 0
                       ) -> tuple[list[Path], list[list[Path]], np.ndarray]:
    """A few random test queries, the paths of their top-k neighbours from the cached test
    embeddings, and whether each neighbour shares the query's class ([Q, k] bool). In-Shop:
    queries from the query split, neighbours from the gallery."""
    p = read_run_params(run_dir)
    cache = load_torch(Path(run_dir) / "embeddings" / "test.pt")
    splits = load_splits(p, progress=False)
    emb, rng = cache["embeddings"], np.random.default_rng(seed)
    if p.dataset == "inshop":
        nq = cache["splits"]["query"]
        query, gallery = splits["query"], splits["gallery"]
        picked = rng.choice(nq, min(queries, nq), replace=False)
        idx = nearest_neighbours(emb[picked], emb[nq:], k=k)[1].numpy()  # [Q, k] gallery rows
    else:
        query = gallery = splits["test"]
        picked = rng.choice(len(query), min(queries, len(query)), replace=False)
        idx = nearest_neighbours_of_rows(emb, picked, k)[1].numpy()  # [Q, k], own row excluded
    return ([query.paths[i] for i in picked], [[gallery.paths[j] for j in row] for row in idx],
            gallery.labels[idx] == query.labels[picked][:, None])


def retrieval_gallery(run_dir: Path, queries: int = 8, k: int = 5, seed: int = 0) -> Image.Image:
    """`retrieval_examples` drawn as one image (figures.gallery), saved as
    <run>/figures/retrieval_gallery.png and returned."""
    image = gallery_image(*retrieval_examples(run_dir, queries, k, seed))
    save_figures(run_dir, {"retrieval_gallery": image})
    return image
