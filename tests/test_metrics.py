"""Tests for eval.metrics, with the expected values derived by hand in comments (eval.stats:
tests/test_stats.py)."""

from __future__ import annotations

import math
from math import log2

import numpy as np
import pytest

from eval.metrics import (
    arp,
    catalog_coverage,
    evaluate_rankings,
    hitrate_at_k,
    intra_list_diversity,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    novelty,
    precision_at_k,
    rank_scores,
    recall_at_k,
)

ACCURACY = {
    "recall": recall_at_k,
    "precision": precision_at_k,
    "ndcg": ndcg_at_k,
    "hitrate": hitrate_at_k,
    "mrr": mrr_at_k,
    "map": map_at_k,
}


def _all(ranking, relevant, k):
    return {name: fn(ranking, relevant, k) for name, fn in ACCURACY.items()}


# --------------------------------------------------------------------------- per-user metrics


def test_basic_case_with_relevant_item_not_in_catalog() -> None:
    # Ranking a b c d e; relevant {b, d, x}, x is in no ranking/catalog but still counts in |rel|=3.
    # hits @5 = [0, 1, 0, 1, 0]
    m = _all(["a", "b", "c", "d", "e"], {"b", "d", "x"}, 5)
    assert m["recall"] == pytest.approx(2 / 3)  # 2 hits / 3 relevant
    assert m["precision"] == pytest.approx(2 / 5)  # 2 hits / K=5
    # DCG = 1/log2(3) + 1/log2(5) = 0.6309298 + 0.4306766 = 1.0616064
    # IDCG over min(3, 5) = 3 ranks = 1 + 1/log2(3) + 1/log2(4) = 1 + 0.6309298 + 0.5 = 2.1309298
    # NDCG = 1.0616064 / 2.1309298 = 0.4981893
    assert m["ndcg"] == pytest.approx((1 / log2(3) + 1 / log2(5)) / (1 + 1 / log2(3) + 0.5))
    assert m["ndcg"] == pytest.approx(0.4981893, abs=1e-6)
    assert m["hitrate"] == 1.0
    assert m["mrr"] == pytest.approx(0.5)  # first hit at rank 2
    # AP: precision at hit ranks: rank 2 -> 1/2, rank 4 -> 2/4; (0.5 + 0.5) / min(3, 5) = 1/3
    assert m["map"] == pytest.approx(1 / 3)


def test_relevant_larger_than_k() -> None:
    # top-2 of [a, b, c] = [a, b]; relevant {a, c, x, y, z} (|rel| = 5 > K = 2); hits [1, 0]
    m = _all(["a", "b", "c"], {"a", "c", "x", "y", "z"}, 2)
    assert m["recall"] == pytest.approx(1 / 5)
    assert m["precision"] == pytest.approx(1 / 2)
    # DCG = 1; IDCG over min(5, 2) = 2 ranks = 1 + 1/log2(3) = 1.63093 -> 0.61315
    assert m["ndcg"] == pytest.approx(1 / (1 + 1 / log2(3)))
    assert m["mrr"] == 1.0
    # AP = (1/1) / min(5, 2) = 0.5 (normalised by K, not by |rel|=5)
    assert m["map"] == pytest.approx(0.5)


def test_relevant_smaller_than_k_ideal_dcg() -> None:
    # ranking [a, b, c, d], relevant {c}, K = 4: hits [0, 0, 1, 0]
    # DCG = 1/log2(4) = 0.5; IDCG over min(1, 4) = 1 rank = 1 -> ndcg 0.5
    assert ndcg_at_k(["a", "b", "c", "d"], {"c"}, 4) == pytest.approx(0.5)
    # Perfect ranking of |rel| = 2 < K = 4: DCG = IDCG = 1 + 1/log2(3) -> 1.0
    assert ndcg_at_k(["a", "b", "c", "d"], {"a", "b"}, 4) == pytest.approx(1.0)


