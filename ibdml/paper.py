"""The paper's published numbers, in percent, for setting runs of the paper recipes beside them
(docs/method.md §10). Backbone features (MPN dropped): the paper's Tables 2–4, as a reproduction
study's Table 2 lists them in its "paper" column. MPN at inference: that study's Table 3, "paper"
column (the paper's figures with the MPN run on reciprocal k-NN batches; R@2–8 not published).

Where the authors' README gives another value than the paper, `README_DIFFERS` keeps it, so a
comparison can show both (the paper's value is the one compared with).
"""

from __future__ import annotations

import math

PAPER = {
    "cub200": {"recall_at_k": {"1": 70.3, "2": 80.3, "4": 87.6, "8": 92.7}, "nmi": 74.0},
    "cars196": {"recall_at_k": {"1": 88.1, "2": 93.3, "4": 96.2, "8": 98.2}, "nmi": 74.8},
    "sop": {"recall_at_k": {"1": 81.4, "10": 91.3, "100": 95.9}, "nmi": 92.6},
    # the README's last In-Shop column is labelled R@40; a third-party table calls it R@30
    "inshop": {"recall_at_k": {"1": 92.8, "10": 98.5, "20": 99.1, "40": 99.2}, "nmi": None},
}

# {recipe: {metric: the README's value}} where the README and the paper disagree.
README_DIFFERS = {"cub200": {"NMI": 73.2}}

# MPN at inference (the paper's claim 2): R@1 and NMI with the MPN refining the test features.
PAPER_MPN_INFERENCE = {
    "cub200": {"recall_at_k": {"1": 70.8}, "nmi": 74.5},
    "cars196": {"recall_at_k": {"1": 88.6}, "nmi": 76.2},
}


def comparison_rows(recipe: str, metrics: dict, with_mpn: dict | None | str) -> list[dict]:
    """The rows setting one paper-recipe run (its metrics.json, and its mpn_inference.json's
    with_mpn, or "absent" when there is none) beside the paper's numbers, in percent, with our
    standard error over test queries where the run has one, and the README's value where it
    differs from the paper's."""
    paper, protocol = PAPER[recipe], metrics["protocol"]
    readme = README_DIFFERS.get(recipe, {})
    rows = [_row(recipe, f"R@{k}", value, metrics, ("recall_at_k", k), protocol, readme)
            for k, value in paper["recall_at_k"].items()]
    if paper["nmi"] is not None:
        rows.append(_row(recipe, "NMI", paper["nmi"], metrics, ("nmi",), protocol, readme))
    if recipe in PAPER_MPN_INFERENCE and with_mpn != "absent":
        refined = PAPER_MPN_INFERENCE[recipe]
        for k, value in refined["recall_at_k"].items():
            rows.append(_row(recipe, f"R@{k}, MPN at inference", value, with_mpn,
                             ("recall_at_k", k), protocol, readme))
        rows.append(_row(recipe, "NMI, MPN at inference", refined["nmi"], with_mpn, ("nmi",),
                         protocol, readme))
    return rows


def _lookup(metrics: dict | None, key: tuple[str, ...]) -> tuple[float | None, float | None]:
    """(value, standard error) in percent of metrics[key...], None where absent."""
    if metrics is None:
        return None, None
    value, se = metrics, metrics.get("standard_error") or {}
    for k in key:
        value = None if value is None else value.get(k)
        se = se.get(k) if isinstance(se, dict) else None
    return (None if value is None else 100 * value), (None if se is None else 100 * se)


def _row(recipe: str, metric: str, paper: float, metrics: dict | None, key: tuple[str, ...],
         protocol: str, readme: dict) -> dict:
    ours, se = _lookup(metrics, key)
    diff = None if ours is None or math.isnan(ours) else round(ours - paper, 2)
    return {"recipe": recipe, "metric": metric, "paper": paper, "readme": readme.get(metric),
            "ours": None if ours is None else round(ours, 2),
            "ours_se": None if se is None else round(se, 2), "difference_pp": diff,
            "protocol": protocol}
