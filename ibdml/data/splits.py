"""From Params to the class-disjoint splits of a dataset: train, test (In-Shop: query and
gallery) and, with val_fraction > 0, a validation split carved from the training classes
(docs/protocol.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ibdml.config import Params, held_out_classes
from ibdml.data.benchmarks import BenchmarkError, read_benchmark
from ibdml.data.folder import DatasetError, Split, read_image_folder
from ibdml.data.glyphs import build_glyphs

# The splits a run is tested on: one set searched against itself, or In-Shop's query → gallery.
QUERY_GALLERY = ("query", "gallery")


def test_split_names(p: Params) -> tuple[str, ...]:
    return QUERY_GALLERY if p.dataset == "inshop" else ("test",)


def load_splits(p: Params, progress: bool = True) -> dict[str, Split]:
    """{'train', 'test'} (In-Shop: 'train', 'query', 'gallery'; + 'val' with val_fraction > 0)
    for the run's dataset. Glyphs is rendered into its cache first (once), then read like any
    class-folder dataset; a benchmark copy is checked before anything trains (data/benchmarks.py:
    a broken one raises a BenchmarkError that names every problem)."""
    if p.dataset == "glyphs":
        root = build_glyphs(Path(p.data_root).expanduser(), classes=p.glyph_classes,
                            images_per_class=p.glyph_images_per_class, image_size=p.image_size,
                            seed=p.glyph_seed, progress=progress)
        splits = first_classes_train(read_image_folder(root), p.glyph_train_classes)
    else:
        try:
            splits = read_benchmark(p.dataset, Path(p.data_root).expanduser(),
                                    expected=None if p.official_counts else {})
        except BenchmarkError as e:  # the checker's message, and which parameter points there
            raise BenchmarkError(e.problems, hint=(
                f"parameter data_root is {p.data_root}: point it at your copy (-p data_root="
                f"PATH) and check that with `ibdml check-data {p.dataset} PATH`")) from None
    if p.val_fraction > 0:
        train = splits["train"]
        splits["train"], splits["val"] = hold_out_validation(
            train, held_out_classes(train.num_classes, p.val_fraction))
    return splits


def first_classes_train(data: Split, train_classes: int) -> dict[str, Split]:
    """Class-disjoint splits: the first `train_classes` classes train, the rest test."""
    if train_classes >= data.num_classes:
        raise DatasetError(f"the dataset has {data.num_classes} classes, so {train_classes} "
                           "training classes leave none for testing")
    return {"train": data.subset(np.arange(train_classes), "train"),
            "test": data.subset(np.arange(train_classes, data.num_classes), "test")}


def hold_out_validation(train: Split, held_out: int) -> tuple[Split, Split]:
    """(train, val): the last `held_out` training classes become the validation split, never
    seen in training (the fair protocol, docs/protocol.md)."""
    fit = train.num_classes - held_out
    return (train.subset(np.arange(fit), "train"),
            train.subset(np.arange(fit, train.num_classes), "val"))
