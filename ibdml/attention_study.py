"""When does MPN attention become selective? The statistics of the attention study
(notebooks/07_attention_study; the runs are trained by steps/attention_study.py).

Each setting changes one knob of the run's parameters that plausibly decides whether attention
leaves plain averaging (docs/results.md, "When does attention become selective"); every setting
is trained on the same seeds, holds out validation classes and is read on them only: the test
split is never looked at, so nothing here is chosen by test metrics.

Per setting and seed, at the last recorded epoch of the probe batches (training classes):
    excess      the most selective head's same-class mass excluding the node itself, minus what
                uniform attention gives (> 0: attention goes to the own class beyond chance)
    kl          that head's KL divergence from uniform (nats; log N = one node)
    val MAP@R   the validation split's MAP@R at the last epoch
A setting makes attention *clearly selective* when the excess's 95 % interval over seeds lies
above 0; it *keeps* retrieval when its validation MAP@R is not contradicted to be lower than the
default setting's (paired per seed).
"""

from __future__ import annotations

from ibdml.verdicts import (CONTRADICTED, SUPPORTED, interval_cell, mean_std, paired_comparison,
                            spread_cell)

# {name: (label, parameter changes)}: one knob each against the run's own parameters.
SETTINGS = {
    "default": ("the parameters file as it is", {}),
    "epochs40": ("40 epochs instead of 12 (lr ÷10 after 34)", {"epochs": 40,
                                                                "lr_milestones": [34]}),
    "mpn-lr10": ("the MPN's learning rate × 10", {"mpn_lr_multiplier": 10.0}),
    "scale4": ("attention logits × 4", {"attention_scale": 4.0}),
    "no-null-key": ("standard softmax (no null key)", {"attention_null_key": False}),
    "batch6x9": ("6 classes × 9 images per batch", {"n_c": 6, "n_s": 9}),
}
# The study's protocol, on top of every setting: validation classes held out and read alone.
PROTOCOL = {"val_fraction": 0.2, "select_on": "val"}


def run_measures(summary: dict, history: list[dict]) -> dict:
    """One run's measures from its attention summary (attention_summary.json's "summary") and
    its history rows: {excess, same_class, chance, kl, kl_max, self_mass, head, val_map_at_r}."""
    chance = summary["same_class_excl_self_uniform"]
    # imported here: ibdml.attention imports torch, and the CLI's help reads SETTINGS from this
    # module without it (tests/test_cli.py)
    from ibdml.attention import most_selective_head

    # NaN-aware: a head whose rows all went to the null key at the last epoch never wins
    best = most_selective_head(summary["same_class_excl_self"][-1], chance)
    layer, head = best["layer"], best["head"]
    last = summary["same_class_excl_self"][-1]  # [L][H]
    val = [row["val"]["map_at_r"] for row in history if "val" in row]
    if not val:
        raise ValueError("the run's history has no validation rows: train it with "
                         "val_fraction > 0 and eval_every > 0")
    return {"excess": last[layer][head] - chance, "same_class": last[layer][head],
            "chance": chance, "kl": summary["kl"][-1][layer][head], "kl_max": summary["kl_max"],
            "self_mass": summary["self_mass"][-1][layer][head],
            "head": f"layer {layer} head {head}", "val_map_at_r": val[-1]}


def setting_result(runs: list[dict], default_runs: list[dict]) -> dict:
    """A setting's runs (run_measures, one per seed) against the default setting's on the same
    seeds: the excess over chance with its interval and verdict, KL and self mass over seeds, and
    validation MAP@R paired against the default."""
    excess = paired_comparison([0.0] * len(runs), [r["excess"] for r in runs])
    val = paired_comparison([r["val_map_at_r"] for r in default_runs],
                            [r["val_map_at_r"] for r in runs])
    return {"excess": excess, "kl": mean_std([r["kl"] for r in runs]),
            "self_mass": mean_std([r["self_mass"] for r in runs]),
            "val_map_at_r": mean_std([r["val_map_at_r"] for r in runs]),
            "val_map_at_r_vs_default": val,
            "selective": excess["verdict"] == SUPPORTED,
            "keeps_retrieval": val["verdict"] != CONTRADICTED,
            "heads": [r["head"] for r in runs]}


def conclusion(results: dict[str, dict]) -> dict:
    """The setting to ship as the teaching preset (clearly selective, validation MAP@R kept, the
    largest excess), or None and the closest setting (the largest mean excess), in words."""
    good = [k for k, r in results.items() if r["selective"] and r["keeps_retrieval"]]
    best = max(good or results, key=lambda k: results[k]["excess"]["difference"]["mean"])
    r = results[best]
    numbers = (f"same-class mass above uniform {interval_cell(r['excess']['interval'])}, "
               f"KL from uniform {r['kl']['mean']:.3f} nats, validation MAP@R "
               f"{r['val_map_at_r']['mean']:.3f}")
    if good:
        text = (f"Attention becomes clearly selective with {SETTINGS[best][0]} ({numbers}), "
                "without lowering validation MAP@R.")
    else:
        text = (f"No setting made attention clearly selective (the same-class excess's interval "
                f"above 0) without lowering validation MAP@R. The closest is "
                f"{SETTINGS[best][0]} ({numbers}).")
    return {"chosen": best if good else None, "closest": best, "text": text}


def study_table(results: dict[str, dict]) -> str:
    """Markdown: one row per setting."""
    lines = ["| setting | same-class mass above uniform, most selective head [95 % interval] | "
             "verdict | KL from uniform (nats) | self mass | val MAP@R | val MAP@R − default "
             "[95 % interval] |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ex, val = r["excess"], r["val_map_at_r_vs_default"]
        lines.append(f"| {SETTINGS[name][0]} | {interval_cell(ex['interval'])} | "
                     f"**{ex['verdict']}** ({ex['seeds_higher']} of {ex['difference']['n']}) | "
                     f"{spread_cell(r['kl'], 4)} | {spread_cell(r['self_mass'])} | "
                     f"{spread_cell(r['val_map_at_r'])} | "
                     f"{'—' if name == 'default' else interval_cell(val['interval'])} |")
    return "\n".join(lines)


def runs_table(runs: dict[str, list[dict]], seeds: list[int]) -> str:
    """Markdown: every run's measures (run_measures), one row per setting and seed."""
    lines = ["| setting | seed | most selective head | same-class mass | uniform | excess | "
             "KL (nats) | self mass | val MAP@R |", "|---|---|---|---|---|---|---|---|---|"]
    for name, measures in runs.items():
        for seed, m in zip(seeds, measures):
            lines.append(f"| {name} | {seed} | {m['head']} | {m['same_class']:.3f} | "
                         f"{m['chance']:.3f} | {m['excess']:+.3f} | {m['kl']:.4f} | "
                         f"{m['self_mass']:.3f} | {m['val_map_at_r']:.3f} |")
    return "\n".join(lines)
