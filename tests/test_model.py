"""The full network: backbone embedding, heads, CE-only baseline, pretrained loading."""

import pytest
import torch

from ibdml.backbone import Backbone, WeightsError
from ibdml.config import load_params
from ibdml.model import build_model


def small(**kw):
    return load_params(None, {"embedding_dim": 64, **kw})


def test_outputs_and_normalised_embedding():
    torch.manual_seed(0)
    model = build_model(small(), num_classes=7)
    out = model(torch.randn(12, 3, 32, 32), return_attention=True)
    assert out.embedding.shape == (12, 64)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(12))
    assert out.backbone_logits.shape == out.mpn_logits.shape == (12, 7)
    assert out.attention.shape == (1, 2, 12, 12)


def test_ce_only_baseline_has_no_mpn():
    model = build_model(small(mpn_layers=0, loss_heads="backbone"), num_classes=7)
    assert model.mpn is None
    out = model(torch.randn(4, 3, 32, 32))
    assert out.mpn_logits is None and out.attention is None


def test_backbone_loss_heads_skip_the_mpn():
    model = build_model(small(), num_classes=7)
    assert model(torch.randn(4, 3, 32, 32), run_mpn=False).mpn_logits is None


def test_avg_pooling_and_resnet50_shapes():
    model = build_model(small(pooling="avg", backbone="resnet50"), num_classes=3)
    assert model.backbone.embed.in_features == 2048
    assert model(torch.randn(2, 3, 32, 32)).embedding.shape == (2, 64)


def test_pretrained_from_local_file(tmp_path):
    torch.manual_seed(1)
    source = Backbone("resnet18", 10)
    trunk_state = {k.replace("trunk.", ""): v for k, v in source.state_dict().items()}
    from torchvision.models import resnet18
    reference = resnet18()
    names = [n for n, _ in reference.named_children() if n not in ("avgpool", "fc")]
    state = {}
    for i, name in enumerate(names):  # trunk.<i>.<rest> ↔ <name>.<rest>
        state.update({f"{name}.{k[len(str(i)) + 1:]}": v for k, v in trunk_state.items()
                      if k.split(".")[0] == str(i)})
    state["fc.weight"] = torch.zeros(1000, 512)  # ImageNet classifier: dropped
    torch.save(state, tmp_path / "r18.pth")
    loaded = Backbone("resnet18", 10, pretrained=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(loaded.trunk[0].weight, source.trunk[0].weight)
    torch.testing.assert_close(loaded.trunk[4][0].bn1.running_var, source.trunk[4][0].bn1.running_var)


def test_pretrained_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        Backbone("resnet18", 10, pretrained=str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(64, 1, 7, 7)}, tmp_path / "gray.pth")
    with pytest.raises(WeightsError) as e:  # not torch's size-mismatch RuntimeError
        Backbone("resnet18", 10, pretrained=str(tmp_path / "gray.pth"))
    assert str(e.value).startswith(f"pretrained: {tmp_path / 'gray.pth'} does not fit resnet18: "
                                   "conv1.weight has shape [64, 1, 7, 7] in the file, resnet18 "
                                   "expects [64, 3, 7, 7]")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "part.pth")
    with pytest.raises(WeightsError, match=r"does not fit resnet18 \(missing \['bn1"):
        Backbone("resnet18", 10, pretrained=str(tmp_path / "part.pth"))
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read as a state dict"):
        Backbone("resnet18", 10, pretrained=str(tmp_path / "text.pth"))


def test_imagenet_weights_offline_say_which_file_and_where(tmp_path, monkeypatch):
    import urllib.error

    from torchvision.models import ResNet18_Weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    weights = ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(type(weights), "get_state_dict", lambda self, **kw: (_ for _ in ()).throw(
        urllib.error.URLError("no network")))
    with pytest.raises(WeightsError) as e:
        Backbone("resnet18", 10, pretrained="imagenet")
    message = str(e.value)
    file = weights.url.rsplit("/", 1)[1]  # resnet18-f37072fd.pth
    assert f"needs {file}" in message and weights.url in message
    assert str(tmp_path / "hub" / "checkpoints" / file) in message
    assert "or set pretrained to its path" in message


def test_imagenet_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    source = resnet18()
    file = tmp_path / "hub" / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    file.parent.mkdir(parents=True)
    torch.save(source.state_dict(), file)  # where torchvision's weights API looks first
    loaded = Backbone("resnet18", 10, pretrained="imagenet")
    torch.testing.assert_close(loaded.trunk[0].weight, source.conv1.weight)


def test_attention_mode_and_scale_are_wired_from_params():
    model = build_model(small(mpn_attention="uniform", attention_scale=2.0), num_classes=7)
    att = model.mpn.layers[0].attention
    assert (att.mode, att.scale) == ("uniform", 2.0)
    out = model.eval()(torch.randn(6, 3, 32, 32), return_attention=True)
    torch.testing.assert_close(out.attention, torch.full((1, 2, 6, 6), 1 / 6))
    out = build_model(small(mpn_attention="self"), 7).eval()(torch.randn(6, 3, 32, 32),
                                                             return_attention=True)
    torch.testing.assert_close(out.attention, torch.eye(6).expand(1, 2, 6, 6))
