"""Intervals and verdicts on hand-made numbers (docs/protocol.md, "Evidence"): a t-interval over
seeds against a hand computation, the three verdicts, one that straddles 0, and one seed."""

import math

import pytest

from ibdml.verdicts import (CONTRADICTED, INCONCLUSIVE, SUPPORTED, interval_cell, mean_std,
                            paired_comparison, t_interval, verdict, verdict_cell)

# Two-sided 95 % quantiles of Student's t, from a printed table.
T975 = {1: 12.706, 2: 4.303, 4: 2.776}


def test_t_interval_matches_a_hand_computation():
    d = [0.02, 0.04, 0.03, 0.05, 0.01]  # mean 0.03, sd 0.0158
    i = t_interval(d)
    half = T975[4] * math.sqrt(sum((x - 0.03) ** 2 for x in d) / 4) / math.sqrt(5)
    assert i["difference"] == pytest.approx(0.03)
    assert (i["low"], i["high"]) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-5)
    assert i["n"] == 5 and i["level"] == 0.95 and "4 degrees of freedom" in i["method"]


def test_the_three_verdicts():
    assert verdict(t_interval([0.02, 0.04, 0.03])) == SUPPORTED
    assert verdict(t_interval([-0.02, -0.04, -0.03])) == CONTRADICTED
    # +0.039 ± 0.028 over 3 seeds (the claim-2 MAP@R): every seed above 0, yet the
    # interval reaches below 0: 0.039 ± 4.303 · 0.028 / √3 = [−0.031, +0.109]
    straddles = t_interval([0.039 - 0.028, 0.039, 0.039 + 0.028])
    assert straddles["low"] < 0 < straddles["high"]
    assert verdict(straddles) == INCONCLUSIVE
    assert verdict({"low": 0.0, "high": 0.1}) == INCONCLUSIVE  # touching 0 is not above it
    assert verdict({"low": None, "high": None}) == INCONCLUSIVE


def test_identical_differences_give_a_zero_width_interval():
    i = t_interval([0.01, 0.01, 0.01])
    assert i["low"] == pytest.approx(0.01) and i["high"] == pytest.approx(0.01)
    assert verdict(t_interval([0.0, 0.0])) == INCONCLUSIVE


def test_paired_comparison_counts_seeds_each_way():
    c = paired_comparison([0.70, 0.71, 0.69], [0.72, 0.70, 0.74])
    assert c["difference"]["values"] == pytest.approx([0.02, -0.01, 0.05])
    assert (c["seeds_higher"], c["seeds_lower"]) == (2, 1)
    assert c["verdict"] == INCONCLUSIVE and c["a"]["n"] == 3
    assert verdict_cell(c) == "**inconclusive** (2 of 3 higher, 1 lower)"


def test_one_seed_takes_the_bootstrap_interval_or_has_none():
    boot = {"low": 0.01, "high": 0.03, "method": "paired bootstrap over queries"}
    c = paired_comparison([0.70], [0.72], boot)
    assert c["verdict"] == SUPPORTED and c["interval"]["difference"] == pytest.approx(0.02)
    assert c["interval"]["method"] == "paired bootstrap over queries"
    none = paired_comparison([0.70], [0.72])
    assert none["verdict"] == INCONCLUSIVE and none["interval"]["low"] is None
    assert interval_cell(none["interval"]) == "+0.020 [no interval]"


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        t_interval([0.1])
    with pytest.raises(ValueError, match="finite"):
        t_interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="one per seed"):
        paired_comparison([0.1, 0.2], [0.3])


def test_cells_and_spreads():
    assert interval_cell({"difference": 0.012, "low": -0.004, "high": 0.028}) == \
        "+0.012 [-0.004, +0.028]"
    m = mean_std([0.5, 0.7, 0.6])
    assert m["mean"] == pytest.approx(0.6) and m["std"] == pytest.approx(0.1) and m["n"] == 3
    assert mean_std([0.5])["std"] == 0.0
