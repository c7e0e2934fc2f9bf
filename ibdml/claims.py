"""The statistics of the claims study (paper claims 1–3, notebooks/05_claims): mean ± std over
seeds, paired per-seed differences and their verdicts, and the tables the notebook shows. Pure:
steps/claims.py trains the runs and reads their files into these functions.

    claim 1  the MPN-trained backbone beats the CE-only one (MPN dropped at test time)
    claim 2  MPN at inference improves on the backbone features it refines
    claim 3  attention reaches a node's own class more than uniform attention would, and
             sharpens (KL from uniform grows) over training
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from ibdml.paper import PAPER, PAPER_MPN_INFERENCE_R1

# A same-class mass counts as above chance, and a KL change as sharpening, beyond these margins
# (the ones attention.edge_case_verdicts and steps/attention.summarise_run use).
CHANCE_MARGIN, KL_FRACTION = 0.01, 0.01


def mean_std(values: Sequence[float]) -> dict:
    """{mean, std (sample, 0 for one value), n, values}."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def retrieval_metrics(m: dict) -> dict[str, float]:
    """R@1, MAP@R and NMI (when computed) of a metrics dict."""
    out = {"R@1": m["recall_at_k"]["1"], "MAP@R": m["map_at_r"]}
    if m.get("nmi") is not None:
        out["NMI"] = m["nmi"]
    return out


def paired(a: list[dict[str, float]], b: list[dict[str, float]],
            names: tuple[str, str]) -> dict[str, dict]:
    """Per metric: a and b over seeds (under `names`), and the paired differences b − a."""
    return {k: {names[0]: mean_std([x[k] for x in a]), names[1]: mean_std([y[k] for y in b]),
                "difference": mean_std([y[k] - x[k] for x, y in zip(a, b)])}
            for k in a[0] if all(k in y for y in b)}


def verdict(differences: Sequence[float]) -> str:
    """'holds' when every seed's paired difference is positive, 'does not hold' when none is,
    'mixed' otherwise."""
    if all(d > 0 for d in differences):
        return "holds"
    return "does not hold" if all(d <= 0 for d in differences) else "mixed"


def budget(params: dict) -> dict:
    keys = ("dataset", "epochs", "n_c", "n_s", "image_size", "backbone", "lr", "mpn_layers",
            "mpn_heads")
    return {k: params[k] for k in keys}


def claim3(attention: list[dict]) -> dict:
    """Mean over heads of KL from uniform and same-class mass, first vs last recorded epoch, per
    seed; the verdicts of attention.edge_case_verdicts at the end."""
    if not all(a["recorded"] for a in attention):
        return {"recorded": False, "reason": next(a["reason"] for a in attention
                                                  if not a["recorded"])}

    def heads_mean(a: dict, key: str, epoch: int) -> float:
        return statistics.fmean(v for layer in a["summary"][key][epoch] for v in layer)

    kl = {"start": mean_std([heads_mean(a, "kl", 0) for a in attention]),
          "end": mean_std([heads_mean(a, "kl", -1) for a in attention])}
    same = {"start": mean_std([heads_mean(a, "same_class", 0) for a in attention]),
            "end": mean_std([heads_mean(a, "same_class", -1) for a in attention])}
    chance = attention[0]["summary"]["same_class_uniform"]
    kl_max = attention[0]["summary"]["kl_max"]
    above = [v - chance - CHANCE_MARGIN for v in same["end"]["values"]]
    sharper = [e - s - KL_FRACTION * kl_max for s, e in zip(kl["start"]["values"],
                                                           kl["end"]["values"])]
    labels = [h["verdict"] for a in attention for h in a["verdicts"]["heads"]]
    return {"recorded": True, "kl": kl, "same_class": same, "chance": chance, "kl_max": kl_max,
            "epochs": [attention[0]["epochs"][0], attention[0]["epochs"][-1]],
            "head_verdicts": {v: labels.count(v) for v in sorted(set(labels))},
            "verdicts": {"own class above chance": verdict(above),
                         "sharpens (KL from uniform grows)": verdict(sharper)}}


