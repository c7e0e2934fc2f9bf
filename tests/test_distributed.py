"""One run on several processes (ibdml/distributed.py, docs/scale-out.md), on the CPU with gloo
and two processes: a DDP step equals one step on the mean of the two batches' gradients, the
ranks end training with the same weights, and a 2-process run trains, checkpoints, resumes and
evaluates like a 1-process one. Each test that starts processes pays for their torch import
(a few seconds on 2 cores): the step and the weights are checked in one pair of processes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ibdml import distributed
from ibdml.config import ParamError, load_params

SMOKE = Path(__file__).parent.parent / "params" / "smoke.yaml"


def smoke(glyph_root, **overrides):
    return load_params(SMOKE, {"data_root": str(glyph_root), **overrides})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(split, p, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (test transform: the same pixels in every process) and labels of a batch."""
    from ibdml.data.folder import ImageDataset
    from ibdml.data.transforms import eval_transform

    data = ImageDataset(split, eval_transform(p))
    images, labels, _ = zip(*(data[i] for i in indices))
    return torch.stack(images), torch.tensor(labels)


def _reference_step(p, split, batches) -> dict[str, torch.Tensor]:
    """One process: the gradient of each batch on its own, their mean, one optimiser step."""
    from ibdml.losses import intra_batch_loss
    from ibdml.trainer import build_trainer

    t = build_trainer(p, split, torch.device("cpu"))  # seeded: the DDP ranks' initial weights
    t.model.train()
    weights = [w for w in t.model.parameters() if w.requires_grad]
    grads = []
    for images, labels in batches:
        t.model.zero_grad(set_to_none=True)
        loss, _ = intra_batch_loss(t.model(images), labels, smoothing=p.label_smoothing,
                                   temperature=p.temperature)
        loss.backward()
        grads.append([w.grad.clone() for w in weights])
    for w, g0, g1 in zip(weights, *grads):
        w.grad = (g0 + g1) / 2
    t.optimizer.step()
    return {k: v.detach().clone() for k, v in t.model.named_parameters()}


def _rank_main(rank: int, port: int, p, out: Path) -> None:
    """One of the two processes: a DDP step on batch `rank`, then a DDP epoch of real
    training; saves what it holds after each for the test to compare."""
    from ibdml.data.check import check_run_inputs
    from ibdml.data.folder import ImageDataset
    from ibdml.data.loader import data_loader
    from ibdml.data.sampler import ClassBalancedBatchSampler
    from ibdml.data.transforms import train_transform
    from ibdml.trainer import build_trainer, train_epoch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    cpu = torch.device("cpu")
    with distributed.process_group(cpu) as world:
        split = check_run_inputs(p, progress=False)["train"]
        first_two = list(ClassBalancedBatchSampler(split.labels, p.n_c, p.n_s, seed=p.seed))[:2]
        batches = [_batch(split, p, b) for b in first_two]
        t = build_trainer(p, split, cpu, world)
        images, labels = batches[rank]
        train_epoch(t, [(images, labels, None)], p, cpu, progress=False)
        result = {"step": {k: v.detach().clone() for k, v in t.model.named_parameters()}}
        if rank == 0:
            result["reference"] = _reference_step(p, split, batches)
        t = build_trainer(p, split, cpu, world)
        result["initial"] = {k: v.detach().clone() for k, v in t.model.named_parameters()}
        loader = data_loader(ImageDataset(split, train_transform(p)), 0, cpu,
                             batch_sampler=t.sampler)
        result["losses"] = train_epoch(t, loader, p, cpu, progress=False)
        result["trained"] = {k: v.detach().clone() for k, v in t.model.named_parameters()}
        result["batches"] = list(t.sampler)
    torch.save(result, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(glyph_root, tmp_path_factory):
    """What each of two gloo processes held, {rank: result}. Dropout 0, so that a step is a
    function of the weights and the batch; BatchNorm stays in train mode, per batch."""
    out = tmp_path_factory.mktemp("ranks")
    p = smoke(glyph_root, mpn_dropout=0.0, attention_probes=0)
    mp.start_processes(_rank_main, args=(_free_port(), p, out), nprocs=2, start_method="spawn")
    return {r: torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)}


