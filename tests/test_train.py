"""Training: a smoke run learns, resume is exact (also from the checkpoint before an unreadable
last.pt), checkpoints load with weights_only=True and carry the history, a diverging loss stops
cleanly, run folders never mix parameter sets."""

import json
from pathlib import Path

import pytest
import torch

import ibdml.steps.train as train_module
import ibdml.trainer as trainer_module
from ibdml.config import load_params
from ibdml.steps.rundir import RunFolderError
from ibdml.steps.train import train
from ibdml.trainer import TrainingDiverged

SMOKE = Path(__file__).parent.parent / "params" / "smoke.yaml"


def smoke(glyph_root, **overrides):
    return load_params(SMOKE, {"data_root": str(glyph_root), **overrides})


def test_smoke_run_lowers_the_loss_and_writes_its_files(glyph_root, tmp_path):
    p = smoke(glyph_root, epochs=4, eval_every=2)
    summary = train(p, tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert summary["epochs"] == 4 and [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["loss"]["total"] < history[0]["loss"]["total"]
    assert set(history[0]["loss"]) == {"total", "backbone", "mpn"}
    assert "test" not in history[0] and "test" in history[1]
    assert 0 <= history[1]["test"]["recall_at_k"]["1"] <= 1
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 4 and state["history"] == history  # history.json is written from it
    previous = torch.load(tmp_path / "run" / "checkpoints" / "previous.pt", weights_only=True)
    assert previous["epoch"] == 3 and previous["history"] == history[:3]
    assert load_params(tmp_path / "run" / "params.yaml") == p
    # a finished run returns at once when asked again
    assert train(p, tmp_path / "run", progress=False)["epochs"] == 4


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_epochs_equal_one_plus_resume(glyph_root, tmp_path, interrupted_then_resumed):
    # device: cpu even where a GPU is visible: the resume logic is the same on every device, and
    # only the CPU promises bit-equal weights (cuDNN is not deterministic: docs/datasets.md,
    # "On a GPU"; bench/gpu_check.sh compares a GPU resume up to that noise).
    p = smoke(glyph_root, epochs=2, device="cpu")
    train(p, tmp_path / "straight", progress=False)
    # history.json lost: resuming writes it again from the checkpoint
    interrupted_then_resumed(p, tmp_path / "resumed",
                             lambda: (tmp_path / "resumed" / "history.json").unlink())

    _assert_same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]

    # a damaged last.pt: training resumes from previous.pt (epoch 1) and ends where it did
    last = tmp_path / "straight" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="last.pt is truncated or damaged.*resuming from .*"
                      "previous.pt \\(epoch 1\\)"):
        train(p, tmp_path / "straight", progress=False)
    _assert_same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(glyph_root, tmp_path, monkeypatch):
    p = smoke(glyph_root, epochs=2)
    real_epoch, real_loss, epochs = train_module.train_epoch, trainer_module.intra_batch_loss, []

    def counting(*args, **kw):
        epochs.append(1)
        return real_epoch(*args, **kw)

    def poisoned(*args, **kw):  # finite in epoch 1, NaN from epoch 2 on
        loss, parts = real_loss(*args, **kw)
        return (loss * float("nan"), parts) if len(epochs) >= 2 else (loss, parts)

    monkeypatch.setattr(train_module, "train_epoch", counting)
    monkeypatch.setattr(trainer_module, "intra_batch_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 2.*last good checkpoint \\(epoch 1\\)"):
        train(p, tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_run_folder_refuses_other_parameters(glyph_root, tmp_path):
    train(smoke(glyph_root), tmp_path / "run", progress=False)
    with pytest.raises(RunFolderError, match="lr: 0.001 → 0.01"):
        train(smoke(glyph_root, lr=0.01), tmp_path / "run", progress=False)


def test_a_run_folder_from_before_a_parameter_existed_is_still_accepted(tmp_path):
    import yaml

    from ibdml.steps.rundir import prepare_run_dir

    p = load_params(SMOKE)
    run = prepare_run_dir(tmp_path / "run", p)
    stored = yaml.safe_load((run / "params.yaml").read_text())
    del stored["attention_probes"]  # as written by a version without that parameter
    (run / "params.yaml").write_text(yaml.safe_dump(stored))
    prepare_run_dir(run, p)  # the default is what that version did: the same run
    with pytest.raises(RunFolderError, match="attention_probes: 4 → 0"):
        prepare_run_dir(run, load_params(SMOKE, {"attention_probes": 0}))


def test_a_run_folder_may_move_its_data(tmp_path):
    from ibdml.steps.rundir import prepare_run_dir, read_run_params

    run = prepare_run_dir(tmp_path / "run", load_params(SMOKE))
    prepare_run_dir(run, load_params(SMOKE, {"data_root": str(tmp_path / "moved"),
                                             "num_workers": 0}))
    assert read_run_params(run).data_root == str(tmp_path / "moved")  # later steps read there


def test_select_on_val_writes_best_checkpoint(glyph_root, tmp_path):
    p = smoke(glyph_root, epochs=2, val_fraction=0.25, select_on="val", n_c=4)
    rows = []
    history = train(p, tmp_path / "run", progress=False, on_epoch=rows.append)["history"]
    assert all("val" in row for row in history)
    assert not any("test" in row for row in history)  # test is evaluated once, at the end
    assert rows == history  # on_epoch sees every new row
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["best"] == max(r["val"]["recall_at_k"]["1"] for r in history)


def test_mpn_has_its_own_learning_rate_group_and_both_follow_the_schedule():
    from ibdml.data.folder import Split
    from ibdml.trainer import build_trainer

    labels = torch.arange(8).repeat_interleave(4).numpy()  # 8 classes × 4 images
    split = Split("train", [Path(f"{i}.png") for i in range(32)], labels,
                  [str(c) for c in range(8)])
    p = load_params(None, {"embedding_dim": 32, "n_c": 2, "n_s": 2, "lr": 1e-3,
                           "mpn_lr_multiplier": 10.0, "lr_milestones": [1], "lr_gamma": 0.1})
    t = build_trainer(p, split, torch.device("cpu"))
    backbone, mpn = t.optimizer.param_groups  # group 0 (the one steps/train.py logs): backbone
    assert backbone["lr"] == pytest.approx(1e-3) and mpn["lr"] == pytest.approx(1e-2)
    assert {id(w) for w in mpn["params"]} == {
        id(w) for w in t.model.mpn.parameters() if w.requires_grad}
    assert id(t.model.mpn.classifier.bn.bias) not in {id(w) for w in mpn["params"]}  # frozen
    n = sum(1 for w in t.model.parameters() if w.requires_grad)
    assert len(backbone["params"]) + len(mpn["params"]) == n
    t.optimizer.step()
    t.scheduler.step()  # past the milestone: both groups × 0.1
    assert [g["lr"] for g in t.optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    ce_only = load_params(None, {"embedding_dim": 32, "n_c": 2, "n_s": 2, "mpn_layers": 0,
                                 "loss_heads": "backbone"})
    assert len(build_trainer(ce_only, split, torch.device("cpu")).optimizer.param_groups) == 1
    # at multiplier 1 the MPN shares the one group, in the model's parameter order: the layout
    # of checkpoints written before the multiplier existed
    same = build_trainer(load_params(None, {"embedding_dim": 32, "n_c": 2, "n_s": 2}), split,
                         torch.device("cpu"))
    (group,) = same.optimizer.param_groups
    assert [id(w) for w in group["params"]] == [
        id(w) for w in same.model.parameters() if w.requires_grad]
