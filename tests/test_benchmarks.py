"""Benchmark readers and the data check, on tiny trees in the exact official layouts.

Each builder writes real 8×8 images and the official listing files (a real cars_annos.mat
through scipy.io.savemat). The trees keep the official class ids, so the class-range splits
(CUB 1-100 / 101-200, Cars 1-98 / 99-196, SOP's two files, In-Shop's status column) are
exercised; their counts are tiny, so tests pass `expected=` or check the count-mismatch message.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from ibdml.data import benchmarks
from ibdml.data.benchmarks import (LAYOUTS, OFFICIAL_COUNTS, BenchmarkError, SplitCount,
                                   check_benchmark, read_benchmark)
from ibdml.data.folder import DatasetError, load_rgb


def write_image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)  # format from the suffix: .jpg → JPEG, .png → PNG


def counts(**splits):
    return {name: SplitCount(*c) for name, c in splits.items()}


# --- CUB-200-2011 --------------------------------------------------------------------------------

CUB_IMAGES = {1: 2, 2: 1, 101: 2, 102: 1}  # class id → images; 1-100 train, 101-200 test
CUB_COUNTS = counts(train=(2, 3), test=(2, 3))


def make_cub(root, images_per_class=CUB_IMAGES, write=write_image):
    """The official CUB layout; write(path, seed) makes each image."""
    names = {c: f"{c:03d}.Bird_{c}" for c in range(1, 201)}
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in names.items()))
    listing, labels, image_id = [], [], 0
    for c, n in images_per_class.items():
        for k in range(n):
            image_id += 1
            rel = f"{names[c]}/Bird_{c}_{k:04d}.jpg"
            write(root / "images" / rel, seed=image_id)
            listing.append(f"{image_id} {rel}\n")
            labels.append(f"{image_id} {c}\n")
    (root / "images.txt").write_text("".join(listing))
    (root / "image_class_labels.txt").write_text("".join(labels))
    return root


def test_cub200_official_layout(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    splits = read_benchmark("cub200", root, expected=CUB_COUNTS)
    assert set(splits) == {"train", "test"}
    train, test = splits["train"], splits["test"]
    assert train.labels.tolist() == [0, 0, 1] and test.labels.tolist() == [0, 0, 1]
    assert train.labels.dtype == np.int64
    assert train.class_names == ["001.Bird_1", "002.Bird_2"]
    assert test.class_names == ["101.Bird_101", "102.Bird_102"]
    assert all(p.is_file() for p in train.paths + test.paths)
    assert train.paths[0] == root / "images" / "001.Bird_1" / "Bird_1_0000.jpg"
    assert load_rgb(test.paths[-1]).size == (8, 8)
    report = check_benchmark("cub200", root, expected=CUB_COUNTS)
    assert report.ok and report.images_verified == 6 and report.text().endswith("OK")
    assert report.found == CUB_COUNTS and "official" in report.layout


def test_official_counts_are_the_default_and_a_subset_is_refused(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    with pytest.raises(BenchmarkError) as raised:
        read_benchmark("cub200", root)
    (problem,) = raised.value.problems
    assert problem.what == "2 splits differ from the expected counts" and problem.total == 2
    assert problem.examples == ("train: 2 classes and 3 images, expected 100 and 5,864",
                                "test: 2 classes and 3 images, expected 100 and 5,924")
    assert "the paper's numbers need every image" in str(raised.value)
    assert "official_counts: false" in str(raised.value)
    report = check_benchmark("cub200", root)
    assert not report.ok and report.problems == [problem]
    assert "\ntrain            2       100         3     5,864\n" in report.text()
    # {} compares no counts: a deliberate subset reads.
    assert len(read_benchmark("cub200", root, expected={})["train"]) == 3


def test_an_empty_split_is_refused_even_without_expected_counts(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011", {1: 2, 2: 1})  # no class above 100: no test split
    with pytest.raises(BenchmarkError) as raised:
        read_benchmark("cub200", root, expected={})
    (problem,) = raised.value.problems
    assert problem.what == "the test split has no images"
    assert "the class ranges of the CUB-200-2011 layout" in problem.expected


def test_official_counts_table():
    total = {n: sum(c.images for c in s.values()) for n, s in OFFICIAL_COUNTS.items()}
    assert total == {"cub200": 11788, "cars196": 16185, "sop": 120053, "inshop": 52712}
    assert OFFICIAL_COUNTS["sop"]["train"].classes + OFFICIAL_COUNTS["sop"]["test"].classes == 22634


# --- Cars196 -------------------------------------------------------------------------------------

CARS_CLASSES = [1, 1, 98, 99, 196]  # train: 1, 98; test: 99, 196
CARS_COUNTS = counts(train=(2, 3), test=(2, 2))


def make_cars(root, classes=CARS_CLASSES, class_names=True):
    """cars_annos.mat as in the Stanford release: a 1×N struct array and a 1×196 cell array."""
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(classes)), dtype=[(f, "O") for f in fields])
    for i, c in enumerate(classes):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_image(root / rel, seed=i)
        # The test flag contradicts the class split on purpose: it must be ignored.
        annotations[0, i] = (rel, np.uint8(1), np.uint8(2), np.uint16(7), np.uint16(6),
                             np.uint8(c), np.uint8(i % 2))
    content = {"annotations": annotations}
    if class_names:
        names = np.empty((1, 196), dtype=object)
        names[0, :] = [f"Make Model {c}" for c in range(1, 197)]
        content["class_names"] = names
    scipy.io.savemat(root / "cars_annos.mat", content)
    return root


def test_cars196_annotation_file(tmp_path):
    root = make_cars(tmp_path / "CARS")
    splits = read_benchmark("cars196", root, expected=CARS_COUNTS)
    assert splits["train"].labels.tolist() == [0, 0, 1]
    assert splits["test"].labels.tolist() == [0, 1]
    assert splits["train"].class_names == ["Make Model 1", "Make Model 98"]
    assert splits["test"].class_names == ["Make Model 99", "Make Model 196"]
    assert [p.name for p in splits["test"].paths] == ["000004.jpg", "000005.jpg"]
    assert check_benchmark("cars196", root, expected=CARS_COUNTS).ok


@pytest.mark.parametrize("under_images", [True, False])
def test_cars196_class_folders(tmp_path, under_images):
    root = tmp_path / "CARS"
    folder = root / "images" if under_images else root
    for c in range(1, 101):  # 100 sorted folders: 98 train, 2 test
        write_image(folder / f"{c:03d}" / "a.jpg", seed=c)
    write_image(folder / "099" / "b.png", seed=0)
    splits = read_benchmark("cars196", root, expected=counts(train=(98, 98), test=(2, 3)))
    assert splits["test"].class_names == ["099", "100"]
    assert splits["test"].labels.tolist() == [0, 0, 1]
    assert splits["train"].labels.tolist() == list(range(98))
    assert "class folders" in check_benchmark("cars196", root, expected={}).layout


def test_cars196_layouts_split_by_image_are_refused_with_the_fix(tmp_path):
    kaggle = tmp_path / "car_data"
    for part in ("train", "test"):
        write_image(kaggle / part / "Acura RL Sedan 2012" / "00001.jpg")
    with pytest.raises(DatasetError, match="train/ and test/ folders: a split by image"):
        read_benchmark("cars196", kaggle)
    devkit = tmp_path / "stanford_cars"
    (devkit / "devkit").mkdir(parents=True)
    write_image(devkit / "cars_train" / "00001.jpg")
    with pytest.raises(DatasetError, match="devkit layout .* split by image") as raised:
        read_benchmark("cars196", devkit)
    assert "cars_annos.mat + car_ims/" in str(raised.value)


def test_cars196_annotation_file_without_class_names(tmp_path):
    root = make_cars(tmp_path / "CARS", class_names=False)
    with pytest.raises(DatasetError, match="lacks `annotations` .* or `class_names`"):
        read_benchmark("cars196", root)
    (root / "cars_annos.mat").write_bytes(b"not a MATLAB file")
    with pytest.raises(DatasetError, match="cannot read .*cars_annos.mat"):
        read_benchmark("cars196", root)


# --- Stanford Online Products --------------------------------------------------------------------

SOP_COUNTS = counts(train=(2, 3), test=(2, 3))


def make_sop(root, header=True):
    rows = {"Ebay_train.txt": [(1, 1, "bicycle"), (1, 1, "bicycle"), (2, 2, "chair")],
            "Ebay_test.txt": [(11319, 3, "lamp"), (11320, 4, "mug"), (11320, 4, "mug")]}
    image_id = 0
    for name, entries in rows.items():
        lines = ["image_id class_id super_class_id path"] if header else []
        for class_id, super_id, category in entries:
            image_id += 1
            rel = f"{category}_final/{class_id}_{image_id}.JPG"
            write_image(root / rel, seed=image_id)
            lines.append(f"{image_id} {class_id} {super_id} {rel}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_sop_official_layout(tmp_path):
    root = make_sop(tmp_path / "Stanford_Online_Products")
    splits = read_benchmark("sop", root, expected=SOP_COUNTS)
    assert splits["train"].labels.tolist() == [0, 0, 1]
    assert splits["test"].labels.tolist() == [0, 1, 1]
    assert splits["train"].class_names == ["00001 (bicycle)", "00002 (chair)"]
    assert splits["test"].class_names == ["11319 (lamp)", "11320 (mug)"]
    assert splits["test"].paths[0] == root / "lamp_final" / "11319_4.JPG"
    assert check_benchmark("sop", root, expected=SOP_COUNTS).ok


def test_sop_listing_without_header_or_with_a_bad_row(tmp_path):
    root = make_sop(tmp_path / "sop", header=False)
    with pytest.raises(DatasetError, match="Ebay_train.txt line 1 should be the header "
                                           "'image_id class_id super_class_id path'"):
        read_benchmark("sop", root)
    root = make_sop(tmp_path / "sop2")
    with open(root / "Ebay_test.txt", "a") as f:
        f.write("7 11321\n")
    with pytest.raises(DatasetError, match="Ebay_test.txt line 5: '7 11321' is not"):
        read_benchmark("sop", root)


# --- In-Shop -------------------------------------------------------------------------------------

# (image_name, item, status): item 2 is in query and gallery, item 4 only in the gallery, item 5
# only in the query. Query and gallery are labelled jointly over items 2, 4, 5 → 0, 1, 2.
INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "id_00000001", "train"),
    ("img/WOMEN/Dresses/id_00000001/01_2_side.jpg", "id_00000001", "train"),
    ("img/MEN/Denim/id_00000003/01_1_front.jpg", "id_00000003", "train"),
    ("img/WOMEN/Skirts/id_00000002/01_1_front.jpg", "id_00000002", "query"),
    ("img/WOMEN/Skirts/id_00000002/01_2_side.jpg", "id_00000002", "query"),
    ("img/MEN/Tees/id_00000005/01_1_front.jpg", "id_00000005", "query"),
    ("img/WOMEN/Skirts/id_00000002/01_3_back.jpg", "id_00000002", "gallery"),
    ("img/WOMEN/Tees/id_00000004/01_1_front.jpg", "id_00000004", "gallery"),
    ("img/WOMEN/Tees/id_00000004/01_2_side.jpg", "id_00000004", "gallery"),
]
INSHOP_COUNTS = counts(train=(2, 3), query=(3, 3), gallery=(3, 3))


def make_inshop(root, images_in="Img", announced=None):
    """images_in: "Img" (official, Img/img/...) or "" (img/... in the root)."""
    for i, (name, _, _) in enumerate(INSHOP_ROWS):
        write_image(root / images_in / name, seed=i)
    lines = [str(len(INSHOP_ROWS) if announced is None else announced),
             "image_name item_id evaluation_status"]
    lines += [f"{name}  {item}  {status}" for name, item, status in INSHOP_ROWS]
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("images_in,layout", [("Img", "official"), ("", "not Img/img/")])
def test_inshop_both_image_layouts(tmp_path, images_in, layout):
    root = make_inshop(tmp_path / "In_shop", images_in)
    splits = read_benchmark("inshop", root, expected=INSHOP_COUNTS)
    train, query, gallery = splits["train"], splits["query"], splits["gallery"]
    assert train.labels.tolist() == [0, 0, 1]
    assert train.class_names == ["id_00000001 (WOMEN/Dresses)", "id_00000003 (MEN/Denim)"]
    # One joint labelling: item 2 is label 0 in both query and gallery.
    assert query.class_names == gallery.class_names == [
        "id_00000002 (WOMEN/Skirts)", "id_00000004 (WOMEN/Tees)", "id_00000005 (MEN/Tees)"]
    assert query.labels.tolist() == [0, 0, 2] and gallery.labels.tolist() == [0, 1, 1]
    assert not set(query.paths) & set(gallery.paths)
    assert all(p.is_file() for p in query.paths + gallery.paths + train.paths)
    report = check_benchmark("inshop", root, expected=INSHOP_COUNTS)
    assert report.ok and layout in report.layout and f"layout: {report.layout}" in report.text()


def test_inshop_broken_listing_and_images(tmp_path):
    root = make_inshop(tmp_path / "a", announced=52712)
    with pytest.raises(DatasetError, match="announces 52,712 images but lists 9: a truncated"):
        read_benchmark("inshop", root)
    root = tmp_path / "b"
    make_inshop(root)
    (root / "Img" / "img").rename(root / "Img" / "flat")
    (root / "Img" / "flat" / "WOMEN").rename(root / "Img" / "WOMEN")
    with pytest.raises(DatasetError, match="Img/ holds WOMEN/ itself: move it into Img/img/"):
        read_benchmark("inshop", root)


# --- Broken copies: every problem names itself, its examples and total, and the fix --------------


def test_root_missing_or_an_archive(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as raised:
        read_benchmark("sop", tmp_path / "nowhere")
    assert textwrap.indent(LAYOUTS["sop"], "    ") in str(raised.value)
    archive = tmp_path / "CUB_200_2011.tgz"
    archive.write_bytes(b"\x1f\x8b")
    with pytest.raises(DatasetError, match="is a file, not a folder \\(an archive: extract it"):
        read_benchmark("cub200", archive)


def test_a_required_file_missing_names_it_and_shows_the_layout(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    (root / "classes.txt").unlink()
    with pytest.raises(BenchmarkError) as raised:
        read_benchmark("cub200", root)
    message = str(raised.value)
    assert f"classes.txt missing in {root}" in message and str(root / "classes.txt") in message
    assert "image_class_labels.txt" in message and "└── images/001.Black_footed" in message
    (problem,) = raised.value.problems
    assert problem.total == 1 and problem.examples == (str(root / "classes.txt"),)


@pytest.mark.parametrize("pointed_at", ["parent", "images", "class folder"])
def test_wrong_root_suggests_the_right_one(tmp_path, pointed_at):
    root = make_cub(tmp_path / "data" / "CUB_200_2011")
    wrong = {"parent": root.parent, "images": root / "images",
             "class folder": root / "images" / "001.Bird_1"}[pointed_at]
    with pytest.raises(DatasetError) as raised:
        read_benchmark("cub200", wrong)
    assert f"{wrong} is not the CUB-200-2011 folder, but {root} holds images.txt" in str(
        raised.value)
    assert f"expected: ROOT = {root}" in str(raised.value)


def test_wrong_root_for_inshop_and_another_dataset_recognised(tmp_path):
    root = make_inshop(tmp_path / "In_shop")
    with pytest.raises(DatasetError, match=f"but {root} holds Eval/list_eval_partition.txt"):
        read_benchmark("inshop", root / "Img")
    sop = make_sop(tmp_path / "sop")
    with pytest.raises(DatasetError, match="it looks like sop: check that dataset name"):
        read_benchmark("cub200", sop)


def test_missing_images_give_the_total_and_five_examples(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011", {1: 4, 2: 4, 101: 4})
    gone = sorted((root / "images").rglob("*.jpg"))[:7]
    for p in gone:
        p.unlink()
    expected = counts(train=(2, 8), test=(1, 4))
    with pytest.raises(BenchmarkError) as raised:
        read_benchmark("cub200", root, expected=expected)
    (problem,) = raised.value.problems
    assert problem.what == "7 of 12 listed images are missing on disk"
    assert problem.total == 7 and problem.examples == tuple(str(p) for p in gone[:5])
    assert problem.expected == f"images.txt's paths, relative to {root / 'images'}"
    assert "... (5 of 7 shown)" in str(raised.value)
    # The check reports the same message, and does not try to open the missing files.
    report = check_benchmark("cub200", root, expected=expected)
    assert report.problems == raised.value.problems and report.images_verified == 5


def test_unreadable_images_are_found_by_the_check_not_by_reading(tmp_path):
    root = make_sop(tmp_path / "sop")
    not_an_image = root / "bicycle_final" / "1_1.JPG"
    not_an_image.write_text("<html>404 Not Found</html>")
    truncated = root / "chair_final" / "2_3.JPG"
    big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(truncated, format="JPEG")
    truncated.write_bytes(truncated.read_bytes()[:-400])  # a download cut short
    read_benchmark("sop", root, expected=SOP_COUNTS)  # reading does not open images
    report = check_benchmark("sop", root, expected=SOP_COUNTS)
    (problem,) = report.problems
    assert problem.what == "2 of 6 images cannot be read" and problem.total == 2
    assert problem.examples[0] == f"{not_an_image} (cannot identify image file)"
    assert problem.examples[1].startswith(f"{truncated} (image file is truncated")
    assert "replace these files" in report.text() and not report.ok
    assert check_benchmark("sop", root, expected=SOP_COUNTS, verify_images=False).ok
    with pytest.raises(DatasetError, match="cannot read image .*2_3.JPG"):
        load_rgb(truncated)  # what training would meet: the file is named


def test_read_and_check_give_the_same_messages(tmp_path):
    root = make_sop(tmp_path / "sop")
    (root / "mug_final" / "11320_5.JPG").unlink()
    report = check_benchmark("sop", root)
    with pytest.raises(BenchmarkError) as raised:
        read_benchmark("sop", root)
    assert str(raised.value) == "\n".join(p.text() for p in report.problems)
    assert len(report.problems) == 2  # one missing image; the counts of both splits
    text = report.text()
    assert text.startswith(f"Stanford Online Products (sop) at {root}\nlayout: official")
    assert "2 problems:" in text and "1 of 6 listed images are missing on disk" in text


def test_a_structural_problem_is_a_report_not_an_exception(tmp_path):
    report = check_benchmark("inshop", tmp_path / "nowhere")
    assert not report.ok and report.found == {} and report.layout == ""
    assert "layout: not recognised" in report.text() and "does not exist" in report.text()


def test_unknown_benchmark_name():
    with pytest.raises(DatasetError, match="unknown benchmark 'cub'; choose one of cub200"):
        read_benchmark("cub", ".")


def test_the_docs_show_every_layout_the_errors_show():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "datasets.md").read_text()
    for name, tree in LAYOUTS.items():
        assert f"\n    {name} " in benchmarks.__doc__, f"the module docstring must list {name}"
        assert tree in docs, f"docs/datasets.md must show the {name} layout exactly as LAYOUTS"


def test_cub_listings_that_disagree(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    labels = (root / "image_class_labels.txt").read_text().splitlines()
    (root / "image_class_labels.txt").write_text("\n".join(labels[1:]) + "\n")
    with pytest.raises(DatasetError, match="1 image ids of images.txt have no line in "
                                           "image_class_labels.txt") as raised:
        read_benchmark("cub200", root)
    assert raised.value.problems[0].examples == ("1",)
    root = make_cub(tmp_path / "b")
    names = (root / "classes.txt").read_text().splitlines()
    (root / "classes.txt").write_text("\n".join(names[:100]) + "\n")
    with pytest.raises(DatasetError, match=r"class ids \[101, 102\] of image_class_labels.txt "
                                           "are not in classes.txt"):
        read_benchmark("cub200", root)
