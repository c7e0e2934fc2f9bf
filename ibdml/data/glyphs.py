"""Glyphs: the embedded default dataset, characters rendered in the fonts that ship with matplotlib.

A class is a Unicode character; its images are renders in matplotlib's own fonts (DejaVu, STIX,
Computer Modern), each distorted differently (affine map, stroke width, elastic warp, blur, noise)
and always white on black: random colours would teach a network colour instead of shape.
It is rendered once into a cache folder in the layout of the real datasets,
`images/<rank>_U+<code point>/<index>.png`, plus a manifest `glyphs.json`, so the generic
image-folder reader serves it like CUB-200: `build_glyphs(root, classes=100)` returns the folder.

Which characters are classes, and how one is drawn: data/glyph_classes.py.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import shutil
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
from PIL import Image, ImageFilter, ImageFont
from tqdm.auto import tqdm

from ibdml.data.glyph_classes import (LOOKALIKE_THRESHOLD, MIN_FONTS, GlyphsError, draw_glyph,
                                      font_coverage, glyph_classes, kept_code_points, pil_font,
                                      text_fonts)

FORMAT_VERSION = 1  # bump when rendering changes: it is part of the cache folder's name
MANIFEST = "glyphs.json"
SUPERSAMPLE = 3  # draw at 3x, then box-downsample: smooth edges at 32 px
EM_FRACTION = 0.6  # em of the glyph as a fraction of the image side, before random scaling
MAX_INK_WIDTH = 0.8  # wider characters (‰ Ж Ш) are drawn smaller, to stay inside the frame
MESH_CELLS = 4  # the elastic warp jitters the corners of a 4x4 grid of bilinear cells

# A build renders into ".<dataset>.<host>.<pid>.<random>.tmp" beside its final folder.
_TEMPORARY = re.compile(r"\.glyphs-[^.]+\.(?P<host>.+)\.(?P<pid>\d+)\.[^.]+\.tmp")


def _warp_mesh(side: int, rng: np.random.Generator) -> list[tuple[tuple, tuple]]:
    """A random affine map plus an elastic wobble as PIL MESH data: one resampling does both.

    MESH maps each output cell of a `MESH_CELLS`² grid to a source quadrilateral (corners NW, SW,
    SE, NE). The corners are the output grid sent back through the inverse affine map, then
    jittered; neighbouring cells share corners, so the warp is continuous. (A dense displacement
    field costs ~40x more: see docs/datasets.md, "Glyphs facts".)
    """
    angle, shear = np.radians(rng.uniform(-12, 12)), rng.uniform(-0.25, 0.25)
    scale = rng.uniform(0.85, 1.15) * np.exp(rng.uniform(-0.12, 0.12, size=2))  # (x, y)
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rotate @ np.array([[1, shear], [0, 1]]) @ np.diag(scale)  # source -> output, centred
    shift = rng.uniform(-0.08, 0.08, size=2) * side
    edges = np.linspace(0, side, MESH_CELLS + 1).round().astype(int)
    grid = np.stack(np.meshgrid(edges, edges), axis=-1)  # (G+1, G+1, xy): grid[i, j] = (x_j, y_i)
    source = (grid - side / 2 - shift) @ np.linalg.inv(forward).T + side / 2
    source += rng.normal(0, rng.uniform(0, 0.03) * side, size=source.shape)  # the wobble
    mesh = []
    for i in range(MESH_CELLS):
        for j in range(MESH_CELLS):
            box = (int(edges[j]), int(edges[i]), int(edges[j + 1]), int(edges[i + 1]))
            corners = source[[i, i + 1, i + 1, i], [j, j, j + 1, j + 1]]  # NW, SW, SE, NE
            mesh.append((box, tuple(corners.ravel().tolist())))
    return mesh


def _fitted_font(path: Path, code_point: int, side: int) -> ImageFont.FreeTypeFont:
    """The font at `EM_FRACTION` of `side`, smaller for characters wider than `MAX_INK_WIDTH`."""
    font = pil_font(path, round(EM_FRACTION * side))
    left, _, right, _ = font.getbbox(chr(code_point), anchor="ms")
    if right - left <= MAX_INK_WIDTH * side:
        return font
    return pil_font(path, round(font.size * MAX_INK_WIDTH * side / (right - left)))


def render_glyph(code_point: int, fonts: Sequence[Path], image_size: int,
                 rng: np.random.Generator) -> Image.Image:
    """One augmented image of the character: mode "L", `image_size`², bright glyph on black.

    A random font among `fonts`, stroke width, affine map and elastic warp at `SUPERSAMPLE`x,
    then box-downsampling, gaussian blur, contrast stretched to full white, additive noise.
    """
    side = image_size * SUPERSAMPLE
    font = _fitted_font(fonts[rng.integers(len(fonts))], code_point, side)
    stroke = int(rng.choice([-1, 0, 0, 0, 1, 1, 2]))  # supersampled pixels; -1 thins the strokes
    canvas = Image.new("L", (side, side), 0)
    draw_glyph(canvas, code_point, font, stroke=max(stroke, 0))
    if stroke < 0:
        canvas = canvas.filter(ImageFilter.MinFilter(3))
    canvas = canvas.transform(canvas.size, Image.Transform.MESH, _warp_mesh(side, rng),
                              resample=Image.Resampling.BILINEAR)
    image = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    glyph = np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.6))), np.float32)
    glyph *= 255 / max(glyph.max(), 1)  # thin, blurred strokes (˜, ˚, STIX hairlines) stay bright
    noisy = glyph + rng.normal(0, rng.uniform(0, 10), glyph.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def class_folder(rank: int, code_point: int) -> str:
    """A class's folder name, e.g. '000_U+0041': the zero-padded rank first, so that names sort
    in class order (the reader's class index is the rank of the name; there are < 1000 classes)."""
    return f"{rank:03d}_U+{code_point:04X}"


class _ClassJob(NamedTuple):
    """What a worker needs to render one class: plain values, picklable under any start method."""
    folder: Path
    rank: int
    code_point: int
    fonts: tuple[Path, ...]
    images_per_class: int
    image_size: int
    seed: int


def _render_class(job: _ClassJob) -> None:
    """Render and save one class's images. Each image has its own generator seeded from
    (seed, class rank, image index), so the bytes never depend on which worker runs it."""
    job.folder.mkdir(parents=True)
    digits = max(3, len(str(job.images_per_class - 1)))
    for index in range(job.images_per_class):
        rng = np.random.default_rng([job.seed, job.rank, index])
        image = render_glyph(job.code_point, job.fonts, job.image_size, rng)
        image.save(job.folder / f"{index:0{digits}d}.png")


def _render_all(folder: Path, code_points: list[int], params: dict[str, int], workers: int,
                progress: bool) -> None:
    """Render every class into `folder`/images, in `workers` processes, one class per task."""
    jobs = [_ClassJob(folder / "images" / class_folder(rank, cp), rank, cp,
                      tuple(path for path in text_fonts() if cp in font_coverage(path)),
                      params["images_per_class"], params["image_size"], params["seed"])
            for rank, cp in enumerate(code_points)]
    workers = min(workers, len(jobs))
    # forkserver, not fork: the caller may run threads (Ray's, torch's), and a child forked while
    # one of them holds a lock waits on it forever (a test session hung so, Ray started earlier)
    context = multiprocessing.get_context("forkserver")
    with context.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        done = pool.imap_unordered(_render_class, jobs) if pool else map(_render_class, jobs)
        for _ in tqdm(done, total=len(jobs), desc="Rendering Glyphs", unit="class",
                      disable=not progress):
            pass


def _write_manifest(folder: Path, code_points: list[int], params: dict[str, int]) -> None:
    """Write `glyphs.json`: format version, parameters, classes in order, fonts used, counts."""
    fonts = {path.name for path in text_fonts() for cp in code_points if cp in font_coverage(path)}
    manifest = {
        "format_version": FORMAT_VERSION,
        "params": params,
        "code_points": code_points,
        "characters": [chr(cp) for cp in code_points],
        "folders": [class_folder(rank, cp) for rank, cp in enumerate(code_points)],
        "counts": {"classes": len(code_points), "images_per_class": params["images_per_class"],
                   "images": len(code_points) * params["images_per_class"],
                   "available_classes": len(kept_code_points())},
        "fonts": sorted(fonts),
        "class_rules": {"min_fonts": MIN_FONTS, "lookalike_threshold": LOOKALIKE_THRESHOLD},
        "matplotlib": matplotlib.__version__,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1))