def test_map_normalisation() -> None:
    # [a, b, c, d], rel {a, c}, K = 4: hits [1, 0, 1, 0]; AP = (1/1 + 2/3) / min(2, 4) = 5/6
    assert map_at_k(["a", "b", "c", "d"], {"a", "c"}, 4) == pytest.approx(5 / 6)
    # K = 1: hits [1]; AP = (1/1) / min(2, 1) = 1.0 (a perfect top-1 is not penalised for |rel| = 2)
    assert map_at_k(["a", "b", "c", "d"], {"a", "c"}, 1) == pytest.approx(1.0)
    # rel {b, x, y}, K = 3: hits [0, 1, 0]; AP = (1/2) / min(3, 3) = 1/6
    assert map_at_k(["a", "b", "c"], {"b", "x", "y"}, 3) == pytest.approx(1 / 6)


def test_k_larger_than_ranking_is_not_padded() -> None:
    # ranking [a, b] with K = 10, relevant {b}: hits [0, 1]
    m = _all(["a", "b"], {"b"}, 10)
    assert m["recall"] == 1.0
    assert m["precision"] == pytest.approx(1 / 10)  # divides by K, not by the list length 2
    assert m["ndcg"] == pytest.approx(1 / log2(3))  # DCG 1/log2(3), IDCG over min(1, 10) = 1
    assert m["mrr"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx(0.5)  # (1/2) / min(1, 10)
    assert m["hitrate"] == 1.0
    # An empty ranking scores 0, not nan.
    assert _all([], {"b"}, 10) == dict.fromkeys(ACCURACY, 0.0)


def test_no_hits_gives_zero() -> None:
    assert _all(["a", "b"], {"z"}, 2) == dict.fromkeys(ACCURACY, 0.0)


def test_empty_relevant_gives_nan() -> None:
    for name, value in _all(["a", "b"], set(), 2).items():
        assert math.isnan(value), name


def test_duplicates_rejected() -> None:
    for fn in ACCURACY.values():
        with pytest.raises(ValueError, match="repeats item 'a'"):
            fn(["a", "b", "a"], {"a"}, 3)
    # A duplicate beyond K does not affect the top K, so it is not an error there.
    assert recall_at_k(["a", "b", "a"], {"a"}, 2) == 1.0
    with pytest.raises(ValueError, match="ordered sequence"):
        recall_at_k({"a", "b"}, {"a"}, 2)
    with pytest.raises(ValueError, match="positive int"):
        recall_at_k(["a"], {"a"}, 0)


def test_numpy_rankings_accepted() -> None:
    assert recall_at_k(np.array(["a", "b"]), {"b"}, 2) == 1.0


# --------------------------------------------------------------------------- rank_scores


def test_rank_scores_tie_break_and_unrankable() -> None:
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    scores = [0.5, 0.9, 0.5, np.nan, 0.9, -np.inf, 0.1]
    # Rankable: a .5, b .9, c .5, e .9, g .1 (d nan, f -inf dropped).
    # Order: .9 -> b (idx 1) before e (idx 4); .5 -> a (0) before c (2); then g.
    assert rank_scores(scores, ids, 3) == ["b", "e", "a"]
    assert rank_scores(scores, ids, 10) == ["b", "e", "a", "c", "g"]  # only 5 rankable, no padding
    assert rank_scores(scores, None, 3) == [1, 4, 0]
    assert rank_scores(scores, ids, 3, exclude=[1]) == ["e", "a", "c"]
    mask = np.zeros(7, dtype=bool)
    mask[[1, 4]] = True
    assert rank_scores(scores, ids, 3, exclude=mask) == ["a", "c", "g"]
    assert rank_scores([1.0, np.inf, 2.0], ["x", "y", "z"], 2) == ["y", "z"]
    assert rank_scores(np.zeros(100), None, 5) == [0, 1, 2, 3, 4]  # all tied: lowest indices


def test_rank_scores_matches_sorted_reference() -> None:
    # Reference: full sort by (-score, index); many ties because scores are small ints.
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 5, size=200).astype(float)
        s[rng.random(200) < 0.1] = np.nan
        ex = rng.choice(200, size=15, replace=False)
        expect = sorted(
            (i for i in range(200) if not np.isnan(s[i]) and i not in set(ex)),
            key=lambda i: (-s[i], i),
        )
        for k in (1, 7, 50, 300):
            assert rank_scores(s, None, k, exclude=ex) == expect[:k]