def comparison_rows(recipe: str, metrics: dict, with_mpn: dict | None | str) -> list[dict]:
    """The rows setting one paper-recipe run (its metrics.json, and its mpn_inference.json's
    with_mpn, or "absent" when there is none) beside the paper's numbers, in percent."""
    paper, protocol = PAPER[recipe], metrics["protocol"]
    rows = []
    for k, value in paper["recall_at_k"].items():
        ours = metrics["recall_at_k"].get(k)
        rows.append(_row(recipe, f"R@{k}", value, _percent(ours), protocol))
    if paper["nmi"] is not None:
        rows.append(_row(recipe, "NMI", paper["nmi"], _percent(metrics.get("nmi")), protocol))
    if recipe in PAPER_MPN_INFERENCE_R1 and with_mpn != "absent":
        ours = None if with_mpn is None else with_mpn["recall_at_k"]["1"]
        rows.append(_row(recipe, "R@1, MPN at inference (paper value inferred)",
                         PAPER_MPN_INFERENCE_R1[recipe], _percent(ours), protocol))
    return rows


def _percent(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _row(recipe: str, metric: str, paper: float, ours: float | None, protocol: str) -> dict:
    diff = None if ours is None or math.isnan(ours) else round(ours - paper, 2)
    return {"recipe": recipe, "metric": metric, "paper": paper,
            "ours": None if ours is None else round(ours, 2), "difference_pp": diff,
            "protocol": protocol}


def claim_table(metrics: dict[str, dict], names: tuple[str, str],
                headers: tuple[str, str]) -> str:
    """Markdown: per metric, both sides and the paired difference as mean ± std over seeds."""
    def cell(x: dict, sign: str = "") -> str:
        return f"{x['mean']:{sign}.3f} ± {x['std']:.3f}"

    lines = [f"| metric | {headers[0]} | {headers[1]} | difference (paired) | seeds where it is "
             "higher |", "|---|---|---|---|---|"]
    for k, m in metrics.items():
        wins = sum(d > 0 for d in m["difference"]["values"])
        lines.append(f"| {k} | {cell(m[names[0]])} | {cell(m[names[1]])} | "
                     f"{cell(m['difference'], '+')} | {wins} of {m['difference']['n']} |")
    return "\n".join(lines)


def comparison_table(paper: dict) -> str:
    """Markdown of `paper_comparison`: the rows, then which recipes have no run yet."""
    def num(x: float | None, sign: str = "") -> str:
        return "—" if x is None else f"{x:{sign}.1f}"

    lines = []
    if paper["rows"]:
        lines = ["| recipe | metric | paper | ours | difference (pp) | protocol |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {r['recipe']} | {r['metric']} | {num(r['paper'])} | {num(r['ours'])} | "
                  f"{num(r['difference_pp'], '+')} | {r['protocol']} |" for r in paper["rows"]]
    if paper["missing"]:
        lines.append("\nNo run yet for: " + ", ".join(f"`{m}`" for m in paper["missing"])
                     + " (train one on a GPU with `ibdml run params/<recipe>.yaml --out "
                     "outputs/<recipe>` beside this study's folder).")
    return "\n".join(lines)


def verdict_text(verdicts: dict[str, str]) -> str:
    """Markdown: every verdict in bold, e.g. "**R@1: holds.** **MAP@R: mixed.**"."""
    return " ".join(f"**{k}: {v}.**" for k, v in verdicts.items())


def claim3_table(c3: dict) -> str:
    """Markdown of `claim3`: KL from uniform and same-class mass at the first and last recorded
    epoch (mean ± std over seeds) against their references, the heads' edge-case labels and the
    verdicts; or the reason nothing was recorded."""
    if not c3["recorded"]:
        return f"**{c3['reason']}.**"

    def cell(x: dict, digits: int) -> str:
        return f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}"

    first, last = c3["epochs"]
    kl, same = c3["kl"], c3["same_class"]
    counts = ", ".join(f"{n} {v}" for v, n in c3["head_verdicts"].items())
    return "\n".join([
        f"| | epoch {first} | epoch {last} | reference |", "|---|---|---|---|",
        f"| KL from uniform (nats) | {cell(kl['start'], 4)} | {cell(kl['end'], 4)} | "
        f"one node: {c3['kl_max']:.3f} |",
        f"| same-class mass | {cell(same['start'], 3)} | {cell(same['end'], 3)} | "
        f"uniform: {c3['chance']:.3f} |", "",
        f"Heads at the end, over all seeds: {counts}. {verdict_text(c3['verdicts'])}"])
