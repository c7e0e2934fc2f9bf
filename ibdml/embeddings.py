"""Checked inputs for everything that takes embeddings or labels: the k-NN search
(`retrieval.py`), k-means (`clustering.py`), the metrics (`metrics.py`) and the MPN at
inference (`neighbourhoods.py`, `inference.py`).

One validator per kind of input, so every entry point refuses the same bad input with the same
message: what is wrong, with which argument (shape, rows), and how to fix it.

    as_embeddings(x, name, unit=False)   [N, D] float32 torch tensor, finite (unit: norm-1 rows)
    cosine_rows(x, name)                 the same, each row divided by its norm (zero rows refused)
    as_labels(labels, n, name, rows)     [N] numpy array, one label per embedding row
    check_same_width(a, b, a_name, b_name)   two embedding sets of the same dimension

Tensors stay on their device; numpy arrays (and lists) become CPU tensors.
"""

from __future__ import annotations

import numpy as np
import torch

# Row norms of "L2-normalised" embeddings may differ from 1 by float32 rounding, not more.
UNIT_NORM_TOLERANCE = 1e-3
_ROWS_SHOWN = 5  # rows named in an error message, at most


def as_embeddings(x, name: str = "embeddings", *, unit: bool = False) -> torch.Tensor:
    """x as a detached, contiguous float32 [N, D] tensor with N, D ≥ 1 and finite entries.

    Args:
        x: a torch tensor (kept on its device), a numpy array or nested lists (CPU).
        name: the argument's name, used in error messages.
        unit: also require L2-normalised rows (norm 1 ± 1e-3): the cosine ranking of the
            paper's evaluation (docs/method.md §7.1) assumes them; nothing is renormalised.

    Raises:
        ValueError: naming `name`, the shape, the offending rows and the fix, when x is not 2-D,
            is empty, has NaN or inf entries, or (unit=True) has a row norm off 1.

    Example: a row of norm 5 is a float32 matrix, but not a unit one:
        >>> as_embeddings([[3.0, 4.0]], "x").dtype
        torch.float32
        >>> as_embeddings([[3.0, 4.0]], "x", unit=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: x must have L2-normalised rows (norm 1 ± 0.001), but 1 of 1 rows are off, ...
    """
    x = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [rows, dim] matrix, got shape {tuple(x.shape)}.")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): it needs rows and columns.")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}.")
    x = x.to(torch.float32).contiguous()
    bad = ~torch.isfinite(x).all(dim=1)  # [N]
    if bool(bad.any()):
        raise ValueError(
            f"{name} has {int(bad.sum())} of {len(x)} rows with NaN or inf (rows "
            f"{_some(bad)}): a diverged model or an empty image? Check these rows first."
        )
    if unit:
        norms = torch.linalg.vector_norm(x, dim=1)  # [N]
        off = (norms - 1).abs() > UNIT_NORM_TOLERANCE
        if bool(off.any()):
            row = int(off.nonzero()[0])
            raise ValueError(
                f"{name} must have L2-normalised rows (norm 1 ± {UNIT_NORM_TOLERANCE:g}), but "
                f"{int(off.sum())} of {len(x)} rows are off, e.g. row {row} with norm "
                f"{float(norms[row]):.4g}: pass torch.nn.functional.normalize({name}, dim=1)."
            )
    return x


def cosine_rows(x, name: str = "embeddings") -> torch.Tensor:
    """`as_embeddings(x, name)` with every row divided by its norm: [N, D] float32 unit rows,
    so that inner products are cosine similarities whatever the scale. A zero row has no
    direction and is an error (naming how many and which).

        >>> cosine_rows([[3.0, 4.0]]).tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    x = as_embeddings(x, name)
    norms = torch.linalg.vector_norm(x, dim=1)  # [N]
    zero = norms == 0
    if bool(zero.any()):
        raise ValueError(f"{name} has {int(zero.sum())} zero rows (rows {_some(zero)}): cosine "
                         "similarity is undefined for them; drop them or check the model.")
    return x / norms[:, None]


def as_labels(labels, n: int, name: str = "labels", rows: str = "embeddings") -> np.ndarray:
    """labels as a 1-D numpy array [n], one per row of the `rows` argument (of n rows).

        >>> as_labels([[0], [1]], 2).tolist()
        [0, 1]
    """
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.ravel()
    if len(y) != n:
        raise ValueError(f"{n} {rows} but {len(y)} {name}: give one label per row.")
    return y


def check_same_width(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    """Refuse two embedding sets [Na, D], [Nb, D'] with D ≠ D': they cannot be compared."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a_name} has {a.shape[1]}-d rows but {b_name} has {b.shape[1]}-d rows: "
                         "both must come from the same embedding (the same model).")


def _some(mask: torch.Tensor) -> str:
    """'[3, 7]' or '[3, 7, 9, 12, 20, ...]': the first rows where mask [N] is True."""
    rows = mask.nonzero().ravel().tolist()
    more = ", ..." if len(rows) > _ROWS_SHOWN else ""
    return f"[{', '.join(map(str, rows[:_ROWS_SHOWN]))}{more}]"
