"""What can be wrong with a benchmark copy, and the report `ibdml check-data` prints.

Pure functions on splits that have been read (`benchmarks.py` reads them): listed images missing
on disk, split counts that differ from the expected ones, and images that PIL cannot open. Each
problem says what is wrong, shows a few example paths with the total, and says what is expected.
`benchmarks.read_benchmark` raises the problems it finds as one `BenchmarkError`;
`benchmarks.check_benchmark` collects them, with the unreadable images, into a `BenchmarkReport`.

`check_run_inputs` is what a run checks before its folder is written: the data, the batch shape
against it and the pretrained weights (docs/errors.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ibdml.config import Params, check_batch_shape
from ibdml.data.folder import DatasetError, Split


@dataclass(frozen=True)
class SplitCount:
    """How many classes and images a split has (or should have)."""

    classes: int
    images: int


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset copy: what, a few example paths with how many there are in
    all, and what is expected instead (often the layout tree)."""

    what: str
    expected: str
    examples: tuple[str, ...] = ()
    total: int = 0
    fix: str = ""  # what to do, in one line, when `expected` alone does not say it

    def line(self) -> str:
        """The problem in one line: what, the first example, and the fix (or what is expected,
        when that fits on a line)."""
        text = self.what + (f", e.g. {self.examples[0]}" if self.examples else "")
        fix = self.fix or ("" if "\n" in self.expected else f"expected {self.expected}")
        return f"{text}; {fix}" if fix else text

    def text(self) -> str:
        lines = [f"- {self.what}"] + [f"    {e}" for e in self.examples]
        if self.total > len(self.examples) > 0:
            lines.append(f"    ... ({len(self.examples)} of {self.total:,} shown)")
        return "\n".join(lines + ["  expected: " + self.expected.replace("\n", "\n    ")])


class BenchmarkError(DatasetError):
    """A benchmark copy that cannot be used as it is; `problems` lists why."""

    def __init__(self, problems: Sequence[Problem], hint: str = "") -> None:
        self.problems, self.hint = list(problems), hint
        super().__init__("\n".join([p.text() for p in self.problems] + ([hint] if hint else [])))

    def summary(self) -> str:
        """One line for a terminal (docs/errors.md): the first problem, how many more, and the
        hint; `ibdml check-data` prints them all with the expected layout."""
        more = len(self.problems) - 1
        text = self.problems[0].line() + (f" (and {more} more problem{'s' * (more > 1)})"
                                          if more else "")
        return f"{text}; {self.hint}" if self.hint else text


def missing_images(splits: Mapping[str, Split], where: str, max_examples: int = 5) -> list[Problem]:
    """The listed images that are not files on disk, as one problem (or none). `where` says where
    the listing's paths are expected, e.g. "images.txt's paths, relative to ROOT/images/"."""
    paths = [p for split in splits.values() for p in split.paths]
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        return []
    return [Problem(f"{len(missing):,} of {len(paths):,} listed images are missing on disk", where,
                    tuple(str(p) for p in missing[:max_examples]), len(missing),
                    "extract the missing files from the official archive")]


def count_problems(splits: Mapping[str, Split], expected: Mapping[str, SplitCount],
                   title: str) -> list[Problem]:
    """Empty splits, and splits whose classes or images differ from `expected` (splits left out
    of `expected` are not compared). A partial copy is a problem: the paper's numbers need the
    full set (docs/method.md §2)."""
    problems = [Problem(f"the {name} split has no images",
                        f"images of the {name} classes (the class ranges of the {title} layout)")
                for name, split in splits.items() if len(split) == 0]
    differ = []
    for name, want in expected.items():
        split = splits.get(name)
        got = SplitCount(0, 0) if split is None else SplitCount(split.num_classes, len(split))
        if got != want:
            differ.append(f"{name}: {got.classes:,} classes and {got.images:,} images, expected "
                          f"{want.classes:,} and {want.images:,}")
    if differ:
        problems.append(Problem(
            f"{len(differ)} split{'s differ' if len(differ) > 1 else ' differs'} from the "
            "expected counts",
            f"the complete {title}: the paper's numbers need every image. Re-extract the\n"
            "archives; to train on a deliberate subset, set the parameter official_counts: false\n"
            "(in Python: read_benchmark(..., expected={...}))", tuple(differ), len(differ),
            "re-extract the archives, or set official_counts: false to train on a deliberate "
            "subset (its numbers are not the paper's)"))
    return problems


