"""The backbone: a torchvision ResNet trunk, global pooling, a linear embedding and the auxiliary
classifier (docs/method.md §4.1, Part 1).

image ─► ResNet layers 1–4 ─► global max pool ─► Linear → 512 = e (un-normalised)
                                                  ├─► Linear → C = backbone logits (aux loss)
                                                  └─► L2-normalise = the embedding used at test time
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

TRUNKS = {"resnet18": (models.resnet18, models.ResNet18_Weights, 512),
          "resnet50": (models.resnet50, models.ResNet50_Weights, 2048)}


class WeightsError(ValueError):
    """Pretrained weights that cannot be found or loaded; the message says where to get them."""


def _imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 weights (the authors' resnet50-19c8e357 are these), from the
    torch hub cache or downloaded; offline without the file, say which file to fetch and where."""
    weights = TRUNKS[name][1].IMAGENET1K_V1
    hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # URLError, socket errors, SSL errors: all mean "no download here"
        raise WeightsError(
            f"pretrained: imagenet needs {Path(weights.url).name}, which is not in the torch hub "
            f"cache and could not be downloaded ({type(e).__name__}: {e}). Download {weights.url} "
            f"on a machine with internet and put it at {hub}, or set pretrained to its path"
        ) from e


def _file_state(path: str) -> dict[str, torch.Tensor]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"pretrained: {path} does not exist; give the path of a torchvision "
                           "ResNet state dict (.pth), or use none / imagenet")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise WeightsError(f"pretrained: {file} cannot be read as a state dict ({detail}); save "
                           "the weights with torch.save(model.state_dict(), PATH)") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise WeightsError(f"pretrained: {file} holds a {type(state).__name__}, not a state dict; "
                           "save the weights with torch.save(model.state_dict(), PATH)")
    return state


def pretrained_state(name: str, pretrained: str) -> dict[str, torch.Tensor]:
    """The trunk weights that `pretrained` (imagenet or a file) gives the `name` ResNet, checked
    against it: a file of another shape is a WeightsError naming the file, the first tensor that
    differs and both shapes, not torch's size-mismatch error. The ImageNet classifier (fc.*) is
    dropped; everything else, BN statistics too, is kept."""
    state = _imagenet_state(name) if pretrained == "imagenet" else _file_state(pretrained)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    with torch.device("meta"):  # the architecture's shapes, without allocating or initialising
        own = {k: v.shape for k, v in TRUNKS[name][0](weights=None).state_dict().items()}
    differ = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k]]
    fix = (f"give a torchvision {name} state dict (or set backbone to the file's ResNet), or use "
           "pretrained: none / imagenet")
    if differ:
        k = differ[0]
        found = list(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k])
        raise WeightsError(f"pretrained: {pretrained} does not fit {name}: {k} has shape {found} "
                           f"in the file, {name} expects {list(own[k])} ({len(differ)} of "
                           f"{len(state)} tensors differ); {fix}")
    missing = sorted(set(own) - set(state) - {"fc.weight", "fc.bias"})
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(f"pretrained: {pretrained} does not fit {name} (missing "
                           f"{missing[:3]}, unexpected {unexpected[:3]}); {fix}")
    return state


class Backbone(nn.Module):
    """ResNet trunk + global pooling + embedding + auxiliary classifier."""

    def __init__(self, name: str, num_classes: int, *, embedding_dim: int = 512,
                 pooling: str = "max", pretrained: str = "none") -> None:
        super().__init__()
        build, _, channels = TRUNKS[name]
        resnet = build(weights=None)
        if pretrained != "none":
            resnet.load_state_dict(pretrained_state(name, pretrained), strict=False)  # not fc.*
        self.trunk = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                                   resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        # Global max pooling, as the authors (their attribute is misleadingly named avgpool, B10).
        self.pool = nn.AdaptiveMaxPool2d(1) if pooling == "max" else nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(channels, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [N, 3, H, W] → (L2-normalised embedding [N, D], aux logits [N, C]).
        The aux classifier sees the un-normalised embedding (docs/method.md §4.1)."""
        e = self.embed(self.pool(self.trunk(images)).flatten(1))  # [N, C_trunk, 1, 1] → [N, D]
        return F.normalize(e, dim=1), self.classifier(e)
