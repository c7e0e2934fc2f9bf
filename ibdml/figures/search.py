"""A random search at a glance (notebooks/06_search): the trials as a table, their sampled values
against validation MAP@R in parallel coordinates, the validation learning curves, and the chosen
configuration with its single test evaluation. The search.json that `ibdml sweep` writes, as a
dict, in; markdown and plotly figures out (docs/scale-out.md).

The parts of search.json read here:

    space      {name: spec}: a plain value is fixed; a one-key mapping is a distribution,
               {"loguniform": [lo, hi]}, {"uniform": [lo, hi]}, {"randint": [lo, hi]} (both ends
               inclusive) or {"choice": [a, b, ...]} (any YAML values: numbers, strings, lists)
    trials     [{"trial", "status" ("finished" | "stopped early" | "failed" | "not run"), "error",
               "values" {name: sampled value}, "epochs", "history" [{"epoch", "val"}],
               "selected_epoch", "val" {"recall_at_k": {"1": …}, "map_at_r"} or null}]
    chosen     null, or {"trial", "run_dir", "values", "selected_epoch", "val", "test"}
"""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go

from ibdml.figures.training import recall_table

MISSING = "–"
DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
FAILED = "failed"


def sampled(space: dict) -> dict[str, tuple[str, list]]:
    """{name: (distribution, arguments)} of the space's sampled entries, in the space's order;
    plain values (fixed) are left out. Example: {"lr": {"loguniform": [1e-5, 1e-3]},
    "epochs": 40} → {"lr": ("loguniform", [1e-5, 1e-3])}."""
    return {name: next(iter(spec.items())) for name, spec in space.items()
            if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS}


def fixed(space: dict) -> dict:
    """{name: value} of the space's fixed entries."""
    names = sampled(space)
    return {name: value for name, value in space.items() if name not in names}


def format_value(value) -> str:
    """A sampled value for a markdown cell: floats to 3 significant digits, strings as they are,
    anything else (lists, None, booleans) as JSON; a `|` is escaped so it cannot split the cell."""
    if isinstance(value, float):
        text = f"{value:.3g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    return text.replace("|", "\\|")


def _score(metrics: dict | None, key: str) -> float | None:
    """R@1 (key "r1") or MAP@R (key "map") of a metrics dict, None when there is none."""
    if not metrics:
        return None
    return metrics["recall_at_k"].get("1") if key == "r1" else metrics.get("map_at_r")


def _cell(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


def summary(search: dict) -> str:
    """One markdown sentence: how many trials ran and how they ended, the scheduler, the time
    taken, and which trial was chosen. Example: "30 of 30 requested trials: 12 finished, 17
    stopped early, 1 failed (scheduler asha, 2.5 h); chosen: trial a1b2, val MAP@R 0.312.\""""
    trials = search.get("trials", [])
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    ended = ", ".join(f"{n} {status}" for status, n in counts.items()) or "none run yet"
    hours = search.get("seconds", 0) / 3600
    took = f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.1f} min"
    chosen = search.get("chosen")
    picked = (f"chosen: trial **{chosen['trial']}**, val MAP@R "
              f"{_cell(_score(chosen['val'], 'map'))}" if chosen else "no trial chosen")
    return (f"{len(trials)} of {search.get('trials_requested', len(trials))} requested trials: "
            f"{ended} (scheduler {search.get('scheduler', MISSING)}, {took}); {picked}.")