def unreadable_images(paths: Sequence[Path], max_examples: int = 5) -> list[Problem]:
    """The images among `paths` that PIL cannot read, as one problem (or none)."""
    bad = [(p, reason) for p in paths if (reason := image_problem(p)) is not None]
    if not bad:
        return []
    return [Problem(f"{len(bad):,} of {len(paths):,} images cannot be read",
                    "images that PIL opens: replace these files from the official archive",
                    tuple(f"{p} ({reason})" for p, reason in bad[:max_examples]), len(bad))]


def image_problem(path: Path) -> str | None:
    """Why PIL cannot read the image at `path`, or None when it can.

    Fast: the header is parsed and `verify()` checks what it can without decoding (PNG chunk
    checksums). A JPEG whose last bytes are not the end-of-image marker, the mark of a truncated
    download, is decoded in full: that tells truncation from harmless trailing bytes.
    """
    try:
        with Image.open(path) as im:
            is_jpeg = im.format == "JPEG"
            im.verify()
        if is_jpeg and not _ends_with_jpeg_marker(path):
            with Image.open(path) as im:
                im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return str(e).replace(f" {str(path)!r}", "") or type(e).__name__  # the path is shown
    return None


def _ends_with_jpeg_marker(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-2, 2)
        return f.read(2) == b"\xff\xd9"


@dataclass(frozen=True)
class BenchmarkReport:
    """The result of checking a benchmark copy; `text()` renders it for a terminal."""

    dataset: str
    title: str
    root: Path
    layout: str  # the layout found, in words ("" when the copy could not be read)
    found: dict[str, SplitCount]
    expected: dict[str, SplitCount]
    problems: list[Problem]
    images_verified: int  # images opened; 0 without verify_images

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [f"{self.title} ({self.dataset}) at {self.root}",
                 f"layout: {self.layout or 'not recognised'}"]
        if self.found:
            lines.append(f"{'split':<9}{'classes':>9}{'expected':>10}{'images':>10}"
                         f"{'expected':>10}")
        for name, got in self.found.items():
            want = self.expected.get(name)
            lines.append(f"{name:<9}{got.classes:>9,}{_count(want, 'classes'):>10}"
                         f"{got.images:>10,}{_count(want, 'images'):>10}")
        if self.images_verified:
            lines.append(f"images opened: {self.images_verified:,}")
        if self.ok:
            return "\n".join(lines + ["OK"])
        lines.append(f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:")
        return "\n".join(lines + [p.text() for p in self.problems])


def _count(count: SplitCount | None, field: str) -> str:
    return "-" if count is None else f"{getattr(count, field):,}"


def check_run_inputs(p: Params, progress: bool = True) -> dict[str, Split]:
    """The run's splits (data/splits.py, `load_splits`), once everything that can be checked
    before a run folder is written has been: the data (a missing, partial or unreadable copy:
    BenchmarkError), n_c × n_s against the training split (ParamError) and the pretrained weights
    (backbone.WeightsError). A run that cannot start then leaves no params.yaml behind, which
    would refuse the corrected parameters (official_counts: false, a smaller n_c) in the same
    folder (docs/errors.md)."""
    from ibdml.backbone import pretrained_state  # torch, and data/splits.py imports this module
    from ibdml.data.splits import load_splits

    splits = load_splits(p, progress=progress)
    train = splits["train"]
    check_batch_shape(p, train_classes=train.num_classes, largest_class=train.largest_class)
    if p.pretrained != "none":
        pretrained_state(p.backbone, p.pretrained)
    return splits
