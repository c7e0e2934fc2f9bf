"""Attention records: KL from uniform, entropy, null mass, same-class mass, summaries, verdicts."""

import json
import math

import numpy as np
import pytest
import torch

from ibdml.attention import (attention_at, edge_case_verdicts, entropy, epoch_numbers,
                             kl_from_uniform, null_mass, same_class_mass, self_mass, summarise,
                             uniform_same_class)
from ibdml.mpn import attention_weights

N = 5


def test_kl_is_zero_for_uniform_rows_and_log_n_for_one_hot_rows():
    uniform, one_hot = torch.full((3, N), 1 / N), torch.eye(N)[:3]
    torch.testing.assert_close(kl_from_uniform(uniform), torch.zeros(3))
    torch.testing.assert_close(kl_from_uniform(one_hot), torch.full((3,), math.log(N)))
    # extra_bin: a one-hot row has no null mass → log(N+1); 1/N rows leave the null bin empty
    torch.testing.assert_close(kl_from_uniform(one_hot, "extra_bin"),
                               torch.full((3,), math.log(N + 1)))
    torch.testing.assert_close(kl_from_uniform(uniform, "extra_bin"),
                               torch.full((3,), math.log((N + 1) / N)))


def test_null_key_rows_scaled_down_keep_their_renormalised_kl():
    # All-zero scores through the null softmax: α = 1/(N+1), uniform under both treatments.
    plain_average = attention_weights(torch.zeros(2, N, N), null_key=True)
    for treatment in ("renormalise", "extra_bin"):
        torch.testing.assert_close(kl_from_uniform(plain_average, treatment), torch.zeros(2, N))
    half_one_hot = 0.5 * torch.eye(N)  # half the mass on the null key
    torch.testing.assert_close(kl_from_uniform(half_one_hot), torch.full((N,), math.log(N)))
    torch.testing.assert_close(kl_from_uniform(half_one_hot, "extra_bin"),
                               torch.full((N,), math.log(N + 1) - math.log(2)))
    assert not kl_from_uniform(torch.eye(N)).isnan().any()  # 0·log 0 = 0


@pytest.mark.parametrize("treatment,k", [("renormalise", N), ("extra_bin", N + 1)])
def test_kl_equals_log_k_minus_entropy(treatment, k):
    torch.manual_seed(0)
    attn = attention_weights(torch.randn(3, 4, N, N) * 3, null_key=True)
    torch.testing.assert_close(kl_from_uniform(attn, treatment) + entropy(attn, treatment),
                               torch.full((3, 4, N), math.log(k)))
    assert (kl_from_uniform(attn, treatment) >= -1e-6).all()


def test_null_mass_of_the_authors_softmax_is_in_zero_one_and_zero_without_it():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 7, 7) * 3
    null = null_mass(attention_weights(scores, null_key=True))
    assert null.shape == (2, 3, 7) and ((null > 0) & (null < 1)).all()
    torch.testing.assert_close(null, 1 / (1 + scores.exp().sum(-1)))  # the zero logit's share
    assert null_mass(attention_weights(scores, null_key=False)).max() < 1e-6


def test_same_class_mass_on_a_hand_made_four_node_example():
    labels = torch.tensor([0, 0, 1, 1])
    attn = torch.tensor([[0.4, 0.2, 0.1, 0.1],  # sum 0.8 → [0.5, 0.25, 0.125, 0.125]
                         [0.25, 0.25, 0.25, 0.25],
                         [0.0, 0.0, 0.0, 0.5],  # all on the other class-1 node
                         [0.3, 0.3, 0.0, 0.0]])  # all on class 0
    torch.testing.assert_close(same_class_mass(attn, labels), torch.tensor([0.75, 0.5, 1.0, 0.0]))
    torch.testing.assert_close(same_class_mass(attn, labels, include_self=False),
                               torch.tensor([0.25, 0.25, 1.0, 0.0]))
    assert uniform_same_class(labels).tolist() == [0.5] * 4
    assert uniform_same_class(labels, include_self=False).tolist() == [0.25] * 4
    torch.testing.assert_close(self_mass(attn), torch.tensor([0.5, 0.25, 0.0, 0.0]))
    torch.testing.assert_close(null_mass(attn), torch.tensor([0.2, 0.0, 0.5, 0.4]))


