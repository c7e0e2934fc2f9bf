"""Training and evaluation at a glance: the training curves, the paper-format recall table and the
per-epoch history table, from history.json rows and metrics.json dicts (as dicts, not files)."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

MISSING = "–"


def _retrieval(rows: list[dict], split: str, key: str) -> list[float]:
    """R@1 (key "r1") or MAP@R (key "map") of `split` in each row."""
    return [r[split]["recall_at_k"]["1"] if key == "r1" else r[split]["map_at_r"] for r in rows]


def training_curves(history: list[dict]) -> go.Figure:
    """Loss per head, learning rate, and R@1 / MAP@R per evaluated epoch (val and test)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss per head", "learning rate",
                                                        "retrieval (backbone features)"))
    epochs = [r["epoch"] for r in history]
    for head in history[0]["loss"] if history else []:
        fig.add_scatter(x=epochs, y=[r["loss"][head] for r in history], name=f"loss: {head}",
                        row=1, col=1)
    fig.add_scatter(x=epochs, y=[r["lr"] for r in history], name="lr", row=1, col=2)
    for split, dash in (("val", "dot"), ("test", "solid")):
        rows = [r for r in history if split in r]
        for key, label in (("r1", "R@1"), ("map", "MAP@R")):
            if rows:
                fig.add_scatter(x=[r["epoch"] for r in rows], y=_retrieval(rows, split, key),
                                name=f"{split} {label}", line_dash=dash, row=1, col=3)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=360, margin=dict(t=40, b=40, l=40, r=20))
    return fig


def recall_table(rows: dict[str, dict], ks: Sequence[int]) -> str:
    """Markdown table in the paper's format (percentages): one row per named metrics dict
    (keys recall_at_k, map_at_r, nmi as in metrics.json; an NMI of None shows as –)."""
    head = " | ".join(f"R@{k}" for k in ks)
    lines = [f"| | {head} | NMI | MAP@R |", "|---" * (len(ks) + 3) + "|"]
    for name, m in rows.items():
        recalls = " | ".join(f"{100 * m['recall_at_k'][str(k)]:.1f}" for k in ks)
        nmi = MISSING if m.get("nmi") is None else f"{100 * m['nmi']:.1f}"
        lines.append(f"| {name} | {recalls} | {nmi} | {100 * m['map_at_r']:.1f} |")
    return "\n".join(lines)


def history_table(history: list[dict]) -> str:
    """Markdown, one row per epoch of history.json: the losses (total, backbone head, MPN head),
    learning rate, seconds, and R@1 / MAP@R where the epoch was evaluated (– elsewhere, and
    for a head the run does not train): on test, or on val for a run that selects on val (it
    evaluates test only at the end, docs/protocol.md).

    Example row: | 3 | 2.104 | 1.050 | 1.054 | 0.0001 | 12 | 0.512 | 0.130 |"""
    split = "test" if any("test" in r for r in history) or not history else "val"
    lines = [f"| epoch | loss | backbone | MPN | lr | s | {split} R@1 | {split} MAP@R |",
             "|---" * 8 + "|"]
    for r in history:
        losses = [r["loss"].get(head) for head in ("total", "backbone", "mpn")]
        shown = r.get(split)
        scores = [shown["recall_at_k"]["1"], shown["map_at_r"]] if shown else [None, None]
        cells = [MISSING if v is None else f"{v:.3f}" for v in losses + scores]
        lines.append(f"| {r['epoch']} | {' | '.join(cells[:3])} | {r['lr']:.2g} | "
                     f"{r['seconds']:.0f} | {' | '.join(cells[3:])} |")
    return "\n".join(lines)
