"""The one parameter set of an ibdml run.

Every parameter lives in `Params`: its default, its allowed values and its help text. A run is
described by a YAML file (`params/*.yaml`) plus `key=value` overrides; `load_params` turns both
into a validated `Params`, and every bad value is a `ParamError` that names the parameter, the
value and what is allowed. docs/method.md Part 1 explains where the defaults come from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ibdml import strict_yaml

# glyphs is rendered by ibdml; the paper's four benchmarks are read from the folders their
# owners distribute (data/benchmarks.py), which users bring themselves.
DATASETS = ("glyphs", "cub200", "cars196", "sop", "inshop")
# Recall@K sets of the paper's tables (docs/method.md §7.2, §7.3); Glyphs uses the CUB/Cars set.
RECALL_KS = {
    "glyphs": (1, 2, 4, 8),
    "cub200": (1, 2, 4, 8),
    "cars196": (1, 2, 4, 8),
    "sop": (1, 10, 100, 1000),
    "inshop": (1, 10, 20, 30, 40, 50),
}


class ParamError(ValueError):
    """A parameter value that cannot be used; the message says how to fix it."""


def _p(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
       choices: tuple | None = None) -> Any:
    """A dataclass field carrying its help text and its allowed range or choices."""
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Params:
    # --- data -------------------------------------------------------------------------------
    dataset: str = _p("glyphs", "Dataset to train and evaluate on.", choices=DATASETS)
    data_root: str = _p("~/.cache/ibdml/glyphs",
                        "Dataset folder: the benchmark's root in its official layout (check it "
                        "with `ibdml check-data`); Glyphs: where its rendered cache lives.")
    glyph_classes: int = _p(200, "Glyphs: number of character classes.", lo=4, hi=600)
    glyph_train_classes: int = _p(100, "Glyphs: the first this many classes train, the rest test.",
                                  lo=2, hi=598)
    glyph_images_per_class: int = _p(40, "Glyphs: rendered images per class.", lo=2, hi=1000)
    glyph_seed: int = _p(0, "Glyphs: seed of the rendering (the dataset itself).", lo=0)
    official_counts: bool = _p(True, "Benchmarks: refuse a copy whose classes or images differ "
                               "from the official counts (false: train on a subset; its numbers "
                               "are not the paper's).")
    val_fraction: float = _p(0.0, "Fraction of the training classes held out (class-disjoint) "
                             "as a validation split; 0 = none.", lo=0.0, hi=0.5)
    image_size: int = _p(32, "Side of the square network input in pixels (paper: 227).",
                         lo=16, hi=512)
    test_resize_ratio: float = _p(1.0, "Test transform: resize the shorter side to "
                                  "image_size × this, then centre-crop (paper: 256/227).",
                                  lo=1.0, hi=2.0)
    crop_scale_min: float = _p(0.08, "Train transform: smallest area fraction of the random "
                               "resized crop (torchvision default 0.08).", lo=0.01, hi=1.0)
    horizontal_flip: bool = _p(True, "Train transform: random horizontal flip (off for "
                               "characters: a flipped glyph is another glyph).")
    random_erasing: bool = _p(True, "Train transform: the authors' random erasing, after "
                              "normalisation (p 0.5, area 0.02–0.4).")
    normalize: str = _p("imagenet", "Pixel normalisation: ImageNet mean/std, the authors' "
                        "typo std [0.299, …], or per-image standardisation.",
                        choices=("imagenet", "authors", "per_image"))
    # --- sampler ----------------------------------------------------------------------------
    n_c: int = _p(6, "Classes per batch (paper n_c).", lo=1)
    n_s: int = _p(9, "Images per class in a batch (paper n_s).", lo=2)
    batch_shape: str = _p("fixed", "fixed: n_c × n_s every epoch; divisors: redraw n_c among "
                          "the divisors of n_c·n_s every epoch (authors' CUB NumberSampler).",
                          choices=("fixed", "divisors"))
    # --- model ------------------------------------------------------------------------------
    backbone: str = _p("resnet18", "torchvision ResNet trunk.", choices=("resnet18", "resnet50"))
    pretrained: str = _p("none", "Backbone initialisation: none (random), imagenet "
                         "(torchvision IMAGENET1K_V1 weights) or the path of a .pth state dict.")
    pooling: str = _p("max", "Global pooling of the last feature map (authors: max).",
                      choices=("max", "avg"))
    embedding_dim: int = _p(512, "Embedding size (Linear after pooling).", lo=8, hi=4096)
    mpn_layers: int = _p(1, "Message-passing layers; 0 = CE-only baseline (no MPN).", lo=0, hi=8)
    mpn_heads: int = _p(2, "Attention heads per MPN layer (must divide embedding_dim).",
                        lo=1, hi=64)
    mpn_dropout: float = _p(0.1, "Dropout on attention weights, residuals and FFN.",
                            lo=0.0, hi=0.9)
    attention_null_key: bool = _p(True, "Authors' softmax with an extra zero logit (rows sum "
                                  "< 1); false = standard softmax.")
    mpn_concat_layers: bool = _p(False, "MPN classifier on the concatenation of all layer "
                                 "outputs (authors' Cars).")
    mpn_attention: str = _p("dot", "How MPN nodes weigh each other: dot = learned dot-product "
                            "attention (the method); uniform = every node receives the mean of "
                            "the batch's values; self = each node only its own value (no message "
                            "passing, same layers). The last two are ablations (docs/results.md).",
                            choices=("dot", "uniform", "self"))
    attention_scale: float = _p(1.0, "Multiplies the attention logits after the 1/√(D/H) "
                                "scaling; > 1 makes attention sharper from the start.",
                                lo=0.01, hi=100.0)
    # --- loss -------------------------------------------------------------------------------
    loss_heads: str = _p("both", "Losses: both = backbone + MPN (the method); backbone = aux "
                         "only (authors' SOP config; the MPN never runs).",
                         choices=("both", "backbone"))
    label_smoothing: float = _p(0.1, "Label-smoothing epsilon of both cross-entropies.",
                                lo=0.0, hi=0.99)
    temperature: float = _p(0.2, "Logits are divided by this before the loss.", lo=1e-3, hi=10.0)
    # --- optimisation -----------------------------------------------------------------------
    epochs: int = _p(12, "Training epochs.", lo=1, hi=1000)
    lr: float = _p(1e-3, "RAdam learning rate.", lo=1e-7, hi=1.0)
    mpn_lr_multiplier: float = _p(1.0, "The MPN's learning rate is lr × this (the backbone's "
                                  "is lr).", lo=0.01, hi=1000.0)
    weight_decay: float = _p(0.0, "Decoupled weight decay.", lo=0.0, hi=1.0)
    lr_milestones: list = _p([], "Epochs after which lr is multiplied by lr_gamma "
                             "(paper: [30, 50]).")
    lr_gamma: float = _p(0.1, "lr factor at each milestone.", lo=0.0, hi=1.0)
    seed: int = _p(0, "Seed of initialisation, sampling and augmentation.", lo=0)
    device: str = _p("auto", "auto = CUDA when present, else CPU.",
                     choices=("auto", "cpu", "cuda"))
    nproc: int = _p(1, "Processes (devices) one training run uses (DDP); each takes whole "
                    "n_c × n_s batches; one optimiser step sees nproc batches.", lo=1)
    num_workers: int = _p(-1, "DataLoader workers; -1 = sized from the machine.", lo=-1, hi=64)
    amp: bool = _p(True, "On a GPU of compute capability ≥ 8.0 (Ampere and later): bf16 "
                   "autocast, with the attention softmax and the losses in fp32. false, or an "
                   "older GPU (no bf16 convolutions): fp32 with TF32 off. No effect on the CPU, "
                   "which always runs fp32.")
    # --- attention over training (paper claim 3; docs/method.md §13) ---------------------------
    attention_probes: int = _p(4, "Probe batches (n_c × n_s, training classes) whose MPN "
                               "attention is recorded before training and after every epoch; "
                               "0 = none.", lo=0, hi=64)
    # --- evaluation and model selection -----------------------------------------------------
    eval_every: int = _p(1, "Evaluate every this many epochs (0 = only at the end).", lo=0)
    select_on: str = _p("last", "Which epoch's weights the run reports: the last, the best on "
                        "the validation split, or the best on test (optimistic).",
                        choices=("last", "val", "test"))
    nmi: bool = _p(True, "Compute NMI (seeded k-means, k = number of classes).")
    kmeans: str = _p("sklearn", "NMI's k-means: sklearn = as the authors (KMeans, k-means++, "
                     "n_init 10, max_iter 300), seeded; fast = one k-means++ start, 20 "
                     "iterations (faiss when installed).", choices=("sklearn", "fast"))
    eval_batch_size: int = _p(256, "Batch size when embedding a split.", lo=1)
    # --- MPN at inference (paper claim 2; docs/method.md §8) ------------------------------------
    mpn_inference_k: int = _p(30, "MPN at inference: k of the reciprocal k-NN lists (authors: "
                              "30; the expansion uses k/2).", lo=2, hi=1000)
    mpn_inference_batch: int = _p(7, "MPN at inference: nodes per neighbourhood graph, the "
                                  "query included (authors: 7; In-Shop 4).", lo=2, hi=100)
    mpn_inference_alpha: float = _p(2 / 3, "MPN at inference: a member's half-k reciprocal set "
                                    "joins when more than this fraction of it is already in.",
                                    lo=0.01, hi=1.0)
    mpn_inference_space: str = _p("last", "MPN at inference: the refined feature is the last "
                                  "layer's output (docs/method.md §8.1) or the concatenation of "
                                  "all layers' outputs.", choices=("last", "concat"))
    mpn_inference_gallery_space: str = _p("backbone", "MPN at inference on In-Shop: compare "
                                          "refined queries with backbone gallery features "
                                          "(authors) or with a gallery refined on its own "
                                          "neighbourhoods.", choices=("backbone", "refined"))
    baselines: bool = _p(True, "Also evaluate raw-pixel k-NN and the untrained network "
                         "(Glyphs), so a short run is read against both.")

    @property
    def recall_ks(self) -> tuple[int, ...]:
        return RECALL_KS[self.dataset]

    @property
    def batch_size(self) -> int:
        return self.n_c * self.n_s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELDS = {f.name: f for f in dataclasses.fields(Params)}


def _allowed(f: dataclasses.Field) -> str:
    m = f.metadata
    if m["choices"]:
        return "one of " + ", ".join(map(str, m["choices"]))
    if m["lo"] is not None and m["hi"] is not None:
        return f"a {f.type} in [{m['lo']}, {m['hi']}]"
    if m["lo"] is not None:
        return f"a {f.type} ≥ {m['lo']}"
    return f"a {f.type}"


def _coerce(name: str, value: Any) -> Any:
    """Check `value` has the field's type (ints are accepted where floats are expected)."""
    f = FIELDS[name]
    expected = {"str": str, "int": int, "float": float, "bool": bool, "list": list}[f.type]
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ParamError(f"parameter {name}: {value!r} is a {type(value).__name__}, "
                         f"expected {_allowed(f)}")
    return value