def _is_complete(folder: Path, params: dict[str, int]) -> bool:
    """Whether `folder` holds a finished build of `params`: a manifest that matches them and every
    class folder with all its images. Anything else (crash, deletion, old format) is unusable."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        images = folder / "images"
        return (manifest["format_version"] == FORMAT_VERSION and manifest["params"] == params
                and sorted(os.listdir(images)) == manifest["folders"]
                and all(len(os.listdir(images / name)) == params["images_per_class"]
                        for name in manifest["folders"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _is_stale(temporary: Path) -> bool:
    """Whether a temporary build folder was left by a crashed build: its owner, named in the folder
    name, ran on this host and is gone. A build on another host (shared disk) or still running is
    not stale; neither is anything on Windows, where os.kill would terminate the owner."""
    owner = _TEMPORARY.fullmatch(temporary.name)
    if owner is None or owner["host"] != socket.gethostname() or os.name == "nt":
        return False
    try:
        os.kill(int(owner["pid"]), 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        pass
    return False


def build_glyphs(root: Path, *, classes: int = 200, images_per_class: int = 40,
                 image_size: int = 32, seed: int = 0, workers: int = 2,
                 progress: bool = True) -> Path:
    """Render (or reuse) the Glyphs cache under `root` and return the dataset folder, which holds
    `images/<class>/<file>.png` and a manifest `glyphs.json`.

    The folder's name spells the parameters, so other settings never collide. A build renders
    into a temporary sibling, writes the manifest last and renames the folder into place (atomic):
    a folder is used only when complete; an incomplete one is deleted and rebuilt. `workers`
    processes render in parallel. Raises GlyphsError for more classes than exist (the message
    gives the maximum) or unusable sizes.
    """
    if images_per_class < 1 or image_size < 16 or workers < 1:
        raise GlyphsError(f"Glyphs needs images_per_class >= 1, image_size >= 16 and workers >= 1;"
                          f" got {images_per_class}, {image_size} and {workers}.")
    params = dict(classes=classes, images_per_class=images_per_class, image_size=image_size,
                  seed=seed)
    root = Path(root)
    final = root / (f"glyphs-c{classes}-n{images_per_class}-s{image_size}-seed{seed}"
                    f"-v{FORMAT_VERSION}")
    root.mkdir(parents=True, exist_ok=True)
    for stale in filter(_is_stale, root.glob(".glyphs-*.tmp")):
        shutil.rmtree(stale, ignore_errors=True)
    if _is_complete(final, params):
        return final
    shutil.rmtree(final, ignore_errors=True)  # half-written or damaged: never used
    code_points = glyph_classes(classes, seed)
    temporary = root / f".{final.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    temporary.mkdir()  # not tempfile.mkdtemp: its mode 0700 would lock others out of the cache
    try:
        _render_all(temporary, code_points, params, workers, progress)
        _write_manifest(temporary, code_points, params)
        try:
            os.rename(temporary, final)
        except OSError:  # another process finished the same build first: use theirs
            if not _is_complete(final, params):
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # already gone when the rename succeeded
    return final
