"""Glyphs: the embedded default dataset, characters rendered in the fonts that ship with matplotlib.

A class is a Unicode character; its images are renders in matplotlib's own fonts (DejaVu, STIX,
Computer Modern), each distorted differently (affine map, stroke width, elastic warp, blur, noise)
and always white on black: random colours would teach a network colour instead of shape.
It is rendered once into a cache folder in the layout of the real datasets,
`images/<rank>_U+<code point>/<index>.png`, plus a manifest `glyphs.json`, so the generic
image-folder reader serves it like CUB-200: `build_glyphs(root, classes=100)` returns the folder.

The classes: (1) matplotlib's text fonts (`text_fonts`), each trusted only for the code points
its charmap maps honestly (`font_coverage`); (2) printable characters that at least `MIN_FONTS`
of them draw; (3) minus look-alikes: characters with near-identical clean renders in some font
(Latin A, Greek Α, Cyrillic А) are not both classes, the lower code point (ASCII) wins;
(4) `glyph_classes(count, seed)`: a seeded permutation of what is left, first `count`.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import multiprocessing
import os
import re
import shutil
import socket
import string
import unicodedata
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm.auto import tqdm

FORMAT_VERSION = 1  # bump when rendering changes: it is part of the cache folder's name
MANIFEST = "glyphs.json"
FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
REFERENCE_FONT = FONT_DIR / "DejaVuSans.ttf"  # the widest font; its glyphs have standard names
MIN_FONTS = 16  # of 21 text fonts: 727 candidates (ASCII, Latin-1/Ext-A, IPA, Greek, Cyrillic)

# Look-alikes: clean renders at the size a glyph has in a 32-px image, compared font by font by
# d(a, b) = |a - b|² / (|a|² + |b|²), 0 when identical, 1 when no ink overlaps. Shared outlines
# (A/Α/А, o/ο/о) score 0; then Φ/Ф 0.0005, ħ/ћ 0.001, Ĕ/Ě 0.002, π/п 0.004, ɯ/ш 0.006,
# I/l 0.008 (sans bold oblique), ġ/ģ 0.008, none readable apart at that size; from 0.009 on,
# pairs differ by an accent or a bar one can see (Õ/Ő, É/Ė, н/п, Ũ/Ű, Ш/Щ). 641 of 727 stay.
LOOKALIKE_THRESHOLD = 0.009
PROBE_SIZE, PROBE_EM = 32, 20  # pixels: canvas side and em of the clean renders

SUPERSAMPLE = 3  # draw at 3x, then box-downsample: smooth edges at 32 px
EM_FRACTION = 0.6  # em of the glyph as a fraction of the image side, before random scaling
MAX_INK_WIDTH = 0.8  # wider characters (‰ Ж Ш) are drawn smaller, to stay inside the frame
BASELINE_DROP = 0.3  # the baseline sits this many ems below the centre: caps and descenders fit
MESH_CELLS = 4  # the elastic warp jitters the corners of a 4x4 grid of bilinear cells

_TEXT_TEST = [ord(c) for c in string.ascii_letters + string.digits]
# A build renders into ".<dataset>.<host>.<pid>.<random>.tmp" beside its final folder.
_TEMPORARY = re.compile(r"\.glyphs-[^.]+\.(?P<host>.+)\.(?P<pid>\d+)\.[^.]+\.tmp")


class GlyphsError(ValueError):
    """A Glyphs request that cannot be met; the message says what can."""


def _draws(font: FT2Font, reference: FT2Font, code_point: int) -> bool:
    """Whether `font`'s glyph for `code_point` is that character, judged by the glyph's name.

    The cm* fonts map code points to TeX's encoding, not Unicode's: in cmr10 '<' is '¡' and '\\'
    is '“'. A glyph counts when its name spells its code point ('uni0410') or equals the name the
    reference font gives the code point ('less'). Glyph 0 (.notdef, the missing box) never counts.
    """
    index = font.get_char_index(code_point)
    name = font.get_glyph_name(index).lower()
    expected = reference.get_glyph_name(reference.get_char_index(code_point)).lower()
    return index != 0 and name in (expected, f"uni{code_point:04x}", f"u{code_point:04x}")


@functools.lru_cache(maxsize=None)
def text_fonts() -> tuple[Path, ...]:
    """Matplotlib's text fonts: those that draw every ASCII letter and digit under its own name.

    21 of 40: DejaVu Sans, Sans Mono, Serif and STIXGeneral in 4 styles each, and cmr10, cmb10,
    cmss10, cmti10, cmtt10, kept for the ~85 ASCII characters they really draw (`font_coverage`)
    because Computer Modern is a fifth family, and variety can only come from families. Dropped:
    the placeholder LastResortHE, STIXNonUni* (private use), STIXSize* (delimiters), the Display
    variants (a few symbols), cmmi10 (old-style digits), cmsy10 (calligraphic capitals), cmex10.
    """
    reference = FT2Font(str(REFERENCE_FONT))

    def is_text(path: Path) -> bool:
        font = FT2Font(str(path))
        return all(_draws(font, reference, code_point) for code_point in _TEXT_TEST)

    return tuple(path for path in sorted(FONT_DIR.glob("*.ttf")) if is_text(path))


@functools.lru_cache(maxsize=None)
def font_coverage(path: Path) -> frozenset[int]:
    """The printable code points (letters, numbers, punctuation, symbols: no spaces, controls,
    combining marks or private use) that the font at `path` really draws (see `_draws`)."""
    font, reference = FT2Font(str(path)), FT2Font(str(REFERENCE_FONT))
    return frozenset(cp for cp in font.get_charmap()
                     if unicodedata.category(chr(cp))[0] in "LNPS" and _draws(font, reference, cp))


@functools.lru_cache(maxsize=None)
def candidate_code_points() -> tuple[int, ...]:
    """Printable code points drawn by at least `MIN_FONTS` text fonts, in code-point order."""
    counts = collections.Counter(cp for path in text_fonts() for cp in font_coverage(path))
    return tuple(sorted(cp for cp, fonts in counts.items() if fonts >= MIN_FONTS))


@functools.lru_cache(maxsize=None)
def _pil_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: one code point, one glyph, through the charmap `_draws` judged (no shaping).
    return ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC)


def draw_glyph(canvas: Image.Image, code_point: int, font: ImageFont.FreeTypeFont,
               stroke: int = 0) -> None:
    """Draw the character in white on the square `canvas`, placed by its em box, never its ink.

    The advance box is centred horizontally and the baseline sits `BASELINE_DROP` em below the
    centre, so each character keeps its size and height: 'o' stays smaller than 'O' and ','
    lower than '’'. Cropping to the ink would make such pairs identical.
    """
    middle = canvas.width / 2
    baseline = middle + BASELINE_DROP * font.size
    ImageDraw.Draw(canvas).text((middle, baseline), chr(code_point), fill=255, font=font,
                                anchor="ms", stroke_width=stroke, stroke_fill=255)


def _clean_renders(path: Path, code_points: Sequence[int]) -> np.ndarray:
    """(n, PROBE_SIZE²) float32 in [0, 1]: the characters drawn plainly in the font at `path`."""
    renders = np.zeros((len(code_points), PROBE_SIZE * PROBE_SIZE), np.float32)
    for row, code_point in enumerate(code_points):
        canvas = Image.new("L", (PROBE_SIZE, PROBE_SIZE), 0)
        draw_glyph(canvas, code_point, _pil_font(path, PROBE_EM))
        renders[row] = np.asarray(canvas, np.float32).ravel() / 255
    return renders


def lookalike_distances(code_points: Sequence[int]) -> np.ndarray:
    """(n, n) float32: for each pair, the smallest render distance over the fonts both are in.

    d(a, b) = |a - b|² / (|a|² + |b|²) between clean renders (0 = identical, 1 = disjoint ink);
    inf for pairs that share no font, 0 on the diagonal. Example: for [0x41, 0x391] (Latin A,
    Greek Alpha) the off-diagonal entries are 0.0: DejaVu draws both with one outline.
    """
    code_points = np.asarray(code_points)
    distances = np.full((len(code_points), len(code_points)), np.inf, np.float32)
    for path in text_fonts():
        rows = np.flatnonzero([cp in font_coverage(path) for cp in code_points.tolist()])
        renders = _clean_renders(path, code_points[rows].tolist())  # (m, PROBE_SIZE²)
        ink = (renders**2).sum(1)
        both = ink[:, None] + ink[None, :]  # (m, m); |a - b|² = |a|² + |b|² - 2 a·b
        pair = np.maximum(both - 2 * renders @ renders.T, 0) / np.maximum(both, 1e-6)
        block = np.ix_(rows, rows)
        distances[block] = np.minimum(distances[block], pair)
    return distances


@functools.lru_cache(maxsize=None)
def kept_code_points() -> tuple[int, ...]:
    """The candidates left after removing look-alikes, in code-point order (so ASCII wins)."""
    candidates = candidate_code_points()
    distances = lookalike_distances(candidates)
    kept: list[int] = []
    for row in range(len(candidates)):
        if not kept or distances[row, kept].min() >= LOOKALIKE_THRESHOLD:
            kept.append(row)
    return tuple(candidates[row] for row in kept)


def glyph_classes(count: int, seed: int = 0) -> list[int]:
    """The code points of the `count` classes, in class order: a seeded shuffle of the kept ones,
    first `count`, so a smaller request is a prefix of a larger one with the same seed."""
    kept = kept_code_points()
    if not 1 <= count <= len(kept):
        raise GlyphsError(f"Glyphs has {len(kept)} classes at most (characters drawn by at least "
                          f"{MIN_FONTS} fonts, look-alikes removed); asked for {count}: "
                          f"choose between 1 and {len(kept)}.")
    order = np.random.default_rng(seed).permutation(len(kept))[:count]
    return [kept[i] for i in order]


def _warp_mesh(side: int, rng: np.random.Generator) -> list[tuple[tuple, tuple]]:
    """A random affine map plus an elastic wobble as PIL MESH data: one resampling does both.

    MESH maps each output cell of a `MESH_CELLS`² grid to a source quadrilateral (corners NW, SW,
    SE, NE). The corners are the output grid sent back through the inverse affine map, then
    jittered; neighbouring cells share corners, so the warp is continuous. (A dense displacement
    field costs ~40x more: see DESIGN.md, Glyphs facts.)
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
    font = _pil_font(path, round(EM_FRACTION * side))
    left, _, right, _ = font.getbbox(chr(code_point), anchor="ms")
    if right - left <= MAX_INK_WIDTH * side:
        return font
    return _pil_font(path, round(font.size * MAX_INK_WIDTH * side / (right - left)))


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
    with multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
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