def test_bad_input_says_what_to_pass():
    with pytest.raises(ValueError, match="not the scores"):
        kl_from_uniform(torch.tensor([[-1.0, 2.0]]))
    with pytest.raises(ValueError, match="sum to up to 1.500"):
        null_mass(torch.tensor([[0.9, 0.6]]))
    with pytest.raises(ValueError, match="renormalise"):
        entropy(torch.full((2, 2), 0.5), "renormalize")
    # fp16 rows that round slightly above 1 are fine, and their null mass is 0, not negative
    stored = torch.full((3, 7), 1 / 7).half()
    assert null_mass(stored).min() >= 0 and kl_from_uniform(stored, "extra_bin").isfinite().all()


def hand_made_record():
    """E=2, L=1, P=1, H=2, N=4, labels [0, 0, 1, 1]. Epoch 0: both heads plain averaging through
    the null key (1/5 each). Epoch 1: head 0 one-hot on itself, head 1 half-and-half over the two
    class members (itself and its partner), 10% null mass."""
    uniform = torch.full((4, 4), 0.2)
    pair = 0.45 * torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1.0]])
    epoch0 = torch.stack([uniform, uniform])[None, None]  # [1, 1, 2, 4, 4]
    epoch1 = torch.stack([torch.eye(4), pair])[None, None]
    return [epoch0, epoch1], torch.tensor([[0, 0, 1, 1]])


def test_summarise_structure_and_values_on_a_hand_made_record():
    record, labels = hand_made_record()
    s = summarise(record, labels)
    assert s["epochs"] == [0, 1]
    assert (s["layers"], s["probes"], s["heads"], s["nodes"]) == (1, 1, 2, 4)
    assert s["null_key_treatment"] == "renormalise" and s["include_self"] is True
    assert s["kl_max"] == pytest.approx(math.log(4)) and s["same_class_uniform"] == 0.5
    assert np.allclose(s["kl"], [[[0, 0]], [[math.log(4), math.log(2)]]], atol=1e-6)
    assert np.allclose(s["entropy"], [[[math.log(4)] * 2], [[0, math.log(2)]]], atol=1e-6)
    assert np.allclose(s["same_class"], [[[0.5, 0.5]], [[1, 1]]])
    assert np.allclose(s["null_mass"], [[[0.2, 0.2]], [[0, 0.1]]])
    assert np.allclose(s["self_mass"], [[[0.25, 0.25]], [[1, 0.5]]])
    # without the node itself: its partner's share; chance (n_same − 1) / N = 1/4
    assert np.allclose(s["same_class_excl_self"], [[[0.25, 0.25]], [[0, 0.5]]])
    assert s["same_class_excl_self_uniform"] == 0.25
    assert s["most_selective_head"] == {"layer": 0, "head": 1, "same_class_excl_self":
                                        pytest.approx(0.5), "excess": pytest.approx(0.25)}
    json.dumps(s)  # plain floats and lists only
    assert all(type(v) is float for v in np.ravel(s["kl"]).tolist())


def test_summarise_accepts_dicts_stacked_arrays_and_extra_bin():
    record, labels = hand_made_record()
    stacked = torch.stack(record).half().numpy()  # [E, L, P, H, N, N] as stored
    by_epoch = {0: record[0], 5: record[1]}
    assert epoch_numbers(by_epoch) == [0, 5] and epoch_numbers(stacked) == [0, 1]
    assert summarise(by_epoch, labels)["epochs"] == [0, 5]
    assert np.allclose(summarise(stacked, labels.numpy())["kl"], summarise(record, labels)["kl"],
                       atol=1e-3)
    extra = summarise(record, labels, null_key_treatment="extra_bin")
    assert extra["kl_max"] == pytest.approx(math.log(5)) and abs(extra["kl"][0][0][0]) < 1e-6
    with pytest.raises(KeyError, match="recorded epochs: \\[0, 5\\]"):
        attention_at(by_epoch, 1)
    with pytest.raises(ValueError, match="labels must be \\[probes, N\\]"):
        summarise(record, torch.tensor([0, 0, 1, 1]))


