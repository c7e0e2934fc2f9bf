"""The GPU path, exercised on the CPU: autocast is a no-op on the CPU, bf16 only from compute
capability 8.0, fp32 on CUDA with TF32 off, bf16 autocast (on the CPU here) keeps the attention
weights and the losses fp32 and lets a training step run, channels_last keeps the outputs, the
loader is sized from the machine, cuDNN autotuning is scoped, a run with device: cpu never
initialises CUDA. No test needs a GPU (capabilities and device counts are faked), and every one
holds whether or not one is visible."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ibdml.trainer as train_module
from ibdml import device as accel
from ibdml import probes
from ibdml.data import loader
from ibdml.config import make_params
from ibdml.data.folder import Split
from ibdml.losses import intra_batch_loss, smoothed_cross_entropy
from ibdml.model import build_model
from ibdml.mpn import MessagePassingNetwork
from bench_scripts import load_bench

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
CLASSES = 5


def small_params(**overrides):
    return make_params({"embedding_dim": 16, "image_size": 32, "n_c": 2, "n_s": 3,
                        "mpn_dropout": 0.0, **overrides})


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(small_params(), CLASSES)


def cpu_bf16(device, bf16=None):
    """accel.autocast as it behaves on CUDA, with the CPU's bf16 autocast."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


LABELS = torch.tensor([0, 0, 0, 1, 1, 1])


# --- autocast ---------------------------------------------------------------------------------


def test_autocast_on_the_cpu_is_a_no_op_bit_for_bit():
    model = small_model().eval()
    x = images()
    assert isinstance(accel.autocast(CPU), contextlib.nullcontext)
    with torch.no_grad():
        plain = model(x, return_attention=True)
        with accel.autocast(CPU):
            inside = model(x, return_attention=True)
    for a, b in [(plain.embedding, inside.embedding), (plain.mpn_logits, inside.mpn_logits),
                 (plain.backbone_logits, inside.backbone_logits),
                 (plain.attention, inside.attention)]:
        assert a.dtype == torch.float32 and torch.equal(a, b)


