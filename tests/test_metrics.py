"""Tests for ibdml.metrics: Recall@K, MAP@R, NMI, evaluate() (docs/method.md §7.2, §7.4) and the
In-Shop query → gallery metrics (§7.3)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from ibdml import gallery_metrics, metrics
from ibdml.metrics import evaluate, map_at_r, normalized_mutual_information, recall_at_k
from ibdml.retrieval import nearest_neighbours


def unit_rows(n: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


# Five points on a line, at 0, 1, 4, 6 and 13, with labels a b a b a. Ordering every other point
# by distance (self excluded) gives each point's neighbours:
#   p0 (a): p1 1, p2 4, p3 6, p4 13  → b a b a   first hit at rank 2
#   p1 (b): p0 1, p2 3, p3 5, p4 12  → a a b a   first hit at rank 3
#   p2 (a): p3 2, p1 3, p0 4, p4 9   → b b a a   first hit at rank 3
#   p3 (b): p2 2, p1 5, p0 6, p4 7   → a b a a   first hit at rank 2
#   p4 (a): p3 7, p2 9, p1 12, p0 13 → b a b a   first hit at rank 2
LINE_LABELS = ["a", "b", "a", "b", "a"]
LINE_NEIGHBOUR_LABELS = [
    ["b", "a", "b", "a"],
    ["a", "a", "b", "a"],
    ["b", "b", "a", "a"],
    ["a", "b", "a", "a"],
    ["b", "a", "b", "a"],
]


def test_recall_at_k_on_points_on_a_line():
    # R@1: no first neighbour shares the label: 0/5. R@2: p0, p3, p4: 3/5. R@3, R@4: all, 1.
    got = recall_at_k(LINE_NEIGHBOUR_LABELS, LINE_LABELS, ks=[1, 2, 3, 4])
    assert got == {"1": 0.0, "2": 0.6, "3": 1.0, "4": 1.0}


def test_recall_at_k_from_real_neighbours_of_points_on_a_line():
    # The same five points, searched for real: embed position t as a unit vector at angle t/20
    # (monotone in t on this range, so angular order = order on the line).
    angles = torch.tensor([0.0, 1.0, 4.0, 6.0, 13.0]) / 20
    x = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = np.array(LINE_LABELS)
    _, idx = nearest_neighbours(x, k=4, exclude_self=True)
    assert labels[idx.numpy()].tolist() == LINE_NEIGHBOUR_LABELS
    got = evaluate(x, labels, ks=[1, 2, 3], nmi=False)
    assert got["recall_at_k"] == {"1": 0.0, "2": 0.6, "3": 1.0}


def test_recall_at_k_with_k_larger_than_the_class():
    # Each class here has 2 members (one relevant item each), yet K = 3 and 4 are allowed: a hit
    # needs one same-label item anywhere in the first K. First hits: q0 rank 3, q1 rank 4,
    # q2 rank 2 → R@1 = 0, R@3 = 2/3, R@4 = 1.
    neighbours = [[1, 2, 7, 3], [1, 1, 1, 7], [7, 0, 0, 0]]
    got = recall_at_k(neighbours, [7, 7, 0], ks=[1, 3, 4])
    assert got == {"1": 0.0, "3": pytest.approx(2 / 3), "4": 1.0}


def test_recall_at_k_accepts_torch_and_rejects_too_few_columns():
    got = recall_at_k(torch.tensor([[0, 1], [1, 1]]), torch.tensor([0, 0]), ks=(1, 2))
    assert got == {"1": 0.5, "2": 0.5} and all(type(v) is float for v in got.values())
    with pytest.raises(ValueError, match="Recall@3 asked for, but .* only 2 neighbours"):
        recall_at_k([[0, 1]], [0], ks=[3])
    with pytest.raises(ValueError, match="ks must be a non-empty list"):
        recall_at_k([[0, 1]], [0], ks=[])


def test_map_at_r_by_hand():
    # q0, label 0, R = 4: neighbour labels 0 1 0 0 | 0 (the 5th is past R and ignored).
    #     rel = 1 0 1 1; P(1) = 1/1, P(3) = 2/3, P(4) = 3/4 → AP = (1 + 2/3 + 3/4) / 4 = 29/48.
    # q1, label 1, R = 2: neighbour labels 1 1 → AP = (1/1 + 2/2) / 2 = 1.
    # q2, label 2, R = 0 (its label is lone): left out of the mean.
    # MAP@R = (29/48 + 1) / 2 = 77/96.
    neighbours = [[0, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 0, 0, 0]]
    got = map_at_r(neighbours, [0, 1, 2], [4, 2, 0])
    assert got == pytest.approx(77 / 96, abs=1e-12)
    # The lone query changes nothing: the same value without it.
    assert map_at_r(neighbours[:2], [0, 1], [4, 2]) == pytest.approx(77 / 96, abs=1e-12)


def test_map_at_r_on_the_line_example():
    # Class a has 3 members (R = 2), class b has 2 (R = 1).
    # p0: a b → rel 0 1 → AP = (2/2)·... only P(2)·rel(2) = 1/2, divided by R = 2 → 1/4.
    # p1: a → 0. p2: b b → 0. p3: a → 0. p4: b a → 1/4.  MAP@R = (1/4 + 1/4) / 5 = 0.1.
    got = map_at_r(LINE_NEIGHBOUR_LABELS, LINE_LABELS, [2, 1, 2, 1, 2])
    assert got == pytest.approx(0.1, abs=1e-12)


def naive_map_at_r(neighbour_labels, query_labels, relevant_counts):
    """Musgrave et al.'s definition, one query at a time."""
    scores = []
    for row, label, r in zip(neighbour_labels, query_labels, relevant_counts):
        if r == 0:
            continue
        hits, total = 0, 0.0
        for j in range(r):
            if row[j] == label:
                hits += 1
                total += hits / (j + 1)
        scores.append(total / r)
    return sum(scores) / len(scores) if scores else math.nan


