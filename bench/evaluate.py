"""Retrieval evaluation: `ibdml.metrics.evaluate` against pytorch-metric-learning's
`AccuracyCalculator`, on the same random 512-d unit embeddings with class structure.

    .venv/bin/python bench/evaluate.py                 # N = 5,924 / 20,000 / 60,502
    .venv/bin/python bench/evaluate.py --tiny          # N = 500, one repeat: the metrics agree
    .venv/bin/python bench/evaluate.py --sets CUB --repeats 5 --json outputs/bench/evaluate.json

Both compute Recall@1 (PML: "precision_at_1") and MAP@R of a set searched against itself:
ours with `evaluate(x, labels, ks=(1,), nmi=False)`, PML with
`AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
k="max_bin_count").get_accuracy(x, labels)`, which (PML ≥ 2.0; checked in 2.9.0's source) sets
ref_includes_query=True and removes each query's own index from its faiss search. Every class
has ≥ 2 images, so the two libraries' different handling of lone labels (ours: a miss; PML: left
out) does not arise, and the two must agree to 1e-6.

The sets (labels shuffled, class sizes drawn between the smallest and largest size):
  CUB  5,924 images, 100 classes of 41–60 (CUB-200's test split)
  20k  20,000 images, 1,000 classes of 10–30
  SOP  60,502 images, 11,316 classes of 2–12 (Stanford Online Products' test split)
Each point is its class centre plus Gaussian noise, renormalised; the noise is set per size so
that R@1 lands between 0.5 and 0.8, as trained models score (retrieval in a set of random
points, where every answer is a near-tie, would say little).

Timing: each library runs once untimed (the agreement check; it also warms thread pools and
caches), then --repeats times each, alternating which goes first, in this one process: the
ratio ours/PML is measured side by side (the median of the per-repetition ratios, and the ratio
of the medians). A breakdown of where each spends its time follows: ours split into the k-NN
search, label handling (np.unique, R_i, neighbour labels), Recall@K and MAP@R; PML's faiss
search (its `FaissKNN`) against the rest of `get_accuracy`.

Backends: ours is observed, not assumed (which of `ibdml.retrieval`'s search paths ran: faiss
GPU IndexFlatIP, the symmetric self-search (faiss heaps), or blocks of products + top-k in torch);
PML uses faiss IndexFlatL2 (on a GPU only when PML's device is CUDA and faiss sees one). The
thread pools of torch, faiss (OpenMP, its own OpenBLAS) and numpy (OpenBLAS) are reported as
found.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from typing import NamedTuple
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

import ibdml.retrieval as retrieval
from ibdml.metrics import evaluate, map_at_r, recall_at_k
from ibdml.retrieval import nearest_neighbours

TOLERANCE = 1e-6
DIM = 512
MISSING_PML = ("pytorch-metric-learning is not installed: `.venv/bin/python -m pip install -e "
               "'.[bench]'` (make bench does it). Comparison skipped.")


class LabelledSet(NamedTuple):
    n: int
    classes: int
    smallest: int  # images in the smallest class
    largest: int
    noise: float  # std of the Gaussian noise added to each unit class centre, per dimension


SETS = {
    "CUB": LabelledSet(5_924, 100, 41, 60, noise=0.15),
    "20k": LabelledSet(20_000, 1_000, 10, 30, noise=0.12),
    "SOP": LabelledSet(60_502, 11_316, 2, 12, noise=0.10),
}
TINY = LabelledSet(500, 25, 10, 30, noise=0.15)
REPEATS = {"CUB": 5, "20k": 5, "SOP": 3}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def class_sizes(spec: LabelledSet, rng: np.random.Generator) -> np.ndarray:
    """spec.classes sizes in [smallest, largest] summing to spec.n: every class starts at the
    smallest size and the remaining images fill randomly drawn free slots."""
    room = spec.largest - spec.smallest
    extra = spec.n - spec.classes * spec.smallest
    if not 0 <= extra <= spec.classes * room:
        raise ValueError(f"{spec.n} images do not fit {spec.classes} classes of "
                         f"{spec.smallest}–{spec.largest}.")
    slots = rng.choice(spec.classes * room, size=extra, replace=False)
    return spec.smallest + np.bincount(slots // max(room, 1), minlength=spec.classes)


def labelled_embeddings(spec: LabelledSet, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Unit embeddings [n, 512] float32 and labels [n] int64 (shuffled, classes 0..classes-1)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(spec.classes), class_sizes(spec, rng)))
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(spec.classes, DIM, generator=g), dim=1)  # [C, D]
    noise = spec.noise * torch.randn(spec.n, DIM, generator=g)  # [n, D]
    return F.normalize(centres[torch.from_numpy(labels)] + noise, dim=1), labels


# ---------------------------------------------------------------------------------------------
# The two implementations
# ---------------------------------------------------------------------------------------------


def pml_calculator():
    """PML's AccuracyCalculator for R@1 and MAP@R, or None when PML is not installed."""
    try:
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    except ImportError:
        return None
    return AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
                              k="max_bin_count")


