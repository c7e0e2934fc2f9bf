"""Shared fixtures: one small Glyphs cache rendered once per test session."""

import pytest


@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory):
    """A folder holding the smoke-sized Glyphs cache; pass it as data_root."""
    from ibdml.data.glyphs import build_glyphs

    root = tmp_path_factory.mktemp("glyphs")
    build_glyphs(root, classes=16, images_per_class=8, image_size=32, seed=0, progress=False)
    return root