def _check_field(name: str, value: Any) -> None:
    m = FIELDS[name].metadata
    if m["choices"] and value not in m["choices"]:
        raise ParamError(f"parameter {name}: {value!r} is not allowed; use {_allowed(FIELDS[name])}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamError(f"parameter {name}: {value!r} is not a finite number")
    if m["lo"] is not None and value < m["lo"] or m["hi"] is not None and value > m["hi"]:
        raise ParamError(f"parameter {name}: {value!r} is out of range; use {_allowed(FIELDS[name])}")


def validate(p: Params) -> Params:
    """Check every field, then the relations between fields. Returns `p` unchanged."""
    for name in FIELDS:
        setattr(p, name, _coerce(name, getattr(p, name)))
        _check_field(name, getattr(p, name))
    if p.embedding_dim % p.mpn_heads:
        raise ParamError(f"parameter mpn_heads: {p.mpn_heads} does not divide embedding_dim "
                         f"{p.embedding_dim}; choose a divisor such as 1, 2, 4 or 8")
    if any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in p.lr_milestones) \
            or sorted(p.lr_milestones) != p.lr_milestones:
        raise ParamError(f"parameter lr_milestones: {p.lr_milestones!r} must be increasing "
                         "positive epoch numbers, e.g. [30, 50]")
    if p.loss_heads == "both" and p.mpn_layers == 0:
        raise ParamError("parameter loss_heads: 'both' needs an MPN but mpn_layers is 0; "
                         "set loss_heads: backbone for the CE-only baseline")
    if p.select_on == "val" and p.val_fraction == 0:
        raise ParamError("parameter select_on: 'val' needs a validation split; set "
                         "val_fraction (e.g. 0.2) or select_on: last")
    if p.mpn_inference_batch > p.mpn_inference_k + 1:
        raise ParamError(f"parameter mpn_inference_batch: {p.mpn_inference_batch} nodes cannot "
                         f"come from k+1 = {p.mpn_inference_k + 1} neighbours; use "
                         f"mpn_inference_batch ≤ {p.mpn_inference_k + 1} or a larger mpn_inference_k")
    if (p.dataset == "inshop" and p.mpn_inference_space == "concat" and p.mpn_concat_layers
            and p.mpn_layers > 1 and p.mpn_inference_gallery_space == "backbone"):
        # refined queries [L·D] could not be compared with backbone gallery features [D]
        raise ParamError("parameter mpn_inference_space: 'concat' with a concatenating MPN "
                         f"({p.mpn_layers} layers) gives In-Shop queries {p.mpn_layers} times "
                         "wider than the backbone gallery features; set "
                         "mpn_inference_gallery_space: refined, or mpn_inference_space: last")
    if p.dataset == "glyphs":
        _check_glyph_split(p)
    return p


