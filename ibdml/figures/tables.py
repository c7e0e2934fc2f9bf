"""The rows and sentences that the evaluation notebooks and the report show beside the recall
table: which feature sets are compared, and how MPN at inference moved the queries. Dicts in
(metrics.json, mpn_inference.json), markdown out."""

from __future__ import annotations


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
    """One markdown paragraph: the change in R@1, the neighbourhood settings, the time taken and
    the feature space; or why there is nothing to refine."""
    if result["with_mpn"] is None:
        return "This run has no MPN (mpn_layers: 0): there is nothing to refine."
    gain = 100 * (result["with_mpn"]["recall_at_k"]["1"]
                  - result["without_mpn"]["recall_at_k"]["1"])
    seconds = ", ".join(f"{name} {s:.1f} s" for name, s in result["seconds"].items())
    return (f"R@1 changes by **{gain:+.1f} pp** (k = {result['k']}, {result['batch']} nodes per "
            f"graph, α = {result['alpha']:.3f}; {seconds}). Feature space: "
            f"{result['feature_space']}.")


def transitions_table(transitions: dict[str, int]) -> str:
    """Markdown 2 × 2 table of `evaluation.r1_transitions`: R@1 hits and misses before
    (backbone, rows) and after refinement (columns)."""
    t = transitions
    return ("| before ↓ / after → | hit | miss |\n|---|---|---|\n"
            f"| **hit** | {t['hit→hit']} | {t['hit→miss']} |\n"
            f"| **miss** | {t['miss→hit']} | {t['miss→miss']} |")
