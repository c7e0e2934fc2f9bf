"""Evaluating a run: metrics.json keys and ranges, baselines, protocol labels, embeddings cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ibdml.config import load_params
from ibdml.metrics import QueryOutcomes, summarise
from ibdml.steps.evaluate import evaluate_run, read_outcomes, write_outcomes
from ibdml.steps.train import train

SMOKE = Path(__file__).parent.parent / "params" / "smoke.yaml"


@pytest.fixture(scope="module")
def trained_run(glyph_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    train(load_params(SMOKE, {"data_root": str(glyph_root)}), run, progress=False)
    return run


def check_metrics(m, ks=("1", "2", "4", "8")):
    assert list(m["recall_at_k"]) == list(ks)
    values = [m["recall_at_k"][k] for k in ks]
    assert all(0 <= v <= 1 for v in values) and values == sorted(values)  # R@K grows with K
    assert 0 <= m["map_at_r"] <= 1
    assert m["nmi"] is None or 0 <= m["nmi"] <= 1
    se = m["standard_error"]
    assert list(se["recall_at_k"]) == list(ks) and all(v >= 0 for v in se["recall_at_k"].values())
    assert se["map_at_r"] >= 0 and (se["nmi"] is None) == (m["nmi"] is None)


def test_metrics_json(trained_run):
    result = evaluate_run(trained_run, progress=False)
    on_disk = json.loads((trained_run / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    check_metrics(on_disk)
    assert on_disk["nmi"] is not None
    assert on_disk["split"] == "test" and on_disk["epoch"] == 1
    assert on_disk["protocol"].startswith("paper") and on_disk["optimistic"] is False
    for name in ("raw_pixels", "untrained"):
        check_metrics(on_disk["baselines"][name])
    assert on_disk["params"]["dataset"] == "glyphs" and on_disk["environment"]["torch"]
    outcomes = read_outcomes(trained_run, "test")  # the per-query outcomes behind the metrics
    assert outcomes.hits.shape == (64, 4) and outcomes.clusters.shape == (64,)
    assert json.loads(json.dumps(summarise(outcomes, seed=0))) == {
        k: on_disk[k] for k in ("recall_at_k", "map_at_r", "nmi", "standard_error")}
    cache = torch.load(trained_run / "embeddings" / "test.pt", weights_only=False)
    assert cache["embeddings"].shape == (64, 64)  # 8 test classes × 8 images, 64-d
    torch.testing.assert_close(cache["embeddings"].norm(dim=1), torch.ones(64))


@pytest.mark.parametrize("clusters", [None, np.array([3, 3, 0], dtype=np.int64)])
def test_outcomes_round_trip_through_npz(tmp_path, clusters):
    o = QueryOutcomes(ks=(1, 4), hits=np.array([[False, True], [True, True], [False, False]]),
                      average_precision=np.array([0.5, 1.0, np.nan]),
                      labels=np.array([0, 0, 1], dtype=np.int64), clusters=clusters)
    path = write_outcomes(tmp_path, "test", o)
    assert path == tmp_path / "outcomes" / "test.npz"
    with np.load(path, allow_pickle=False) as f:  # plain arrays, no pickled objects
        assert sorted(f.files) == sorted(["ks", "hits", "average_precision", "labels"]
                                         + ([] if clusters is None else ["clusters"]))
    back = read_outcomes(tmp_path, "test")
    assert back.ks == (1, 4) and back.hits.dtype == bool
    np.testing.assert_array_equal(back.hits, o.hits)
    np.testing.assert_array_equal(back.average_precision, o.average_precision)  # NaN kept
    np.testing.assert_array_equal(back.labels, o.labels)
    assert (back.clusters is None) if clusters is None else np.array_equal(back.clusters, clusters)


def test_missing_outcomes_name_the_step_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run ibdml evaluate RUN"):
        read_outcomes(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="run notebook 03_mpn_inference"):
        read_outcomes(tmp_path, "mpn_inference_with")


def test_untrained_run_is_a_clear_error(glyph_root, tmp_path):
    with pytest.raises(Exception, match="not a run folder"):
        evaluate_run(tmp_path)


def test_mpn_inference_without_an_mpn_records_null(glyph_root, tmp_path):
    from ibdml.steps.mpn_inference import evaluate_mpn_inference

    p = load_params(SMOKE, {"data_root": str(glyph_root), "mpn_layers": 0,
                            "loss_heads": "backbone", "baselines": False})
    train(p, tmp_path / "run", progress=False)
    evaluate_run(tmp_path / "run", progress=False)
    result = evaluate_mpn_inference(tmp_path / "run")
    assert result["with_mpn"] is None
    on_disk = json.loads((tmp_path / "run" / "mpn_inference.json").read_text())
    assert on_disk["without_mpn"]["recall_at_k"] == json.loads(
        (tmp_path / "run" / "metrics.json").read_text())["recall_at_k"]


def test_mpn_inference_refines_every_test_image(trained_run):
    from ibdml.steps.mpn_inference import evaluate_mpn_inference, neighbourhood_examples

    evaluate_run(trained_run, progress=False)
    result = evaluate_mpn_inference(trained_run)
    assert sum(result["r1_transitions"].values()) == 64
    assert result["mpn_inference_space"] == "last" and "last MPN layer" in result["feature_space"]
    check_metrics(result["with_mpn"])
    with_mpn = read_outcomes(trained_run, "mpn_inference_with")
    assert not (trained_run / "outcomes" / "mpn_inference_without.npz").exists()  # = test.npz
    assert with_mpn.hits.shape == (64, 4)
    for metric, d in result["paired_difference"].items():
        assert -1 <= d["low"] <= d["high"] <= 1 and -1 <= d["difference"] <= 1, metric
    assert set(result["paired_difference"]) == {"R@1", "MAP@R", "NMI"}
    refined = torch.load(trained_run / "embeddings" / "test_refined.pt", weights_only=False)
    assert refined["embeddings"].shape == (64, 64) and refined["neighbourhoods"].shape == (64, 7)
    assert (refined["neighbourhoods"][:, 0] == torch.arange(64)).all()  # row 0 is the query
    queries, members, correct, captions = neighbourhood_examples(trained_run, queries=3)
    assert len(queries) == 3 and len(members[0]) == 6 and correct.shape == (3, 6)
    assert "→" in captions[0][0]
