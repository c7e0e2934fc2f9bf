"""The attention study: its measures and conclusion on hand-made runs, and 07_attention_study on
smoke parameters (two seeds, the default and one setting) through the study machinery: runs with
validation held out, the test split never evaluated, attention_study.json written."""

import json
import math
from pathlib import Path

import nbformat
import papermill
import pytest

from ibdml.attention_study import (SETTINGS, conclusion, run_measures, runs_table,
                                   setting_result, study_table)
from ibdml.pipeline import NOTEBOOKS, run_study_notebook, steps
from ibdml.steps.attention_study import run_attention_study, run_dir_of, setting_params

SMOKE = Path(__file__).parent.parent / "params" / "smoke.yaml"


def _summary(same_excl_last: list[float], kl_last: list[float]) -> dict:
    """attention_summary.json's "summary" for one layer with len(kl_last) heads, epochs 0 and 3."""
    heads = len(kl_last)
    return {"epochs": [0, 3], "kl_max": 3.0, "same_class_excl_self_uniform": 0.1,
            "same_class_excl_self": [[[0.1] * heads], [same_excl_last]],
            "kl": [[[0.0] * heads], [kl_last]],
            "self_mass": [[[0.02] * heads], [[0.03, 0.04][:heads]]]}


def _history(val_map: float) -> list[dict]:
    return [{"epoch": 1}, {"epoch": 2, "val": {"map_at_r": val_map - 0.1}},
            {"epoch": 3, "val": {"map_at_r": val_map}}]


def test_run_measures_take_the_most_selective_head_and_the_last_validation():
    m = run_measures(_summary([0.12, 0.30], [0.01, 0.2]), _history(0.5))
    assert m["head"] == "layer 0 head 1" and m["excess"] == pytest.approx(0.2)
    assert (m["kl"], m["self_mass"], m["val_map_at_r"]) == (0.2, 0.04, 0.5)
    with pytest.raises(ValueError, match="val_fraction"):
        run_measures(_summary([0.1], [0.0]), [{"epoch": 1, "test": {}}])
    # a head with every row on the null key at the last epoch (NaN) is passed over
    m = run_measures(_summary([math.nan, 0.12], [math.nan, 0.01]), _history(0.5))
    assert m["head"] == "layer 0 head 1" and m["excess"] == pytest.approx(0.02)


def _runs(excesses: list[float], vals: list[float]) -> list[dict]:
    return [run_measures(_summary([0.1 + e], [0.05]), _history(v))
            for e, v in zip(excesses, vals)]


def test_conclusion_ships_a_selective_setting_that_keeps_retrieval():
    default = _runs([0.001, -0.002], [0.50, 0.52])
    results = {"default": setting_result(default, default),
               "scale4": setting_result(_runs([0.10, 0.11], [0.51, 0.52]), default),
               "mpn-lr10": setting_result(_runs([0.20, 0.21], [0.30, 0.31]), default)}
    assert results["scale4"]["selective"] and results["scale4"]["keeps_retrieval"]
    # more selective still, but validation MAP@R falls by 0.2 on both seeds: contradicted
    assert results["mpn-lr10"]["selective"] and not results["mpn-lr10"]["keeps_retrieval"]
    assert not results["default"]["selective"]
    c = conclusion(results)
    assert c["chosen"] == "scale4" and "attention logits × 4" in c["text"]
    table = study_table(results)
    assert "| attention logits × 4 | +0.105 [" in table and "**supported** (2 of 2)" in table


def test_conclusion_without_a_selective_setting_names_the_closest():
    default = _runs([0.001, -0.002], [0.50, 0.52])
    results = {"default": setting_result(default, default),
               "epochs40": setting_result(_runs([0.03, -0.01], [0.55, 0.56]), default)}
    c = conclusion(results)
    assert c["chosen"] is None and c["closest"] == "epochs40"
    assert c["text"].startswith("No setting made attention clearly selective")
    table = runs_table({"epochs40": _runs([0.03, -0.01], [0.55, 0.56])}, [0, 1])
    assert "| epochs40 | 1 | layer 0 head 0 | 0.090 | 0.100 | -0.010 | 0.0500 | 0.030 | 0.560 |" \
        in table


def test_settings_keep_the_study_protocol_and_the_seed():
    p = setting_params(SMOKE, "scale4", 3, {"epochs": 2})
    assert (p.attention_scale, p.val_fraction, p.select_on, p.seed, p.epochs) == \
        (4.0, 0.2, "val", 3, 2)
    assert setting_params(SMOKE, "epochs40", 0).epochs == 40
    with pytest.raises(ValueError, match="at least two"):
        run_attention_study(SMOKE, "unused", [0])
    with pytest.raises(ValueError, match="unknown settings"):
        run_attention_study(SMOKE, "unused", [0, 1], settings=["sharper"])


@pytest.fixture(scope="module")
def study(glyph_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("attention_study")
    path = run_study_notebook("attention-study", SMOKE, out, [0, 1],
                              {"data_root": str(glyph_root), "epochs": 2, "eval_every": 1},
                              settings=["scale4"], log=lambda _: None)
    return out, json.loads(path.read_text())


def test_the_study_trains_every_setting_on_validation_only(study):
    out, result = study
    assert list(result["results"]) == ["default", "scale4"] and result["seeds"] == [0, 1]
    for setting in ("default", "scale4"):
        for seed in (0, 1):
            run = run_dir_of(out, setting, seed)
            history = json.loads((run / "history.json").read_text())
            assert all("test" not in row for row in history)  # the test split never looked at
            assert any("val" in row for row in history)
            assert (run / "attention_summary.json").is_file()
            assert not (run / "metrics.json").exists()
    assert "attention_scale: 4.0" in (run_dir_of(out, "scale4", 1) / "params.yaml").read_text()
    assert result["conclusion"]["text"]
    executed = nbformat.read(out / "notebooks" / "07_attention_study.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "4 runs as Ray tasks (1 CPU, 0 GPU each)" in printed


def test_the_study_notebook_is_not_a_pipeline_step():
    assert "07_attention_study" not in [s.name for s in steps()]
    params = list(papermill.inspect_notebook(str(NOTEBOOKS / "07_attention_study.ipynb")))
    assert params == ["params_file", "run_dir", "overrides", "seeds", "settings", "address"]
    assert set(SETTINGS) == {"default", "epochs40", "mpn-lr10", "scale4", "no-null-key",
                             "batch6x9"}
