"""What the MPN adds to a training step: `mpn_layers: 1` (the paper's heads, both losses) against
`mpn_layers: 0` (`loss_heads: backbone`, the CE-only baseline), at the paper's batch shapes.

    .venv/bin/python bench/train_overhead.py                  # CPU, resnet18 at 64 px, 4 shapes
    .venv/bin/python bench/train_overhead.py --tiny           # seconds: the script works
    .venv/bin/python bench/train_overhead.py --device cuda --backbone resnet50 --image-size 227

Batch shapes (docs/method.md §9; n_c classes × n_s images, MPN heads, training classes):
  CUB 6 × 9, 2 heads, 100      Cars 10 × 7, 8 heads, 98
  SOP 15 × 6, 8 heads, 11,318  In-Shop 14 × 4, 4 heads, 3,997
One MPN layer everywhere (the paper's Cars recipe has two, concatenated; this measures the one
layer the issue asks about). The number of training classes sets the size of both classifiers
(backbone and MPN), so SOP's MPN step also pays for a second 11,318-way classifier.

Each step is the library's: `ibdml.trainer.build_trainer` (model, RAdam, schedule, as
`bench/train_speed.py` builds it, on that script's CUB recipe with the shape's overrides) and
`ibdml.trainer.train_epoch` over a one-batch loader (forward, label-smoothed CE on the heads the
variant trains, backward, optimiser step; the losses read back). Data: a pool of 4 random,
already-normalised image batches [n_c·n_s, 3, S, S], the same for both variants at each step;
no loader, no augmentation.

Timing: the two variants' models live side by side; every step runs once with each, alternating
which goes first, so drift (other processes, clocks) hits both alike. --warmup steps of each
are not timed. The overhead is median(MPN step) / median(backbone step) − 1 (and, beside it, the
median of the per-step ratios). Target: ≤ 5 %. Afterwards the optimiser step alone is timed
for each (--steps times, on the last gradients), as the part of a step that grows with the
number of weights (the MPN adds a layer and a classifier) rather than with the batch.

Arithmetic: one further step of each variant runs under torch's FlopCounterMode, which counts
the FLOPs of the matrix products and convolutions (forward and backward; not the elementwise
work nor the optimiser). The MPN variant's extra FLOPs, as a share of the backbone-only step's,
are the part of the overhead that no implementation of this network can avoid; beside it, the
optimiser step's extra time as a share of the backbone-only step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ibdml import device as devices
from ibdml.config import Params, make_params
from ibdml.data.folder import Split
from ibdml.trainer import Trainer, build_trainer, train_epoch

TARGET_OVERHEAD = 0.05
POOL = 4  # distinct random batches, cycled


def _sibling(name: str):
    """bench/<name>.py as a module (bench/ holds scripts, not a package)."""
    path = Path(__file__).resolve().with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_speed = _sibling("train_speed")


class Shape(NamedTuple):
    n_c: int
    n_s: int
    heads: int
    classes: int  # training classes: the size of both classifiers


SHAPES = {"CUB": Shape(6, 9, 2, 100), "Cars": Shape(10, 7, 8, 98),
          "SOP": Shape(15, 6, 8, 11_318), "In-Shop": Shape(14, 4, 4, 3_997)}
VARIANTS = {"mpn": {"mpn_layers": 1, "loss_heads": "both"},
            "backbone": {"mpn_layers": 0, "loss_heads": "backbone"}}


def params(shape: Shape, variant: str, args: argparse.Namespace) -> Params:
    return make_params({**train_speed.CUB_RECIPE, "backbone": args.backbone,
                        "image_size": args.image_size, "n_c": shape.n_c, "n_s": shape.n_s,
                        "mpn_heads": shape.heads, **VARIANTS[variant], "device": args.device,
                        "num_workers": 0, "seed": args.seed})


def stand_in_split(shape: Shape) -> Split:
    """A training split with the shape's class count (only the labels are read: the sampler)."""
    labels = np.repeat(np.arange(shape.classes), shape.n_s)
    return Split("train", [Path(f"random/{i}") for i in range(len(labels))], labels,
                 [f"class_{c}" for c in range(shape.classes)])


def random_batches(shape: Shape, image_size: int, seed: int) -> list[tuple]:
    """POOL batches (images [B, 3, S, S], labels [B]: n_c classes × n_s, indices [B])."""
    g = torch.Generator().manual_seed(seed)
    batch = shape.n_c * shape.n_s
    pool = []
    for _ in range(POOL):
        images = torch.randn(batch, 3, image_size, image_size, generator=g)
        classes = torch.randperm(shape.classes, generator=g)[: shape.n_c]
        pool.append((images, classes.repeat_interleave(shape.n_s), torch.arange(batch)))
    return pool


def timed_step(t: Trainer, batch: tuple, p: Params, device: torch.device) -> tuple[float, float]:
    """One training step through `train_epoch`: (seconds, loss)."""
    train_speed.synchronize(device)
    start = time.perf_counter()
    losses = train_epoch(t, [batch], p, device, progress=False)
    train_speed.synchronize(device)
    return time.perf_counter() - start, losses["total"]