def _check_glyph_split(p: Params) -> None:
    """Glyphs' class counts are known before rendering, so n_c / n_s can be checked here."""
    if p.glyph_train_classes >= p.glyph_classes:
        raise ParamError(f"parameter glyph_train_classes: {p.glyph_train_classes} leaves no test "
                         f"classes out of glyph_classes {p.glyph_classes}; use fewer")
    train = p.glyph_train_classes - held_out_classes(p.glyph_train_classes, p.val_fraction)
    check_batch_shape(p, train_classes=train, largest_class=p.glyph_images_per_class)


def held_out_classes(train_classes: int, val_fraction: float) -> int:
    """How many of the training classes the validation split takes (0 when val_fraction is 0)."""
    return 0 if val_fraction == 0 else max(1, round(train_classes * val_fraction))


def check_batch_shape(p: Params, *, train_classes: int, largest_class: int) -> None:
    """n_c classes × n_s images must be drawable from the training classes (docs/method.md §3.1:
    classes smaller than n_s are padded with repeats, so only the largest class bounds n_s)."""
    if p.n_c > train_classes:
        raise ParamError(f"parameter n_c: {p.n_c} classes per batch, but the training split has "
                         f"only {train_classes} classes; use n_c ≤ {train_classes}")
    if p.n_s > largest_class:
        raise ParamError(f"parameter n_s: {p.n_s} images per class, but no training class has "
                         f"more than {largest_class} images; use n_s ≤ {largest_class}")


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' → (key, YAML-parsed value): `epochs=3`, `lr_milestones=[30, 50]`."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamError(f"override -p {text!r} is not key=value, e.g. -p epochs=3")
    try:
        return key.strip(), strict_yaml.load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ParamError(f"override -p {text!r}: the value is not YAML: {strict_yaml.problem(e)[1]}; "
                         "write a list as [30, 50], and quote a string: -p 'key=\"text\"'") from None


