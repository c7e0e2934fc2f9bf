"""The benchmarks' listing files and folders: parsing their rows, finding their ROOT, and the
errors that show the expected layout (docs/datasets.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ibdml.data.check import BenchmarkError, Problem

TITLES = {"cub200": "CUB-200-2011", "cars196": "Cars196", "sop": "Stanford Online Products",
          "inshop": "In-Shop Clothes Retrieval"}
# What each layout needs in ROOT; the first entry marks a root (used to spot a wrong folder).
REQUIRED = {"cub200": ("images.txt", "image_class_labels.txt", "classes.txt", "images/"),
            "cars196": ("cars_annos.mat", "car_ims/"),
            "sop": ("Ebay_train.txt", "Ebay_test.txt"),
            "inshop": ("Eval/list_eval_partition.txt",)}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z")

# The layouts, shown in error messages and in docs/datasets.md (a test keeps them the same).
LAYOUTS = {
    "cub200": """\
CUB_200_2011/                  <- ROOT
├── images.txt                 "<image id> <path under images/>"
├── image_class_labels.txt     "<image id> <class id 1..200>"
├── classes.txt                "<class id> <class name>"
└── images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg, ...""",
    "cars196": """\
CARS/                          <- ROOT
├── cars_annos.mat             struct array `annotations` (relative_im_path, bbox_x1,
│                              bbox_y1, bbox_x2, bbox_y2, class 1..196, test), cell array
│                              `class_names`
└── car_ims/000001.jpg, ...
or 196 class folders, the first 98 (sorted) train: ROOT/images/<class>/ or ROOT/<class>/""",
    "sop": """\
Stanford_Online_Products/      <- ROOT
├── Ebay_train.txt             header "image_id class_id super_class_id path", then one row
│                              per image: "1 1 1 bicycle_final/111085122871_0.JPG"
├── Ebay_test.txt              the same columns
└── bicycle_final/111085122871_0.JPG, ... (12 category folders)""",
    "inshop": """\
In_shop/                       <- ROOT
├── Eval/list_eval_partition.txt
│       line 1: the number of images; line 2: "image_name item_id evaluation_status"; then
│       one row per image: "img/WOMEN/.../02_1_front.jpg id_00000002 train|query|gallery"
└── Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg, ...
or img/WOMEN/... directly in ROOT (img.zip unpacked there)""",
}


def fail(what: str, expected: str, examples: Sequence = (),
         total: int | None = None) -> NoReturn:
    examples = [str(e) for e in examples]
    raise BenchmarkError([Problem(what, expected, tuple(examples[:5]),
                                  len(examples) if total is None else total)])


def dataset_folder(root: Path, name: str) -> Path:
    """ROOT, which must be a folder; for all but Cars (two layouts) holding the required files."""
    root = Path(root).expanduser()
    if not root.exists():
        fail(f"{root} does not exist", "the dataset folder:\n" + LAYOUTS[name])
    if not root.is_dir():
        archive = " (an archive: extract it first)" if root.name.endswith(ARCHIVE_SUFFIXES) else ""
        fail(f"{root} is a file, not a folder{archive}", "the dataset folder:\n" + LAYOUTS[name])
    if name != "cars196" and any(not (root / f).exists() for f in REQUIRED[name]):
        raise layout_error(root, name)
    return root


def layout_error(root: Path, name: str) -> BenchmarkError:
    """The required files missing in ROOT, or the right root when a neighbouring folder holds the
    marker file (ROOT pointed at the dataset's parent, or at images/ itself)."""
    marker = REQUIRED[name][0]
    nearby = [root.parent, root.parent.parent] + sorted(d for d in root.iterdir() if d.is_dir())
    for candidate in nearby:
        if (candidate / marker).is_file():
            return BenchmarkError([Problem(
                f"{root} is not the {TITLES[name]} folder, but {candidate} holds {marker}",
                f"ROOT = {candidate}:\n" + LAYOUTS[name])])
    others = [n for n, files in REQUIRED.items() if n != name and (root / files[0]).is_file()]
    looks = f" (it looks like {others[0]}: check that dataset name)" if others else ""
    missing = [root / f for f in REQUIRED[name] if not (root / f).exists()]
    return BenchmarkError([Problem(
        f"{', '.join(str(m.relative_to(root)) for m in missing)} missing in {root}{looks}",
        "the layout:\n" + LAYOUTS[name], tuple(str(m) for m in missing), len(missing))])


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {path}: {e}", "a text file from the official archive")


def read_rows(path: Path, columns: str, *, header: str | None = None,
              skip: int = 0) -> list[list[str]]:
    """The whitespace-separated rows of a listing, after `skip` lines and a `header` line (when
    given, it must match). Each row has the fields `columns` names; the last keeps any spaces."""
    lines = read_lines(path)[skip:]
    if header is not None:
        if not lines or lines[0].split() != header.split():
            got = lines[0] if lines else ""
            fail(f"{path} line {skip + 1} should be the header {header!r}, got {got!r}",
                  f"the official file: the header {header!r}, then one row per image")
        lines, skip = lines[1:], skip + 1
    width, rows = columns.count("<"), []
    for number, line in enumerate(lines, start=skip + 1):
        if line.strip():
            fields = line.split(maxsplit=width - 1)
            if len(fields) != width:
                fail(f"{path} line {number}: {line.strip()!r} is not {columns!r}",
                      f"one row per line: {columns}")
            rows.append(fields)
    return rows


def parse_int(value: str, path: Path) -> int:
    try:
        return int(value)
    except ValueError:
        fail(f"{path}: {value!r} is not an integer id", "the official file, unedited")


