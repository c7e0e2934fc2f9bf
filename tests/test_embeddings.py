"""Tests for ibdml.embeddings: the one validator of embeddings and labels, and that every entry
point that takes embeddings refuses the same bad input with the same message."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ibdml.clustering import kmeans
from ibdml.embeddings import as_embeddings, as_labels, check_same_width, cosine_rows
from ibdml.inference import refine
from ibdml.gallery_metrics import query_gallery_recall_at_k
from ibdml.metrics import evaluate
from ibdml.mpn import MessagePassingNetwork
from ibdml.neighbourhoods import reciprocal_neighbourhoods, reciprocal_neighbourhoods_query_gallery
from ibdml.retrieval import nearest_neighbours, nearest_neighbours_of_rows

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def unit_rows(n: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=1)


# --- as_embeddings: what is refused ----------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_not_2d_is_refused_with_the_shape(shape):
    with pytest.raises(ValueError, match=r"^feats must be a 2-D \[rows, dim\] matrix, got shape "
                                         + re.escape(str(shape)) + r"\.$"):
        as_embeddings(torch.ones(shape), "feats")


@pytest.mark.parametrize("shape", [(0, 4), (3, 0)])
def test_empty_is_refused(shape):
    with pytest.raises(ValueError, match=rf"^feats is empty \(shape \({shape[0]}, {shape[1]}\)\): "
                                         "it needs rows and columns"):
        as_embeddings(np.zeros(shape), "feats")


@pytest.mark.parametrize("x", [torch.ones(2, 2, dtype=torch.bool),
                               torch.ones(2, 2, dtype=torch.complex64)])
def test_non_real_dtypes_are_refused(x):
    with pytest.raises(ValueError, match="feats must hold real numbers, got dtype"):
        as_embeddings(x, "feats")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rows_are_refused_and_named(value):
    x = unit_rows(10)
    x[3, 1] = value
    x[7, 0] = value
    with pytest.raises(ValueError, match=r"^feats has 2 of 10 rows with NaN or inf "
                                         r"\(rows \[3, 7\]\): a diverged model or an empty "
                                         r"image\?"):
        as_embeddings(x, "feats")


def test_many_non_finite_rows_name_the_first_five():
    x = unit_rows(20)
    x[2:9, 0] = float("nan")  # rows 2..8: seven bad rows
    with pytest.raises(ValueError, match=r"7 of 20 rows .* \(rows \[2, 3, 4, 5, 6, \.\.\.\]\)"):
        as_embeddings(x, "feats")


def test_unit_refuses_rows_off_norm_one_and_says_how_to_fix():
    x = unit_rows(10)
    x[4] *= 1.01  # 1 % off: well past float32 rounding
    x[6] *= 3
    with pytest.raises(ValueError, match=r"^feats must have L2-normalised rows "
                                         r"\(norm 1 ± 0\.001\), but 2 of 10 rows are off, "
                                         r"e\.g\. row 4 with norm 1\.01: pass "
                                         r"torch\.nn\.functional\.normalize\(feats, dim=1\)\.$"):
        as_embeddings(x, "feats", unit=True)
    as_embeddings(x, "feats")  # without unit=True the norms do not matter


def test_unit_accepts_rounding_and_renormalises_nothing():
    x = unit_rows(10)
    x[2] *= 1 + 5e-4  # inside the tolerance
    got = as_embeddings(x, "feats", unit=True)
    assert torch.equal(got, x)  # returned as given, not renormalised


def test_zero_rows_are_refused_with_unit_but_not_without():
    x = unit_rows(4)
    x[1] = 0
    assert torch.equal(as_embeddings(x, "feats"), x)
    with pytest.raises(ValueError, match="1 of 4 rows are off, e.g. row 1 with norm 0"):
        as_embeddings(x, "feats", unit=True)


# --- as_embeddings: what valid input becomes -------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_valid_tensors_keep_their_device_and_become_float32_contiguous(device):
    x64 = unit_rows(6, dim=4).double().to(device).T  # [4, 6] float64, not contiguous
    assert not x64.is_contiguous()
    got = as_embeddings(x64, "feats")
    assert got.device == x64.device and got.dtype == torch.float32 and got.is_contiguous()
    assert got.shape == (4, 6)
    torch.testing.assert_close(got, x64.float(), atol=0, rtol=0)


def test_numpy_lists_and_integers_become_cpu_float32():
    for x in (np.arange(6, dtype=np.int64).reshape(2, 3), [[0, 1, 2], [3, 4, 5]],
              np.arange(6, dtype=np.float16).reshape(2, 3)):
        got = as_embeddings(x, "feats")
        assert got.device.type == "cpu" and got.dtype == torch.float32 and got.is_contiguous()
        assert got.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_tensors_that_require_grad_come_back_detached():
    x = unit_rows(3).requires_grad_()
    got = as_embeddings(x, "feats")
    assert not got.requires_grad and got.grad_fn is None


# --- cosine_rows ---------------------------------------------------------------------------------


def test_cosine_rows_divides_by_the_norm():
    x = unit_rows(5)
    scales = torch.tensor([[0.1], [1.0], [3.0], [7.5], [100.0]])
    got = cosine_rows(x * scales, "feats")
    torch.testing.assert_close(got, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(5))


def test_cosine_rows_refuses_zero_rows_and_names_them():
    x = unit_rows(8)
    x[[2, 5]] = 0
    with pytest.raises(ValueError, match=r"^feats has 2 zero rows \(rows \[2, 5\]\): cosine "
                                         "similarity is undefined"):
        cosine_rows(x, "feats")


def test_cosine_rows_refuses_non_finite_rows_as_as_embeddings_does():
    x = unit_rows(8)
    x[6, 0] = float("nan")
    with pytest.raises(ValueError) as cosine:
        cosine_rows(x, "feats")
    with pytest.raises(ValueError) as plain:
        as_embeddings(x, "feats")
    assert str(cosine.value) == str(plain.value)


# --- as_labels and check_same_width ------------------------------------------------------------


def test_as_labels_flattens_to_one_label_per_row():
    for labels in ([[0], [1], [2]], torch.tensor([0, 1, 2]), np.array([[0, 1, 2]])):
        got = as_labels(labels, 3)
        assert isinstance(got, np.ndarray) and got.tolist() == [0, 1, 2]
    assert as_labels(["a", "b"], 2).tolist() == ["a", "b"]


def test_as_labels_refuses_a_count_mismatch_naming_both_arguments():
    with pytest.raises(ValueError, match=r"^10 embeddings but 9 labels: give one label per row\.$"):
        as_labels(np.zeros(9), 10)
    with pytest.raises(ValueError, match=r"^4 query embeddings but 5 query labels"):
        as_labels(range(5), 4, "query labels", "query embeddings")


def test_check_same_width():
    check_same_width(torch.ones(3, 4), torch.ones(7, 4), "a", "b")  # different N is fine
    with pytest.raises(ValueError, match=r"^queries has 4-d rows but gallery has 2-d rows: both "
                                         r"must come from the same embedding"):
        check_same_width(torch.ones(3, 4), torch.ones(3, 2), "queries", "gallery")


# --- one validator: every entry point refuses the same input with the same message -------------


def _mpn() -> MessagePassingNetwork:
    torch.manual_seed(0)
    return MessagePassingNetwork(8, 3, layers=1, heads=1, dropout=0.0, null_key=True,
                                 concat_layers=False)


ENTRY_POINTS = {
    # name the entry point gives the argument → a call with the bad embeddings x
    "metrics.evaluate": ("embeddings", lambda x: evaluate(x, np.arange(10) % 2, ks=(1,))),
    "retrieval.nearest_neighbours": ("queries", lambda x: nearest_neighbours(x, k=1)),
    "retrieval.nearest_neighbours (reference)": (
        "reference", lambda x: nearest_neighbours(unit_rows(4), x, k=1)),
    "retrieval.nearest_neighbours_of_rows": ("x", lambda x: nearest_neighbours_of_rows(x, [0], 1)),
    "neighbourhoods.reciprocal_neighbourhoods": (
        "embeddings", lambda x: reciprocal_neighbourhoods(x, k=3, batch=2)),
    "neighbourhoods.reciprocal_neighbourhoods_query_gallery": (
        "gallery", lambda x: reciprocal_neighbourhoods_query_gallery(unit_rows(4), x, k=3)),
    "metrics.query_gallery_recall_at_k": (
        "query_embeddings",
        lambda x: query_gallery_recall_at_k(x, np.zeros(10), unit_rows(4), np.zeros(4), ks=(1,))),
    "clustering.kmeans": ("x", lambda x: kmeans(x, 2)),
    "inference.refine": ("embeddings", lambda x: refine(_mpn(), x, torch.zeros(10, 2).long())),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_refuses_a_nan_row_with_the_validators_message(entry):
    x = unit_rows(10)
    x[3, 5] = float("nan")
    name, call = ENTRY_POINTS[entry]
    with pytest.raises(ValueError) as refused:
        call(x)
    with pytest.raises(ValueError) as validator:
        as_embeddings(x, name)
    # Word for word the validator's message, naming the entry point's own argument.
    assert str(refused.value) == str(validator.value)
    assert str(refused.value).startswith(f"{name} has 1 of 10 rows with NaN or inf (rows [3])")


def test_evaluate_nearest_neighbours_and_neighbourhoods_agree_on_a_nan_row():
    # The three main consumers of a test set's embeddings, side by side: one message, up to the
    # argument's name (nearest_neighbours calls its first argument `queries`).
    x = unit_rows(10)
    x[3, 5] = float("nan")
    messages = []
    for call in (lambda: evaluate(x, np.arange(10) % 2, ks=(1,)),
                 lambda: nearest_neighbours(x, k=1, exclude_self=True),
                 lambda: reciprocal_neighbourhoods(x, k=3, batch=2)):
        with pytest.raises(ValueError) as refused:
            call()
        messages.append(str(refused.value).replace("queries has", "embeddings has", 1))
    assert messages[0] == messages[1] == messages[2]
    assert messages[0].startswith("embeddings has 1 of 10 rows with NaN or inf (rows [3])")