def _check_known(values: dict[str, Any], source: str = "") -> None:
    """Refuse keys that are not parameters, with the nearest parameter name as a suggestion."""
    unknown = sorted(map(str, set(values) - set(FIELDS)))
    if unknown:
        named = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(
            k, FIELDS, n=1)) else k for k in unknown]
        raise ParamError(f"{source + ': ' if source else ''}unknown parameter"
                         f"{'s' if len(unknown) > 1 else ''} {', '.join(named)}; the parameters "
                         "are listed in docs/parameters.md (or run `ibdml params`)")


def make_params(values: dict[str, Any]) -> Params:
    """Params from a dict of values (unknown keys are an error), validated."""
    _check_known(values)
    return validate(Params(**values))


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The key: value mapping of a parameters file. A missing file, a YAML syntax error, a key
    given twice and an unknown key are ParamErrors naming the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"parameters file {path} does not exist; pass one of params/*.yaml")
    try:
        loaded = strict_yaml.load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ParamError(f"parameters file {path} is not UTF-8 text ({e.reason} at byte "
                         f"{e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        line, problem = strict_yaml.problem(e)
        fix = "" if isinstance(e, strict_yaml.DuplicateKey) else "; fix the YAML syntax there"
        raise ParamError(f"parameters file {path}{line}: {problem}{fix}") from None
    if not isinstance(loaded, dict):
        raise ParamError(f"parameters file {path} must hold a mapping of key: value lines")
    _check_known(loaded, f"parameters file {path}")
    return loaded


def load_params(path: str | Path | None = None,
                overrides: dict[str, Any] | list[str] | None = None) -> Params:
    """Read a parameters YAML file, apply overrides (a dict, or 'key=value' strings), validate."""
    values: dict[str, Any] = read_params_file(path) if path else {}
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    _check_known(overrides or {}, "overrides")
    values.update(overrides or {})
    return make_params(values)


def params_markdown() -> str:
    """The parameter table of docs/parameters.md, generated from `Params` so it cannot drift."""
    rows = ["| parameter | default | allowed | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Params):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        rows.append(f"| `{f.name}` | `{default!r}` | {_allowed(f)} | {f.metadata['help']} |")
    return "\n".join(rows)
