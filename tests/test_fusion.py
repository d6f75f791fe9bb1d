"""Fusion (:mod:`retrieval.fusion`) and the hybrid source on a toy library, by hand.

The RRF sum is recomputed from each source's own top-k; the live path (one reader's
``candidates``) ranks as eval's batch path (``score_batch`` + :func:`top_k_matrix`); and
:func:`top_k_matrix` agrees with eval's :func:`eval.metrics.rank_scores` on ties, ``-inf``
and ``nan``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eval.metrics import rank_scores
from eval.models import build_model
from retrieval.fusion import top_k_matrix
from retrieval.library import Library
from retrieval.sources import HybridSource, top_k
from retrieval.types import Book, Rating, UserContext


def _toy_library() -> Library:
    books = [
        Book(f"b{i}", f"Book {i}", (f"A{i % 2}",), tags=("x",) if i % 2 else ("y",))
        for i in range(6)
    ]
    vecs = np.eye(6, dtype=np.float32)
    seqs = {
        "u1": ["b0", "b1", "b2"],
        "u2": ["b0", "b1"],
        "u3": ["b1", "b2"],
        "u4": ["b3", "b4", "b5", "b0"],
    }
    rows = [(u, b, 5.0, float(t)) for u, bs in seqs.items() for t, b in enumerate(bs)]
    return Library(books, vecs, pd.DataFrame(rows, columns=["user_id", "book_id", "rating", "ts"]))


def _toy_hybrid(method: str) -> tuple[Library, HybridSource, list[UserContext]]:
    lib = _toy_library()
    srcs = {
        "cf": build_model("ease", lib, {"l2": 1.0}),
        "content": build_model("content", lib, {}),
        "popularity": build_model("popularity", lib, {}),
    }
    weights = {"cf": 1.0, "content": 0.5, "popularity": 0.2}
    ctxs = [UserContext(u, lib.history(u)) for u in ("u1", "u2", "u3", "u4")]
    ctxs.append(UserContext("new", [Rating("new", "b4", 4.0, 0.0)]))
    # depth = catalog size: retrieval.sources.top_k and top_k_matrix break exact ties the same
    # way (lower index), but a shallow RRF depth would make the tie at the cut-off matter.
    return lib, HybridSource(lib, srcs, weights, rrf_k=5.0, depth=6, method=method), ctxs


def test_rrf_fusion_is_the_hand_computed_sum():
    lib, hybrid, ctxs = _toy_hybrid("rrf")
    for c in ctxs:
        want = np.zeros(lib.n_items)
        found = np.zeros(lib.n_items, dtype=bool)
        for n, src in hybrid.sources.items():
            for rank, i in enumerate(top_k(src.score(c), 6, hybrid.exclude_idx(c)), start=1):
                want[i] += hybrid.weights[n] / (5.0 + rank)
                found[i] = True
        want[~found] = -np.inf
        np.testing.assert_allclose(hybrid.score(c), want)


@pytest.mark.parametrize("method", ["score", "rrf"])
def test_live_candidates_follow_the_batch_scores_eval_ranks(method):
    """What `readnext recommend` returns (candidates, one reader) is what eval ranks
    (score_batch)."""
    lib, hybrid, ctxs = _toy_hybrid(method)
    S = hybrid.score_batch(ctxs)
    excl = hybrid.exclude_mask(ctxs)
    idx, valid = top_k_matrix(S, excl, 3)
    for i, c in enumerate(ctxs):
        got = [x.book_id for x in hybrid.candidates(c, 3)]
        assert got == [lib.books[j].book_id for j in idx[i][valid[i]]]
        assert not {r.book_id for r in c.history} & set(got)


def test_top_k_matrix_matches_rank_scores():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n, m, k = int(rng.integers(1, 5)), int(rng.integers(1, 25)), int(rng.integers(1, 12))
        S = rng.integers(0, 4, (n, m)).astype(float)  # many ties
        S[rng.random((n, m)) < 0.2] = -np.inf
        S[rng.random((n, m)) < 0.1] = np.nan
        excl = rng.random((n, m)) < 0.2
        idx, valid = top_k_matrix(S, excl, k)
        for i in range(n):
            assert idx[i][valid[i]].tolist() == list(rank_scores(S[i], None, k, excl[i]))


# --------------------------------------------------------------------------- per-slice weights


def test_cold_readers_are_fused_with_the_cold_weights_and_warm_readers_with_the_warm_ones():
    """``FusionConfig.cold_weights``: a reader with fewer than ``cold_below`` history books is
    fused as a hybrid of the cold weights alone would fuse them, everyone else as the warm one;
    a batch of mixed readers ranks as each reader alone (the live path = eval's batches)."""
    from retrieval.config import FusionConfig

    lib, _, ctxs = _toy_hybrid("score")
    srcs = {
        "cf": build_model("ease", lib, {"l2": 1.0}),
        "content": build_model("content", lib, {}),
        "popularity": build_model("popularity", lib, {}),
    }
    warm_w = {"cf": 1.0, "content": 0.5, "popularity": 0.0}
    cold_w = {"cf": 1.0, "content": 0.0, "popularity": 2.0}
    cfg = FusionConfig(weights=warm_w, cold_weights={"content": 0.0, "popularity": 2.0})
    cfg.cold_below = 3  # u2, u3 (2 books) and "new" (1) are cold; u1 (3), u4 (4) warm
    cfg.validate()
    sliced = HybridSource(lib, srcs, warm_w, config=cfg)
    warm = HybridSource(lib, srcs, warm_w)
    cold = HybridSource(lib, srcs, cold_w)
    # popularity has no warm weight but a cold one: kept, and asked only for cold readers
    assert set(sliced.sources) == {"cf", "content", "popularity"}
    assert set(sliced.source_scores([ctxs[0]])) == {"cf", "content"}
    assert set(sliced.source_scores([ctxs[1]])) == {"cf", "popularity"}
    assert [sliced.is_cold(c) for c in ctxs] == [False, True, True, False, True]
    batch = sliced.score_batch(ctxs)
    for row, c in zip(batch, ctxs):
        want = (cold if len(c.history) < 3 else warm).score(c)
        np.testing.assert_array_equal(row, want)
        np.testing.assert_array_equal(sliced.score(c), want)
        # "found by" names only the sources weighted for the reader's slice
        items = list(range(lib.n_items))
        found = {n for f in sliced.found_by(c, items) for n in f}
        assert found <= {n for n, w in sliced.weights_for(c).items() if w > 0}
    assert not np.array_equal(batch[1], warm.score(ctxs[1]))  # the slice really changes it
    # explicit weights (eval's ablations): for everyone, or per slice with cold_weights
    np.testing.assert_array_equal(
        sliced.fuse(sliced.source_scores(ctxs), ctxs, weights=warm_w), warm.score_batch(ctxs)
    )
    per = {n: s.score_batch(ctxs) for n, s in srcs.items()}
    np.testing.assert_array_equal(
        sliced.fuse(per, ctxs, weights=warm_w, cold_weights=cold_w), batch
    )


def test_cold_weights_are_validated_with_one_line_errors():
    from retrieval.config import FusionConfig

    for bad, msg in (
        ({"cold_weights": {"nope": 1.0}}, "cold_weights names unknown source"),
        ({"cold_weights": {"cf": -1.0}}, "cold_weights must be numbers >= 0"),
        ({"cold_weights": {"cf": "x"}}, "cold_weights must be numbers >= 0"),
        (
            {"weights": {"cf": 1.0}, "cold_weights": {"cf": 0.0}},
            "leaving at least one weight > 0",
        ),
        ({"cold_weights": {"cf": 1.0}, "cold_below": 0}, "cold_below must be an int >= 1"),
    ):
        with pytest.raises(ValueError, match=msg):
            FusionConfig(**bad).validate()
    cfg = FusionConfig(weights={"cf": 1.0, "readers": 0.0}, cold_weights={"readers": 0.5})
    cfg.validate()
    assert cfg.slice_weights(True) == {"cf": 1.0, "readers": 0.5}
    assert cfg.slice_weights(False) == {"cf": 1.0, "readers": 0.0}
    assert cfg.is_cold(4) and not cfg.is_cold(5) and not FusionConfig().is_cold(0)


def test_cold_weights_tuned_on_cold_readers_are_what_the_live_hybrid_then_scores():
    """:func:`eval.tuning.tune_cold_weights` on demo readers cut to 3 books (onboarding-like):
    the ascent starts from the warm weights and never ends below them, and the weights it returns,
    put in ``[fusion] cold_weights``, make the product's hybrid (rank path, series order) score
    exactly the validation ndcg@10 it reports; without them, the warm weights' ndcg@10."""
    from eval.tuning import TuningSet, ndcg_from_topk, tune_cold_weights
    from retrieval.config import FusionConfig
    from retrieval.data import load_demo
    from retrieval.ranking import rank

    ds = load_demo()
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(ds.books), 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    lib = Library(ds.books, vecs, ds.ratings, ds.has_timestamps, None, ds.name, True)
    users = [u for u in lib.user_ids if len(lib.history(u)) >= 8][:200]
    ctxs = [UserContext(u, lib.history(u)[:3]) for u in users]
    rel = [{r.book_id for r in lib.history(u)[3:] if r.rating >= 4} for u in users]
    keep = [i for i, r in enumerate(rel) if r]
    ts = TuningSet.build(lib, [ctxs[i] for i in keep], [rel[i] for i in keep])
    srcs = {
        "cf": build_model("ease", lib, {"l2": 10.0}),
        "content": build_model("content", lib, {}),
        "popularity": build_model("popularity", lib, {}),
        "readers": build_model("readers", lib, {"neighbours": 50}),
    }
    warm = {"cf": 1.0, "content": 0.5, "popularity": 0.2, "readers": 0.0}
    cold, row = tune_cold_weights(ts, srcs, "score", 60.0, warm, rounds=1, cold_below=4)
    assert row["readers"] == len(ts) >= 100 and row["stage"] == "cold_fusion"
    assert row["ndcg@10"] >= row["ndcg@10_warm_weights"] > 0
    assert set(row["alone"]) == set(srcs) and all(0 <= v <= 1 for v in row["alone"].values())
    assert all(cold[n] != warm.get(n, 0.0) for n in cold)  # only what differs is written

    def live_ndcg(fusion: FusionConfig) -> float:
        hybrid = HybridSource(lib, srcs, fusion.weights, config=fusion)
        ranked = rank(hybrid, ts.ctxs, 10)
        idx = np.array([np.pad(r.items, (0, 10 - len(r.items))) for r in ranked])
        valid = np.array([np.arange(10) < len(r.items) for r in ranked])
        return float(np.nanmean(ndcg_from_topk(idx, valid, ts.relevant)))

    sliced = FusionConfig(weights=warm, cold_weights=cold, cold_below=4)
    assert live_ndcg(sliced) == pytest.approx(row["ndcg@10"], abs=5e-7)  # the row keeps 6 digits
    assert live_ndcg(FusionConfig(weights=warm)) == pytest.approx(
        row["ndcg@10_warm_weights"], abs=5e-7
    )
