"""The image-folder reader shared by Glyphs and the class-folder datasets.

Layout: `root/images/<class>/<file>`. As in torchvision's ImageFolder (and the authors' code,
docs/method.md §2.1) the class index is the rank of the class folder name in sorted order, files
whose name starts with `._` (macOS metadata) are skipped, and the first C classes are the training
classes, the rest the test classes (class-disjoint splits, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class DatasetError(ValueError):
    """A dataset that cannot be read; the message says what layout is expected."""


@dataclass(frozen=True)
class Split:
    """A list of images with class labels. labels are 0-based ranks among the split's classes."""

    name: str
    paths: list[Path]
    labels: np.ndarray  # [N] int64
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def largest_class(self) -> int:
        """Images in the split's largest class (0 when empty): what bounds n_s (config.py,
        check_batch_shape)."""
        return int(np.bincount(self.labels).max()) if len(self.labels) else 0

    def subset(self, class_ids: np.ndarray, name: str) -> "Split":
        """The images of the given classes, relabelled 0..len(class_ids)-1 in the given order."""
        remap = {int(c): i for i, c in enumerate(class_ids)}
        keep = np.flatnonzero(np.isin(self.labels, class_ids))
        return Split(name, [self.paths[i] for i in keep],
                     np.array([remap[int(self.labels[i])] for i in keep], dtype=np.int64),
                     [self.class_names[int(c)] for c in class_ids])


def read_image_folder(root: Path) -> Split:
    """All images under `root/images/<class>/`, labelled by sorted class-folder rank."""
    images = Path(root).expanduser() / "images"
    if not images.is_dir():
        raise DatasetError(f"{images} is not a folder; expected the layout "
                           "root/images/<class>/<image files>")
    class_dirs = sorted(d for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for label, d in enumerate(class_dirs):
        files = sorted(f for f in d.iterdir()
                       if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("._"))
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DatasetError(f"no images found under {images}; expected root/images/<class>/<files>")
    return Split("all", paths, np.array(labels, dtype=np.int64), [d.name for d in class_dirs])


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB; an unreadable file is a DatasetError that names it and the fix (a
    one-line message: docs/errors.md)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError,
            Image.DecompressionBombError) as e:
        reason = " ".join(str(e).replace(f" {str(path)!r}", "").split()) or type(e).__name__
        raise DatasetError(
            f"cannot read image {path} ({reason}); replace it from the dataset's archive (a "
            "Glyphs cache: delete its folder to render it again), and run `ibdml check-data "
            "DATASET ROOT` to find every unreadable image of a benchmark copy") from e


class ImageDataset(Dataset):
    """(image tensor, label, index) for every image of a split."""

    def __init__(self, split: Split, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.transform(load_rgb(self.split.paths[i])), int(self.split.labels[i]), i
