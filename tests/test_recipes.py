"""The paper's recipes: each loads, validates and holds Table 1's values exactly (docs/method.md §9),
with the shared settings (ResNet-50 at 227 px from ImageNet weights, 70 epochs, ÷10 at 30/50)."""

from pathlib import Path

import pytest

from ibdml.config import load_params

PARAMS = Path(__file__).parent.parent / "params"

# docs/method.md §9, from the authors' config/*_train.yaml: n_c, n_s, lr, weight decay, T, MPN
# layers, heads, classifier on the concatenated layers.
TABLE_1 = {
    "cub200": (6, 9, 1.563663718906821e-4, 6.059722614369727e-6, 0.2, 1, 2, False),
    "cars196": (10, 7, 3.6683239911604993e-4, 2.551918610962277e-9, 0.1111111111111, 2, 8, True),
    "sop": (15, 6, 2.472471515853406e-4, 2.7650277063275255e-13, 0.6046908988578005, 1, 8, False),
    "inshop": (14, 4, 1.1265974954242144e-4, 1.0554824926510768e-7, 0.18591347176280537, 1, 4,
               False),
}


@pytest.mark.parametrize("name", list(TABLE_1))
def test_recipe_matches_table_1(name):
    p = load_params(PARAMS / f"{name}.yaml")
    assert p.dataset == name and p.official_counts
    assert (p.n_c, p.n_s, p.lr, p.weight_decay, p.temperature, p.mpn_layers, p.mpn_heads,
            p.mpn_concat_layers) == TABLE_1[name]
    assert (p.backbone, p.pretrained, p.image_size, p.embedding_dim, p.pooling) == (
        "resnet50", "imagenet", 227, 512, "max")
    assert p.test_resize_ratio == pytest.approx(256 / 227)
    assert (p.epochs, p.lr_milestones, p.lr_gamma) == (70, [30, 50], 0.1)
    assert (p.label_smoothing, p.mpn_dropout, p.attention_null_key) == (0.1, 0.1, True)
    assert p.horizontal_flip and p.random_erasing and p.crop_scale_min == 0.08
    # the method: both losses, also on SOP, where the authors' config trained the backbone only
    assert p.loss_heads == "both"
    assert p.select_on == "last"  # the paper protocol


def test_inshop_uses_its_query_gallery_settings():
    p = load_params(PARAMS / "inshop.yaml")
    assert p.recall_ks == (1, 10, 20, 30, 40, 50)
    assert p.mpn_inference_batch == 4 and p.mpn_inference_gallery_space == "backbone"
