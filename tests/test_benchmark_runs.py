"""Training and evaluating on benchmark copies, end to end on tiny trees in the official layouts:
CUB (one set searched against itself) and In-Shop (queries against a gallery, MPN at inference
on query → gallery graphs); a broken copy stops before the first step with the checker's message;
an unreadable image met in training names its file."""

import json

import numpy as np
import pytest
from PIL import Image

from ibdml.config import load_params
from ibdml.data.splits import load_splits
from ibdml.data.folder import DatasetError
from ibdml.steps.evaluate import evaluate_run, retrieval_examples
from ibdml.steps.mpn_inference import evaluate_mpn_inference
from ibdml.steps.train import train
from test_benchmarks import make_cub as make_official_cub

SMALL = {"official_counts": False, "image_size": 32, "test_resize_ratio": 1.0,
         "crop_scale_min": 0.5, "random_erasing": False, "normalize": "per_image",
         "backbone": "resnet18", "embedding_dim": 32, "mpn_layers": 1, "mpn_heads": 2,
         "n_c": 3, "n_s": 2, "epochs": 1, "eval_every": 1, "attention_probes": 1,
         "mpn_inference_k": 4, "mpn_inference_batch": 3}


def image(path, seed):
    """A 32 px stripe pattern set by the seed, plus noise (In-Shop: by item, so that retrieval
    has something to find)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (32, 32, 3)) + (np.arange(32)[:, None, None] * (seed % 7)) % 190
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def make_cub(root, classes=(1, 2, 3, 4, 101, 102, 103), per_class=4):
    """Classes 1-4 train, 101-103 test, 4 images each, in the official layout."""
    return make_official_cub(root, {c: per_class for c in classes}, write=image)


def make_inshop(root):
    """4 train items × 4 images; 10 test items × (3 query + 5 gallery) images: 50 gallery images
    for In-Shop's largest K."""
    rows = []
    for item in range(1, 5):
        rows += [(f"img/MEN/Tees/id_{item:08d}/{k:02d}_1_front.jpg", item, "train")
                 for k in range(4)]
    for item in range(5, 15):
        rows += [(f"img/WOMEN/Dresses/id_{item:08d}/{k:02d}_1_front.jpg", item,
                  "query" if k < 3 else "gallery") for k in range(8)]
    for name, item, _ in rows:
        image(root / "Img" / name, seed=item * 100 + len(name))
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    lines += [f"{name} id_{item:08d} {status}" for name, item, status in rows]
    (root / "Eval").mkdir(parents=True)
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def test_cub_copy_trains_evaluates_and_refines(tmp_path):
    p = load_params(None, {**SMALL, "dataset": "cub200",
                           "data_root": str(make_cub(tmp_path / "CUB_200_2011"))})
    train(p, tmp_path / "run", progress=False)
    m = evaluate_run(tmp_path / "run", progress=False)
    assert m["split"] == "test" and set(m["recall_at_k"]) == {"1", "2", "4", "8"}
    assert set(m["baselines"]) == {"raw_pixels", "untrained"}
    mpn = evaluate_mpn_inference(tmp_path / "run")
    assert sum(mpn["r1_transitions"].values()) == 12  # 3 test classes × 4 images


def test_inshop_copy_is_evaluated_query_to_gallery(tmp_path):
    p = load_params(None, {**SMALL, "dataset": "inshop", "nmi": True,
                           "data_root": str(make_inshop(tmp_path / "In_shop"))})
    splits = load_splits(p, progress=False)
    assert (len(splits["query"]), len(splits["gallery"])) == (30, 50)
    summary = train(p, tmp_path / "run", progress=False)
    assert set(summary["history"][0]["test"]["recall_at_k"]) == {"1", "10", "20", "30", "40",
                                                                 "50"}
    m = evaluate_run(tmp_path / "run", progress=False)
    assert m["split"] == "query+gallery"
    assert list(m["recall_at_k"]) == ["1", "10", "20", "30", "40", "50"]
    assert m["recall_at_k"]["50"] == 1.0  # every query's item is in the 50-image gallery
    assert 0 <= m["map_at_r"] <= 1 and 0 <= m["nmi"] <= 1
    assert m["baselines"]["raw_pixels"]["recall_at_k"]["50"] == 1.0
    examples = retrieval_examples(tmp_path / "run", queries=3, k=5)
    assert all("Dresses" in str(path) for row in examples[1] for path in row)
    mpn = evaluate_mpn_inference(tmp_path / "run")
    assert mpn["feature_space"].startswith("refined queries (the last MPN layer's output) "
                                           "against backbone gallery")
    assert list(mpn["with_mpn"]["recall_at_k"]) == list(m["recall_at_k"])
    assert mpn["with_mpn"]["nmi"] is None  # two feature spaces: no joint clustering
    assert sum(mpn["r1_transitions"].values()) == 30  # every query once


def test_a_broken_copy_stops_before_the_first_step(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    (root / "image_class_labels.txt").unlink()
    p = load_params(None, {**SMALL, "dataset": "cub200", "data_root": str(root)})
    with pytest.raises(DatasetError, match="image_class_labels.txt") as e:
        train(p, tmp_path / "run", progress=False)
    assert "ibdml check-data cub200 PATH" in str(e.value)  # and which parameter to change
    assert not (tmp_path / "run" / "checkpoints").exists()
    # without official_counts: false, the tiny copy is refused for its counts
    strict = load_params(None, {**SMALL, "dataset": "cub200", "official_counts": True,
                                "data_root": str(make_cub(tmp_path / "again"))})
    with pytest.raises(DatasetError, match="5,864"):
        train(strict, tmp_path / "run2", progress=False)


def test_an_unreadable_image_met_in_training_names_the_file(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    bad = next((root / "images" / "001.Bird_1").iterdir())
    bad.write_bytes(b"<html>not an image</html>")
    p = load_params(None, {**SMALL, "dataset": "cub200", "data_root": str(root),
                           "attention_probes": 0})
    with pytest.raises(DatasetError, match=bad.name):
        train(p, tmp_path / "run", progress=False)
    history = tmp_path / "run" / "history.json"
    assert not history.exists() or json.loads(history.read_text()) == []
