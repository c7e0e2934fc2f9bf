"""The tables and sentences that the evaluation notebooks and the report show: the metrics with
their standard errors, which feature sets are compared, and how MPN at inference moved the
queries. Dicts in (metrics.json, mpn_inference.json), markdown out."""

from __future__ import annotations

from collections.abc import Sequence

# Said once under every table of `metrics_table` (the ± are standard errors, uncertainty.py).
SE_CAPTION = ("Percent; ± SE over test queries (Recall@K binomial; MAP@R and NMI bootstrap, "
              "NMI conditional on the k-means clustering).")
_MISSING = "–"


def with_se(value: float | None, se: float | None) -> str:
    """A metric in percent with its SE: "70.1 ± 0.6"; the value alone when there is no SE (a
    metrics.json written before SEs were kept), "–" for no value. An SE under 0.05 points keeps
    two decimals, so it does not read as exactly 0.

        >>> with_se(0.7012, 0.0061), with_se(0.7012, None), with_se(0.5, 0.0002)
        ('70.1 ± 0.6', '70.1', '50.0 ± 0.02')
    """
    if value is None:
        return _MISSING
    if se is None:
        return f"{100 * value:.1f}"
    decimals = 1 if 100 * se >= 0.05 or se == 0 else 2
    return f"{100 * value:.1f} ± {100 * se:.{decimals}f}"


def metrics_table(rows: dict[str, dict], ks: Sequence[int]) -> str:
    """Markdown table in the paper's format (percent), every metric with its SE: one row per
    named metrics dict (metrics.json's keys; its "standard_error" entry when present). Show
    `SE_CAPTION` with it."""
    lines = [f"| | {' | '.join(f'R@{k}' for k in ks)} | NMI | MAP@R |",
             "|---" * (len(ks) + 3) + "|"]
    for name, m in rows.items():
        se = m.get("standard_error") or {}
        cells = [with_se(m["recall_at_k"][str(k)], se.get("recall_at_k", {}).get(str(k)))
                 for k in ks]
        cells += [with_se(m.get("nmi"), se.get("nmi")), with_se(m["map_at_r"], se.get("map_at_r"))]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def evaluation_rows(metrics: dict) -> dict[str, dict]:
    """{row name: metrics dict} of metrics.json for `recall_table`: the trained backbone, then
    each baseline it records."""
    return {"trained backbone": metrics,
            **{f"baseline: {name.replace('_', ' ')}": m
               for name, m in metrics.get("baselines", {}).items()}}


def mpn_inference_rows(result: dict) -> dict[str, dict]:
    """{row name: metrics dict} of mpn_inference.json for `recall_table`: the backbone, and the
    refined features when the run has an MPN."""
    rows = {"backbone (MPN dropped)": result["without_mpn"]}
    if result["with_mpn"] is not None:
        rows["MPN at inference"] = result["with_mpn"]
    return rows


def mpn_inference_summary(result: dict) -> str:
    """One markdown paragraph: the change in R@1 (with its paired bootstrap interval when
    mpn_inference.json has one), the neighbourhood settings, the time taken and the feature
    space; or why there is nothing to refine."""
    if result["with_mpn"] is None:
        return "This run has no MPN (mpn_layers: 0): there is nothing to refine."
    gain = 100 * (result["with_mpn"]["recall_at_k"]["1"]
                  - result["without_mpn"]["recall_at_k"]["1"])
    interval = ""
    paired = result.get("paired_difference", {}).get("R@1")
    if paired is not None:
        interval = (f", {100 * paired['level']:g}% paired bootstrap interval "
                    f"[{100 * paired['low']:+.1f}, {100 * paired['high']:+.1f}] pp")
    seconds = ", ".join(f"{name} {s:.1f} s" for name, s in result["seconds"].items())
    return (f"R@1 changes by **{gain:+.1f} pp**{interval} (k = {result['k']}, {result['batch']} "
            f"nodes per graph, α = {result['alpha']:.3f}; {seconds}). Feature space: "
            f"{result['feature_space']}.")


def transitions_table(transitions: dict[str, int]) -> str:
    """Markdown 2 × 2 table of `evaluation.r1_transitions`: R@1 hits and misses before
    (backbone, rows) and after refinement (columns)."""
    t = transitions
    return ("| before ↓ / after → | hit | miss |\n|---|---|---|\n"
            f"| **hit** | {t['hit→hit']} | {t['hit→miss']} |\n"
            f"| **miss** | {t['miss→hit']} | {t['miss→miss']} |")