def trials_table(search: dict) -> str:
    """Markdown, one row per trial in search.json's order: trial (the chosen one in bold,
    marked "chosen"), status, each sampled value (in the space's order), epochs completed, and
    val R@1 / MAP@R at the trial's selected epoch (– when it has none: failed, not run, or
    stopped before its first evaluation). Failed trials' errors follow the table, one line each
    (the first line of the error). No trials: one sentence instead of a table.

    Example row: | **t07** (chosen) | finished | 0.000156 | 2 | 40 | 0.612 | 0.301 |"""
    trials = search.get("trials", [])
    if not trials:
        return "The search has no trials yet."
    names = list(sampled(search.get("space", {})))
    chosen = (search.get("chosen") or {}).get("trial")
    lines = ["| trial | status | " + "".join(f"{n} | " for n in names)
             + "epochs | val R@1 | val MAP@R |", "|---" * (len(names) + 5) + "|"]
    for t in trials:
        name = f"**{t['trial']}** (chosen)" if t["trial"] == chosen else str(t["trial"])
        values = [format_value(t["values"][n]) if n in t.get("values", {}) else MISSING
                  for n in names]
        lines.append(f"| {name} | {t['status']} | " + "".join(f"{v} | " for v in values)
                     + f"{t.get('epochs', 0)} | {_cell(_score(t.get('val'), 'r1'))} | "
                     f"{_cell(_score(t.get('val'), 'map'))} |")
    errors = [f"- trial {t['trial']} failed: {(t.get('error') or 'no message').splitlines()[0]}"
              for t in trials if t["status"] == FAILED]
    return "\n".join(lines + ([""] + errors if errors else []))


def _dimension(name: str, distribution: str, arguments: list, values: list) -> dict:
    """One Parcoords axis. loguniform: log10 of the values, ticks at the powers of ten, labelled
    "log10 <name>"; uniform and randint: the values on the space's range; choice: the index of
    each value among the options, ticks labelled with the options (strings, numbers, lists)."""
    if distribution == "choice":
        labels = [format_value(o) for o in arguments]
        return dict(label=name, values=[arguments.index(v) for v in values],
                    tickvals=list(range(len(arguments))), ticktext=labels,
                    range=[0, max(len(arguments) - 1, 1)])
    if distribution == "loguniform":
        lo, hi = (math.log10(a) for a in arguments)
        ticks = list(range(math.ceil(lo), math.floor(hi) + 1))
        return dict(label=f"log10 {name}", values=[math.log10(v) for v in values], range=[lo, hi],
                    tickvals=ticks, ticktext=[f"1e{k}" for k in ticks])
    return dict(label=name, values=list(values), range=list(arguments))


def _plotted(search: dict) -> list[dict]:
    """The trials parallel coordinates can draw: not failed, scored on val, every sampled value
    present (and, for a choice, one of its options)."""
    space = sampled(search.get("space", {}))

    def drawable(t: dict) -> bool:
        values = t.get("values", {})
        return (t["status"] != FAILED and _score(t.get("val"), "map") is not None
                and all(n in values and (d != "choice" or values[n] in a)
                        for n, (d, a) in space.items()))

    return [t for t in search.get("trials", []) if drawable(t)]


def parallel_coordinates(search: dict) -> go.Figure:
    """Parallel coordinates: one axis per sampled value (loguniform ones as log10, labelled so;
    choices as their options, strings included), then val MAP@R; one line per trial, coloured
    by its val MAP@R. Failed trials are left out, and so are trials without a validation score
    (not run, or stopped before their first evaluation). With nothing to draw (no trials, all
    failed) the figure has no data and says why in its title."""
    space, trials = sampled(search.get("space", {})), _plotted(search)
    if not trials:
        return go.Figure(layout=dict(title="Parallel coordinates: no trial has a validation "
                                           "score yet (none run, or all failed)", height=200))
    scores = [_score(t["val"], "map") for t in trials]
    dimensions = [_dimension(n, d, a, [t["values"][n] for t in trials])
                  for n, (d, a) in space.items()]
    dimensions.append(dict(label="val MAP@R", values=scores))
    left_out = len(search["trials"]) - len(trials)
    fig = go.Figure(go.Parcoords(
        dimensions=dimensions,
        line=dict(color=scores, colorscale="Viridis", showscale=True,
                  colorbar=dict(title="val MAP@R"))))
    fig.update_layout(title=f"{len(trials)} trials coloured by val MAP@R"
                            + (f" ({left_out} failed or unscored left out)" if left_out else ""),
                      height=420, margin=dict(t=80, b=40, l=60, r=40))
    return fig