def ours(x: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    result = evaluate(x, labels, ks=(1,), nmi=False)
    return {"r_at_1": result["recall_at_k"]["1"], "map_at_r": result["map_at_r"]}


def pml(calculator, x: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    result = calculator.get_accuracy(x, torch.from_numpy(labels))
    return {"r_at_1": result["precision_at_1"], "map_at_r": result["mean_average_precision_at_r"]}


SEARCH_PATHS = {"_search_faiss_gpu": "faiss GPU IndexFlatIP",
                "_self_search_heaps": "symmetric self-search (faiss heaps)",
                "_search_blocks": "blocks of products + top-k (torch)"}


def ours_observed(x: torch.Tensor, labels: np.ndarray) -> tuple[dict, list[str]]:
    """`ours`, recording which of ibdml.retrieval's search paths ran."""
    used = []
    with contextlib.ExitStack() as stack:
        for name, label in SEARCH_PATHS.items():
            real = getattr(retrieval, name)

            def spy(*args, _real=real, _label=label, **kwargs):
                used.append(_label)
                return _real(*args, **kwargs)

            stack.enter_context(mock.patch.object(retrieval, name, spy))
        return ours(x, labels), used


def pml_backend(calculator) -> str:
    import faiss

    gpu = calculator.device.type == "cuda" and faiss.get_num_gpus() > 0
    return f"faiss IndexFlatL2 ({'GPU' if gpu else 'CPU'}; PML device {calculator.device})"


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def _timed(fn, *args) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def agreement(calculator, x: torch.Tensor, labels: np.ndarray) -> dict:
    """One untimed run of each: their metrics, the largest absolute difference, the backends."""
    mine, used = ours_observed(x, labels)
    theirs = pml(calculator, x, labels)
    diff = max(abs(mine[key] - theirs[key]) for key in mine)
    return {"ours": mine, "pml": theirs, "max_abs_diff": diff, "agree": diff <= TOLERANCE,
            "ours_backend": " + ".join(dict.fromkeys(used)), "pml_backend": pml_backend(calculator)}


def side_by_side(calculator, x: torch.Tensor, labels: np.ndarray, repeats: int) -> dict:
    """Wall times of `repeats` runs each, alternating which goes first."""
    times = {"ours": [], "pml": []}
    runs = {"ours": lambda: ours(x, labels), "pml": lambda: pml(calculator, x, labels)}
    for r in range(repeats):
        for name in ("ours", "pml") if r % 2 == 0 else ("pml", "ours"):
            times[name].append(_timed(runs[name])[0])
    ratios = [a / b for a, b in zip(times["ours"], times["pml"])]
    return {"ours_s": times["ours"], "pml_s": times["pml"],
            "ours_median_s": statistics.median(times["ours"]),
            "pml_median_s": statistics.median(times["pml"]),
            "ratio_paired_median": statistics.median(ratios),
            "ratio_of_medians": statistics.median(times["ours"]) / statistics.median(times["pml"])}


def breakdown(calculator, x: torch.Tensor, labels: np.ndarray, repeats: int) -> dict:
    """Median seconds of each part of ours (as `evaluate` runs them) and of PML's search."""
    parts = {"ours_search": [], "ours_labels": [], "ours_recall": [], "ours_map_at_r": [],
             "pml_search": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        relevant = sizes[ids] - 1
        k = max(1, int(relevant.max()))
        t1 = time.perf_counter()
        seconds, (_, neighbours) = _timed(lambda: nearest_neighbours(x, k=k, exclude_self=True))
        t2 = time.perf_counter()
        neighbour_labels = labels[neighbours.cpu().numpy()]
        t3 = time.perf_counter()
        recall_at_k(neighbour_labels, labels, (1,))
        t4 = time.perf_counter()
        map_at_r(neighbour_labels, labels, relevant)
        t5 = time.perf_counter()
        parts["ours_search"].append(seconds)
        parts["ours_labels"].append((t1 - t0) + (t3 - t2))
        parts["ours_recall"].append(t4 - t3)
        parts["ours_map_at_r"].append(t5 - t4)
        parts["pml_search"].append(_timed(lambda: calculator.knn_func(x, k, x, True))[0])
    return {f"{name}_median_s": statistics.median(values) for name, values in parts.items()}


def thread_settings() -> dict:
    import faiss
    from threadpoolctl import threadpool_info

    pools = [f"{_library(p['filepath'])}: {p['internal_api']} {p['num_threads']}"
             for p in threadpool_info()]
    return {"torch_threads": torch.get_num_threads(), "faiss_omp_threads":
            faiss.omp_get_max_threads(), "pools": pools}


def _library(path: str) -> str:
    """'torch/lib/libgomp.so.1' from a full path: the package folder and the library's name."""
    parts = Path(path).parts
    inside = parts[parts.index("site-packages") + 1:] if "site-packages" in parts else parts[-2:]
    return f"{inside[0].removesuffix('.libs')}/{inside[-1].split('-')[0]}"


def versions() -> dict:
    import faiss

    out = {"python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": np.__version__, "faiss": faiss.__version__}
    try:
        import pytorch_metric_learning

        out["pytorch_metric_learning"] = pytorch_metric_learning.__version__
    except ImportError:
        out["pytorch_metric_learning"] = None
    return out


def run_set(name: str, spec: LabelledSet, calculator, repeats: int, profile: bool) -> dict:
    x, labels = labelled_embeddings(spec)
    # Both libraries get the embeddings on PML's device (CUDA when torch sees a GPU): ibdml's
    # search follows its input's device, so the GPU path is measured because it is asked for,
    # not because something else in this process happened to start CUDA first.
    x = x.to(calculator.device)
    row = {"set": name, **spec._asdict(), "largest_class": int(np.bincount(labels).max()),
           "repeats": repeats}
    row.update(agreement(calculator, x, labels))
    row.update(side_by_side(calculator, x, labels, repeats))
    if profile:
        row["breakdown"] = breakdown(calculator, x, labels, min(repeats, 3))
    return row


def report(row: dict) -> str:
    text = (f"{row['set']:4s} N={row['n']:>6,} ({row['classes']:,} classes of "
            f"{row['smallest']}–{row['largest']}): R@1 {row['ours']['r_at_1']:.4f} "
            f"MAP@R {row['ours']['map_at_r']:.4f}; max |ours − PML| {row['max_abs_diff']:.1e} "
            f"agree={row['agree']}\n"
            f"      ours {row['ours_median_s']:6.3f} s [{row['ours_backend']}]  "
            f"PML {row['pml_median_s']:6.3f} s [{row['pml_backend']}]  "
            f"ours/PML {row['ratio_paired_median']:.2f} (medians of {row['repeats']})")
    if "breakdown" in row:
        b = row["breakdown"]
        text += (f"\n      ours: search {b['ours_search_median_s']:.3f} s, labels "
                 f"{b['ours_labels_median_s']:.3f} s, R@1 {b['ours_recall_median_s']:.4f} s, "
                 f"MAP@R {b['ours_map_at_r_median_s']:.3f} s; PML: search "
                 f"{b['pml_search_median_s']:.3f} s, the rest "
                 f"{max(row['pml_median_s'] - b['pml_search_median_s'], 0):.3f} s")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help=f"N = {TINY.n}, 1 repeat, no breakdown: the metrics agree")
    parser.add_argument("--sets", nargs="*", choices=list(SETS), default=list(SETS))
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs of each library per set (default: CUB 5, 20k 5, SOP 3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the time breakdown")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be ≥ 1")
    calculator = pml_calculator()
    result = {"tiny": args.tiny, "tolerance": TOLERANCE, "versions": versions(),
              "threads": thread_settings(), "rows": []}
    if calculator is None:
        print(MISSING_PML)
        result["skipped"] = MISSING_PML
    else:
        threads = result["threads"]
        print(f"torch {threads['torch_threads']} threads, faiss {threads['faiss_omp_threads']} "
              f"OpenMP threads; pools: {'; '.join(threads['pools'])}")
        todo = {"tiny": TINY} if args.tiny else {name: SETS[name] for name in args.sets}
        for name, spec in todo.items():
            repeats = 1 if args.tiny else (args.repeats or REPEATS[name])
            row = run_set(name, spec, calculator, repeats, profile=not (args.tiny or
                                                                          args.no_profile))
            result["rows"].append(row)
            print(report(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(row["agree"] for row in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
