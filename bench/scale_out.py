"""Many runs in parallel on Ray against the same runs one after the other (docs/scale-out.md).

Two Glyphs training runs (params/glyphs.yaml, seeds 0 and 1, `--epochs` epochs each) are trained
  sequential  one after the other in this process, torch on all the cores (what `ibdml train`
              twice does), and
  parallel    as two Ray tasks of 1 CPU each on a local Ray started for them (ibdml.cluster:
              what `ibdml claims` and `ibdml sweep` do), Ray's start and stop included,
each into fresh temporary run folders: sequential then parallel, `--repeats` rounds. Prints the
wall times and parallel / sequential; target ≤ 0.6 on 2 cores.

    .venv/bin/python bench/scale_out.py [--epochs 4] [--repeats 1] [--tiny] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from ibdml.cluster import local_cpus, ray_session, run_tasks
from ibdml.config import load_params
from ibdml.data.check import check_run_inputs
from ibdml.steps.train import train

TARGET = 0.6
ROOT = Path(__file__).resolve().parents[1]
TINY = ["glyph_classes=16", "glyph_train_classes=8", "glyph_images_per_class=8", "n_c=4",
        "n_s=4", "embedding_dim=64"]


def jobs(folder: Path, epochs: int, tiny: bool) -> list[tuple]:
    overrides = [f"epochs={epochs}", "eval_every=0", "lr_milestones=[]", *(TINY if tiny else [])]
    return [(load_params(ROOT / "params" / "glyphs.yaml", [*overrides, f"seed={seed}"]),
             folder / f"seed{seed}") for seed in (0, 1)]


def sequential(epochs: int, tiny: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="ibdml-bench-seq-") as folder:
        start = time.perf_counter()
        for p, run_dir in jobs(Path(folder), epochs, tiny):
            train(p, run_dir, progress=False)
        return time.perf_counter() - start


def parallel(epochs: int, tiny: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="ibdml-bench-par-") as folder:
        start = time.perf_counter()
        with ray_session():
            run_tasks(partial(train, progress=False), jobs(Path(folder), epochs, tiny), cpus=1)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="smoke-sized Glyphs, 1 epoch")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    epochs = 1 if args.tiny else args.epochs
    check_run_inputs(jobs(Path("unused"), epochs, args.tiny)[0][0], progress=False)  # data built
    times: dict[str, list[float]] = {"sequential": [], "parallel": []}
    for _ in range(args.repeats):
        times["sequential"].append(sequential(epochs, args.tiny))
        times["parallel"].append(parallel(epochs, args.tiny))
        print(f"sequential {times['sequential'][-1]:.1f} s, parallel {times['parallel'][-1]:.1f} s",
              flush=True)
    seq, par = (statistics.median(times[k]) for k in ("sequential", "parallel"))
    result = {"runs": 2, "epochs": epochs, "tiny": args.tiny, "cores": local_cpus(),
              "torch_threads_sequential": torch.get_num_threads(), "times": times,
              "sequential_median_s": seq, "parallel_median_s": par, "ratio": par / seq,
              "target": TARGET}
    print(f"parallel / sequential = {par / seq:.2f} (target ≤ {TARGET})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
