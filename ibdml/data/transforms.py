"""Train and test transforms (docs/method.md §2.3 and Part 1).

Train: random resized crop, optional horizontal flip, to tensor, normalise, then the authors'
random erasing, which writes its fill values into the *normalised* tensor. Test: resize the
shorter side to image_size × test_resize_ratio (256/227 in the paper), centre crop, normalise.
"""

from __future__ import annotations

import math

import torch
from torchvision import transforms as T

from ibdml.config import Params

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUTHORS_STD = (0.299, 0.224, 0.225)  # the authors' typo for 0.229 (docs/method.md §11 B8)
ERASE_FILL = (0.4914, 0.4822, 0.4465)  # CIFAR means, the authors' fill values


class PerImageStandardize(torch.nn.Module):
    """(x − mean) / std over each whole image: Glyphs' greyscale renders carry no colour cue."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [C, H, W]
        return (x - x.mean()) / x.std().clamp_min(1e-6)


class AuthorsRandomErasing(torch.nn.Module):
    """Random erasing as the authors implement it (docs/method.md §2.3): with probability p, up to
    100 attempts at a rectangle of area U(0.02, 0.4)·H·W and aspect ratio U(0.3, 1/0.3), filled
    per channel with constants. torchvision's version samples the log-ratio and tries 10 times."""

    def __init__(self, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                 min_ratio: float = 0.3, fill: tuple[float, ...] = ERASE_FILL) -> None:
        super().__init__()
        self.p, self.area, self.min_ratio, self.fill = p, area, min_ratio, fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [C, H, W]
        if torch.rand(()) >= self.p:
            return x
        _, H, W = x.shape
        for _ in range(100):
            area = H * W * float(torch.empty(()).uniform_(*self.area))
            ratio = float(torch.empty(()).uniform_(self.min_ratio, 1 / self.min_ratio))
            h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if h < H and w < W:
                top = int(torch.randint(0, H - h + 1, ()))
                left = int(torch.randint(0, W - w + 1, ()))
                x = x.clone()
                x[:, top:top + h, left:left + w] = torch.tensor(self.fill[:x.shape[0]])[:, None, None]
                return x
        return x


def normalization(p: Params) -> torch.nn.Module:
    if p.normalize == "per_image":
        return PerImageStandardize()
    return T.Normalize(IMAGENET_MEAN, AUTHORS_STD if p.normalize == "authors" else IMAGENET_STD)


def train_transform(p: Params) -> T.Compose:
    steps = [T.RandomResizedCrop(p.image_size, scale=(p.crop_scale_min, 1.0))]
    if p.horizontal_flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), normalization(p)]
    if p.random_erasing:
        steps.append(AuthorsRandomErasing())
    return T.Compose(steps)


def eval_transform(p: Params) -> T.Compose:
    resize = round(p.image_size * p.test_resize_ratio)
    return T.Compose([T.Resize(resize), T.CenterCrop(p.image_size), T.ToTensor(), normalization(p)])
