"""NMI from the authors' k-means settings against the fast one, on the same embeddings.

    .venv/bin/python bench/kmeans_agreement.py outputs/glyphs           # a run's embeddings/test.pt
    .venv/bin/python bench/kmeans_agreement.py outputs/glyphs --seeds 0 1 2 3 4
    .venv/bin/python bench/kmeans_agreement.py --synthetic              # 4,000 × 512, 100 classes

For each seed: NMI with `kmeans: sklearn` (scikit-learn KMeans, k-means++, 10 starts, up to 300
iterations) and with `kmeans: fast` (one start, 20 iterations, faiss when installed), their
difference, and the seconds each took; k = the number of distinct labels (docs/method.md §7.4).
Prints JSON. For In-Shop the cache holds queries then gallery: both are clustered together, as
`evaluate_query_gallery` does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ibdml.clustering import kmeans  # noqa: E402
from ibdml.metrics import normalized_mutual_information  # noqa: E402


def compare_kmeans(embeddings, labels, seeds=(0, 1, 2)) -> dict:
    """Both methods' NMI per seed on embeddings [N, D] with labels [N]: {"rows": [{seed,
    nmi_sklearn, nmi_fast, difference (fast − sklearn), seconds_sklearn, seconds_fast}, ...],
    and the mean and std over seeds of each NMI and of the difference}."""
    x, y = torch.as_tensor(embeddings, dtype=torch.float32), np.asarray(labels).ravel()
    k = len(np.unique(y))
    rows = []
    for seed in seeds:
        row = {"seed": int(seed)}
        for method in ("sklearn", "fast"):
            start = time.perf_counter()
            clusters = kmeans(x, k, seed=int(seed), method=method)
            row[f"seconds_{method}"] = round(time.perf_counter() - start, 3)
            row[f"nmi_{method}"] = normalized_mutual_information(clusters, y)
        row["difference"] = row["nmi_fast"] - row["nmi_sklearn"]
        rows.append(row)
    summary = {name: {"mean": statistics.mean(r[name] for r in rows),
                      "std": statistics.stdev(r[name] for r in rows) if len(rows) > 1 else 0.0}
               for name in ("nmi_sklearn", "nmi_fast", "difference", "seconds_sklearn",
                            "seconds_fast")}
    return {"n": len(x), "dim": x.shape[1], "k": k, "rows": rows, "summary": summary}


def synthetic(n: int = 4000, dim: int = 512, classes: int = 100, noise: float = 0.08,
              seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Glyphs-size clustered unit embeddings: n points around `classes` random unit centres,
    Gaussian noise of `noise` per coordinate (cosine to the centre ≈ 0.6 at 512-d)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=1)
    labels = torch.arange(n) % classes
    x = centres[labels] + noise * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1), labels.numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a run folder with embeddings/test.pt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--synthetic", action="store_true",
                        help="clustered unit embeddings of Glyphs size instead of a run")
    args = parser.parse_args(argv)
    if args.synthetic:
        x, y = synthetic()
        source = "synthetic: 4,000 × 512, 100 classes"
    elif args.run_dir:
        cache = torch.load(Path(args.run_dir) / "embeddings" / "test.pt", weights_only=True)
        x, y, source = cache["embeddings"], cache["labels"].numpy(), str(args.run_dir)
    else:
        parser.error("give a run folder (with embeddings/test.pt) or --synthetic")
    print(json.dumps({"source": source, **compare_kmeans(x, y, args.seeds)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
