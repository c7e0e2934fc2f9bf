"""The benchmark scripts of `make bench` in their tiny modes: the comparisons are correct and the
report is written from what was measured. No timing is checked here."""

import argparse
import json
import statistics
import sys

import numpy as np
import pytest
import torch

from bench_scripts import load_bench

evaluate_bench = load_bench("evaluate")
run_all = load_bench("run_all")


# --- bench/evaluate.py --------------------------------------------------------------------------


def test_labelled_sets_have_the_sizes_asked_for():
    spec = evaluate_bench.LabelledSet(500, 25, 10, 30, noise=0.15)
    x, labels = evaluate_bench.labelled_embeddings(spec, seed=3)
    sizes = np.bincount(labels)
    assert x.shape == (500, evaluate_bench.DIM) and x.dtype == torch.float32
    assert len(sizes) == 25 and sizes.min() >= 10 and sizes.max() <= 30 and sizes.sum() == 500
    torch.testing.assert_close(x.norm(dim=1), torch.ones(500))
    assert not np.array_equal(labels, np.sort(labels))  # shuffled, not in class blocks
    for spec in evaluate_bench.SETS.values():  # every full-size set is realisable
        assert evaluate_bench.class_sizes(spec, np.random.default_rng(0)).sum() == spec.n


def test_evaluate_agrees_with_pytorch_metric_learning_tiny(tmp_path):
    pytest.importorskip("pytorch_metric_learning")  # in the test extra: runs in `make test`
    out = tmp_path / "evaluate.json"
    assert evaluate_bench.main(["--tiny", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["agree"] and row["max_abs_diff"] <= 1e-6
    assert row["ours"]["r_at_1"] == pytest.approx(row["pml"]["r_at_1"], abs=1e-6)
    assert row["ours"]["map_at_r"] == pytest.approx(row["pml"]["map_at_r"], abs=1e-6)
    assert 0.1 < row["ours"]["r_at_1"] < 0.99  # class structure, not a degenerate set
    assert row["ours_backend"] in evaluate_bench.SEARCH_PATHS.values()
    assert row["pml_backend"].startswith("faiss IndexFlatL2")
    assert row["ours_median_s"] > 0 and row["pml_median_s"] > 0
    assert result["versions"]["pytorch_metric_learning"]


def test_evaluate_skips_cleanly_without_pytorch_metric_learning(tmp_path, monkeypatch, capsys):
    for name in ("pytorch_metric_learning", "pytorch_metric_learning.utils",
                 "pytorch_metric_learning.utils.accuracy_calculator"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    out = tmp_path / "evaluate.json"
    assert evaluate_bench.main(["--tiny", "--json", str(out)]) == 0
    assert "pytorch-metric-learning is not installed" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["skipped"] and result["rows"] == []
    assert result["versions"]["pytorch_metric_learning"] is None


def test_our_search_path_is_observed_not_assumed():
    x, labels = evaluate_bench.labelled_embeddings(evaluate_bench.TINY)
    metrics, used = evaluate_bench.ours_observed(x, labels)
    assert len(used) == 1 and used[0] in evaluate_bench.SEARCH_PATHS.values()
    assert set(metrics) == {"r_at_1", "map_at_r"}


# --- bench/train_overhead.py --------------------------------------------------------------------


def test_train_overhead_tiny_runs_both_variants(tmp_path):
    bench = load_bench("train_overhead")
    out = tmp_path / "overhead.json"
    assert bench.main(["--tiny", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["shape"] == "CUB" and row["batch"] == 54 and row["mpn_heads"] == 2
    assert len(row["mpn_s"]) == len(row["backbone_s"]) == 2 and row["losses_finite"]
    assert row["mpn_median_s"] > 0 and row["backbone_median_s"] > 0
    assert row["overhead"] == pytest.approx(row["mpn_median_s"] / row["backbone_median_s"] - 1)
    assert row["mpn_parameters"] > row["backbone_parameters"]  # the MPN variant has the MPN
    # The MPN's arithmetic is counted, and is a small positive share of the step's.
    assert row["mpn_flops"] > row["backbone_flops"] > 0
    assert 0 < row["flop_share"] < 0.5


def test_step_flops_counts_a_known_product(monkeypatch):
    # A one-layer "model" whose step FLOPs are known: forward x·Wᵀ (2·B·D·C) and its backward
    # (the weight gradient; the input needs none): 4·B·D·C in all.
    bench = load_bench("train_overhead")
    counted = []

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 3, bias=False)

    def fake_epoch(t, batches, p, device, progress):
        ((x,),) = batches
        t.model.fc(x).sum().backward()
        counted.append(True)

    monkeypatch.setattr(bench, "train_epoch", fake_epoch)
    trainer = argparse.Namespace(model=Linear())
    flops = bench.step_flops(trainer, (torch.randn(5, 8),), None, torch.device("cpu"))
    assert counted and flops == 4 * 5 * 8 * 3


def test_train_overhead_variants_are_the_mpn_and_the_baseline():
    bench = load_bench("train_overhead")
    args = argparse.Namespace(backbone="resnet18", image_size=64, device="cpu", seed=0)
    for name, shape in bench.SHAPES.items():
        with_mpn = bench.params(shape, "mpn", args)
        without = bench.params(shape, "backbone", args)
        assert (with_mpn.n_c, with_mpn.n_s) == (shape.n_c, shape.n_s), name
        assert with_mpn.mpn_layers == 1 and with_mpn.loss_heads == "both"
        assert without.mpn_layers == 0 and without.loss_heads == "backbone"
        assert with_mpn.mpn_heads == shape.heads


# --- bench/mpn_inference.py --json --------------------------------------------------------------


def test_mpn_inference_tiny_writes_json(tmp_path):
    out = tmp_path / "mpn.json"
    assert load_bench("mpn_inference").main(["--tiny", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tiny"] and result["agree"] is True


# --- bench/run_all.py: RESULTS.md from fake results ---------------------------------------------


def _run(rc=0):
    return {"rc": rc, "seconds": 1.0, "log": "outputs/bench/x.txt", "load_before": 0.1,
            "load_after": 0.2, "other_cpu_s": 0.25, "cpu_available_s": 2.0}


def test_run_logged_saves_the_output_and_measures_other_work(tmp_path):
    run = run_all.run_logged("hello", ["-c", "print('hello from the script')"], tmp_path)
    assert run["rc"] == 0 and run["seconds"] >= 0
    assert "hello from the script" in (tmp_path / "hello.txt").read_text()
    assert run["other_cpu_s"] is None or run["other_cpu_s"] >= 0
    assert run["cpu_available_s"] > 0


def _pipeline_run(seconds, train_s, rc=0, status="done"):
    return {"run": {**_run(rc), "seconds": seconds},
            "steps": {"01_train": {"status": status, "seconds": train_s},
                      "02_evaluate": {"status": status, "seconds": 12.0}}}


def _fake_results(pipeline):
    evaluate_row = {"set": "CUB", "n": 5924, "classes": 100, "smallest": 41, "largest": 60,
                    "ours": {"r_at_1": 0.71, "map_at_r": 0.14},
                    "pml": {"r_at_1": 0.71, "map_at_r": 0.14}, "max_abs_diff": 1e-7,
                    "agree": True, "ours_backend": "faiss IndexFlatIP",
                    "pml_backend": "faiss IndexFlatL2 (CPU; PML device cpu)",
                    "ours_median_s": 0.123, "pml_median_s": 0.456, "ratio_paired_median": 0.27,
                    "ratio_of_medians": 0.2697, "repeats": 5,
                    "breakdown": {"ours_search_median_s": 0.1, "ours_labels_median_s": 0.001,
                                  "ours_recall_median_s": 0.0002, "ours_map_at_r_median_s": 0.002,
                                  "pml_search_median_s": 0.2}}
    slow_row = {**evaluate_row, "set": "SOP", "n": 60502, "ratio_paired_median": 0.93,
                "ours_median_s": 9.0, "pml_median_s": 9.7}
    overhead_row = {"shape": "SOP", "n_c": 15, "n_s": 6, "batch": 90, "mpn_heads": 8,
                    "classes": 11318, "mpn_median_s": 0.321, "backbone_median_s": 0.3,
                    "mpn_images_per_s": 280.4, "backbone_images_per_s": 300.0,
                    "overhead": 0.07, "overhead_paired": 0.068, "met": False,
                    "flop_share": 0.0616, "backbone_flops": 81.48e9, "optimiser_share": 0.089}
    mpn_row = {"kind": "clustered", "n": 5924, "search": 0.19, "vectorised": 0.25,
               "after": 0.06, "loop": 9.1, "agree": True}
    mpn_runs = [{"run": _run(), "result": {"agree": True, "rows": [
        {**mpn_row, "loop": loop, "vectorised": v}]}} for loop, v in ((9.0, 0.25), (9.6, 0.3),
                                                                        (8.8, 0.2))]
    return {"date": "2026-11-27T16:00:00+00:00", "tiny": False, "seconds": 600.0,
            "machine": {"cpu": "AMD EPYC", "cores": 2, "usable_cores": 2, "ram_gib": 23.4,
                        "gpu": None, "python": "3.11.9",
                        "versions": {"torch": "2.14.1", "numpy": "2.4.6", "faiss-cpu": "1.15.1",
                                     "faiss-gpu": None, "pytorch-metric-learning": "2.9.0"}},
            "evaluate": {"run": _run(), "result": {
                "threads": {"torch_threads": 2, "faiss_omp_threads": 2,
                            "pools": ["numpy/libscipy_openblas64_: openblas 2"]},
                "rows": [evaluate_row, slow_row]}},
            "train_overhead": {"run": _run(), "result": {
                "device": "AMD EPYC", "device_type": "cpu", "torch_threads": 2,
                "backbone": "resnet18", "image_size": 64, "steps": 30, "warmup": 3,
                "rows": [overhead_row]}},
            "mpn_inference": {"runs": mpn_runs,
                              "summary": run_all.summarise_mpn_inference(mpn_runs)},
            "glyphs": {"runs": [{"run": _run(), "result": {"seconds": s, "images": 8000,
                                                           "classes": 200, "image_size": 32}}
                                for s in (6.0, 6.4, 5.9)],
                       "median_s": 6.0, "params": "params/glyphs.yaml"},
            "pipeline": pipeline,
            "scale_out": {"run": _run(), "result": {
                "runs": 2, "epochs": 4, "tiny": False, "cores": 2, "torch_threads_sequential": 2,
                "times": {"sequential": [300.0], "parallel": [165.0]},
                "sequential_median_s": 300.0, "parallel_median_s": 165.0, "ratio": 0.55,
                "target": 0.6}}}


def _fake_pipeline():
    return {"params": "params/glyphs.yaml", **run_all.summarise_pipeline(
        [_pipeline_run(190.0, 160.0), _pipeline_run(200.0, 170.0), _pipeline_run(195.0, 162.0),
         _pipeline_run(20.0, 10.0, rc=1, status="failed")])}


def test_pipeline_summary_takes_medians_of_the_finished_runs():
    summary = _fake_pipeline()
    assert summary["done"] == 3 and len(summary["runs"]) == 4  # the failed run is not timed
    assert summary["median_s"] == 195.0
    assert summary["steps_median_s"] == {"01_train": 162.0, "02_evaluate": 12.0}
    nothing = run_all.summarise_pipeline([_pipeline_run(5.0, 1.0, rc=1)])
    assert nothing["median_s"] is None and nothing["done"] == 0


def test_mpn_inference_summary_takes_medians_of_runs():
    (row,) = _fake_results(None)["mpn_inference"]["summary"]
    assert row["runs"] == 3 and row["loop"] == 9.0 and row["vectorised"] == 0.25
    assert row["speedup"] == pytest.approx(statistics.median([36.0, 32.0, 44.0]))
    assert row["agree"] is True


def test_results_markdown_reports_what_was_measured_and_the_targets():
    results = _fake_results(_fake_pipeline())
    text = run_all.render(results)
    assert "AMD EPYC, 2 cores" in text and "23.4 GiB" in text and "2026-11-27" in text
    assert "torch 2.14.1" in text and "faiss-cpu 1.15.1" in text and "learning 2.9.0" in text
    summary = text.split("## Summary")[1].split("\n## ")[0]
    cub = "| evaluation (R@1 + MAP@R), N = 5,924 (CUB) | 0.123 s | PML 0.456 s | 0.27× |"
    assert cub in summary
    assert "N = 60,502 (SOP)" in summary and "0.93×" in summary
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines()[2:]}
    assert rows["evaluation (R@1 + MAP@R), N = 5,924 (CUB)"].endswith("**yes** |")
    assert rows["evaluation (R@1 + MAP@R), N = 60,502 (SOP)"].endswith("**no** |")
    assert rows["training step with MPN, SOP 15 × 6"].endswith("**no** |")
    assert "+7.0 %" in rows["training step with MPN, SOP 15 × 6"]
    overhead = text.split("## MPN training overhead")[1].split("\n## ")[0]
    assert "| +6.2 % of 81.5 GFLOP | +8.9 % |" in overhead
    assert "36× faster" in summary  # median of the per-run loop / vectorised ratios
    assert "| Glyphs cache, cold render | 6.0 s |" in summary
    assert "| `make run` (`ibdml run params/glyphs.yaml`, wall time) | 195 s |" in summary
    assert "median **195 s** (190, 200, 195, 20 s); 1 run(s) failed" in text
    assert "01_train 162.0 s, 02_evaluate 12.0 s" in text
    assert "0.10 → 0.20" in text  # load averages recorded
    assert "evaluate 0.2 of 2" in text  # and the CPU time other processes took
    assert rows["2 Glyphs runs in parallel on Ray, 1 CPU each"].endswith("| 0.55× | ≤ 0.6× | **yes** |")
    assert "parallel / sequential **0.55**" in text.split("## Scale-out")[1]


def test_results_markdown_without_pml_or_pipeline():
    results = _fake_results(None)
    results["evaluate"]["result"] = {"skipped": "pytorch-metric-learning is not installed",
                                     "rows": [], "threads": {}}
    text = run_all.render(results)
    assert "not run: pytorch-metric-learning missing" in text
    assert "| `make run` | not measured |" in text
    assert run_all.all_ok(results)
    results["train_overhead"]["run"]["rc"] = 1
    assert not run_all.all_ok(results)