def test_map_at_r_matches_a_naive_loop_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, size=400)
    counts = np.bincount(labels)[labels] - 1
    neighbours = rng.integers(0, 30, size=(400, int(counts.max()) + 3))
    got = map_at_r(neighbours, labels, counts)
    assert got == pytest.approx(naive_map_at_r(neighbours, labels, counts), abs=1e-12)
    assert got > 0  # the random data did produce hits, so the comparison means something


def test_map_at_r_lone_labels_only_gives_nan_and_short_lists_raise():
    assert math.isnan(map_at_r([[1], [0]], [0, 1], [0, 0]))
    with pytest.raises(ValueError, match="at least max R = 3 neighbours"):
        map_at_r([[0, 0]], [0], [3])
    with pytest.raises(ValueError, match="relevant_counts"):
        map_at_r([[0, 0]], [0], [-1])


def test_nmi_matches_sklearn():
    rng = np.random.default_rng(1)
    clusters, labels = rng.integers(0, 8, 300), rng.integers(0, 6, 300)
    want = normalized_mutual_info_score(labels, clusters, average_method="arithmetic")
    assert 0 < want < 0.2  # unrelated labellings: low, but not a degenerate 0 or 1
    assert normalized_mutual_information(clusters, labels) == pytest.approx(want, abs=1e-12)
    got = normalized_mutual_information(torch.from_numpy(clusters), torch.from_numpy(labels))
    assert got == pytest.approx(want, abs=1e-12) and type(got) is float
    assert normalized_mutual_information(labels, clusters) == pytest.approx(want, abs=1e-12)
    assert normalized_mutual_information([3, 3, 1, 1], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert normalized_mutual_information([3, 3, 1, 1], ["b", "b", "a", "a"]) == pytest.approx(1.0)


def test_nmi_refuses_a_count_mismatch():
    with pytest.raises(ValueError, match="3 labels but 4 cluster ids: give one label per row"):
        normalized_mutual_information([0, 0, 1, 1], [0, 1, 1])


# --- evaluate ------------------------------------------------------------------------------------


def test_evaluate_keys_ranges_and_json():
    x, labels = unit_rows(300), np.random.default_rng(2).integers(0, 12, 300)
    got = evaluate(x, labels, ks=(1, 2, 4, 8))
    assert set(got) == {"recall_at_k", "map_at_r", "nmi", "standard_error"}
    se = got["standard_error"]
    assert list(se["recall_at_k"]) == ["1", "2", "4", "8"] and se["map_at_r"] > 0
    assert se["nmi"] > 0 and "binomial" in se["method"] and "bootstrap" in se["method"]
    recalls = list(got["recall_at_k"].values())
    assert list(got["recall_at_k"]) == ["1", "2", "4", "8"]
    assert all(0 <= r <= 1 for r in recalls) and recalls == sorted(recalls)
    assert 0 <= got["map_at_r"] <= 1 and 0 <= got["nmi"] <= 1
    assert json.loads(json.dumps(got)) == got
    assert evaluate(x, labels, ks=(1,), nmi=False)["nmi"] is None


def test_evaluate_matches_brute_force_and_the_naive_map():
    x = unit_rows(250, seed=3)
    labels = np.random.default_rng(3).integers(0, 20, 250)
    sims = x @ x.T
    sims.fill_diagonal_(float("-inf"))
    neighbour_labels = labels[sims.argsort(dim=1, descending=True)[:, :249].numpy()]
    counts = np.bincount(labels)[labels] - 1
    got = evaluate(x, labels, ks=(1, 5, 30), nmi=False)
    assert got["recall_at_k"] == {
        str(k): pytest.approx(np.mean((neighbour_labels[:, :k] == labels[:, None]).any(1)))
        for k in (1, 5, 30)
    }
    assert got["map_at_r"] == pytest.approx(naive_map_at_r(neighbour_labels, labels, counts))


def test_evaluate_on_perfect_clusters_gives_ones():
    centres = unit_rows(6, dim=32, seed=4)
    noise = 0.01 * unit_rows(60, dim=32, seed=5)
    x = torch.nn.functional.normalize(centres.repeat_interleave(10, 0) + noise, dim=1)
    labels = np.repeat(np.arange(6), 10)
    got = evaluate(x, labels, ks=(1, 9))
    assert got == {"recall_at_k": {"1": 1.0, "9": 1.0}, "map_at_r": 1.0, "nmi": 1.0,
                   "standard_error": {"recall_at_k": {"1": 0.0, "9": 0.0}, "map_at_r": 0.0,
                                      "nmi": pytest.approx(0.0, abs=1e-12),
                                      "method": got["standard_error"]["method"]}}


def test_evaluate_excludes_the_query_by_index_with_duplicates_across_classes():
    # Every row has an exact duplicate that carries a different label; its own label's other
    # member is an unrelated row. Excluding by index, every nearest neighbour is that wrong-label
    # duplicate: R@1 = 0 and MAP@R = 0 exactly. Dropping column 0 would drop the query or its
    # duplicate at random, and about half the queries would find themselves: a false hit.
    b, c = unit_rows(10, dim=32, seed=6), unit_rows(10, dim=32, seed=7)
    x = torch.cat([b, b, c, c])  # rows i and 10 + i are identical, and 20 + i and 30 + i
    ids = np.arange(10)
    labels = np.concatenate([ids, ids + 10, ids, ids + 10])  # label i: rows i and 20 + i
    got = evaluate(x, labels, ks=(1,), nmi=False)
    assert got["recall_at_k"] == {"1": 0.0} and got["map_at_r"] == 0.0


def test_evaluate_lone_labels_count_as_misses_and_leave_map_at_r():
    x = unit_rows(5, dim=8, seed=8)
    x[1] = torch.nn.functional.normalize(x[0] + 0.01 * x[1], dim=0)  # the two 0s are nearest
    labels = np.array([0, 0, 1, 2, 3])  # labels 1, 2 and 3 occur once
    got = evaluate(x, labels, ks=(1, 4), nmi=False)
    # Recall: the lone queries are misses at every K, so 2/5 even at K = 4 (all others seen).
    assert got["recall_at_k"] == {"1": pytest.approx(2 / 5), "4": pytest.approx(2 / 5)}
    # MAP@R: only the two 0s count (R = 1, AP = 1 each); averaging over all five would give 0.4.
    assert got["map_at_r"] == pytest.approx(1.0)


def test_evaluate_rejects_unnormalised_or_non_finite_embeddings_with_a_fix():
    x = unit_rows(20) * 2
    with pytest.raises(ValueError, match=r"embeddings must have L2-normalised rows .* 20 of 20 "
                                         r"rows are off, e.g. row 0 with norm 2: pass "
                                         r"torch.nn.functional.normalize\(embeddings, dim=1\)"):
        evaluate(x, np.zeros(20), ks=(1,))
    x = unit_rows(20)
    x[4] = float("nan")
    with pytest.raises(ValueError, match=r"embeddings has 1 of 20 rows with NaN or inf "
                                         r"\(rows \[4\]\)"):
        evaluate(x, np.zeros(20), ks=(1,))


def test_evaluate_argument_errors():
    x = unit_rows(10)
    with pytest.raises(ValueError, match="10 embeddings but 9 labels: give one label per row"):
        evaluate(x, np.zeros(9), ks=(1,))
    with pytest.raises(ValueError, match="Recall@10 asked for, but each query has only 9"):
        evaluate(x, np.zeros(10), ks=(1, 10))
    with pytest.raises(ValueError, match="ks must be a non-empty list of integers ≥ 1"):
        evaluate(x, np.zeros(10), ks=(0, 1))
    with pytest.raises(ValueError, match="embeddings must be a 2-D"):
        evaluate(x[0], np.zeros(1), ks=(1,))


# --- query/gallery (In-Shop) ---------------------------------------------------------------------

qg_recall = gallery_metrics.query_gallery_recall_at_k
qg_map = gallery_metrics.query_gallery_map_at_r


def at_angles(degrees) -> torch.Tensor:
    radians = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return torch.stack([radians.cos(), radians.sin()], dim=1).float()


# Gallery on the unit circle: item A at 0° and 20° (two images), B at 10° and 90°, C at 30°.
# Queries: q0 (A, 12°) sees B at 10° first, then A at 20°: first hit at rank 2.
#          q1 (B, 85°) sees B at 90° first. q3 (C, 28°) sees C at 30° first.
#          q2 (D, 31°): item D has no gallery image, a miss at every K.
GALLERY = at_angles([0, 10, 20, 30, 90])
GALLERY_ITEMS = ["A", "B", "A", "C", "B"]
QUERIES = at_angles([12, 85, 31, 28])
QUERY_ITEMS = ["A", "B", "D", "C"]


def test_query_gallery_recall_by_hand():
    got = qg_recall(QUERIES, QUERY_ITEMS, GALLERY, GALLERY_ITEMS, ks=[1, 2, 5])
    # R@1: q1, q3 → 2/4. R@2 adds q0 → 3/4. q2 stays a miss even at K = Ng = 5 (denominator 4).
    assert got == {"1": 0.5, "2": 0.75, "5": 0.75}
    assert all(type(v) is float for v in got.values())


def test_query_gallery_recall_is_cosine_and_chunk_free():
    scaled = QUERIES * torch.tensor([[3.0], [0.5], [7.0], [2.0]])  # norms do not matter
    want = qg_recall(QUERIES, QUERY_ITEMS, GALLERY, GALLERY_ITEMS, ks=[1, 2])
    assert qg_recall(scaled.numpy(), np.array(QUERY_ITEMS), GALLERY * 4, GALLERY_ITEMS,
                     ks=[1, 2], chunk_size=1) == want


def test_query_gallery_recall_ties_favour_the_positive():
    # The same-item image and a different item's image are equally similar: a hit at K = 1,
    # whichever order a sort would put them in (the authors' "fewer than K better negatives").
    q, g = [[1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    assert qg_recall(q, [7], g, [3, 7, 7], ks=[1]) == {"1": 1.0}
    assert qg_recall(q, [7], g, [7, 3, 3], ks=[1]) == {"1": 1.0}


def naive_query_gallery_ranks(queries, gallery, gallery_labels):
    """Per query, by a loop: the gallery labels in descending cosine order."""
    q = torch.nn.functional.normalize(queries, dim=1)
    g = torch.nn.functional.normalize(gallery, dim=1)
    order = (q @ g.T).argsort(dim=1, descending=True).numpy()
    return [np.asarray(gallery_labels)[row] for row in order]


def test_query_gallery_recall_and_map_match_a_naive_loop():
    rng = np.random.default_rng(4)
    q, g = unit_rows(120, dim=8, seed=10), unit_rows(90, dim=8, seed=11)
    q_labels, g_labels = rng.integers(0, 40, 120), rng.integers(0, 35, 90)  # 35-39: no gallery
    ranked = naive_query_gallery_ranks(q, g, g_labels)
    first_hit = [np.flatnonzero(row == y)[0] if (row == y).any() else np.inf
                 for row, y in zip(ranked, q_labels)]
    got = qg_recall(q, q_labels, g, g_labels, ks=(1, 10, 20, 30, 40, 50), chunk_size=7)
    assert got == {str(k): pytest.approx(np.mean(np.array(first_hit) < k))
                   for k in (1, 10, 20, 30, 40, 50)}
    counts = np.array([(g_labels == y).sum() for y in q_labels])
    assert (counts == 0).any() and (counts > 1).any()  # both edge cases occur
    want = naive_map_at_r([row[:max(c, 1)] for row, c in zip(ranked, counts)], q_labels, counts)
    assert qg_map(q, q_labels, g, g_labels) == pytest.approx(want, abs=1e-12)


def test_query_gallery_map_at_r_by_hand():
    # q0 (A, R = 2) ranks B, A: AP = P(2)/2 = 1/4. q1 (B, R = 2) ranks B, C: AP = 1/2.
    # q3 (C, R = 1): AP = 1. q2 (D, R = 0) is left out. MAP@R = (1/4 + 1/2 + 1) / 3 = 7/12.
    got = qg_map(QUERIES, QUERY_ITEMS, GALLERY, GALLERY_ITEMS)
    assert got == pytest.approx(7 / 12, abs=1e-12)
    assert math.isnan(qg_map(QUERIES[:1], ["Z"], GALLERY, GALLERY_ITEMS))


def test_query_gallery_argument_errors():
    with pytest.raises(ValueError, match="Recall@6 asked for, but each query has only 5"):
        qg_recall(QUERIES, QUERY_ITEMS, GALLERY, GALLERY_ITEMS, ks=[1, 6])
    with pytest.raises(ValueError, match="chunk_size must be ≥ 1, got 0"):
        qg_recall(QUERIES, QUERY_ITEMS, GALLERY, GALLERY_ITEMS, ks=[1], chunk_size=0)
    zero = QUERIES.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match=r"query_embeddings has 1 zero rows \(rows \[2\]\): "
                                         "cosine"):
        qg_recall(zero, QUERY_ITEMS, GALLERY, GALLERY_ITEMS, ks=[1])
    with pytest.raises(ValueError, match=r"gallery_embeddings has 1 zero rows \(rows \[2\]\)"):
        qg_map(QUERIES, QUERY_ITEMS, torch.cat([GALLERY[:2], zero[2:3], GALLERY[3:]]),
               GALLERY_ITEMS)
    nan = QUERIES.clone()
    nan[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"query_embeddings has 1 of 4 rows with NaN or inf "
                                         r"\(rows \[1\]\)"):
        qg_map(nan, QUERY_ITEMS, GALLERY, GALLERY_ITEMS)
    with pytest.raises(ValueError, match="query_embeddings has 3-d rows but gallery_embeddings has 2-d rows"):
        qg_map(torch.ones(4, 3), QUERY_ITEMS, GALLERY, GALLERY_ITEMS)
    with pytest.raises(ValueError, match="4 query embeddings but 3 query labels"):
        qg_recall(QUERIES, QUERY_ITEMS[:3], GALLERY, GALLERY_ITEMS, ks=[1])
    with pytest.raises(ValueError, match="5 gallery embeddings but 4 gallery labels"):
        qg_map(QUERIES, QUERY_ITEMS, GALLERY, GALLERY_ITEMS[:4])


def test_evaluate_query_gallery_combines_the_two_metrics():
    got = gallery_metrics.evaluate_query_gallery(QUERIES, QUERY_ITEMS, GALLERY, GALLERY_ITEMS,
                                         ks=[1, 2, 5], nmi=False)
    se = got.pop("standard_error")
    assert got == {"recall_at_k": {"1": 0.5, "2": 0.75, "5": 0.75},
                   "map_at_r": pytest.approx(7 / 12, abs=1e-12), "nmi": None}
    # binomial: R@1 = 1/2 of 4 queries → sqrt(1/4 · 1/4) / 2; R@2 = 3/4 → sqrt(3/16 / 4)
    assert se["recall_at_k"] == {"1": 0.25, "2": pytest.approx(0.75 ** 0.5 / 4),
                                 "5": pytest.approx(0.75 ** 0.5 / 4)}
    assert se["nmi"] is None and "NMI" not in se["method"]
    assert json.loads(json.dumps(got)) == got


def test_evaluate_query_gallery_nmi_clusters_queries_and_gallery_together():
    # Six items, each a tight cluster with 3 query and 4 gallery images: every query finds its
    # item first (R@1 = 1, MAP@R = 1) and k-means over all 42 images finds the six items.
    centres = unit_rows(6, dim=32, seed=20)
    noise = 0.01 * unit_rows(42, dim=32, seed=21)
    x = torch.nn.functional.normalize(centres.repeat_interleave(7, 0) + noise, dim=1)
    items = np.repeat(np.arange(6), 7)
    is_query = np.tile(np.arange(7) < 3, 6)
    got = gallery_metrics.evaluate_query_gallery(x[is_query], items[is_query], x[~is_query],
                                         items[~is_query], ks=[1])
    assert "query and gallery images" in got.pop("standard_error")["method"]
    assert got == {"recall_at_k": {"1": 1.0}, "map_at_r": 1.0, "nmi": pytest.approx(1.0)}
    # Items shuffled across the clusters give a low NMI (≈ 0.3), so the 1.0 above means something.
    wrong = np.random.default_rng(0).permutation(items)
    shuffled = gallery_metrics.evaluate_query_gallery(x[is_query], wrong[is_query], x[~is_query],
                                              wrong[~is_query], ks=[1])
    assert shuffled["nmi"] < 0.5


def test_evaluate_query_gallery_nmi_needs_unit_rows():
    with pytest.raises(ValueError, match="query_embeddings must have L2-normalised rows"):
        gallery_metrics.evaluate_query_gallery(QUERIES * 2, QUERY_ITEMS, GALLERY, GALLERY_ITEMS,
                                               ks=[1])


# --- per-query outcomes --------------------------------------------------------------------------


def test_per_query_outcomes_are_what_the_metrics_average():
    hits = metrics.recall_hits(LINE_NEIGHBOUR_LABELS, LINE_LABELS, ks=[1, 2, 3])
    assert hits.shape == (5, 3) and hits.dtype == bool
    assert recall_at_k(LINE_NEIGHBOUR_LABELS, LINE_LABELS, [1, 2, 3]) == {
        str(k): float(hits[:, j].mean()) for j, k in enumerate([1, 2, 3])}
    ap = metrics.average_precision_at_r([["A", "B", "A"], ["A", "A", "A"], ["A", "B", "A"]],
                                        ["A", "B", "C"], [3, 1, 0])
    np.testing.assert_allclose(ap, [5 / 9, 0.0, np.nan])  # NaN: the lone query


def test_query_outcomes_feed_evaluate_and_keep_clusters():
    x, labels = unit_rows(120, seed=12), np.random.default_rng(12).integers(0, 6, 120)
    o = metrics.query_outcomes(x, labels, ks=(1, 4), kmeans="fast")
    assert o.ks == (1, 4) and o.hits.shape == (120, 2) and o.average_precision.shape == (120,)
    assert o.labels.dtype == np.int64 and o.clusters.shape == (120,)
    assert metrics.summarise(o) == evaluate(x, labels, ks=(1, 4), kmeans="fast")


def test_query_gallery_outcomes_cover_queries_and_label_both_sides():
    o = gallery_metrics.query_gallery_outcomes(QUERIES, QUERY_ITEMS, GALLERY, GALLERY_ITEMS,
                                               ks=[1, 2], nmi=True, kmeans="fast")
    assert o.n_queries == 4 and o.hits.tolist() == [[False, True], [True, True],
                                                    [False, False], [True, True]]
    assert np.isnan(o.average_precision[2])  # item D has no gallery image
    assert len(o.labels) == len(o.clusters) == 9  # 4 queries, then 5 gallery images
    assert o.labels[:4].tolist() == [0, 1, 3, 2] and o.labels[4:].tolist() == [0, 1, 0, 2, 1]
