"""Training and embedding throughput of the CUB recipe on random images: no dataset, no disk.

    .venv/bin/python bench/train_speed.py                     # CUB recipe, 300 steps, GPU if any
    .venv/bin/python bench/train_speed.py --data transform    # + the CPU augmentation pipeline
    .venv/bin/python bench/train_speed.py --device cpu --steps 3 --warmup 1 --eval-batches 2 \\
        --eval-batch-size 64 --image-size 64 --backbone resnet18      # a smoke run on a CPU

The training step is the library's, not a copy: `ibdml.trainer.build_trainer` (the model placed by
`device.prepare_model`, RAdam, the MultiStep schedule) and `ibdml.trainer.train_epoch` (autocast,
label-smoothed CE on both heads, the losses read back in blocks) are fed a stand-in loader of
--warmup + --steps batches. Timing starts when batch --warmup is asked for, once the device has
finished the warm-up steps (cuDNN's algorithm search and the allocator's growth fall there), and
stops when the device has finished the last step.

Data (--data):
  tensors    (default) a pool of 4 random batches of already-normalised float images
             [N, 3, S, S] in host memory (pinned on a GPU), cycled. Measures the network, the
             host → device copy and the optimiser: what training reaches if the loader keeps up.
  transform  random 500 × 375 uint8 RGB images (CUB's typical size) through the real train
             transform (random resized crop, flip, normalise, random erasing), batched by the
             real sampler and DataLoader settings (`data.loader.data_loader`): adds the CPU
             augmentation pipeline, but not JPEG decoding (a few ms per CUB image per core).

Evaluation: the backbone alone under the same autocast, as `evaluation.embed` runs it, over
--eval-batches batches of --eval-batch-size images (eval transform in `transform` mode), after 2
warm-up batches; the embeddings are gathered and copied to the host once at the end.

Reports the device, torch and CUDA versions, bf16 / channels_last / cuDNN autotuning on or off,
training and evaluation images per second; --json OUT writes the same as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ibdml import device as devices
from ibdml.data import loader
from ibdml.config import Params, make_params
from ibdml.data.folder import Split
from ibdml.data.sampler import ClassBalancedBatchSampler
from ibdml.data.transforms import eval_transform, train_transform
from ibdml.device import resolve_device
from ibdml.trainer import build_trainer, train_epoch

# The CUB recipe (docs/method.md §0, §9 CUB column). Pretrained weights would not change the speed.
CUB_RECIPE = {"backbone": "resnet50", "pretrained": "none", "image_size": 227,
              "test_resize_ratio": 256 / 227, "embedding_dim": 512, "mpn_layers": 1,
              "mpn_heads": 2, "n_c": 6, "n_s": 9, "lr": 1.563663718906821e-4,
              "weight_decay": 6.059722614369727e-6, "temperature": 0.2, "label_smoothing": 0.1,
              "normalize": "imagenet", "horizontal_flip": True, "random_erasing": True,
              "crop_scale_min": 0.08, "attention_probes": 0, "baselines": False}
CUB_TRAIN_CLASSES = 100
IMAGES_PER_CLASS = 60  # ~ CUB's 5,864 training images
SOURCE_SIZE = (375, 500)  # height × width of the random source images (--data transform)
TENSOR_POOL = 4  # distinct random batches cycled in --data tensors
EVAL_WARMUP = 2


# ---------------------------------------------------------------------------------------------
# Data stand-ins
# ---------------------------------------------------------------------------------------------


class RandomImages(Dataset):
    """What `ImageDataset` yields, (image tensor, label, index), without files: each item is one
    of `pool` random uint8 RGB images through `transform` (so the transform costs what it costs
    on a photograph of that size; decoding a JPEG is not included)."""

    def __init__(self, labels: np.ndarray, transform, pool: int = 16, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = [rng.integers(0, 256, (*SOURCE_SIZE, 3), dtype=np.uint8)
                       for _ in range(pool)]
        self.labels, self.transform = labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = Image.fromarray(self.images[i % len(self.images)])
        return self.transform(image), int(self.labels[i]), i


def tensor_batches(p: Params, batch: int, device: torch.device, seed: int) -> list[tuple]:
    """TENSOR_POOL random batches (images [batch, 3, S, S], labels [batch], indices [batch]),
    pinned on a GPU as the real loader pins them. Labels: n_c classes × n_s images when batch
    is a training batch, otherwise arbitrary."""
    g = torch.Generator().manual_seed(seed)
    pool = []
    for _ in range(TENSOR_POOL):
        images = torch.randn(batch, 3, p.image_size, p.image_size, generator=g)
        classes = torch.randperm(CUB_TRAIN_CLASSES, generator=g)[:p.n_c]
        labels = classes.repeat_interleave(p.n_s)[:batch]
        labels = torch.cat([labels, labels.new_zeros(batch - len(labels))])
        if device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        pool.append((images, labels, torch.arange(batch)))
    return pool


def training_batches(p: Params, labels: np.ndarray, count: int, seed: int) -> list[list[int]]:
    """`count` batches of the real sampler (n_c classes × n_s images), over as many epochs as
    needed."""
    sampler = ClassBalancedBatchSampler(labels, p.n_c, p.n_s, seed=seed)
    batches = []
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        batches += list(sampler)
        if len(batches) >= count:
            return batches[:count]


class Timed:
    """The loader train_epoch sees: the first `total` batches of `batches`; `start` is the time
    at which batch `warmup` was asked for, after the device finished everything before it."""

    def __init__(self, batches: Iterable, total: int, warmup: int, device: torch.device) -> None:
        self.batches, self.total, self.warmup, self.device = batches, total, warmup, device
        self.start = None

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator:
        for i, batch in enumerate(itertools.islice(self.batches, self.total)):
            if i == self.warmup:
                synchronize(self.device)
                self.start = time.perf_counter()
            yield batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------


def measure_training(p: Params, device: torch.device, data: str, steps: int, warmup: int,
                     seed: int) -> dict:
    labels = np.repeat(np.arange(CUB_TRAIN_CLASSES), IMAGES_PER_CLASS)
    split = Split("train", [Path(f"random/{i}") for i in range(len(labels))], labels,
                  [f"class_{c}" for c in range(CUB_TRAIN_CLASSES)])
    t = build_trainer(p, split, device)
    total = warmup + steps
    if data == "tensors":
        batches = itertools.cycle(tensor_batches(p, p.batch_size, device, seed))
    else:
        dataset = RandomImages(labels, train_transform(p), seed=seed)
        batches = loader.data_loader(dataset, p.num_workers, device,
                                     batch_sampler=training_batches(p, labels, total, seed))
    timed = Timed(batches, total, warmup, device)
    losses = train_epoch(t, timed, p, device, progress=False)
    synchronize(device)
    seconds = time.perf_counter() - timed.start
    return {"model": t.model, "train_seconds": round(seconds, 3),
            "train_images_per_second": round(steps * p.batch_size / seconds, 1),
            "mean_loss": round(losses["total"], 4)}


@torch.no_grad()
def measure_embedding(model: torch.nn.Module, p: Params, device: torch.device, data: str,
                      batches: int, seed: int) -> dict:
    """The backbone's embedding throughput, as `evaluation.embed` runs it."""
    model.eval()
    bf16 = devices.bf16_override(p.amp)
    total = EVAL_WARMUP + batches
    if data == "tensors":
        source = itertools.cycle(tensor_batches(p, p.eval_batch_size, device, seed + 1))
    else:
        labels = np.zeros(total * p.eval_batch_size, dtype=np.int64)
        dataset = RandomImages(labels, eval_transform(p), seed=seed + 1)
        source = loader.data_loader(dataset, p.num_workers, device, batch_size=p.eval_batch_size)
    features, start = [], None
    for i, (images, _, _) in enumerate(itertools.islice(source, total)):
        if i == EVAL_WARMUP:
            synchronize(device)
            features, start = [], time.perf_counter()
        with devices.autocast(device, bf16):
            features.append(model.backbone(devices.to_device(images, device))[0].float())
    torch.cat(features).cpu()  # [batches · B, D]: one copy to the host, as evaluation needs
    seconds = time.perf_counter() - start
    return {"eval_images": batches * p.eval_batch_size, "eval_seconds": round(seconds, 3),
            "eval_images_per_second": round(batches * p.eval_batch_size / seconds, 1)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def run(args: argparse.Namespace) -> dict:
    n_c, n_s = (int(v) for v in args.batch_shape.lower().split("x"))
    p = make_params({**CUB_RECIPE, "backbone": args.backbone, "image_size": args.image_size,
                     "n_c": n_c, "n_s": n_s, "device": args.device, "amp": not args.no_autocast,
                     "num_workers": args.workers, "eval_batch_size": args.eval_batch_size,
                     "seed": args.seed})
    device = resolve_device(p.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {"device": device_name(device), "device_type": device.type,
              "torch": torch.__version__, "cuda": torch.version.cuda,
              "cpu_cores": loader.cpu_cores(), "torch_threads": torch.get_num_threads(),
              "bf16": devices.bf16_enabled(device, devices.bf16_override(p.amp)),
              "channels_last": devices.channels_last_enabled(device),
              "cudnn_benchmark": device.type == "cuda", "backbone": p.backbone,
              "image_size": p.image_size, "batch_shape": f"{p.n_c}x{p.n_s}",
              "batch_size": p.batch_size, "data": args.data,
              "loader_workers": loader.worker_count(p.num_workers, device)
              if args.data == "transform" else None,
              "warmup_steps": args.warmup, "steps": args.steps,
              "eval_batch_size": p.eval_batch_size}
    with devices.cudnn_autotune(device), devices.exact_fp32(device, devices.bf16_override(p.amp)):
        train = measure_training(p, device, args.data, args.steps, args.warmup, args.seed)
        model = train.pop("model")
        result.update(train)
        result.update(measure_embedding(model, p, device, args.data, args.eval_batches,
                                        args.seed))
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=300, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--batch-shape", default="6x9", help="n_c x n_s (CUB: 6x9 = 54 images)")
    parser.add_argument("--backbone", default="resnet50", choices=("resnet18", "resnet50"))
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--no-autocast", action="store_true", help="fp32 on the GPU too")
    parser.add_argument("--data", default="tensors", choices=("tensors", "transform"))
    parser.add_argument("--workers", type=int, default=-1,
                        help="DataLoader workers with --data transform; -1 = sized from the machine")
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.eval_batches < 1:
        parser.error("--steps and --eval-batches must be ≥ 1, --warmup ≥ 0")
    result = run(args)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