def test_rank_scores_bad_input() -> None:
    with pytest.raises(ValueError, match="align"):
        rank_scores([1.0, 2.0], ["a"], 1)
    with pytest.raises(ValueError, match="outside"):
        rank_scores([1.0, 2.0], None, 1, exclude=[2])


# --------------------------------------------------------------------------- beyond accuracy


def test_catalog_coverage() -> None:
    # top-2: {a, b} and {b, d} -> {a, b, d} = 3 of 8 items
    assert catalog_coverage([["a", "b", "c"], ["b", "d"]], n_items=8, k=2) == pytest.approx(3 / 8)
    # top-3 adds c -> 4 / 8
    assert catalog_coverage(
        {"u": ["a", "b", "c"], "v": ["b", "d"]}, n_items=8, k=3
    ) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="n_items"):
        catalog_coverage([["a", "b", "c"]], n_items=2, k=3)


def test_intra_list_diversity() -> None:
    vecs = {"a": [1.0, 0.0], "b": [0.0, 2.0], "c": [3.0, 0.0], "d": [1.0, 1.0], "z": [0.0, 0.0]}
    # [a, b, c]: cos(a,b)=0 -> 1, cos(a,c)=1 -> 0, cos(b,c)=0 -> 1; mean = 2/3
    # [c, d]: cos = 1/sqrt(2) -> 1 - 0.70711 = 0.29289
    # [a, q, z]: q has no vector, z is a zero vector -> one usable item -> nan
    out = intra_list_diversity([["a", "b", "c"], ["c", "d"], ["a", "q", "z"]], vecs, k=3)
    assert out[0] == pytest.approx(2 / 3)
    assert out[1] == pytest.approx(1 - 1 / math.sqrt(2))
    assert math.isnan(out[2])
    # Same with the (matrix, index) form, and K=2 cuts [a, b, c] to [a, b]: distance 1.
    mat = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    out2 = intra_list_diversity({"u": ["a", "b", "c"]}, (mat, {"a": 0, "b": 1, "c": 2}), k=2)
    assert out2[0] == pytest.approx(1.0)


def test_novelty_and_arp() -> None:
    pop = {"a": 8, "b": 2, "c": 1}  # d unknown -> pop 0
    # novelty [a, b]: mean(-log2(8/8), -log2(2/8)) = mean(0, 2) = 1
    # novelty [c, d]: mean(-log2(1/8), -log2(1/8)) = 3 (d smoothed to pop 1)
    nov = novelty([["a", "b"], ["c", "d"], []], pop, n_users=8, k=2)
    assert nov[:2] == pytest.approx([1.0, 3.0])
    assert math.isnan(nov[2])  # empty ranking
    # arp [a, b] = (8 + 2) / 2 = 5; [c, d] = (1 + 0) / 2 = 0.5
    assert arp([["a", "b"], ["c", "d"]], pop, k=2) == pytest.approx([5.0, 0.5])
    with pytest.raises(ValueError, match="exceeds n_users"):
        novelty([["a"]], pop, n_users=4, k=1)


# --------------------------------------------------------------------------- evaluate_rankings


def _hand_run():
    rankings = {"u1": ["a", "b", "c"], "u2": ["c", "d"], "u4": ["z"]}
    relevant = {"u1": {"b"}, "u2": {"x"}, "u3": set(), "u5": {"a"}}
    vecs = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 0.0], "d": [1.0, 1.0]}
    return evaluate_rankings(
        rankings,
        relevant,
        ks=(2,),
        item_pop={"a": 8, "b": 2, "c": 1},
        n_users=8,
        n_items=10,
        item_vectors=vecs,
    )


