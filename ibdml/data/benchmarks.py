"""Readers for the paper's four benchmarks, from their official file layouts (docs/method.md §2).

Each reader returns the class-disjoint splits as `Split`s. Labels are 0-based ranks of the
dataset's own class ids (sorted) within a split; In-Shop's query and gallery are labelled jointly,
so an item has the same label in both. The layouts, with ROOT the folder to pass, are
`listings.LAYOUTS` (shown in every error message, and in docs/datasets.md):

    cub200   CUB-200-2011: classes 1-100 train, 101-200 test
    cars196  Cars196: classes 1-98 train, 99-196 test
    sop      Stanford Online Products: classes 1-11318 train, 11319-22634 test
    inshop   In-Shop Clothes Retrieval: splits train, query, gallery

Cars' `test` flag and CUB's `train_test_split.txt` split by image and are ignored: the paper
splits by class (docs/method.md §2.1). Bounding boxes are ignored too (the paper does not crop).

Counts: a copy whose classes or images differ from `OFFICIAL_COUNTS` is refused by default,
because the paper's numbers need the full set; a deliberate subset passes its own `expected`
counts ({} compares none). `read_benchmark` refuses structural problems (missing files, wrong
root, listed images missing on disk) and count mismatches with one `BenchmarkError` listing them
all, before any training step. It does not open the images (too slow for SOP); `check_benchmark`
does, and returns the same problems as a report (`ibdml check-data`). The problems themselves,
and the report, are in `check.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ibdml.data.check import (BenchmarkError, BenchmarkReport, Problem, SplitCount,
                              count_problems, missing_images, unreadable_images)
from ibdml.data.folder import IMAGE_SUFFIXES, DatasetError, Split
from ibdml.data.listings import (LAYOUTS, TITLES, dataset_folder, fail, layout_error,
                                 parse_int, read_lines, read_rows)


# Published image and class counts (docs/method.md §2; docs/datasets.md, "Getting the datasets:
# known pitfalls"). In-Shop's query and gallery share the 3,985 test items (7,982 items in all,
# 3,997 train), so both report that joint item count.
OFFICIAL_COUNTS: dict[str, dict[str, SplitCount]] = {
    "cub200": {"train": SplitCount(100, 5864), "test": SplitCount(100, 5924)},
    "cars196": {"train": SplitCount(98, 8054), "test": SplitCount(98, 8131)},
    "sop": {"train": SplitCount(11318, 59551), "test": SplitCount(11316, 60502)},
    "inshop": {"train": SplitCount(3997, 25882), "query": SplitCount(3985, 14218),
               "gallery": SplitCount(3985, 12612)},
}
CUB_TRAIN_CLASSES = 100  # class ids 1..100 train (docs/method.md §2.1)
CARS_TRAIN_CLASSES = 98  # class ids (or sorted class folders) 1..98 train


@dataclass(frozen=True)
class Benchmark:
    """What a reader found: the splits, the layout in words, and where listed images live."""

    splits: dict[str, Split]
    layout: str
    images_under: str


# ---------------------------------------------------------------------------------------------
# The four readers: the layout and the listings; `read_benchmark` adds the image and count checks
# ---------------------------------------------------------------------------------------------


def read_cub200(root: Path) -> Benchmark:
    """CUB-200-2011: class ids 1-100 train, 101-200 test; names from classes.txt."""
    root = dataset_folder(root, "cub200")
    paths = dict(read_rows(root / "images.txt", "<image id> <path>"))
    labels = dict(read_rows(root / "image_class_labels.txt", "<image id> <class id>"))
    names = {parse_int(c, root / "classes.txt"): n
             for c, n in read_rows(root / "classes.txt", "<class id> <name>")}
    unlabelled = [i for i in paths if i not in labels]
    if unlabelled:
        fail(f"{len(unlabelled):,} image ids of images.txt have no line in "
              "image_class_labels.txt", "one class id per image id", unlabelled)
    classes = np.array([parse_int(labels[i], root / "image_class_labels.txt") for i in paths])
    unnamed = sorted(set(classes.tolist()) - set(names))
    if unnamed:
        fail(f"class ids {unnamed[:5]} of image_class_labels.txt are not in classes.txt",
              "classes.txt naming every class id 1..200", total=len(unnamed))
    files = np.array([root / "images" / p for p in paths.values()], dtype=object)
    return Benchmark(_by_class_id(files, classes, names, CUB_TRAIN_CLASSES),
                     "official (images.txt, image_class_labels.txt, classes.txt, images/)",
                     f"images.txt's paths, relative to {root / 'images'}")


def read_cars196(root: Path) -> Benchmark:
    """Cars196 from cars_annos.mat (class ids 1-98 train) or from 196 class folders (the first
    98 sorted train); names from `class_names` or the folder names. Layouts split by image (the
    devkit's, Kaggle's train/ + test/) are refused with the fix."""
    root = dataset_folder(root, "cars196")
    if (root / "cars_annos.mat").is_file():
        return _cars_from_annotations(root)
    folder = root / "images" if (root / "images").is_dir() else root
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    found = {d.name for d in class_dirs}
    if found & {"train", "test"}:
        fail(f"{folder} holds train/ and test/ folders: a split by image (e.g. the Kaggle copy)",
              "the paper splits by class: merge the class folders of train/ and test/ into\n"
              "ROOT/images/<class>/ (196 folders), or use cars_annos.mat + car_ims/:\n"
              + LAYOUTS["cars196"])
    if found & {"devkit", "cars_train", "cars_test"}:
        fail(f"{root} is the devkit layout (cars_train/, cars_test/, devkit/), split by image",
              "cars_annos.mat + car_ims/ (the same 16,185 images, split here by class):\n"
              + LAYOUTS["cars196"])
    if len(class_dirs) < 2 or not _holds_images(class_dirs[0]):
        raise layout_error(root, "cars196")  # neither cars_annos.mat nor class folders
    return _cars_from_folders(folder, class_dirs)


def read_sop(root: Path) -> Benchmark:
    """Stanford Online Products: Ebay_train.txt and Ebay_test.txt are the two splits."""
    root = dataset_folder(root, "sop")
    splits = {}
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        rows = read_rows(root / name, "<image_id> <class_id> <super_class_id> <path>",
                     header="image_id class_id super_class_id path")
        classes = np.array([parse_int(r[1], root / name) for r in rows])
        # Readable: the class id and its category folder ("bicycle_final" → "bicycle").
        names = {int(c): f"{int(c):05d} ({r[3].split('/')[0].removesuffix('_final')})"
                 for c, r in zip(classes, rows)}
        files = np.array([root / r[3] for r in rows], dtype=object)
        splits[split] = _split(split, files, classes, names)
    return Benchmark(splits, "official (Ebay_train.txt, Ebay_test.txt, category folders)",
                     f"the paths of Ebay_train.txt and Ebay_test.txt, relative to {root}")


def read_inshop(root: Path) -> Benchmark:
    """In-Shop: train, query and gallery from the evaluation_status column; images under Img/
    (official) or in ROOT. Query and gallery share one labelling of their items (§2.2), and the
    same class_names: num_classes counts the test items of both, some absent from one split."""
    root = dataset_folder(root, "inshop")
    listing = root / "Eval" / "list_eval_partition.txt"
    announced = (read_lines(listing) or [""])[0].strip()
    if not announced.isdigit():
        fail(f"{listing} line 1 should be the number of images, got {announced!r}",
              "line 1: the number of images; line 2: the column names; then one row per image")
    rows = read_rows(listing, "<image_name> <item_id> <evaluation_status>",
                 header="image_name item_id evaluation_status", skip=1)
    if int(announced) != len(rows):
        fail(f"{listing} announces {int(announced):,} images but lists {len(rows):,}: a "
              "truncated or edited file", "the complete list_eval_partition.txt (52,712 rows)")
    status = np.array([r[2] for r in rows])
    unknown = sorted(set(status.tolist()) - {"train", "query", "gallery"})
    if unknown:
        fail(f"{listing} has evaluation_status values {unknown[:5]}", "train, query or gallery")
    base, layout = _inshop_images(root, rows[0][0] if rows else "img/")
    # Item "id_00000002" → class id 2 (docs/method.md §2.2); its name keeps the category folder.
    items = np.array([parse_int(r[1].rsplit("_", 1)[-1], listing) for r in rows])
    names = {int(i): f"{r[1]} ({'/'.join(r[0].split('/')[1:3])})" for i, r in zip(items, rows)}
    files = np.array([base / r[0] for r in rows], dtype=object)
    test_items = np.unique(items[status != "train"])  # query and gallery: one joint labelling
    splits = {s: _split(s, files[status == s], items[status == s], names,
                        None if s == "train" else test_items)
              for s in ("train", "query", "gallery")}
    return Benchmark(splits, layout, f"list_eval_partition.txt's image_name, relative to {base}")


READERS: dict[str, Callable[[Path], Benchmark]] = {
    "cub200": read_cub200, "cars196": read_cars196, "sop": read_sop, "inshop": read_inshop}
BENCHMARKS = tuple(READERS)


def read_benchmark(name: str, root: Path | str, *,
                   expected: Mapping[str, SplitCount] | None = None) -> dict[str, Split]:
    """The splits of benchmark `name` read from `root`, ready for training and evaluation.

    Args:
        name: one of BENCHMARKS (cub200, cars196, sop, inshop).
        root: the dataset folder (layouts in the module docstring).
        expected: {split: SplitCount} to compare with; None → OFFICIAL_COUNTS[name]. Splits left
            out are not compared ({} compares none, for a deliberate subset).

    Returns:
        {"train", "test"} (In-Shop: {"train", "query", "gallery"}) → Split.

    Raises:
        BenchmarkError (a DatasetError) listing every structural problem, listed image missing
        on disk (total and examples) and count mismatch, each with what is expected. Images are
        not opened: `load_rgb` names an unreadable one when it meets it, check_benchmark finds all.
    """
    benchmark = _reader(name)(Path(root))
    problems = _listing_problems(name, benchmark, expected, max_examples=5)
    if problems:
        raise BenchmarkError(problems)
    return benchmark.splits


def check_benchmark(name: str, root: Path | str, *,
                    expected: Mapping[str, SplitCount] | None = None, verify_images: bool = True,
                    max_examples: int = 5) -> BenchmarkReport:
    """Everything `read_benchmark` refuses, with the same messages, as a report that never raises
    for a bad copy; with verify_images, also every listed image that PIL cannot read. Opening
    (`check.image_problem`) costs ~50 µs per image from the disk cache (SOP's 120k: ~6 s), more
    from a cold disk.

    Args:
        name, root, expected: as for read_benchmark.
        verify_images: open every listed image that exists.
        max_examples: example paths shown per problem (the total is always given).
    """
    reader = _reader(name)
    expected = dict(OFFICIAL_COUNTS[name] if expected is None else expected)
    root = Path(root).expanduser()
    try:
        benchmark = reader(root)
    except BenchmarkError as e:
        return BenchmarkReport(name, TITLES[name], root, "", {}, expected, e.problems, 0)
    problems = _listing_problems(name, benchmark, expected, max_examples)
    paths = [p for split in benchmark.splits.values() for p in split.paths if p.is_file()]
    if verify_images:
        problems += unreadable_images(paths, max_examples)
    found = {s: SplitCount(split.num_classes, len(split)) for s, split in benchmark.splits.items()}
    return BenchmarkReport(name, TITLES[name], root, benchmark.layout, found, expected, problems,
                           len(paths) if verify_images else 0)


def _listing_problems(name: str, benchmark: Benchmark, expected: Mapping[str, SplitCount] | None,
                      max_examples: int) -> list[Problem]:
    return (missing_images(benchmark.splits, benchmark.images_under, max_examples)
            + count_problems(benchmark.splits,
                             OFFICIAL_COUNTS[name] if expected is None else expected, TITLES[name]))


def _reader(name: str) -> Callable[[Path], Benchmark]:
    if name not in READERS:
        raise DatasetError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return READERS[name]


def _split(name: str, files: np.ndarray, class_ids: np.ndarray, names: Mapping[int, str],
           classes: np.ndarray | None = None) -> Split:
    """A split labelled by the rank of each image's class id among `classes` (default: the
    split's own class ids, sorted)."""
    classes = np.unique(class_ids) if classes is None else classes
    labels = np.searchsorted(classes, class_ids).astype(np.int64)
    return Split(name, list(files), labels, [names[int(c)] for c in classes])


def _by_class_id(files: np.ndarray, classes: np.ndarray, names: Mapping[int, str],
                 train_classes: int) -> dict[str, Split]:
    """Class ids 1..train_classes train, the rest test (CUB and Cars, docs/method.md §2.1)."""
    train = classes <= train_classes
    return {"train": _split("train", files[train], classes[train], names),
            "test": _split("test", files[~train], classes[~train], names)}


def _cars_from_annotations(root: Path) -> Benchmark:
    from scipy.io import loadmat  # lazy: only Cars needs scipy.io
    from scipy.io.matlab import MatReadError

    path = root / "cars_annos.mat"
    try:
        mat = loadmat(path, squeeze_me=True)  # the 1×N struct array → a record array [N]
    except (MatReadError, NotImplementedError, ValueError, OSError) as e:  # v7.3: NotImplemented
        fail(f"cannot read {path}: {e}", "the MATLAB v5 cars_annos.mat of the Stanford release")
    annotations = np.atleast_1d(mat.get("annotations", np.array([])))
    if not {"relative_im_path", "class"} <= set(annotations.dtype.names or ()) \
            or "class_names" not in mat:
        fail(f"{path} lacks `annotations` with relative_im_path and class, or `class_names`",
              "the cars_annos.mat of the Stanford release, not the devkit's cars_*_annos.mat")
    names = {i: str(n) for i, n in enumerate(np.atleast_1d(mat["class_names"]), start=1)}
    classes = np.array([int(c) for c in np.atleast_1d(annotations["class"])], dtype=np.int64)
    if len(classes) == 0 or classes.min() < 1 or classes.max() > len(names):
        fail(f"{path}: class ids outside 1..{len(names)}", "class ids 1..196")
    files = np.array([root / str(p) for p in np.atleast_1d(annotations["relative_im_path"])],
                     dtype=object)
    return Benchmark(_by_class_id(files, classes, names, CARS_TRAIN_CLASSES),
                     "official (cars_annos.mat + car_ims/)",
                     f"relative_im_path (car_ims/000001.jpg) of cars_annos.mat, relative to {root}")


def _holds_images(folder: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir())


def _cars_from_folders(folder: Path, class_dirs: list[Path]) -> Benchmark:
    files, classes = [], []
    for class_id, d in enumerate(class_dirs, start=1):  # sorted folder rank = class id (§2.1)
        found = sorted(f for f in d.iterdir()
                       if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("._"))
        files += found
        classes += [class_id] * len(found)
    names = {class_id: d.name for class_id, d in enumerate(class_dirs, start=1)}
    splits = _by_class_id(np.array(files, dtype=object), np.array(classes, dtype=np.int64),
                          names, CARS_TRAIN_CLASSES)
    return Benchmark(splits, f"class folders in {folder} (the first {CARS_TRAIN_CLASSES} train)",
                     f"the image files in the class folders of {folder}")


def _inshop_images(root: Path, first: str) -> tuple[Path, str]:
    """The folder that image_name ("img/WOMEN/...") is relative to, and the layout in words."""
    top = first.split("/")[0]
    if (root / "Img" / top).is_dir():
        return root / "Img", f"official (Eval/list_eval_partition.txt, images in Img/{top}/)"
    if (root / top).is_dir():
        return root, f"Eval/list_eval_partition.txt, images in {top}/ in ROOT (not Img/{top}/)"
    flat = " (Img/ holds WOMEN/ itself: move it into Img/img/)" \
        if (root / "Img" / "WOMEN").is_dir() else ""
    fail(f"neither {root / 'Img' / top} nor {root / top} is a folder{flat}",
          "img.zip's img/ folder in Img/ (Img/img/WOMEN/...) or in ROOT (img/WOMEN/...):\n"
          + LAYOUTS["inshop"])
