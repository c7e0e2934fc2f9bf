"""Glyphs' classes: which characters become classes (docs/datasets.md, "Glyphs").

(1) matplotlib's text fonts (`text_fonts`), each trusted only for the code points its charmap
maps honestly (`font_coverage`); (2) printable characters that at least `MIN_FONTS` of them draw;
(3) minus look-alikes: characters with near-identical clean renders in some font (Latin A, Greek
Α, Cyrillic А) are not both classes, the lower code point (ASCII) wins; (4) `glyph_classes(count,
seed)`: a seeded permutation of what is left, first `count`. Also `draw_glyph`, which both the
look-alike test and the dataset's renders use.
"""

from __future__ import annotations

import collections
import functools
import string
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont

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

BASELINE_DROP = 0.3  # the baseline sits this many ems below the centre: caps and descenders fit
_TEXT_TEST = [ord(c) for c in string.ascii_letters + string.digits]


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
def pil_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
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
        draw_glyph(canvas, code_point, pil_font(path, PROBE_EM))
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
