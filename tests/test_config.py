"""Params: defaults valid, YAML + overrides, and every kind of bad value names itself."""

from pathlib import Path

import pytest
import yaml

from ibdml.config import (FIELDS, ParamError, Params, load_params, params_markdown,
                          parse_override, validate)

PARAMS_DIR = Path(__file__).parent.parent / "params"


def test_defaults_are_valid():
    assert validate(Params()).batch_size == 54


@pytest.mark.parametrize("name", ["glyphs.yaml", "smoke.yaml"])
def test_shipped_parameter_files_load(name):
    p = load_params(PARAMS_DIR / name)
    assert p.dataset == "glyphs"


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text(yaml.safe_dump({"epochs": 5, "lr": 0.01}))
    p = load_params(f, ["epochs=7", "lr_milestones=[2, 4]", "attention_null_key=false"])
    assert (p.epochs, p.lr, p.lr_milestones, p.attention_null_key) == (7, 0.01, [2, 4], False)
    assert load_params(f, {"lr": 1}).lr == 1.0  # an int where a float is expected is fine


@pytest.mark.parametrize("override, words", [
    ({"epoch": 3}, ["unknown parameter", "epoch"]),
    ({"epochs": "three"}, ["epochs", "'three'", "int"]),
    ({"epochs": 0}, ["epochs", "0", "out of range", "[1, 1000]"]),
    ({"lr": -1.0}, ["lr", "out of range"]),
    ({"lr": float("nan")}, ["lr", "finite"]),
    ({"backbone": "vgg"}, ["backbone", "'vgg'", "resnet18, resnet50"]),
    ({"attention_null_key": "yes"}, ["attention_null_key", "bool"]),
    ({"n_c": 150}, ["n_c", "150", "only 100 classes", "n_c ≤ 100"]),
    ({"n_c": 90, "val_fraction": 0.2}, ["n_c", "only 80 classes"]),
    ({"n_s": 41}, ["n_s", "41", "n_s ≤ 40"]),
    ({"mpn_heads": 3}, ["mpn_heads", "divide", "512"]),
    ({"mpn_layers": 0}, ["loss_heads", "backbone"]),
    ({"select_on": "val"}, ["select_on", "val_fraction"]),
    ({"lr_milestones": [5, 2]}, ["lr_milestones", "increasing"]),
    ({"glyph_train_classes": 200}, ["glyph_train_classes", "no test classes"]),
])
def test_bad_values_name_parameter_value_and_fix(override, words):
    with pytest.raises(ParamError) as e:
        load_params(PARAMS_DIR / "glyphs.yaml", override)
    for w in words:
        assert w in str(e.value)


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ParamError, match="key=value"):
        load_params(None, ["epochs"])
    with pytest.raises(ParamError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamError, match=r"override -p 'lr=\[': the value is not YAML: expected "
                       "the node content"):
        load_params(None, ["lr=["])


@pytest.mark.parametrize("text, message", [
    ("epochs: 3\nlr: [0.1\nseed: 1\n", " line 3: expected ',' or ']', but got ':' (while parsing "
     "a flow sequence that starts on line 2); fix the YAML syntax there"),
    ('epochs: "3\n', " line 2: found unexpected end of stream (while scanning a quoted scalar "
     "that starts on line 1); fix the YAML syntax there"),
    ("epochs: 3\nlr: 0.1\nepochs: 4\n", " line 3: epochs is given twice (first on line 1); keep one"),
    ("epoch: 3\nlrr: 0.1\n", ": unknown parameters epoch (did you mean epochs?), lrr (did you "
     "mean lr?)"),
    ("- epochs\n", " must hold a mapping"),
])
def test_a_bad_parameters_file_names_itself_and_the_line(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ParamError) as e:
        load_params(path)
    assert str(e.value).startswith(f"parameters file {path}{message}")


def test_a_key_given_twice_is_refused_in_nested_mappings_too_but_merges_are_not():
    with pytest.raises(ParamError, match="a is given twice"):
        load_params(None, ["lr_milestones={a: 1, a: 2}"])
    # a YAML merge key may be overridden by the mapping's own key: not a duplicate
    assert parse_override("lr_milestones=[{<<: {a: 1}, a: 2}]")[1] == [{"a": 2}]


def test_a_parameters_file_that_is_not_utf8(tmp_path):
    (tmp_path / "p.yaml").write_bytes(b"epochs: \xff\n")
    with pytest.raises(ParamError, match="is not UTF-8 text"):
        load_params(tmp_path / "p.yaml")


def test_every_field_documented_in_markdown():
    table = params_markdown()
    for name, f in FIELDS.items():
        assert f"`{name}`" in table and f.metadata["help"]


def test_yaml_round_trip():
    p = load_params(PARAMS_DIR / "glyphs.yaml")
    assert load_params(None, yaml.safe_load(p.to_yaml())) == p


def test_the_documented_parameter_table_is_generated_from_params():
    page = (PARAMS_DIR.parent / "docs" / "parameters.md").read_text()
    section = page.split("<!-- params:start -->\n")[1].split("\n<!-- params:end -->")[0]
    assert section == params_markdown(), (
        "regenerate the table: `ibdml params` into docs/parameters.md")


def test_inshop_concatenated_refinement_against_a_backbone_gallery_is_refused():
    concat = ["mpn_layers=2", "mpn_concat_layers=true", "mpn_inference_space=concat"]
    params = Path(__file__).parent.parent / "params"
    with pytest.raises(ParamError, match="set mpn_inference_gallery_space: refined, or "
                                         "mpn_inference_space: last"):
        load_params(params / "inshop.yaml", concat)
    # the same MPN with a refined gallery, or on a set searched against itself, is fine
    load_params(params / "inshop.yaml", concat + ["mpn_inference_gallery_space=refined"])
    load_params(params / "cars196.yaml", concat)
