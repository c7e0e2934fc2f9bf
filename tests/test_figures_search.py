"""The search figures (ibdml/figures/search.py) on a synthetic search.json of the shape `ibdml
sweep` writes: the trials table, parallel coordinates, learning curves and the chosen
configuration, and their edge cases (no trials, all failed, string choices, nothing chosen)."""

import copy
import math

import plotly.graph_objects as go

from ibdml.figures.search import (chosen_table, format_value, learning_curves,
                                  parallel_coordinates, sampled, summary, trials_table)


def scores(r1: float, map_r: float) -> dict:
    return {"recall_at_k": {"1": r1, "2": min(1.0, r1 + 0.1), "4": min(1.0, r1 + 0.2),
                            "8": min(1.0, r1 + 0.25)}, "map_at_r": map_r}


def trial(name: str, status: str, values: dict, maps: list[float], selected: int | None = None,
          error: str | None = None) -> dict:
    """A trial evaluated on val after every epoch, with these MAP@R values."""
    history = [{"epoch": e, "val": scores(0.4 + m, m)} for e, m in enumerate(maps, 1)]
    if selected is None and maps:
        selected = max(range(len(maps)), key=maps.__getitem__) + 1
    return {"trial": name, "run_dir": f"trials/{name}", "values": values, "status": status,
            "error": error, "epochs": len(maps), "history": history,
            "selected_epoch": selected,
            "val": history[selected - 1]["val"] if selected else None}


def synthetic_search() -> dict:
    """Five trials of a 4-epoch ASHA search: two finished (t2 chosen), one stopped early after
    one epoch, one failed in its first epoch, one not run; a string choice (pooling)."""
    space = {"lr": {"loguniform": [1e-5, 1e-3]}, "weight_decay": {"loguniform": [1e-15, 1e-6]},
             "n_c": {"randint": [6, 15]}, "temperature": {"uniform": [0.01, 1.0]},
             "mpn_heads": {"choice": [1, 2, 4, 8]}, "pooling": {"choice": ["max", "avg"]},
             "epochs": 4, "select_on": "val"}

    def values(lr, wd, n_c, t, heads, pooling):
        return {"lr": lr, "weight_decay": wd, "n_c": n_c, "temperature": t, "mpn_heads": heads,
                "pooling": pooling}

    trials = [
        trial("t1", "finished", values(1e-4, 1e-10, 8, 0.2, 2, "max"), [0.10, 0.15, 0.18, 0.17]),
        trial("t2", "finished", values(3e-4, 1e-8, 12, 0.5, 8, "avg"), [0.12, 0.2, 0.25, 0.26]),
        trial("t3", "stopped early", values(1e-5, 1e-14, 6, 0.9, 1, "max"), [0.02]),
        trial("t4", "failed", values(1e-3, 1e-7, 15, 0.05, 4, "avg"), [],
              error="TrainingDiverged: the loss is nan at epoch 1\nTraceback …"),
        trial("t5", "not run", values(5e-5, 1e-12, 9, 0.3, 2, "max"), []),
    ]
    chosen = {k: trials[1][k] for k in ("trial", "run_dir", "values", "selected_epoch", "val")}
    chosen["test"] = {**scores(0.55, 0.21), "nmi": 0.62,
                      "protocol": "fair (epoch selected on validation classes)"}
    return {"params_file": "params/glyphs.yaml", "overrides": {"val_fraction": 0.2},
            "space": space, "trials_requested": 6, "scheduler": "asha", "metric": "val map_at_r",
            "trials": trials, "chosen": chosen, "seconds": 5400.0}


def empty_search() -> dict:
    search = synthetic_search()
    search.update(trials=[], chosen=None, seconds=1.0)
    return search


def all_failed() -> dict:
    search = synthetic_search()
    for t in search["trials"]:
        t.update(status="failed", error=None, val=None, selected_epoch=None, history=[], epochs=0)
    search["chosen"] = None
    return search


