"""The claims study: 05_claims on smoke parameters (two seeds) trains both variants, writes
claims.json with every claim's numbers and verdicts, and sets paper-recipe runs beside the
paper's values; `ibdml run` leaves the study notebook out."""

import json
from pathlib import Path

import nbformat
import papermill
import pytest

from ibdml.claims import claim_table, comparison_table, mean_std, verdict
from ibdml.paper import PAPER
from ibdml.pipeline import NOTEBOOKS, run_claims_notebook, steps
from ibdml.steps.claims import find_paper_runs, paper_comparison, run_dir_of

# The parameters every notebook receives from the pipeline (docs/architecture.md).
CONTRACT = ("params_file", "run_dir", "overrides")

SMOKE = Path(__file__).parent.parent / "params" / "smoke.yaml"


@pytest.fixture(scope="module")
def study(glyph_root, tmp_path_factory):
    outputs = tmp_path_factory.mktemp("outputs")
    # a finished run of a paper recipe beside the study: its metrics are compared with the paper
    cub = outputs / "cub200"
    cub.mkdir()
    (cub / "metrics.json").write_text(json.dumps({
        "recall_at_k": {"1": 0.7, "2": 0.81, "4": 0.88, "8": 0.93}, "map_at_r": 0.3,
        "nmi": 0.74, "protocol": "paper (last epoch)"}))
    path = run_claims_notebook(SMOKE, outputs / "claims", [0, 1],
                               {"data_root": str(glyph_root)}, log=lambda _: None)
    return outputs, json.loads(path.read_text())


def test_both_variants_ran_for_every_seed(study):
    outputs, result = study
    for seed in (0, 1):
        ce, mpn = (run_dir_of(outputs / "claims", v, seed) for v in ("ce", "mpn"))
        assert (ce / "metrics.json").is_file() and not (ce / "mpn_inference.json").exists()
        assert (mpn / "mpn_inference.json").is_file() and (mpn / "attention_summary.json").is_file()
        assert "mpn_layers: 0" in (ce / "params.yaml").read_text()
        assert f"seed: {seed}" in (mpn / "params.yaml").read_text()
    executed = nbformat.read(outputs / "claims" / "notebooks" / "05_claims.ipynb", as_version=4)
    assert all(not any(o.get("output_type") == "error" for o in c.get("outputs", []))
               for c in executed.cells)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "4 runs as Ray tasks (1 CPU, 0 GPU each)" in printed  # the study ran through Ray


def test_claims_json_holds_each_claim_with_its_verdict(study):
    outputs, result = study
    assert result["seeds"] == [0, 1] and result["budget"]["epochs"] == 1
    c1 = result["claim1"]["metrics"]
    assert set(c1) == {"R@1", "MAP@R", "NMI"}
    r1 = c1["R@1"]
    assert r1["ce"]["n"] == r1["mpn"]["n"] == 2
    ce0 = json.loads((run_dir_of(outputs / "claims", "ce", 0) / "metrics.json").read_text())
    assert r1["ce"]["values"][0] == ce0["recall_at_k"]["1"]
    assert r1["difference"]["values"] == pytest.approx(
        [m - c for c, m in zip(r1["ce"]["values"], r1["mpn"]["values"])])
    assert set(result["claim1"]["verdicts"].values()) <= {"holds", "does not hold", "mixed"}
    assert set(result["claim2"]["metrics"]["R@1"]) == {"without", "with", "difference"}
    c3 = result["claim3"]
    assert c3["recorded"] and c3["epochs"] == [0, 1] and 0 < c3["chance"] < 1
    assert set(c3["verdicts"]) == {"own class above chance", "sharpens (KL from uniform grows)"}


def test_paper_comparison_from_the_runs_beside_the_study(study):
    _, result = study
    rows = result["paper"]["rows"]
    assert result["paper"]["missing"] == ["cars196", "sop", "inshop"]
    r1 = next(r for r in rows if r["recipe"] == "cub200" and r["metric"] == "R@1")
    assert (r1["paper"], r1["ours"], r1["difference_pp"]) == (70.3, 70.0, -0.3)
    nmi = next(r for r in rows if r["metric"] == "NMI")
    assert (nmi["ours"], nmi["difference_pp"]) == (74.0, 0.8)
    table = comparison_table(result["paper"])
    assert "| cub200 | R@1 | 70.3 | 70.0 | -0.3 |" in table and "`sop`" in table


def test_without_runs_every_recipe_is_missing(tmp_path):
    result = paper_comparison(find_paper_runs(tmp_path))
    assert result == {"rows": [], "missing": list(PAPER)}
    assert "No run yet for: `cub200`, `cars196`, `sop`, `inshop`" in comparison_table(result)


def test_verdicts_and_spreads():
    assert verdict([0.01, 0.02]) == "holds"
    assert verdict([-0.01, 0.0]) == "does not hold"
    assert verdict([0.01, -0.01]) == "mixed"
    m = mean_std([0.5, 0.7, 0.6])
    assert m["mean"] == pytest.approx(0.6) and m["std"] == pytest.approx(0.1) and m["n"] == 3
    assert mean_std([0.5])["std"] == 0.0
    table = claim_table({"R@1": {"ce": mean_std([0.5, 0.6]), "mpn": mean_std([0.6, 0.6]),
                                 "difference": mean_std([0.1, 0.0])}},
                        ("ce", "mpn"), ("CE-only", "MPN-trained"))
    assert "| R@1 | 0.550 ± 0.071 | 0.600 ± 0.000 | +0.050 ± 0.071 | 1 of 2 |" in table


def test_the_study_notebook_is_not_a_pipeline_step():
    names = [s.name for s in steps()]
    assert "05_claims" not in names and names[-1] == "04_attention_evolution"
    params = list(papermill.inspect_notebook(str(NOTEBOOKS / "05_claims.ipynb")))
    assert params == [*CONTRACT, "seeds", "address"]
