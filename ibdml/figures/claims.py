"""The claims study's tables (notebooks/05_claims, README, docs/results.md), as Markdown from
claims.json's parts (ibdml.claims, steps/claims.py). Values over seeds read "mean ± sd over
seeds"; one run's value reads "value ± standard error over test queries"; a difference reads
"mean [95 % interval]" and its verdict says how many seeds fell each way."""

from __future__ import annotations

from ibdml.claims import VARIANTS
from ibdml.verdicts import interval_cell, spread_cell, verdict_cell


def runs_table(variants: dict) -> str:
    """Every run of the study: variant, seed, and each metric ± its standard error over the
    test queries."""
    metrics = [k for k in ("R@1", "MAP@R", "NMI")
               if any(k in r for runs in variants.values() for r in runs.values())]
    lines = ["| variant | seed | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for name, runs in variants.items():
        for seed, r in runs.items():
            cells = [f"{r[k]:.3f}" + (f" ± {r[k + ' SE']:.3f}" if k + " SE" in r else "")
                     if k in r else "—" for k in metrics]
            lines.append(f"| {VARIANTS.get(name, (name,))[0]} | {seed} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


def claim_table(comparison: dict, headers: tuple[str, str]) -> str:
    """Per metric: both sides (mean ± sd over seeds), the paired difference with its 95 %
    interval, and the verdict."""
    lines = [f"| metric | {headers[0]} | {headers[1]} | difference [95 % interval] | verdict |",
             "|---|---|---|---|---|"]
    for k, c in comparison.items():
        lines.append(f"| {k} | {spread_cell(c['a'])} | {spread_cell(c['b'])} | "
                     f"{interval_cell(c['interval'])} | {verdict_cell(c)} |")
    return "\n".join(lines)


def ablation_table(ablation: dict) -> str:
    """One row per question and metric: b − a with its interval and verdict."""
    lines = ["| question | metric | a | b | b − a [95 % interval] | verdict |",
             "|---|---|---|---|---|---|"]
    for key, q in ablation.items():
        a, b = (VARIANTS[q[s]][0] for s in ("a", "b"))
        for i, (metric, c) in enumerate(q["metrics"].items()):
            question = f"{q['question']} (a: {a}; b: {b})" if i == 0 else ""
            lines.append(f"| {question} | {metric} | {spread_cell(c['a'])} | {spread_cell(c['b'])} | "
                         f"{interval_cell(c['interval'])} | {verdict_cell(c)} |")
    return "\n".join(lines)


def claim3_table(c3: dict) -> str:
    """Per head and for each seed's most selective head: same-class mass excluding the node
    itself at the first and last recorded epoch against uniform attention's, the KL from uniform
    and its change, the self mass, with intervals over seeds and verdicts; or the reason nothing
    was recorded."""
    if not c3["recorded"]:
        return f"**{c3['reason']}.**"
    first, last = c3["epochs"]
    lines = [f"Same-class mass excludes the node itself (uniform attention gives "
             f"{c3['chance']:.3f}); KL from uniform is in nats (one node: {c3['kl_max']:.2f}).",
             "", f"| head | same-class, epoch {first} | same-class, epoch {last} | above uniform "
             f"[95 % interval] | verdict | KL change {first} → {last} [95 % interval] | verdict |"
             f" self mass, epoch {last} |", "|---|---|---|---|---|---|---|---|"]
    heads = {**c3["per_head"], "most selective head of each seed": c3["most_selective"]}
    for name, h in heads.items():
        own, sharp = h["own class above chance"], h["sharpens"]
        lines.append(f"| {name} | {spread_cell(h['same_class_excl_self_start'])} | "
                     f"{spread_cell(own['b'])} | {interval_cell(own['interval'])} | "
                     f"{verdict_cell(own)} | {interval_cell(sharp['interval'], 4)} | "
                     f"{verdict_cell(sharp)} | {spread_cell(h['self_mass'])} |")
    return "\n".join(lines)


def verdict_text(verdicts: dict[str, str]) -> str:
    """Markdown: every verdict in bold, e.g. "**R@1: supported.** **MAP@R: inconclusive.**"."""
    return " ".join(f"**{k}: {v}.**" for k, v in verdicts.items())


def comparison_table(paper: dict) -> str:
    """Markdown of steps.claims.paper_comparison: the rows (ours ± its standard error over test
    queries; the authors' README value where it differs from the paper's), then which recipes
    have no run yet."""
    def num(x: float | None, sign: str = "") -> str:
        return "—" if x is None else f"{x:{sign}.1f}"

    def ours(r: dict) -> str:
        se = "" if r.get("ours_se") is None else f" ± {r['ours_se']:.2f}"
        return num(r["ours"]) + se

    lines = []
    if paper["rows"]:
        lines = ["| recipe | metric | paper | authors' README | ours | difference (pp) | "
                 "protocol |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['recipe']} | {r['metric']} | {num(r['paper'])} | "
                  f"{num(r.get('readme')) if r.get('readme') is not None else 'same'} | "
                  f"{ours(r)} | {num(r['difference_pp'], '+')} | {r['protocol']} |"
                  for r in paper["rows"]]
    if paper["missing"]:
        lines.append("\nNo run yet for: " + ", ".join(f"`{m}`" for m in paper["missing"])
                     + " (train one on a GPU with `ibdml run params/<recipe>.yaml --out "
                     "outputs/<recipe>` beside this study's folder).")
    return "\n".join(lines)

