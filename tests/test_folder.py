"""The image-folder reader and the class-disjoint splits: sorted class ranks, clear errors."""

import numpy as np
import pytest
from PIL import Image

from ibdml.data.folder import DatasetError, ImageDataset, load_rgb, read_image_folder
from ibdml.data.splits import first_classes_train, hold_out_validation


def make_tree(root, sizes):
    for c, n in enumerate(sizes):
        d = root / "images" / f"{c:03d}.class"
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), i * 10).save(d / f"{i}.png")
        (d / "._0.png").write_bytes(b"macOS metadata")  # skipped
        (d / "notes.txt").write_text("not an image")  # skipped
    return root


def test_labels_are_sorted_folder_ranks(tmp_path):
    data = read_image_folder(make_tree(tmp_path, [2, 3, 1]))
    assert data.class_names == ["000.class", "001.class", "002.class"]
    assert data.labels.tolist() == [0, 0, 1, 1, 1, 2]


def test_class_disjoint_splits_with_validation(tmp_path):
    data = read_image_folder(make_tree(tmp_path, [2] * 10))
    s = first_classes_train(data, train_classes=6)
    s["train"], s["val"] = hold_out_validation(s["train"], held_out=2)
    assert s["train"].class_names == data.class_names[:4]
    assert s["val"].class_names == data.class_names[4:6]
    assert s["test"].class_names == data.class_names[6:]
    for split in s.values():  # relabelled from 0 within each split
        assert split.labels.min() == 0 and split.labels.max() == split.num_classes - 1
    names = [set(map(str, s[k].paths)) for k in s]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="root/images/<class>"):
        read_image_folder(tmp_path)
    (tmp_path / "images" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        read_image_folder(tmp_path)
    data = read_image_folder(make_tree(tmp_path / "t", [1, 1]))
    with pytest.raises(DatasetError, match="leave none for testing"):
        first_classes_train(data, 2)


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        load_rgb(bad)


def test_dataset_items(tmp_path):
    data = read_image_folder(make_tree(tmp_path, [2, 2]))
    ds = ImageDataset(data, lambda im: np.asarray(im).shape)
    assert ds[3] == ((8, 8, 3), 1, 3)  # greyscale is read as RGB