# --- the space ---------------------------------------------------------------------------------


def test_sampled_keeps_distributions_in_order_and_leaves_fixed_values_out():
    space = synthetic_search()["space"]
    assert list(sampled(space)) == ["lr", "weight_decay", "n_c", "temperature", "mpn_heads",
                                    "pooling"]
    assert sampled(space)["pooling"] == ("choice", ["max", "avg"])
    # a fixed value that is itself a mapping, but not a distribution, stays fixed
    assert sampled({"a": {"other": 1}, "b": {"uniform": [0, 1], "x": 2}}) == {}


def test_format_value_rounds_floats_and_escapes_pipes():
    assert format_value(0.000156321) == "0.000156"
    assert format_value(8) == "8" and format_value("max") == "max"
    assert format_value([30, 50]) == "[30, 50]" and format_value(None) == "null"
    assert format_value("a|b") == "a\\|b"


# --- the trials table --------------------------------------------------------------------------


def test_trials_table_one_row_per_trial_chosen_marked_errors_below():
    lines = trials_table(synthetic_search()).splitlines()
    assert lines[0] == ("| trial | status | lr | weight_decay | n_c | temperature | mpn_heads | "
                        "pooling | epochs | val R@1 | val MAP@R |")
    assert lines[1] == "|---" * 11 + "|"
    assert lines[2] == "| t1 | finished | 0.0001 | 1e-10 | 8 | 0.2 | 2 | max | 4 | 0.580 | 0.180 |"
    assert lines[3].startswith("| **t2** (chosen) | finished | 0.0003 |")
    assert lines[3].endswith("| 4 | 0.660 | 0.260 |")
    assert lines[4].endswith("| 1 | 0.420 | 0.020 |")  # stopped early after one epoch
    assert lines[5].startswith("| t4 | failed |") and lines[5].endswith("| 0 | – | – |")
    assert lines[6].startswith("| t5 | not run |")
    assert lines[7:] == ["", "- trial t4 failed: TrainingDiverged: the loss is nan at epoch 1"]


def test_trials_table_edge_cases():
    assert trials_table(empty_search()) == "The search has no trials yet."
    failed = trials_table(all_failed()).splitlines()
    assert all("| failed |" in line for line in failed[2:7])
    assert failed[-1] == "- trial t5 failed: no message"
    # a trial missing a sampled value shows – for it
    search = synthetic_search()
    del search["trials"][0]["values"]["pooling"]
    assert "| 2 | – | 4 |" in trials_table(search).splitlines()[2]


def test_summary_counts_statuses_and_names_the_choice():
    assert summary(synthetic_search()) == (
        "5 of 6 requested trials: 2 finished, 1 stopped early, 1 failed, 1 not run (scheduler "
        "asha, 1.5 h); chosen: trial **t2**, val MAP@R 0.260.")
    assert summary(empty_search()) == ("0 of 6 requested trials: none run yet (scheduler asha, "
                                       "0.0 min); no trial chosen.")


# --- parallel coordinates ----------------------------------------------------------------------


def test_parallel_coordinates_log_axes_choices_and_failed_left_out():
    fig = parallel_coordinates(synthetic_search())
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Parcoords)
    dims = {d.label: d for d in fig.data[0].dimensions}
    assert list(dims) == ["log10 lr", "log10 weight_decay", "n_c", "temperature", "mpn_heads",
                          "pooling", "val MAP@R"]
    # t1, t2, t3 drawn; t4 failed and t5 not run (no val score) are left out
    assert list(dims["val MAP@R"].values) == [0.18, 0.26, 0.02]
    assert list(fig.data[0].line.color) == [0.18, 0.26, 0.02]
    assert [round(v, 6) for v in dims["log10 lr"].values] == [-4, round(math.log10(3e-4), 6), -5]
    assert list(dims["log10 lr"].range) == [-5, -3]
    assert list(dims["log10 lr"].ticktext) == ["1e-5", "1e-4", "1e-3"]
    assert list(dims["mpn_heads"].values) == [1, 3, 0]  # indices of 2, 8, 1 among [1, 2, 4, 8]
    assert list(dims["pooling"].ticktext) == ["max", "avg"]
    assert list(dims["pooling"].values) == [0, 1, 0]
    assert list(dims["n_c"].range) == [6, 15] and list(dims["n_c"].values) == [8, 12, 6]
    assert "2 failed or unscored left out" in fig.layout.title.text