def test_evaluate_rankings_hand_case() -> None:
    res = _hand_run()
    # u3 (empty relevant) skipped; u5 has no ranking -> scored as empty; u4 not in relevant ->
    # ignored.
    assert res.users == ["u1", "u2", "u5"]
    assert res.n_skipped == 1 and res.n_missing == 1
    assert set(res.keys()) == {
        f"{m}@2"
        for m in [
            "recall",
            "precision",
            "ndcg",
            "hitrate",
            "mrr",
            "map",
            "coverage",
            "diversity",
            "novelty",
            "arp",
        ]
    }
    # u1 top-2 [a, b], rel {b}: hits [0, 1]
    assert res["recall@2"] == pytest.approx([1.0, 0.0, 0.0])
    assert res["precision@2"] == pytest.approx([0.5, 0.0, 0.0])
    assert res["ndcg@2"] == pytest.approx([1 / log2(3), 0.0, 0.0])  # IDCG over min(1, 2) = 1
    assert res["hitrate@2"] == pytest.approx([1.0, 0.0, 0.0])
    assert res["mrr@2"] == pytest.approx([0.5, 0.0, 0.0])
    assert res["map@2"] == pytest.approx([0.5, 0.0, 0.0])  # (1/2) / min(1, 2)
    # Top-2 items of evaluated users: {a, b} | {c, d} = 4 of 10 (u4's z is not counted).
    assert res["coverage@2"] == pytest.approx(0.4)
    # diversity: [a, b] orthogonal -> 1; [c, d] -> 1 - 1/sqrt(2); u5 empty -> nan
    np.testing.assert_allclose(res["diversity@2"], [1.0, 1 - 1 / math.sqrt(2), np.nan])
    # novelty: [a, b] -> 1, [c, d] -> 3 (see test_novelty_and_arp); arp: 5, 0.5
    np.testing.assert_allclose(res["novelty@2"], [1.0, 3.0, np.nan])
    np.testing.assert_allclose(res["arp@2"], [5.0, 0.5, np.nan])


def test_evaluate_matches_per_user_functions() -> None:
    rng = np.random.default_rng(3)
    items = [f"b{i}" for i in range(60)]
    rankings, relevant = {}, {}
    for u in range(300):
        n = int(rng.integers(0, 25))
        rankings[f"u{u}"] = [items[i] for i in rng.choice(60, size=n, replace=False)]
        relevant[f"u{u}"] = {
            items[i] for i in rng.choice(60, size=int(rng.integers(0, 8)), replace=False)
        }
    res = evaluate_rankings(rankings, relevant, ks=(5, 20))
    evaluated = [u for u in relevant if relevant[u]]
    assert res.users == evaluated and res.n_skipped == len(relevant) - len(evaluated)
    for k in (5, 20):
        for name, fn in ACCURACY.items():
            expect = [fn(rankings[u], relevant[u], k) for u in evaluated]
            np.testing.assert_allclose(res[f"{name}@{k}"], expect, err_msg=f"{name}@{k}")


def test_evaluate_rejects_bad_runs() -> None:
    with pytest.raises(ValueError, match="repeats item 'a'"):
        evaluate_rankings({"u": ["a", "b", "a"]}, {"u": {"a"}}, ks=(3,))
    with pytest.raises(ValueError, match="convert both to str"):
        evaluate_rankings({"u": [1, 2]}, {"u": {"1"}}, ks=(2,))
    with pytest.raises(ValueError, match="n_users"):
        evaluate_rankings({"u": ["a"]}, {"u": {"a"}}, ks=(1,), item_pop={"a": 1})
    with pytest.raises(ValueError, match="ks is empty"):
        evaluate_rankings({"u": ["a"]}, {"u": {"a"}}, ks=())
