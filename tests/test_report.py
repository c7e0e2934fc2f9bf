"""The report builds from whatever a run folder holds, one section per step's files."""

import json

import torch

from ibdml.attention import edge_case_verdicts, summarise
from ibdml.figures import to_png
from ibdml.figures.attention import attention_figures
from ibdml.mpn import attention_weights
from ibdml.report import build_report


def metrics(r1, map_r, nmi=None):
    return {"recall_at_k": {"1": r1, "4": min(1.0, 2 * r1)}, "map_at_r": map_r, "nmi": nmi}


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def attention_summary(run):
    """A synthetic record's summary, and its node and heatmap PNGs as the attention step saves
    them: [E=2, L=1, P=1, H=2, N=4, N]."""
    torch.manual_seed(0)
    attn = attention_weights(torch.randn(2, 1, 1, 2, 4, 4), null_key=True)
    labels = torch.tensor([[0, 0, 1, 1]])
    s = summarise(attn, labels)
    end, start = edge_case_verdicts(s), edge_case_verdicts(s, epoch=0)
    for stem, (_, png) in attention_figures(s, attn, labels, layer=0, head=1, probe=0,
                                            node=2).items():
        (run / "figures" / f"{stem}.png").write_bytes(to_png(png))
    return {"recorded": True, "epochs": [0, 1], "summary": s, "verdicts": end,
            "verdicts_start": start,
            "claim": {"heads": 2, "above_chance": 1, "kl_increased": 2, "same_class_increased": 1,
                      "near_uniform": 1, "collapsed": 0},
            "example": {"layer": 0, "head": 1, "probe": 0, "node": 2, "class": 1,
                        "class_name": "b<i>"}}


def test_a_full_run_folder_gives_every_section(tmp_path):
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "params.yaml").write_text("epochs: 2\n")
    write(run / "history.json", [{"epoch": 1, "loss": {"total": 1.0}, "lr": 0.1, "seconds": 1,
                                  "test": metrics(0.5, 0.25)}])
    write(run / "metrics.json", {**metrics(0.625, 0.5, nmi=0.75), "protocol": "last epoch",
                                 "epoch": 2, "split": "test",
                                 "baselines": {"raw_pixels": metrics(0.25, 0.125)}})
    write(run / "mpn_inference.json", {"with_mpn": None})
    write(run / "attention_summary.json", attention_summary(run))
    page = build_report(run).read_text()
    for heading in ("Training", "Test retrieval", "MPN at inference", "Attention over training",
                    "Files", "Parameters"):
        assert f"<h2>{heading}</h2>" in page
    assert "<td>62.5</td>" in page and "<td>baseline: raw pixels</td>" in page
    assert "<td><b>" in page  # the verdict table's bold end verdicts
    assert "class b&lt;i&gt;" in page  # names from the run are escaped
    assert page.count("<img ") == 2  # inlined: the example node's bars and the heatmap
    assert '<img alt="attention_node.png" src="data:image/png;base64,' in page
    assert page.count("<script src") == 0  # plotly.js inlined once, not loaded
    assert "epochs: 2" in page


def test_metrics_show_their_standard_errors_and_old_files_the_numbers_alone(tmp_path):
    run = tmp_path / "run"
    se = {"recall_at_k": {"1": 0.01, "4": 0.0004}, "map_at_r": 0.005, "nmi": None,
          "method": "binomial ..."}
    with_se = {**metrics(0.625, 0.5), "standard_error": se}
    write(run / "metrics.json", {**with_se, "protocol": "last epoch", "epoch": 2, "split": "test",
                                 "baselines": {"raw_pixels": metrics(0.25, 0.125)}})
    paired = {"R@1": {"difference": 0.02, "low": 0.01, "high": 0.03, "level": 0.95},
              "MAP@R": {"difference": -0.01, "low": -0.02, "high": 0.0, "level": 0.95}}
    write(run / "mpn_inference.json", {
        "without_mpn": with_se, "with_mpn": {**metrics(0.645, 0.49), "standard_error": se},
        "k": 30, "batch": 7, "alpha": 2 / 3, "feature_space": "refined (last layer)",
        "paired_difference": paired})
    page = build_report(run).read_text()
    assert "<td>62.5 ± 1.0</td>" in page and "<td>100.0 ± 0.04</td>" in page
    assert "<td>50.0 ± 0.5</td>" in page and "<td>–</td>" in page  # NMI not computed
    assert "<td>25.0</td>" in page  # the baseline has no SEs: the number alone
    assert page.count("± SE over test queries") == 2  # once under each table
    assert "R@1 +2.0 pp [+1.0, +3.0]; MAP@R -1.0 pp [-2.0, +0.0]" in page
    assert "95% paired bootstrap interval" in page


def test_an_empty_run_folder_gives_a_page_without_step_sections(tmp_path):
    page = build_report(tmp_path).read_text()
    assert "<h2>Files</h2>" in page and "<h2>Training</h2>" not in page


def test_a_run_without_attention_says_why(tmp_path):
    write(tmp_path / "attention_summary.json",
          {"recorded": False, "reason": "this run records no attention: mpn_layers is 0"})
    assert "mpn_layers is 0.</p>" in build_report(tmp_path).read_text()
