"""From Params to the class-disjoint splits of a dataset."""

from __future__ import annotations

from pathlib import Path

from ibdml.config import Params, held_out_classes
from ibdml.data.folder import Split, read_image_folder, split_classes
from ibdml.data.glyphs import build_glyphs


def load_splits(p: Params, progress: bool = True) -> dict[str, Split]:
    """{'train', 'test'} (+ 'val' with val_fraction > 0) for the run's dataset. Glyphs is rendered
    into its cache first (once), then read like any class-folder dataset."""
    root = build_glyphs(Path(p.data_root).expanduser(), classes=p.glyph_classes,
                        images_per_class=p.glyph_images_per_class, image_size=p.image_size,
                        seed=p.glyph_seed, progress=progress)
    data = read_image_folder(root)
    train = p.glyph_train_classes
    return split_classes(data, train, p.val_fraction, held_out_classes(train, p.val_fraction))