def test_a_ddp_step_is_a_step_on_the_mean_gradient_of_the_ranks_batches(two_ranks):
    reference = two_ranks[0]["reference"]
    for rank in (0, 1):
        step = two_ranks[rank]["step"]
        assert step.keys() == reference.keys()
        for k in reference:
            assert torch.allclose(step[k], reference[k], rtol=0, atol=1e-6), (rank, k)
    moved = max((two_ranks[0]["step"][k] - two_ranks[0]["initial"][k]).abs().max()
                for k in reference)
    assert moved > 1e-4  # the step did something to compare


def test_after_training_every_rank_holds_the_same_weights(two_ranks):
    a, b = two_ranks[0]["trained"], two_ranks[1]["trained"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], two_ranks[0]["initial"][k]) for k in a)
    assert two_ranks[0]["losses"] == two_ranks[1]["losses"]  # means over both ranks' batches
    seen = [two_ranks[r]["batches"] for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) >= 1 and seen[0] != seen[1]  # each rank its own


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_a_two_process_run_trains_checkpoints_resumes_and_evaluates(glyph_root, tmp_path):
    from ibdml.model import build_model
    from ibdml.steps.evaluate import evaluate_run
    from ibdml.steps.train import train

    p, run, rows = smoke(glyph_root, nproc=2, epochs=2), tmp_path / "run", []
    summary = train(p, run, progress=False, on_epoch=rows.append)
    history = json.loads((run / "history.json").read_text())
    assert summary["epochs"] == 2 and summary["history"] == history == rows
    assert [r["processes"] for r in history] == [2, 2] and "test" in history[-1]
    straight = _last(run)
    assert straight["model"].keys() == build_model(p, 8).state_dict().keys()  # unwrapped
    assert not (run / ".lock.holder").exists()  # the lock is released

    # back to the epoch-1 checkpoint: a second call continues from it on both ranks
    shutil.copy(run / "checkpoints" / "previous.pt", run / "checkpoints" / "last.pt")
    rows.clear()
    assert train(p, run, progress=False, on_epoch=rows.append)["epochs"] == 2
    assert [r["epoch"] for r in rows] == [2]  # only the epoch it trained
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2]
    resumed = _last(run)["model"]
    for k, v in straight["model"].items():  # not promised bit-exact, but the same training
        assert torch.allclose(resumed[k].float(), v.float(), atol=1e-4), k

    metrics = evaluate_run(run, progress=False)
    assert metrics["epoch"] == 2 and 0 <= metrics["recall_at_k"]["1"] <= 1


def test_the_train_command_takes_nproc(monkeypatch, tmp_path):
    import ibdml.steps.train as train_module
    from ibdml.cli import main

    seen = []
    monkeypatch.setattr(train_module, "train",
                        lambda p, out, resume: seen.append(p) or {"epochs": p.epochs})
    assert main(["train", str(SMOKE), "--out", str(tmp_path / "run"), "--nproc", "2"]) == 0
    assert seen[0].nproc == 2
    assert main(["train", str(SMOKE), "--out", str(tmp_path / "run"), "--nproc", "0"]) == 2


def test_a_torchrun_job_decides_the_number_of_processes(monkeypatch):
    from ibdml.steps.train import _job_params

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    world = distributed.job_world()
    assert world == distributed.World(1, 1, 4) and not world.is_main
    p = load_params(SMOKE)
    assert _job_params(p, world).nproc == 4  # nproc 1: the job's size
    assert _job_params(dataclasses.replace(p, nproc=4), world).nproc == 4
    with pytest.raises(ParamError, match="nproc: 2, but this torch.distributed job has 4"):
        _job_params(dataclasses.replace(p, nproc=2), world)
    assert distributed.backend(torch.device("cpu")) == "gloo"
    assert distributed.backend(torch.device("cuda")) == "nccl"
