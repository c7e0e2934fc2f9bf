"""The statistics of the claims study (paper claims 1–3 and what the MPN's gain is made of;
notebooks/05_claims). Pure: steps/claims.py trains the runs and reads their files into these
functions; every comparison is paired per seed and judged by its 95 % interval (verdicts.py).

    claim 1   the MPN-trained backbone beats the CE-only one (MPN dropped at test time)
    claim 2   MPN at inference improves on the backbone features it refines
    ablation  which part of the MPN the gain needs: the method (dot-product attention) against
              the same MPN with uniform attention (every node receives the batch mean: messages,
              but none learned) and with self attention (each node only itself: the same layers,
              parameters and second classifier, but no messages) — docs/results.md
    claim 3   attention reaches a node's own class (other nodes of it: the node itself excluded)
              more than uniform attention would, and sharpens (KL from uniform grows) over
              training; judged per head and on each seed's most selective head
"""

from __future__ import annotations

from ibdml.verdicts import mean_std, paired_comparison

# The study's variants: {name: (label, parameter changes)}; every other parameter is shared.
VARIANTS = {
    "ce": ("CE-only", {"mpn_layers": 0, "loss_heads": "backbone"}),
    "mpn": ("MPN (dot-product attention)", {}),
    "mpn-uniform": ("MPN, uniform attention", {"mpn_attention": "uniform"}),
    "mpn-self": ("MPN, self attention only", {"mpn_attention": "self"}),
}
# The ablation: {key: (side a, side b, the question b − a answers)}.
ABLATION = {
    "needs_message_passing": ("mpn-self", "mpn", "Does the gain need messages between samples? "
                              "dot-product attention against self attention only"),
    "needs_learned_attention": ("mpn-uniform", "mpn", "Does it need learned attention? "
                                "dot-product attention against uniform averaging"),
    "layers_alone": ("ce", "mpn-self", "What do the MPN's layers and second classifier give "
                     "without messages? self attention only against CE-only"),
    "averaging": ("ce", "mpn-uniform", "What does plain averaging over the batch give? uniform "
                  "attention against CE-only"),
}
METRICS = ("R@1", "MAP@R", "NMI")


def retrieval_metrics(m: dict) -> dict[str, float]:
    """R@1, MAP@R and NMI (when computed) of a metrics dict."""
    out = {"R@1": m["recall_at_k"]["1"], "MAP@R": m["map_at_r"]}
    if m.get("nmi") is not None:
        out["NMI"] = m["nmi"]
    return out


def standard_errors(m: dict) -> dict[str, float]:
    """The standard errors over test queries of `retrieval_metrics(m)`, where m carries them."""
    se = m.get("standard_error") or {}
    out = {"R@1": se.get("recall_at_k", {}).get("1"), "MAP@R": se.get("map_at_r"),
           "NMI": se.get("nmi")}
    return {k: v for k, v in out.items() if v is not None}


def compare(a: list[dict], b: list[dict], bootstraps: dict[str, dict] | None = None
            ) -> dict[str, dict]:
    """Per metric: `paired_comparison` of metrics dicts a and b (one per seed, same seed order).
    bootstraps {metric: paired bootstrap over queries} serve when there is one seed."""
    a, b = [retrieval_metrics(m) for m in a], [retrieval_metrics(m) for m in b]
    return {k: paired_comparison([x[k] for x in a], [y[k] for y in b],
                                 (bootstraps or {}).get(k))
            for k in METRICS if all(k in x for x in a) and all(k in y for y in b)}


def budget(params: dict) -> dict:
    keys = ("dataset", "epochs", "n_c", "n_s", "image_size", "backbone", "lr", "mpn_layers",
            "mpn_heads")
    return {k: params[k] for k in keys}


def runs_summary(metrics: dict[str, list[dict]], seeds: list[int]) -> dict:
    """{variant: {seed: {metric: value, metric + " SE": standard error over queries}}}."""
    return {v: {str(s): {**retrieval_metrics(m),
                         **{f"{k} SE": se for k, se in standard_errors(m).items()}}
                for s, m in zip(seeds, ms)}
            for v, ms in metrics.items()}


def claim3(attention: list[dict]) -> dict:
    """Claim 3 from each seed's attention_summary.json (same heads and epochs in every seed).

    Per head, over seeds: the same-class mass excluding the node itself at the last recorded
    epoch against what uniform attention gives it ("own class above chance"), and the KL from
    uniform at the last against the first recorded epoch ("sharpens"); the self mass beside.
    The verdicts are taken from each seed's most selective head (largest same-class mass above
    chance at the end), so one selective head cannot be averaged away; with several heads that
    maximum is biased upward, which is why every head is also reported on its own."""
    if not all(a["recorded"] for a in attention):
        return {"recorded": False, "reason": next(a["reason"] for a in attention
                                                  if not a["recorded"])}
    s = [a["summary"] for a in attention]
    chance, kl_max = s[0]["same_class_excl_self_uniform"], s[0]["kl_max"]
    heads = [(layer, head) for layer in range(len(s[0]["kl"][0]))
             for head in range(len(s[0]["kl"][0][0]))]

    def at(x: dict, key: str, epoch: int, lh: tuple[int, int]) -> float:
        return x[key][epoch][lh[0]][lh[1]]

    def head_result(pick: list[tuple[int, int]]) -> dict:  # one (layer, head) per seed
        same = [at(x, "same_class_excl_self", -1, lh) for x, lh in zip(s, pick)]
        return {"own class above chance": paired_comparison([chance] * len(s), same),
                "sharpens": paired_comparison([at(x, "kl", 0, lh) for x, lh in zip(s, pick)],
                                              [at(x, "kl", -1, lh) for x, lh in zip(s, pick)]),
                "self_mass": mean_std([at(x, "self_mass", -1, lh) for x, lh in zip(s, pick)]),
                "same_class_excl_self_start": mean_std(
                    [at(x, "same_class_excl_self", 0, lh) for x, lh in zip(s, pick)])}

    most = [max(heads, key=lambda lh: at(x, "same_class_excl_self", -1, lh)) for x in s]
    selective = head_result(most)
    return {"recorded": True, "chance": chance, "kl_max": kl_max,
            "epochs": [s[0]["epochs"][0], s[0]["epochs"][-1]],
            "per_head": {f"layer {lh[0]} head {lh[1]}": head_result([lh] * len(s))
                         for lh in heads},
            "most_selective": {**selective, "heads": [f"layer {lh[0]} head {lh[1]}"
                                                      for lh in most]},
            "verdicts": {k: selective[k]["verdict"] for k in ("own class above chance",
                                                              "sharpens")}}