def learning_curves(search: dict) -> go.Figure:
    """Val MAP@R per evaluated epoch, one line per trial with history: finished trials solid,
    stopped-early ones dotted (ASHA stopped them, so their lines end sooner), failed ones
    dashed; the chosen trial thicker, with a star at its selected epoch. With no history at all
    the figure has no data and says so in its title."""
    chosen = search.get("chosen") or {}
    fig = go.Figure()
    for t in search.get("trials", []):
        rows = [r for r in t.get("history", []) if r.get("val")]
        if not rows:
            continue
        is_chosen = t["trial"] == chosen.get("trial")
        dash = {"stopped early": "dot", FAILED: "dash"}.get(t["status"], "solid")
        fig.add_scatter(x=[r["epoch"] for r in rows], y=[r["val"]["map_at_r"] for r in rows],
                        mode="lines+markers", name=f"{t['trial']} ({t['status']})",
                        line=dict(dash=dash, width=4 if is_chosen else 1.5),
                        marker=dict(size=4), opacity=1.0 if is_chosen else 0.7)
    if chosen and chosen.get("selected_epoch") is not None:
        fig.add_scatter(x=[chosen["selected_epoch"]], y=[_score(chosen["val"], "map")],
                        mode="markers", name=f"chosen: {chosen['trial']}, selected epoch",
                        marker=dict(symbol="star", size=16, color="black"))
    title = ("Validation MAP@R per epoch (dotted: stopped early)" if fig.data else
             "Learning curves: no trial has evaluated an epoch yet")
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title="val MAP@R", height=420,
                      margin=dict(t=60, b=40, l=60, r=20))
    return fig


def chosen_table(search: dict) -> str:
    """Markdown: the chosen trial and its selected epoch, a table of its sampled values (and a
    line with the space's fixed values), then its validation metrics (what chose it) beside the
    single test evaluation, in the paper's percent format (R@K at the K both have, NMI, MAP@R),
    and the test protocol. Without a chosen trial: one sentence saying why (no trials, all
    failed, or none has a validation score yet) and how to continue."""
    chosen = search.get("chosen")
    if chosen is None:
        return _no_choice(search.get("trials", []))
    names = list(sampled(search.get("space", {}))) or list(chosen["values"])
    rows = "".join(f"| {n} | {format_value(chosen['values'][n])} |\n"
                   for n in names if n in chosen["values"])
    kept = fixed(search.get("space", {}))
    fixed_line = ("Fixed by the space: " + ", ".join(f"{n} = {format_value(v)}"
                                                     for n, v in kept.items()) + ".\n\n"
                  if kept else "")
    val, test = chosen["val"], chosen["test"]
    ks = [int(k) for k in test["recall_at_k"] if k in val["recall_at_k"]]
    metrics = recall_table({"validation (chose it)": val, "test (evaluated once)": test}, ks)
    return (f"**Chosen: trial {chosen['trial']}**, epoch {chosen['selected_epoch']} of its run "
            f"(`{chosen['run_dir']}`): the finished trial with the best validation MAP@R.\n\n"
            f"| parameter | value |\n|---|---|\n{rows}\n{fixed_line}{metrics}\n\n"
            f"Test protocol: {test.get('protocol', MISSING)}. The test split was evaluated "
            "once, for this configuration only; no other trial saw it.")


def _no_choice(trials: list[dict]) -> str:
    if not trials:
        return ("No configuration was chosen: the search has no trials yet. Run `ibdml sweep` "
                "(docs/scale-out.md).")
    if all(t["status"] == FAILED for t in trials):
        return ("No configuration was chosen: every trial failed (their errors are under the "
                "trials table and in search.json). Fix the cause and run the same `ibdml sweep` "
                "command again.")
    return ("No configuration was chosen yet: no trial has finished with a validation score. "
            "Run the same `ibdml sweep` command again to resume the search; the test split is "
            "evaluated once a trial is chosen.")
