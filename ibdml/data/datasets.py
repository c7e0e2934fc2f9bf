"""From Params to the class-disjoint splits of a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ibdml.config import Params, held_out_classes
from ibdml.data.benchmarks import BenchmarkError, read_benchmark
from ibdml.data.folder import Split, read_image_folder, split_classes
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
        data = read_image_folder(root)
        train = p.glyph_train_classes
        return split_classes(data, train, p.val_fraction, held_out_classes(train, p.val_fraction))
    try:
        splits = read_benchmark(p.dataset, Path(p.data_root).expanduser(),
                                expected=None if p.official_counts else {})
    except BenchmarkError as e:  # the checker's message, and which parameter points there
        raise BenchmarkError(e.problems, hint=(
            f"parameter data_root is {p.data_root}: point it at your copy (-p data_root=PATH) "
            f"and check that with `ibdml check-data {p.dataset} PATH`")) from None
    held_out = held_out_classes(splits["train"].num_classes, p.val_fraction)
    if p.val_fraction > 0:
        # the last training classes become the validation split, as for Glyphs (fair protocol)
        train = splits["train"]
        fit = train.num_classes - held_out
        splits["train"] = train.subset(np.arange(fit), "train")
        splits["val"] = train.subset(np.arange(fit, train.num_classes), "val")
    return splits
