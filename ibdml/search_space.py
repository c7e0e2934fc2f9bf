"""Search spaces: which parameters a random search samples, and how (docs/scale-out.md).

A space is a YAML file (params/search/*.yaml). Each key is a parameter of `Params`; a plain value
is fixed for every trial, and a mapping with one key is a distribution:

    lr: {loguniform: [1.0e-5, 1.0e-3]}   # 10^U(-5, -3)
    n_c: {randint: [6, 15]}              # both ends included
    temperature: {uniform: [0.01, 1.0]}
    mpn_heads: {choice: [1, 2, 4, 8]}
    epochs: 40                           # fixed

Every bound and choice is checked against the parameter's own range here, so a space cannot
sample a value that `Params` would refuse on its own; values that are only wrong together (n_s
larger than a class, heads that do not divide the embedding) fail their trial, which the search
records. Nothing here imports Ray: steps/sweep.py turns a `Space` into Ray Tune's sampling
objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ibdml.config import FIELDS, ParamError, _check_field, _coerce

KINDS = ("loguniform", "uniform", "randint", "choice")


@dataclass(frozen=True)
class Space:
    """A parsed space: `fixed` {name: value} and `sampled` {name: (kind, arguments)}."""

    fixed: dict[str, Any]
    sampled: dict[str, tuple[str, list]]

    def as_dict(self) -> dict[str, Any]:
        """The space as written in its YAML form (for search.json)."""
        return {**self.fixed, **{n: {kind: args} for n, (kind, args) in self.sampled.items()}}


def load_space(path: str | Path) -> Space:
    """Read and check a space file; a ParamError names the file, the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"search space {path} does not exist; pass one of params/search/*.yaml")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ParamError(f"search space {path}: not valid YAML ({e}); fix the syntax") from None
    if not isinstance(values, dict):
        raise ParamError(f"search space {path} must hold a mapping of parameter: value lines")
    return parse_space(values, str(path))


def parse_space(values: dict[str, Any], source: str = "search space") -> Space:
    fixed, sampled = {}, {}
    for name, value in values.items():
        if name not in FIELDS:
            raise ParamError(f"{source}: {name!r} is not a parameter; the parameters are listed "
                             "in docs/parameters.md (or run `ibdml params`)")
        if isinstance(value, dict):
            sampled[name] = _distribution(name, value, source)
        else:
            fixed[name] = _checked(name, value, source)
    if not sampled:
        raise ParamError(f"{source} samples nothing; give at least one parameter a distribution, "
                         "e.g. lr: {loguniform: [1.0e-5, 1.0e-3]}")
    return Space(fixed, sampled)


def _distribution(name: str, spec: dict, source: str) -> tuple[str, list]:
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ParamError(f"{source}: {name}: {spec!r} is not a distribution; write one of "
                         + ", ".join(f"{{{k}: [...]}}" for k in KINDS))
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args or kind != "choice" and len(args) != 2:
        raise ParamError(f"{source}: {name}: {kind} takes "
                         + ("a list of values" if kind == "choice" else "[low, high]"))
    args = [_checked(name, a, source) for a in args]
    if kind == "choice":
        return kind, args
    low, high = args
    if not low < high:
        raise ParamError(f"{source}: {name}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ParamError(f"{source}: {name}: randint takes whole numbers, got {args}")
    if kind == "loguniform" and low <= 0:
        raise ParamError(f"{source}: {name}: loguniform needs low > 0, got {low}")
    return kind, args


def _checked(name: str, value: Any, source: str) -> Any:
    """`value` as the parameter's type, inside its allowed range."""
    try:
        value = _coerce(name, value)
        _check_field(name, value)
    except ParamError as e:
        raise ParamError(f"{source}: {e}") from None
    return value

