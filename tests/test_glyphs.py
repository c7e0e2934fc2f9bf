"""Tests for ibdml.data.glyphs: deterministic renders, layout, class choice, cache robustness."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ibdml.data import glyph_classes as classes
from ibdml.data import glyphs
from ibdml.data.glyph_classes import GlyphsError, glyph_classes
from ibdml.data.glyphs import build_glyphs

SMALL = dict(classes=12, images_per_class=3, image_size=32, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small build with the default two workers, shared by the tests that only read it."""
    return build_glyphs(tmp_path_factory.mktemp("glyphs"), **SMALL)


def png_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in (folder / "images").rglob("*.png")}


def test_same_arguments_give_identical_bytes_whatever_the_workers(built: Path, tmp_path: Path):
    again = build_glyphs(tmp_path, **SMALL, workers=1)
    assert again != built
    assert png_bytes(again) == png_bytes(built)


def test_another_seed_gives_other_classes_and_other_images(built: Path, tmp_path: Path):
    other = build_glyphs(tmp_path, **SMALL, seed=1)
    assert glyph_classes(12, seed=1) != glyph_classes(12, seed=0)
    assert set(png_bytes(other).values()).isdisjoint(png_bytes(built).values())


def test_layout_and_manifest(built: Path):
    manifest = json.loads((built / glyphs.MANIFEST).read_text())
    folders = sorted(os.listdir(built / "images"))
    code_points = glyph_classes(12, seed=0)
    assert folders == manifest["folders"]
    assert [int(name.split("_U+")[1], 16) for name in folders] == code_points
    assert [name[:3] for name in folders] == [f"{rank:03d}" for rank in range(12)]
    assert manifest["code_points"] == code_points
    assert manifest["format_version"] == glyphs.FORMAT_VERSION
    assert manifest["params"] == {"classes": 12, "images_per_class": 3, "image_size": 32, "seed": 0}
    assert manifest["counts"]["images"] == 36
    assert set(manifest["fonts"]) <= {path.name for path in classes.text_fonts()}
    for name in folders:
        files = sorted(os.listdir(built / "images" / name))
        assert files == ["000.png", "001.png", "002.png"]
        for file in files:
            image = Image.open(built / "images" / name / file)
            assert image.mode == "L" and image.size == (32, 32)
            pixels = np.asarray(image)
            assert np.median(pixels) < 60 and pixels.max() > 150  # bright glyph, dark background


def test_every_image_of_a_class_differs(built: Path):
    for folder in (built / "images").iterdir():
        images = [np.asarray(Image.open(path)).tobytes() for path in folder.iterdir()]
        assert len(set(images)) == len(images) == 3


def test_smaller_request_is_a_prefix():
    assert glyph_classes(5, seed=3) == glyph_classes(12, seed=3)[:5]


def test_only_text_fonts_are_used():
    names = {path.name for path in classes.text_fonts()}
    assert len(names) == 21  # DejaVu Sans/Mono/Serif and STIXGeneral x 4 styles, 5 cm text fonts
    assert {"DejaVuSans.ttf", "STIXGeneral.ttf", "cmr10.ttf", "cmtt10.ttf"} <= names
    excluded = ("LastResort", "STIXNonUni", "STIXSiz", "cmex10", "cmmi10", "cmsy10")
    assert not [name for name in names if name.startswith(excluded) or "Display" in name]


def test_tex_encoded_positions_are_not_trusted():
    cmr10 = classes.font_coverage(classes.FONT_DIR / "cmr10.ttf")
    assert ord("A") in cmr10 and ord("7") in cmr10
    assert ord("<") not in cmr10  # cmr10 draws '¡' there
    assert 0xA1 not in cmr10  # and 'Γ' at U+00A1


def test_classes_are_printable_and_widely_drawn():
    kept = classes.kept_code_points()
    assert 600 <= len(kept) <= 680
    assert all(unicodedata.category(chr(cp))[0] in "LNPS" for cp in kept)
    fonts = classes.text_fonts()
    drawn_by = [sum(cp in classes.font_coverage(path) for path in fonts) for cp in kept]
    assert min(drawn_by) >= classes.MIN_FONTS


def test_no_two_classes_look_alike():
    kept = classes.kept_code_points()
    distances = classes.lookalike_distances(kept)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() >= classes.LOOKALIKE_THRESHOLD
    latin_a, greek_alpha, cyrillic_a = 0x41, 0x391, 0x410
    assert latin_a in kept and greek_alpha not in kept and cyrillic_a not in kept
    assert ord("o") in kept and 0x3BF not in kept and 0x43E not in kept  # Greek, Cyrillic o


def test_lookalike_distance_sees_size_and_height_not_only_shape():
    same, sizes, heights = (classes.lookalike_distances([a, b])[0, 1]
                            for a, b in [(0x41, 0x391), (ord("o"), ord("O")), (ord(","), 0x2019)])
    assert same < 1e-3
    assert sizes > 0.1 and heights > 0.1  # renders are placed by the em box, not cropped to ink


def test_half_written_or_damaged_cache_is_rebuilt(built: Path, tmp_path: Path):
    half = tmp_path / built.name
    (half / "images" / "000_U+0041").mkdir(parents=True)  # a crash before the manifest
    assert build_glyphs(tmp_path, **SMALL) == half
    assert png_bytes(half) == png_bytes(built)
    next((half / "images").iterdir()).joinpath("001.png").unlink()  # a damaged complete build
    build_glyphs(tmp_path, **SMALL)
    assert png_bytes(half) == png_bytes(built)


def test_stale_temporary_folders_are_removed_live_ones_kept(tmp_path: Path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid, host = int(finished.stdout), socket.gethostname()
    name = "glyphs-c12-n3-s32-seed0-v1"
    stale = tmp_path / f".{name}.{host}.{dead_pid}.0a1b.tmp"
    running = tmp_path / f".{name}.{host}.{os.getpid()}.0a1b.tmp"
    elsewhere = tmp_path / f".{name}.some-other-host.{dead_pid}.0a1b.tmp"
    for folder in (stale, running, elsewhere):
        (folder / "images").mkdir(parents=True)
    path = build_glyphs(tmp_path, **SMALL)
    assert not stale.exists() and running.exists() and elsewhere.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [path.name]


def test_too_many_classes_says_the_maximum(tmp_path: Path):
    maximum = len(classes.kept_code_points())
    with pytest.raises(GlyphsError, match=f"{maximum} classes at most"):
        build_glyphs(tmp_path, classes=maximum + 1, progress=False)
    with pytest.raises(GlyphsError, match=f"between 1 and {maximum}"):
        glyph_classes(maximum + 1)
    assert list(tmp_path.iterdir()) == []
    assert sorted(glyph_classes(maximum)) == list(classes.kept_code_points())


def test_second_build_returns_at_once_without_rendering(built: Path, monkeypatch: pytest.MonkeyPatch):
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("re-rendered a complete cache")

    monkeypatch.setattr(glyphs, "_render_all", fail)
    start = time.perf_counter()
    assert build_glyphs(built.parent, **SMALL) == built
    assert time.perf_counter() - start < 0.5
