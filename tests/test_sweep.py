"""`ibdml sweep`: a Ray Tune random search of two smoke trials (1 CPU each) writes search.json and
best.yaml, evaluates test once for the chosen trial only, and resumes without training again."""

import json
from pathlib import Path

import pytest
import yaml

from ibdml.config import ParamError
from ibdml.steps.sweep import SweepError, run_sweep

SMOKE = Path(__file__).parent.parent / "params" / "smoke.yaml"


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text("lr: {loguniform: [1.0e-4, 1.0e-2]}\ntemperature: {uniform: [0.1, 0.5]}\n"
                    "epochs: 2\n")
    return path


@pytest.fixture(scope="module")
def search(local_ray, glyph_root, space, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    overrides = {"data_root": str(glyph_root), "val_fraction": 0.25}
    result = run_sweep(SMOKE, space, 2, out, overrides=overrides, log=lambda _: None)
    return out, overrides, result


def test_every_trial_is_a_run_folder_selected_on_validation(search):
    out, _, result = search
    assert json.loads((out / "search.json").read_text()) == result
    assert len(result["trials"]) == 2 and result["trials_requested"] == 2
    for trial in result["trials"]:
        run = out / trial["run_dir"]
        params = yaml.safe_load((run / "params.yaml").read_text())
        assert params["select_on"] == "val" and params["val_fraction"] == 0.25
        assert params["lr"] == trial["values"]["lr"]  # the sampled value trained
        assert 1e-4 <= trial["values"]["lr"] <= 1e-2 and params["epochs"] == 2
        history = json.loads((run / "history.json").read_text())
        assert all("val" in r and "test" not in r for r in history)  # test never watched
        assert trial["status"] in ("finished", "stopped early") and trial["error"] is None
        assert [r["epoch"] for r in trial["history"]] == [r["epoch"] for r in history]


def test_the_best_finished_trial_is_chosen_and_tested_once(search):
    out, _, result = search
    finished = [t for t in result["trials"] if t["status"] == "finished"]
    chosen = result["chosen"]
    assert chosen["val"]["map_at_r"] == max(t["val"]["map_at_r"] for t in finished)
    tested = [t["trial"] for t in result["trials"] if (out / t["run_dir"] / "metrics.json").exists()]
    assert tested == [chosen["trial"]]  # the test split, for the chosen trial only
    metrics = json.loads((out / chosen["run_dir"] / "metrics.json").read_text())
    assert chosen["test"]["map_at_r"] == metrics["map_at_r"]
    assert metrics["protocol"].startswith("fair")
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best == yaml.safe_load((out / chosen["run_dir"] / "params.yaml").read_text())


def test_run_again_it_resumes_without_training(search, space):
    out, overrides, result = search
    checkpoints = sorted((out / "trials").glob("*/checkpoints/last.pt"))
    before = {p: p.stat().st_mtime_ns for p in checkpoints}
    again = run_sweep(SMOKE, space, 2, out, overrides=overrides, log=lambda _: None)
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == before
    assert again["chosen"] == result["chosen"]
    assert [t["status"] for t in again["trials"]] == [t["status"] for t in result["trials"]]


def test_another_search_in_the_same_folder_is_refused(search, space):
    out, overrides, _ = search
    with pytest.raises(SweepError, match="holds a search with other settings"):
        run_sweep(SMOKE, space, 3, out, overrides=overrides)


def test_a_search_needs_a_validation_split(glyph_root, space, tmp_path):
    with pytest.raises(ParamError, match="val_fraction > 0"):
        run_sweep(SMOKE, space, 2, tmp_path / "s", overrides={"data_root": str(glyph_root)})
    assert not (tmp_path / "s").exists()