def fake_capability(monkeypatch, capability):
    """A CUDA device of this compute capability; torch's own bf16 check says yes, as it does
    where bf16 is only emulated (it must not be what decides)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


def test_autocast_is_bf16_on_cuda_and_can_be_forced_either_way(monkeypatch):
    fake_capability(monkeypatch, (8, 0))
    with warnings.catch_warnings():  # "CUDA is not available": only its settings are read here
        warnings.simplefilter("ignore")
        on_cuda = accel.autocast(CUDA)
    assert isinstance(on_cuda, torch.autocast)
    assert on_cuda.device == "cuda" and on_cuda.fast_dtype == torch.bfloat16
    assert not isinstance(accel.autocast(CUDA, bf16=False), torch.autocast)  # fp32 (TF32 off)
    forced = accel.autocast(CPU, bf16=True)
    assert forced.device == "cpu" and forced.fast_dtype == torch.bfloat16
    assert accel.bf16_enabled(CUDA) and not accel.bf16_enabled(CPU)
    assert accel.bf16_override(True) is None  # amp: the device decides
    assert accel.bf16_override(False) is False


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # only autocast's settings are read
@pytest.mark.parametrize("capability, bf16", [((6, 1), False), ((7, 0), False), ((7, 5), False),
                                              ((8, 0), True), ((8, 6), True), ((9, 0), True)])
def test_bf16_only_from_compute_capability_8(monkeypatch, capability, bf16):
    # V100 (7.0) and T4 (7.5) have no bf16 convolutions in cuDNN: fp32 there.
    fake_capability(monkeypatch, capability)
    assert accel.bf16_enabled(CUDA) is bf16
    assert accel.bf16_enabled(torch.device("cuda", 1)) is bf16
    assert isinstance(accel.autocast(CUDA), torch.autocast) is bf16
    assert accel.bf16_enabled(CUDA, bf16=True) and not accel.bf16_enabled(CUDA, bf16=False)


def test_the_cpu_never_asks_for_a_compute_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", _refuse_cuda)
    assert not accel.bf16_enabled(CPU)
    assert isinstance(accel.autocast(CPU), contextlib.nullcontext)
    assert isinstance(accel.exact_fp32(CPU), contextlib.nullcontext)


def _refuse_cuda(*args, **kwargs):
    raise AssertionError("a CUDA query on the CPU path")


@pytest.fixture
def tf32_on():
    """TF32 on for products and convolutions (torch's default is on for cuDNN only), and both
    flags as they were after the test whatever it did (monkeypatch cannot: torch's matmul
    settings object has no attribute of its own to patch)."""
    before = tf32()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("capability, bf16, fp32", [
    ((8, 0), False, True),  # amp: false on an Ampere GPU: fp32 means fp32
    ((7, 0), None, True),  # amp: true on a V100: no bf16, so fp32, without TF32
    ((8, 0), None, False),  # amp: true on Ampere: bf16 autocast; torch's defaults kept
])
def test_fp32_on_cuda_turns_tf32_off_and_restores_it(monkeypatch, tf32_on, capability, bf16,
                                                     fp32):
    fake_capability(monkeypatch, capability)
    with accel.exact_fp32(CUDA, bf16):  # around a training run, backward passes included
        assert tf32() == ((False, False) if fp32 else (True, True))
    assert tf32() == (True, True)
    if fp32:  # and around each forward (evaluation, probes), exceptions included
        with pytest.raises(KeyError):
            with accel.autocast(CUDA, bf16):
                assert tf32() == (False, False)
                raise KeyError
        assert tf32() == (True, True)


def test_fp32_on_the_cpu_changes_no_flag(monkeypatch, tf32_on):
    monkeypatch.setattr(torch.cuda, "get_device_capability", _refuse_cuda)
    for bf16 in (None, False):
        with accel.exact_fp32(CPU, bf16), accel.autocast(CPU, bf16):
            assert tf32() == (True, True)


def test_under_bf16_autocast_attention_embedding_and_losses_are_fp32_and_finite():
    model = small_model().train()
    with accel.autocast(CPU, bf16=True):
        out = model(images(), return_attention=True)
    assert out.backbone_logits.dtype == torch.bfloat16  # the autocast really ran
    assert out.embedding.dtype == torch.float32 and out.attention.dtype == torch.float32
    assert torch.isfinite(out.attention).all()
    assert (out.attention.sum(-1) < 1).all()  # null key: rows sum below 1
    loss, parts = intra_batch_loss(out, LABELS, smoothing=0.1, temperature=0.2)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert {k: v.dtype for k, v in parts.items()} == {"backbone": torch.float32,
                                                     "mpn": torch.float32}
    assert not any(v.requires_grad for v in parts.values())


def test_mpn_attention_weights_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    mpn = MessagePassingNetwork(16, CLASSES, layers=2, heads=4, dropout=0.0, null_key=False,
                                concat_layers=False).eval()
    x = F.normalize(torch.randn(3, 6, 16), dim=-1)  # 3 graphs of 6 nodes
    with accel.autocast(CPU, bf16=True):
        out = mpn(x, return_attention=True)
    assert out.attention.shape == (2, 3, 4, 6, 6) and out.attention.dtype == torch.float32
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, 3, 4, 6))


def test_cross_entropy_casts_bf16_logits_and_leaves_fp32_alone():
    z = torch.randn(6, CLASSES, generator=torch.Generator().manual_seed(1))
    assert z.float() is z  # the cast is the tensor itself on fp32: nothing changes on the CPU
    expected = F.cross_entropy(z / 0.2, LABELS, label_smoothing=0.1)
    assert torch.equal(smoothed_cross_entropy(z, LABELS, smoothing=0.1, temperature=0.2),
                       expected)
    low = z.bfloat16()
    with accel.autocast(CPU, bf16=True):
        loss = smoothed_cross_entropy(low, LABELS, smoothing=0.1, temperature=0.2)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, F.cross_entropy(low.float() / 0.2, LABELS, label_smoothing=0.1))


# --- a training step under bf16 autocast ------------------------------------------------------


def fake_split(classes: int = CLASSES, per_class: int = 4) -> Split:
    labels = np.repeat(np.arange(classes), per_class)
    return Split("train", [f"image_{i}" for i in range(len(labels))], labels,
                 [f"class_{c}" for c in range(classes)])


def batches(count: int):
    """What the training loader yields: (images [6, 3, 32, 32], labels [6], indices [6])."""
    return [(images(seed=i), LABELS, torch.arange(6)) for i in range(count)]


def test_a_training_epoch_runs_under_bf16_autocast(monkeypatch):
    p = small_params(epochs=1)
    t = train_module.build_trainer(p, fake_split(), CPU)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    used = []

    def recording(device, bf16=None):
        used.append(bf16)
        return cpu_bf16(device, bf16)

    monkeypatch.setattr(accel, "autocast", recording)
    losses = train_module.train_epoch(t, batches(3), p, CPU, progress=False)
    assert used == [None] * 3  # amp: true → accel's default (bf16 on CUDA)
    assert set(losses) == {"total", "backbone", "mpn"}
    assert all(np.isfinite(v) for v in losses.values())
    assert abs(losses["total"] - losses["backbone"] - losses["mpn"]) < 1e-5
    after = t.model.state_dict()
    assert all(after[k].dtype == before[k].dtype for k in before)  # weights stay fp32
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert not torch.equal(after["backbone.embed.weight"], before["backbone.embed.weight"])


def test_amp_false_turns_autocast_off(monkeypatch):
    p = small_params(epochs=1, amp=False)
    t = train_module.build_trainer(p, fake_split(), CPU)
    used = []
    monkeypatch.setattr(accel, "autocast",
                        lambda device, bf16=None: used.append(bf16) or contextlib.nullcontext())
    train_module.train_epoch(t, batches(2), p, CPU, progress=False)
    assert used == [False, False]


def test_losses_read_in_blocks_sum_as_read_every_step():
    p = small_params()
    t = train_module.build_trainer(p, fake_split(), CPU)
    steps = [{"total": torch.tensor(v + w), "backbone": torch.tensor(v), "mpn": torch.tensor(w)}
             for v, w in [(0.3, 1.7), (2.1, 0.1), (1.1, 1.3), (0.7, 0.9)]]
    every, block = {}, {}
    n = 0
    for step in steps:  # the CPU: one read per step
        n = train_module._read_losses([step], every, n, t, p)
    assert train_module._read_losses(list(steps), block, 0, t, p) == n == 4  # a GPU: one read
    assert block == every


def test_a_non_finite_loss_in_a_block_names_its_step():
    p = small_params()
    t = train_module.build_trainer(p, fake_split(), CPU)
    pending = [{"total": torch.tensor(x)} for x in (1.0, 2.0, float("nan"), float("inf"))]
    with pytest.raises(train_module.TrainingDiverged, match="loss became nan at epoch 1, step 12"):
        train_module._read_losses(pending, {}, 9, t, p)


# --- channels_last ----------------------------------------------------------------------------


def test_channels_last_keeps_the_outputs_and_the_state_dict(monkeypatch):
    plain = small_model().eval()
    x = images()
    monkeypatch.setattr(accel, "channels_last_enabled", lambda device: True)  # as on CUDA
    fast = accel.prepare_model(small_model(), CPU).eval()
    conv = fast.backbone.trunk[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x_fast = accel.to_device(x, CPU)
    assert x_fast.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = plain(x, return_attention=True), fast(x_fast, return_attention=True)
    torch.testing.assert_close(b.embedding, a.embedding, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.mpn_logits, a.mpn_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.attention, a.attention, atol=1e-5, rtol=1e-4)
    # a checkpoint written from the channels_last model loads into a plain one, values intact
    reloaded = build_model(small_params(), CLASSES).eval()
    reloaded.load_state_dict(fast.state_dict())
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in reloaded.state_dict().items())


def test_prepare_model_and_to_device_change_nothing_on_the_cpu():
    model = small_model()
    assert accel.prepare_model(model, CPU) is model
    assert all(w.is_contiguous() for w in model.parameters())
    x = images()
    assert accel.to_device(x, CPU) is x
    assert accel.channels_last_enabled(CUDA) and not accel.channels_last_enabled(CPU)


# --- where search runs ------------------------------------------------------------------------


def test_search_device_is_the_gpu_of_a_process_that_uses_cuda(monkeypatch):
    assert accel.search_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert accel.search_device(CUDA) == torch.device("cuda", 1)  # "cuda": the current device
    # A GPU is visible but this process has not used CUDA (a run with device: cpu): the CPU,
    # and CUDA is not asked anything that would initialise it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", _refuse_cuda)
    assert accel.search_device(CPU) == CPU
    # A process that trains or embeds on a GPU: its CPU-held embeddings are searched there.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert accel.search_device(CPU) == torch.device("cuda", 1)


# --- loaders ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # the cores are faked
@pytest.mark.parametrize("device, cores, workers", [
    (CUDA, 16, 15), (CUDA, 64, 16), (CUDA, 1, 0), (CPU, 2, 0), (CPU, 4, 0), (CPU, 8, 4),
    (CPU, 32, 4)])
def test_loader_settings_are_sized_from_the_machine(monkeypatch, device, cores, workers):
    monkeypatch.setattr(loader, "cpu_cores", lambda: cores)
    s = loader.data_loader(torch.utils.data.TensorDataset(torch.zeros(1)), -1, device)
    assert s.num_workers == workers
    assert s.pin_memory == (device.type == "cuda")
    assert s.persistent_workers is False  # exact resume (see data_loader)
    assert s.prefetch_factor == (2 if workers else None)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_num_workers_parameter_overrides_the_machine(monkeypatch):
    monkeypatch.setattr(loader, "cpu_cores", lambda: 16)
    data = torch.utils.data.TensorDataset(torch.zeros(1))
    assert loader.data_loader(data, 3, CUDA).num_workers == 3
    assert loader.data_loader(data, 0, CUDA).prefetch_factor is None


def test_data_loader_batches_in_order_or_by_sampler():
    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    by_size = [b[0].tolist() for b in loader.data_loader(data, 0, CPU, batch_size=4)]
    assert by_size == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    by_sampler = [b[0].tolist() for b in loader.data_loader(data, 0, CPU,
                                                            batch_sampler=[[9, 1], [5]])]
    assert by_sampler == [[9, 1], [5]]


# --- cuDNN autotuning -------------------------------------------------------------------------


def test_cudnn_autotune_is_scoped_to_cuda_and_restored(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    with accel.cudnn_autotune(CPU):
        assert torch.backends.cudnn.benchmark is False
    with pytest.raises(KeyError):
        with accel.cudnn_autotune(CUDA):
            assert torch.backends.cudnn.benchmark is True
            raise KeyError  # restored on the way out of an exception too
    assert torch.backends.cudnn.benchmark is False


# --- the attention probes run under the same autocast ------------------------------------------


def test_probes_record_fp32_attention_under_bf16_autocast(monkeypatch):
    model = small_model()
    probe = probes.Probes(images(12).view(2, 6, 3, 32, 32), LABELS.repeat(2, 1),
                          np.arange(12).reshape(2, 6))
    plain = probes.record_attention(model, probe, CPU)
    monkeypatch.setattr(accel, "autocast", cpu_bf16)
    low = probes.record_attention(model, probe, CPU)
    assert plain.shape == low.shape == (1, 2, 2, 6, 6)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert not torch.equal(low, plain)  # bf16 really ran ...
    torch.testing.assert_close(low, plain, atol=0.05, rtol=0)  # ... and stays close


# --- the speed benchmark runs (tiny, on the CPU) -----------------------------------------------


def _load_bench():
    return load_bench("train_speed")


@pytest.mark.parametrize("data", ["tensors", "transform"])
def test_train_speed_bench_runs_tiny_on_the_cpu(data):
    bench = _load_bench()
    args = argparse.Namespace(device="cpu", steps=2, warmup=1, batch_shape="2x3",
                              backbone="resnet18", image_size=32, no_autocast=False, data=data,
                              workers=0, eval_batches=1, eval_batch_size=8, seed=0)
    result = bench.run(args)
    assert result["batch_size"] == 6 and result["bf16"] is False
    assert result["channels_last"] is False and result["cudnn_benchmark"] is False
    assert result["train_images_per_second"] > 0 and result["eval_images_per_second"] > 0
    assert np.isfinite(result["mean_loss"]) and result["eval_images"] == 8


# --- a run with device: cpu never initialises CUDA ---------------------------------------------

# Run in a fresh process, so that nothing another test did to CUDA counts. CUDA is made to look
# present (a machine with a GPU), every way in to initialising it raises, and faiss, when
# installed, counts a GPU but cannot make GPU resources: then training (evaluating every epoch)
# and the evaluation step of a device: cpu run on the smoke recipe must never get there, and
# CUDA must still be uninitialised at the end. On a machine with a GPU the fakes change nothing
# about what is visible, and the last check is against the real CUDA. One thing torch does
# itself is set aside (see the script).
_CPU_RUN = """
import sys
import torch
import torch.cuda.random


def refuse(*args, **kwargs):
    raise AssertionError("a device: cpu run initialised CUDA")


torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda._lazy_init = torch.cuda.init = torch.cuda.random._lazy_init = refuse
torch.cuda.get_device_capability = refuse
# torch's own: every optimiser step asks for the current CUDA stream whenever a GPU is visible
# (its graph-capture check), which initialises CUDA. Set aside here: this test is about ibdml's
# code (docs/datasets.md, "On a GPU", says how to keep a CPU run off the GPU entirely).
torch.optim.Optimizer._accelerator_graph_capture_health_check = lambda self: None
try:
    import faiss
except ImportError:
    pass
else:
    faiss.get_num_gpus = lambda: 1
    faiss.StandardGpuResources = refuse

from ibdml.config import load_params
from ibdml.steps.evaluate import evaluate_run
from ibdml.steps.train import train

smoke, glyphs, run = sys.argv[1:4]
p = load_params(smoke, {"data_root": glyphs, "device": "cpu"})
train(p, run, progress=False)
evaluate_run(run, progress=False)
state = torch.load(run + "/checkpoints/last.pt", weights_only=True)
assert state["rng"]["cuda"] == [], "a CUDA generator state in a CPU run's checkpoint"
assert not torch.cuda.is_initialized(), "CUDA initialised"
print("cuda untouched")
"""


def test_a_cpu_run_never_initialises_cuda(glyph_root, tmp_path):
    smoke = Path(__file__).parent.parent / "params" / "smoke.yaml"
    done = subprocess.run([sys.executable, "-c", _CPU_RUN, str(smoke), str(glyph_root),
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cuda untouched" in done.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()