def test_parallel_coordinates_with_nothing_to_draw():
    for search in (empty_search(), all_failed()):
        fig = parallel_coordinates(search)
        assert not fig.data and "no trial has a validation score" in fig.layout.title.text


def test_parallel_coordinates_of_a_space_with_nothing_sampled():
    search = synthetic_search()
    search["space"] = {"epochs": 4}
    fig = parallel_coordinates(search)
    assert [d.label for d in fig.data[0].dimensions] == ["val MAP@R"]


# --- learning curves ---------------------------------------------------------------------------


def test_learning_curves_stopped_trials_are_shorter_and_dotted():
    fig = learning_curves(synthetic_search())
    lines = {t.name: t for t in fig.data}
    assert list(lines) == ["t1 (finished)", "t2 (finished)", "t3 (stopped early)",
                           "chosen: t2, selected epoch"]  # t4 and t5 have no history
    assert list(lines["t3 (stopped early)"].x) == [1]
    assert lines["t3 (stopped early)"].line.dash == "dot"
    assert list(lines["t2 (finished)"].y) == [0.12, 0.2, 0.25, 0.26]
    assert lines["t2 (finished)"].line.width > lines["t1 (finished)"].line.width
    star = lines["chosen: t2, selected epoch"]
    assert list(star.x) == [4] and list(star.y) == [0.26] and star.marker.symbol == "star"
    assert fig.layout.xaxis.title.text == "epoch"


def test_learning_curves_with_no_history():
    for search in (empty_search(), all_failed()):
        fig = learning_curves(search)
        assert not fig.data and "no trial has evaluated an epoch" in fig.layout.title.text
    search = all_failed()
    search["trials"][0]["history"] = [{"epoch": 1, "val": scores(0.3, 0.05)}]
    fig = learning_curves(search)  # a trial that failed later still shows what it did
    assert [t.name for t in fig.data] == ["t1 (failed)"] and fig.data[0].line.dash == "dash"


# --- the chosen configuration ------------------------------------------------------------------


def test_chosen_table_values_val_and_the_single_test_evaluation():
    text = chosen_table(synthetic_search())
    assert text.startswith("**Chosen: trial t2**, epoch 4 of its run (`trials/t2`)")
    assert "| lr | 0.0003 |" in text and "| pooling | avg |" in text
    assert "Fixed by the space: epochs = 4, select_on = val." in text
    assert "| | R@1 | R@2 | R@4 | R@8 | NMI | MAP@R |" in text
    assert "| validation (chose it) | 66.0 | 76.0 | 86.0 | 91.0 | – | 26.0 |" in text
    assert "| test (evaluated once) | 55.0 | 65.0 | 75.0 | 80.0 | 62.0 | 21.0 |" in text
    assert "Test protocol: fair (epoch selected on validation classes)." in text
    assert "evaluated once, for this configuration only" in text


def test_chosen_table_without_a_choice_says_why():
    assert "no trials yet" in chosen_table(empty_search())
    assert "every trial failed" in chosen_table(all_failed())
    running = synthetic_search()
    running["chosen"] = None
    assert "resume" in chosen_table(running) and "no trial has finished" in chosen_table(running)


def test_chosen_table_shows_only_the_ks_val_and_test_share():
    search = copy.deepcopy(synthetic_search())
    del search["chosen"]["val"]["recall_at_k"]["8"]
    assert "| | R@1 | R@2 | R@4 | NMI | MAP@R |" in chosen_table(search)
