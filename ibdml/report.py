"""The run report: <run>/report.html, one self-contained page (plotly.js embedded once, images
inlined) that a person can open without Jupyter. It is built from the run folder's files only,
and shows a section for each step whose files exist. A front end: it reads the run folder and
writes report.html through the steps' atomic writer; the figures come from ibdml.figures."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import plotly.graph_objects as go

from ibdml.figures import plotly_js, to_html
from ibdml.figures.attention import kl_curves, same_class_curves, verdict_table
from ibdml.figures.tables import SE_CAPTION, evaluation_rows, metrics_table, mpn_inference_rows
from ibdml.figures.training import training_curves
from ibdml.steps.rundir import read_json, write_text

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}td:first-child,th:first-child{text-align:left}code{background:#f4f4f4;padding:1px 4px}
.note{color:#555}"""


def _markdown_table(md: str) -> str:
    """The small markdown tables of ibdml.figures (metrics_table, verdict_table) as HTML."""
    rows = [line.strip("|").split("|") for line in md.splitlines() if not line.startswith("|---")]
    def cell(text: str) -> str:  # **bold** is the only markdown the tables use
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text.strip()))

    head = "".join(f"<th>{cell(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(fig: go.Figure) -> str:
    return to_html(fig, full_html=False)  # the page loads plotly.js once, in its <head>


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _recall_html(rows: dict[str, dict]) -> str:
    """The paper-format recall table of named metrics dicts, with their own K set, every metric
    with its standard error where the file records one."""
    ks = [int(k) for k in next(iter(rows.values()))["recall_at_k"]]
    return (_markdown_table(metrics_table(rows, ks))
            + f"<p class=note>{html.escape(SE_CAPTION)}</p>")


def _image_if_present(path: Path, caption: str) -> str:
    return f"<p class=note>{caption}</p>" + _image(path) if path.is_file() else ""


def _metrics_section(run: Path) -> str:
    m = read_json(run / "metrics.json")
    return (f"<h2>Test retrieval</h2><p>Protocol: <b>{html.escape(m['protocol'])}</b>, epoch "
            f"{m['epoch']}, split {m['split']}.</p>" + _recall_html(evaluation_rows(m))
            + _image_if_present(run / "figures" / "retrieval_gallery.png",
                                "Retrieval examples. Grey: query; green: same class; red: other "
                                "class."))


def _mpn_inference_section(run: Path) -> str:
    m = read_json(run / "mpn_inference.json")
    if m["with_mpn"] is None:
        return "<h2>MPN at inference</h2><p>This run has no MPN (mpn_layers: 0).</p>"
    return (f"<h2>MPN at inference</h2><p>Reciprocal k-NN graphs (k = {m['k']}, {m['batch']} "
            f"nodes, α = {m['alpha']:.3f}); {html.escape(m['feature_space'])}.</p>"
            + _recall_html(mpn_inference_rows(m)) + _paired_html(m)
            + _image_if_present(run / "figures" / "mpn_neighbourhoods.png",
                                "Neighbourhoods: cosine to the query, backbone → refined."))


def _paired_html(m: dict) -> str:
    """MPN at inference − backbone on the same queries, with paired bootstrap intervals (absent
    from an mpn_inference.json written before they were kept)."""
    paired = m.get("paired_difference")
    if not paired:
        return ""
    items = "; ".join(f"{name} {100 * d['difference']:+.1f} pp [{100 * d['low']:+.1f}, "
                      f"{100 * d['high']:+.1f}]" for name, d in paired.items())
    level = 100 * next(iter(paired.values()))["level"]
    return (f"<p>Refined − backbone, on the same queries ({level:g}% paired bootstrap "
            f"interval): {html.escape(items)}.</p>")


def _attention_section(run: Path) -> str:
    """Claim 3: the verdicts, the two curves (interactive, from the summary) and the example node
    and heatmap (the notebook's PNGs)."""
    a = read_json(run / "attention_summary.json")
    if not a["recorded"]:
        return f"<h2>Attention over training</h2><p>{html.escape(a['reason'])}.</p>"
    c, ex, figures = a["claim"], a["example"], run / "figures"
    return ("<h2>Attention over training</h2>"
            f"<p>{a['summary']['probes']} probe batches of {a['summary']['nodes']} nodes, epochs "
            f"{a['epochs'][0]}–{a['epochs'][-1]}, rows renormalised over the real nodes (null "
            f"mass reported apart). Of {c['heads']} heads, {c['above_chance']} attend to their "
            f"own class above chance at the end, {c['kl_increased']} moved away from uniform, "
            f"{c['near_uniform']} stay near uniform and {c['collapsed']} collapsed.</p>"
            + _markdown_table(verdict_table(a["verdicts_start"], a["verdicts"]))
            + _figure(kl_curves(a["summary"])) + _figure(same_class_curves(a["summary"]))
            + _image_if_present(figures / "attention_node.png",
                                f"Node {ex['node']} (class {html.escape(str(ex['class_name']))}), "
                                f"layer {ex['layer']}, head {ex['head']}: its attention over "
                                "training (a typical node: the median of its batch).")
            + _image_if_present(figures / "attention_heatmap.png",
                                "The probe batch's attention at the last epoch, sorted by "
                                "class."))


def _files_section(run: Path) -> str:
    links = [p.relative_to(run) for pattern in ("notebooks/*.ipynb", "*.json", "*.yaml",
                                                "figures/*")
             for p in sorted(run.glob(pattern)) if p.name != "plotly.min.js"]
    items = "".join(f'<li><a href="{html.escape(str(p))}">{html.escape(str(p))}</a></li>'
                    for p in links)
    return f"<h2>Files</h2><ul>{items}</ul>"


def build_report(run_dir: str | Path) -> Path:
    """Write <run>/report.html from whatever the run folder holds; returns its path."""
    run = Path(run_dir)
    params = (run / "params.yaml").read_text() if (run / "params.yaml").is_file() else ""
    parts = [f"<h1>ibdml run: {html.escape(run.name)}</h1>"]
    if (run / "history.json").is_file():
        parts += ["<h2>Training</h2>", _figure(training_curves(read_json(run / "history.json")))]
    if (run / "metrics.json").is_file():
        parts.append(_metrics_section(run))
    if (run / "mpn_inference.json").is_file():
        parts.append(_mpn_inference_section(run))
    if (run / "attention_summary.json").is_file():
        parts.append(_attention_section(run))
    parts += [_files_section(run),
              f"<h2>Parameters</h2><pre>{html.escape(params)}</pre>"]
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>ibdml {html.escape(run.name)}"
            f"</title><style>{STYLE}</style><script>{plotly_js()}</script></head><body>"
            + "\n".join(parts) + "</body></html>")
    path = run / "report.html"
    write_text(path, page)
    return path