def verdict_record():
    """N=12 nodes, 3 classes × 4; one layer, three heads at the last epoch: uniform, collapsed onto
    a couple of nodes (the node and one other), class-focused (80% spread over its own class)."""
    labels = torch.arange(12) % 3
    same = (labels[:, None] == labels[None, :]).float()
    focused = 0.8 * same / 4 + 0.2 * (1 - same) / 8
    couple = 0.5 * torch.eye(12) + 0.5 * torch.eye(12).roll(1, dims=1)
    last = torch.stack([torch.full((12, 12), 1 / 12), couple, focused])[None, None]
    first = torch.full_like(last, 1 / 12)
    return [first, last], labels[None]


def test_verdicts_tell_uniform_collapsed_and_class_focused_heads_apart():
    record, labels = verdict_record()
    v = edge_case_verdicts(summarise(record, labels))
    assert v["epoch"] == 1 and [h["head"] for h in v["heads"]] == [0, 1, 2]
    assert [h["verdict"] for h in v["heads"]] == ["near uniform", "collapsed", "selective"]
    # the couple is half itself, half another class: its same-class mass with itself (0.5) is
    # above chance (1/3), but "above chance" reads the mass without itself (0 < 3/12)
    assert [h["above_chance"] for h in v["heads"]] == [False, False, True]
    assert v["heads"][1]["same_class"] == pytest.approx(0.5)
    assert v["heads"][1]["same_class_excl_self"] == 0 and v["heads"][1]["self_mass"] == 0.5
    assert v["heads"][2]["same_class_excl_self_uniform"] == pytest.approx(3 / 12)
    others = edge_case_verdicts(summarise(record, labels, include_self=False))
    assert [h["above_chance"] for h in others["heads"]] == [False, False, True]
    assert v["heads"][1]["effective_nodes"] == pytest.approx(2.0)
    assert v["heads"][2]["same_class"] == pytest.approx(0.8)
    assert v["heads"][2]["same_class_uniform"] == pytest.approx(1 / 3)
    assert v["heads"][2]["kl_change"] > 0 and v["heads"][0]["kl_change"] == pytest.approx(0)
    # thresholds are arguments: with a stricter "collapsed" the couple becomes selective
    strict = edge_case_verdicts(summarise(record, labels), collapsed_nodes=1.5)
    assert strict["heads"][1]["verdict"] == "selective"
    assert edge_case_verdicts(summarise(record, labels), epoch=0)["heads"][2]["verdict"] == \
        "near uniform"
    json.dumps(v)


def test_a_head_attending_to_itself_alone_is_not_above_chance_and_uniform_sits_at_chance():
    """What mpn_attention: self and uniform record (mpn.py): identity and 1/N rows."""
    labels = torch.tensor([[0, 0, 0, 1, 1, 2]])  # n_same − 1 = [2, 2, 2, 1, 1, 0] → chance 8/36
    eye, flat = torch.eye(6), torch.full((6, 6), 1 / 6)
    record = [torch.stack([flat, eye])[None, None]]  # [1, 1, 2, 6, 6]: head 0 uniform, 1 self
    s = summarise(record, labels)
    assert s["kl"][0][0] == pytest.approx([0, math.log(6)], abs=1e-6)
    assert s["same_class_excl_self"][0][0] == pytest.approx([8 / 36, 0])
    assert s["self_mass"][0][0] == pytest.approx([1 / 6, 1])
    assert s["same_class_excl_self_uniform"] == pytest.approx(8 / 36)
    assert s["same_class"][0][0][1] == 1  # with itself, the self head looks perfectly selective
    assert s["most_selective_head"]["head"] == 0
    assert s["most_selective_head"]["excess"] == pytest.approx(0, abs=1e-6)
    v = edge_case_verdicts(s)
    assert [h["above_chance"] for h in v["heads"]] == [False, False]
    assert [h["verdict"] for h in v["heads"]] == ["near uniform", "collapsed"]
