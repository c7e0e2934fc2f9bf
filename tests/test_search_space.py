"""Search spaces: fixed values and distributions, every bound checked against the parameter's
own range, and the shipped spaces (the authors' search for each recipe, a CPU-sized Glyphs one)."""

from pathlib import Path

import pytest

from ibdml.config import ParamError
from ibdml.search_space import load_space, parse_space

SPACES = Path(__file__).parent.parent / "params" / "search"


def test_fixed_values_and_distributions():
    space = parse_space({"epochs": 40, "lr": {"loguniform": [1e-5, 1e-3]},
                         "n_c": {"randint": [6, 15]}, "mpn_heads": {"choice": [1, 2, 4, 8]},
                         "temperature": {"uniform": [0.01, 1]}})
    assert space.fixed == {"epochs": 40}
    assert space.sampled["lr"] == ("loguniform", [1e-5, 1e-3])
    assert space.sampled["temperature"] == ("uniform", [0.01, 1.0])  # as the parameter's type
    assert space.as_dict()["n_c"] == {"randint": [6, 15]}


@pytest.mark.parametrize("values, words", [
    ({"learning_rate": {"uniform": [0, 1]}}, ["'learning_rate' is not a parameter"]),
    ({"lr": {"normal": [0, 1]}}, ["lr", "not a distribution", "loguniform"]),
    ({"lr": {"uniform": [0.1]}}, ["lr", "[low, high]"]),
    ({"lr": {"uniform": [0.1, 0.01]}}, ["low < high"]),
    ({"weight_decay": {"loguniform": [0.0, 0.1]}}, ["loguniform needs low > 0"]),
    ({"n_c": {"randint": [2.5, 6]}}, ["n_c"]),
    ({"lr": {"loguniform": [1e-5, 5.0]}}, ["lr", "out of range"]),
    ({"pooling": {"choice": ["max", "median"]}}, ["pooling", "'median' is not allowed"]),
    ({"epochs": 40}, ["samples nothing"]),
])
def test_bad_spaces_name_the_key_and_the_fix(values, words):
    with pytest.raises(ParamError) as e:
        parse_space(values, "space.yaml")
    for word in words:
        assert word in str(e.value)


def test_a_missing_or_broken_file(tmp_path):
    with pytest.raises(ParamError, match="does not exist"):
        load_space(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("lr: {loguniform: [1, 2\n")
    with pytest.raises(ParamError, match="not valid YAML"):
        load_space(tmp_path / "bad.yaml")


@pytest.mark.parametrize("recipe", ["cub200", "cars196", "sop", "inshop"])
def test_the_recipes_spaces_are_the_authors_search(recipe):
    """docs/method.md §9.1: lr = 10^U(-5,-3), weight decay = 10^U(-15,-6), n_c in 6..15, n_s in
    3..9, T in (0, 1], heads in {1, 2, 4, 8}, 40 epochs."""
    space = load_space(SPACES / f"{recipe}.yaml")
    assert space.fixed == {"epochs": 40}
    assert space.sampled == {"lr": ("loguniform", [1e-5, 1e-3]),
                             "weight_decay": ("loguniform", [1e-15, 1e-6]),
                             "n_c": ("randint", [6, 15]), "n_s": ("randint", [3, 9]),
                             "temperature": ("uniform", [0.01, 1.0]),
                             "mpn_heads": ("choice", [1, 2, 4, 8])}


def test_the_glyphs_space_keeps_the_default_budget():
    space = load_space(SPACES / "glyphs.yaml")
    assert space.fixed["val_fraction"] > 0 and space.fixed["epochs"] == 12
    assert "image_size" not in space.sampled and "epochs" not in space.sampled