def optimiser_step_seconds(t: Trainer, device: torch.device, repeats: int) -> float:
    """Median seconds of the optimiser step alone (RAdam over every trained weight), on the
    gradients the last training step left: the part of a step that grows with the parameter
    count, not with the batch."""
    times = []
    for _ in range(repeats):
        train_speed.synchronize(device)
        start = time.perf_counter()
        t.optimizer.step()
        train_speed.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_flops(t: Trainer, batch: tuple, p: Params, device: torch.device) -> int:
    """FLOPs of the matrix products and convolutions in one training step (forward and
    backward), counted by torch's FlopCounterMode; the step itself is a normal one."""
    with FlopCounterMode(display=False) as counter:
        train_epoch(t, [batch], p, device, progress=False)
    return counter.get_total_flops()


def parameter_count(t: Trainer) -> int:
    return sum(w.numel() for w in t.model.parameters() if w.requires_grad)


def measure_shape(name: str, shape: Shape, args: argparse.Namespace,
                  device: torch.device) -> dict:
    split = stand_in_split(shape)
    runs = {}  # variant → (its Params, its Trainer)
    for v in VARIANTS:
        p = params(shape, v, args)
        runs[v] = (p, build_trainer(p, split, device))
    batches = random_batches(shape, args.image_size, args.seed)
    times = {v: [] for v in VARIANTS}
    losses = {v: [] for v in VARIANTS}
    for step in range(args.warmup + args.steps):
        order = list(VARIANTS) if step % 2 == 0 else list(reversed(VARIANTS))
        for v in order:
            p, t = runs[v]
            seconds, loss = timed_step(t, batches[step % POOL], p, device)
            if step >= args.warmup:
                times[v].append(seconds)
                losses[v].append(loss)
    flops = {v: step_flops(t, batches[0], p, device) for v, (p, t) in runs.items()}
    optimiser = {v: optimiser_step_seconds(t, device, args.steps) for v, (_, t) in runs.items()}
    mpn, base = statistics.median(times["mpn"]), statistics.median(times["backbone"])
    ratios = [a / b for a, b in zip(times["mpn"], times["backbone"])]
    batch = shape.n_c * shape.n_s
    return {"shape": name, "n_c": shape.n_c, "n_s": shape.n_s, "batch": batch,
            "mpn_heads": shape.heads, "classes": shape.classes, "steps": args.steps,
            "warmup": args.warmup, "mpn_s": times["mpn"], "backbone_s": times["backbone"],
            "mpn_median_s": mpn, "backbone_median_s": base,
            "mpn_images_per_s": batch / mpn, "backbone_images_per_s": batch / base,
            "mpn_optimiser_median_s": optimiser["mpn"],
            "backbone_optimiser_median_s": optimiser["backbone"],
            "mpn_flops": flops["mpn"], "backbone_flops": flops["backbone"],
            "flop_share": flops["mpn"] / flops["backbone"] - 1,
            "optimiser_share": (optimiser["mpn"] - optimiser["backbone"]) / base,
            "mpn_parameters": parameter_count(runs["mpn"][1]),
            "backbone_parameters": parameter_count(runs["backbone"][1]),
            "overhead": mpn / base - 1, "overhead_paired": statistics.median(ratios) - 1,
            "losses_finite": bool(np.isfinite(losses["mpn"] + losses["backbone"]).all()),
            "target": TARGET_OVERHEAD, "met": mpn / base - 1 <= TARGET_OVERHEAD}


def report(row: dict) -> str:
    return (f"{row['shape']:8s} {row['n_c']:2d} × {row['n_s']} = {row['batch']:2d} images, "
            f"{row['mpn_heads']} heads, {row['classes']:>6,} classes: MPN "
            f"{1000 * row['mpn_median_s']:6.1f} ms, backbone only "
            f"{1000 * row['backbone_median_s']:6.1f} ms per step → overhead "
            f"{100 * row['overhead']:+5.1f} % (paired {100 * row['overhead_paired']:+5.1f} %); "
            f"target ≤ {100 * row['target']:.0f} %: {'met' if row['met'] else 'NOT met'}\n"
            f"         of which the optimiser step: {1000 * row['mpn_optimiser_median_s']:.1f} ms "
            f"({row['mpn_parameters'] / 1e6:.2f} M weights) against "
            f"{1000 * row['backbone_optimiser_median_s']:.1f} ms "
            f"({row['backbone_parameters'] / 1e6:.2f} M)\n"
            f"         the MPN's products and convolutions: {100 * row['flop_share']:+.2f} % of "
            f"the step's FLOPs ({row['backbone_flops'] / 1e9:.1f} GFLOP without it); its "
            f"optimiser step: {100 * row['optimiser_share']:+.1f} % of the backbone-only step")


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    result = {"device": train_speed.device_name(device), "device_type": device.type,
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "backbone": args.backbone, "image_size": args.image_size, "steps": args.steps,
              "warmup": args.warmup, "bf16": devices.bf16_enabled(device),
              "target": TARGET_OVERHEAD, "rows": []}
    with devices.cudnn_autotune(device), devices.exact_fp32(device):
        for name in args.shapes:
            row = measure_shape(name, SHAPES[name], args, device)
            result["rows"].append(row)
            print(report(row), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="CUB shape, 32 px, 1 warm-up and 2 timed steps: the script works")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--shapes", nargs="*", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet50"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.shapes, args.image_size, args.steps, args.warmup = ["CUB"], 32, 2, 1
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be ≥ 1 and --warmup ≥ 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU here")
    print(f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.backbone} at {args.image_size} px, {args.steps} timed steps after "
          f"{args.warmup} warm-up steps, per variant and shape", flush=True)
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(row["losses_finite"] for row in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
