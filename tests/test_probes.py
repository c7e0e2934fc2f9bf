"""Attention recording on probe batches: who is in them, the recorded shapes and row sums, exact
resume, and runs that record nothing."""

import json
from pathlib import Path

import numpy as np
import pytest

from ibdml.attention import summarise
from ibdml.config import load_params
from ibdml.probes import draw_probe_indices
from ibdml.steps.attention import epoch_file, load_attention
from ibdml.steps.rundir import RunFolderError
from ibdml.steps.train import train

SMOKE = Path(__file__).parent.parent / "params" / "smoke.yaml"


def smoke(glyph_root, **overrides):
    return load_params(SMOKE, {"data_root": str(glyph_root), **overrides})


def test_probe_batches_have_the_training_batch_shape():
    labels = np.repeat(np.arange(10), 12)  # 10 classes × 12 images
    idx = draw_probe_indices(labels, n_c=3, n_s=4, count=5, seed=0)
    assert idx.shape == (5, 12)
    for probe in idx:
        by_class = labels[probe].reshape(3, 4)  # [n_c, n_s]: grouped by class
        assert (by_class == by_class[:, :1]).all()
        assert len(set(by_class[:, 0])) == 3
        assert len(set(probe)) == 12  # no image twice when the class has n_s
    # the first three probes use 9 distinct classes (10 available), then a new pass begins
    assert len(set(labels[idx[:3]].ravel())) == 9
    assert (draw_probe_indices(labels, 3, 4, 5, seed=0) == idx).all()
    assert not (draw_probe_indices(labels, 3, 4, 5, seed=1) == idx).all()


def test_small_classes_repeat_images_only_when_needed():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4])
    idx = draw_probe_indices(labels, n_c=2, n_s=4, count=3, seed=0)
    assert set(labels[idx].ravel()) == {3, 4}  # the two classes with ≥ n_s images
    few = draw_probe_indices(labels, n_c=3, n_s=4, count=1, seed=0)
    assert few.shape == (1, 12)  # not enough full classes: small ones repeat images
    with pytest.raises(ValueError, match="n_c = 6 classes"):
        draw_probe_indices(labels, n_c=6, n_s=2, count=1, seed=0)


@pytest.fixture(scope="module")
def recorded(glyph_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("probes") / "run"
    p = smoke(glyph_root, epochs=2, attention_probes=3)
    train(p, run, progress=False)
    return p, run


def test_records_every_epoch_with_the_documented_shape(recorded):
    p, run = recorded
    rec = load_attention(run)
    assert rec.epochs == [0, 1, 2]
    L, P, H, N = p.mpn_layers, 3, p.mpn_heads, p.n_c * p.n_s
    for a in rec.by_epoch.values():
        assert a.shape == (L, P, H, N, N) and a.dtype == np.float16
        sums = a.astype(np.float32).sum(-1)
        assert (sums < 1).all() and (sums > 0).all()  # the null key takes the rest
    assert rec.labels.shape == (P, N)
    info = json.loads((run / "attention" / "probes.json").read_text())
    assert len(info["paths"]) == P and all(len(r) == N for r in info["paths"])
    # labels follow the indices into the train split: n_c classes × n_s images each
    assert (rec.labels.reshape(P, p.n_c, p.n_s) == rec.labels.reshape(P, p.n_c, p.n_s)[..., :1]).all()
    history = json.loads((run / "history.json").read_text())
    assert all(row["attention_seconds"] >= 0 for row in history)
    # the record is what ibdml.attention reads
    s = summarise(rec.by_epoch, rec.labels)
    assert s["epochs"] == [0, 1, 2] and s["nodes"] == N


def test_training_changes_the_attention(recorded):
    rec = load_attention(recorded[1])
    assert not np.array_equal(rec.by_epoch[0], rec.by_epoch[2])


def test_without_null_key_rows_sum_to_one(glyph_root, tmp_path):
    train(smoke(glyph_root, attention_null_key=False, attention_probes=1), tmp_path / "run",
          progress=False)
    a = load_attention(tmp_path / "run").by_epoch[1].astype(np.float32)
    assert np.allclose(a.sum(-1), 1, atol=2e-3)  # float16 storage


def test_resume_reproduces_the_record(tmp_path, interrupted_then_resumed, recorded):
    p, straight = recorded

    def after_interrupt():
        assert load_attention(tmp_path / "resumed").epochs == [0, 1]

    interrupted_then_resumed(p, tmp_path / "resumed", after_interrupt)
    a, b = load_attention(straight), load_attention(tmp_path / "resumed")
    assert a.epochs == b.epochs
    for e in a.epochs:
        np.testing.assert_array_equal(a.by_epoch[e], b.by_epoch[e])


@pytest.mark.parametrize("overrides", [{"attention_probes": 0},
                                       {"mpn_layers": 0, "loss_heads": "backbone"}])
def test_runs_without_recording_write_no_attention(glyph_root, tmp_path, overrides):
    train(smoke(glyph_root, **overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "attention").exists()
    with pytest.raises(RunFolderError, match="attention_probes ≥ 1 and mpn_layers ≥ 1"):
        load_attention(tmp_path / "run")


def test_a_mixed_folder_is_refused(recorded, tmp_path):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(recorded[1], run)
    np.save(epoch_file(run, 3), np.zeros((1, 1, 1, 2, 2), np.float16))
    with pytest.raises(RunFolderError, match="mixes two runs"):
        load_attention(run)


def test_summarise_run_writes_the_sidecar_and_the_figures(recorded):
    from ibdml.steps.attention import summarise_run

    p, run = recorded
    result = summarise_run(run)
    assert json.loads((run / "attention_summary.json").read_text()) == result
    assert result["recorded"] and result["epochs"] == [0, 1, 2]
    assert len(result["verdicts"]["heads"]) == p.mpn_layers * p.mpn_heads
    assert result["verdicts_start"]["epoch"] == 0 and result["verdicts"]["epoch"] == 2
    c = result["claim"]
    assert c["heads"] == 2 and 0 <= c["above_chance"] <= 2
    ex = result["example"]
    rec = load_attention(run)
    assert ex["class"] == rec.labels[0, ex["node"]]
    for stem in ("attention_kl", "attention_same_class", "attention_node", "attention_heatmap"):
        html, png = run / "figures" / f"{stem}.html", run / "figures" / f"{stem}.png"
        assert "plotly" in html.read_text()
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000


def test_summarise_run_without_a_record_says_why(glyph_root, tmp_path):
    from ibdml.steps.attention import summarise_run

    train(smoke(glyph_root, attention_probes=0), tmp_path / "run", progress=False)
    result = summarise_run(tmp_path / "run")
    assert result == {"recorded": False,
                      "reason": "this run records no attention: attention_probes is 0"}
    assert not (tmp_path / "run" / "figures").exists()
