"""Readers like you (user-based CF on taste vectors) and the classic user-kNN peer, on real
indexes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from assistant import Recommender
from retrieval.config import ProfileConfig, ReadersConfig
from retrieval.data import load_demo
from retrieval.evidence import verify
from retrieval.library import Library
from retrieval.readers import ReadersSource, UserKNNSource
from retrieval.types import Evidence, UserContext

from .conftest import run_cli


@pytest.fixture(scope="module")
def rec(demo_home):
    r = Recommender.open(demo_home)
    yield r
    r.close()


def _readers(rec, n=20):
    users = sorted(u["user_id"] for u in rec.users() if u["n_ratings"] >= 10)
    rng = np.random.default_rng(1)
    return [str(u) for u in rng.choice(users, size=n, replace=False)]


def test_stored_reader_gets_books_their_neighbours_rated_with_verified_evidence(rec):
    u = _readers(rec, 1)[0]
    recs = rec.recommend(u, k=10, source="readers")
    assert len(recs) == 10
    read = {r.book_id for r in rec.history(u)}
    assert not read & {r.book_id for r in recs}
    hist = rec.history(u)
    kinds = [e.kind for r in recs for e in r.evidence]
    assert "readers_like_you" in kinds
    for r in recs:
        for e in r.evidence:
            if e.kind == "readers_like_you":
                assert (
                    e.count >= 3
                    and 1.0 <= e.value <= 5.0
                    and e.neighbours == rec.settings.readers.neighbours
                )
                assert u not in e.reader_ids  # the reader is never their own neighbour
                assert verify(rec.lib, r.book_id, e, hist)
                assert "reader_ids" not in e.to_dict()  # other readers' ids never leave the system
    assert sum("readers whose taste is closest to yours" in r.explanation for r in recs) >= 5


def test_tampered_readers_evidence_fails_verify(rec):
    u = _readers(rec, 1)[0]
    hist = rec.history(u)
    r = next(
        r
        for r in rec.recommend(u, k=10, source="readers")
        if any(e.kind == "readers_like_you" for e in r.evidence)
    )
    e = next(e for e in r.evidence if e.kind == "readers_like_you")
    assert verify(rec.lib, r.book_id, e, hist)
    fields = {k: getattr(e, k) for k in ("count", "value", "share", "neighbours", "reader_ids")}
    assert not verify(
        rec.lib, r.book_id, Evidence("readers_like_you", **{**fields, "value": e.value + 0.5}), hist
    )
    far = [x for x in rec.lib.user_ids if x not in e.reader_ids and x != u]
    # readers who did not rate the book, or who are far from this reader, make the claim false
    assert not verify(
        rec.lib,
        r.book_id,
        Evidence("readers_like_you", **{**fields, "reader_ids": tuple(far[: e.count])}),
        hist,
    )


def test_live_chroma_path_ranks_as_the_exact_batch_path(rec):
    """Chroma's HNSW is approximate: the same neighbours (ties aside) and the same top 10 for
    nearly every reader; the rare miss is a reader with no close neighbours at all."""
    rec.store  # opens Chroma: the live source now asks the users collection
    live = rec.sources["readers"]
    assert live.store is not None
    exact = ReadersSource(rec.lib, rec.settings.readers, rec.settings.profile)
    users = _readers(rec, 60)
    ctxs = [rec.context(u) for u in users]
    same_top, recall, same_set = 0, [], 0
    for c in ctxs:
        live._last = None
        r1, s1 = live.neighbours([c])
        r2, s2 = exact.neighbours([c])
        recall.append(len(set(r1[0].tolist()) & set(r2[0].tolist())) / r2.shape[1])
        a, b = live.score(c), exact.score(c)
        if set(r1[0].tolist()) == set(r2[0].tolist()):
            # the same neighbours: the same order, cosines and scores, bit for bit (live = eval)
            same_set += 1
            assert r1.tolist() == r2.tolist() and np.array_equal(s1, s2)
            assert np.array_equal(a, b)
        excl = live.exclude_idx(c)
        a[excl] = b[excl] = -np.inf
        same_top += list(np.argsort(-a, kind="stable")[:10]) == list(
            np.argsort(-b, kind="stable")[:10]
        )
    assert np.mean(recall) >= 0.995 and same_set >= 0.95 * len(ctxs)
    assert same_top >= 0.95 * len(ctxs)


def test_feedback_moves_the_vector_the_next_neighbour_query_uses(rec):
    src = rec.sources["readers"]
    books = [b.book_id for b in rec.lib.books]
    uid = "readers-test-onboarded"  # an onboarded/imported reader: stored only in feedback + Chroma
    rec.create_reader(uid, [(books[0], 5.0), (books[7], 4.0), (books[19], 5.0)], origin="test")
    before, _ = src.neighbours([rec.context(uid)])
    rec.add_feedback(uid, books[300], 5)
    stored = rec.profile(uid).vector
    rebuilt = src.taste_vector(rec.context(uid))
    assert np.allclose(stored, rebuilt, atol=1e-4)
    # the neighbours the source uses are the ones Chroma returns for the stored (fresh) vector
    rows, _ = src.neighbours([rec.context(uid)])
    from retrieval.readers import SLACK

    k = src.cfg.neighbours
    hits = [
        x
        for x, _ in rec.store.query("users", stored, k + 1 + SLACK)
        if x != uid and x in rec.lib.user_index
    ][: k + SLACK]
    got = [rec.lib.user_ids[r] for r in rows[0] if r >= 0]
    # Chroma's nearest to the stored vector, the best k of them by their exact cosine (a near-tie
    # at the k-th may swap one for the next)
    assert len(got) == k and set(got) <= set(hits) and len(set(got) & set(hits[:k])) >= k - 2
    assert rows[0].tolist() != before[0].tolist()  # a new loved book changes who is "like you"


def test_new_reader_from_a_few_loved_books(rec):
    liked = [b.book_id for b in rec.lib.books[:40:10]]  # four books, like an onboarding reader
    recs = rec.recommend(history=[(b, 5.0) for b in liked], k=5, source="readers")
    assert len(recs) == 5 and not set(liked) & {r.book_id for r in recs}
    assert any(e.kind == "readers_like_you" for r in recs for e in r.evidence)


def test_cli_recommend_source_readers_for_stored_and_new_readers(demo_home, rec):
    u = _readers(rec, 1)[0]
    p = run_cli(
        "recommend",
        "--user",
        u,
        "--source",
        "readers",
        "-k",
        "5",
        "--json",
        "--llm",
        "none",
        home=demo_home,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["items"]) == 5 and out["source"] == "readers"
    books = [b.book_id for b in rec.lib.books[:3]]
    p = run_cli(
        "recommend",
        "--history",
        ",".join(f"{b}:5" for b in books),
        "--source",
        "readers",
        "-k",
        "5",
        "--json",
        "--llm",
        "none",
        home=demo_home,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["items"]) == 5 and not set(books) & {i["book_id"] for i in out["items"]}
    p = run_cli("recommend", "--history", "no-such-book:5", "--source", "readers", home=demo_home)
    assert p.returncode != 0 and "no-such-book" in p.stderr and "Traceback" not in p.stderr


@pytest.fixture(scope="module")
def lib():
    ds = load_demo()
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(ds.books), 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return Library(ds.books, vecs, ds.ratings, ds.has_timestamps, None, ds.name, True)


@pytest.mark.parametrize(
    "make",
    [
        lambda lib: UserKNNSource(lib, 50, 10.0, 0.2),
        lambda lib: ReadersSource(lib, ReadersConfig(neighbours=30), ProfileConfig()),
    ],
)
def test_user_neighbour_sources_batch_equals_single_and_leave_the_reader_out(lib, make):
    src = make(lib)
    users = lib.user_ids[:15]
    ctxs = [UserContext(u, lib.history(u)) for u in users]
    B = src.score_batch(ctxs)
    fresh = make(lib)
    for i, c in enumerate(ctxs):
        np.testing.assert_allclose(fresh.score(c), B[i], rtol=1e-6, atol=1e-9)
    rows, sims = src.neighbours(ctxs)
    for i, u in enumerate(users):
        assert lib.user_index[u] not in set(rows[i].tolist())
        assert np.all(np.diff(sims[i][rows[i] >= 0]) <= 1e-12)  # best first
    assert np.isfinite(B).any(axis=1).all()
    assert not np.isfinite(src.score(UserContext("nobody", []))).any()  # no history: no opinion


def test_chat_readers_like_me_and_onboarding_use_the_readers_source(rec):
    from assistant.chat_engine import ChatEngine

    eng = ChatEngine(rec, k=4, llm_picks=0)
    st, msg = eng.new_reader(
        "readers-test-chat", loved="; ".join(b.title for b in rec.lib.books[100:103])
    )
    assert "readers like me" in msg
    replies = list(eng.respond(st, "What are readers like me reading?"))
    cards = replies[-1].cards
    assert len(cards) == 4
    assert all(c.sources == ["readers"] for c in cards)
    assert any(e.kind == "readers_like_you" for c in cards for e in c.evidence)
    assert any("readers whose taste is closest to yours" in c.explanation for c in cards)
    # a brand-new guest with no books is asked for some first, not shown strangers' picks
    fresh = list(eng.respond(None, "what are people like me reading"))[-1]
    assert not fresh.cards and "books you loved" in fresh.text


@pytest.fixture(scope="module")
def cold_rec(demo_home):
    """The demo index with per-slice weights: readers like you weighted for readers with fewer
    than 5 books (onboarding), not for the rest (``FusionConfig.cold_weights``)."""
    from retrieval.config import Settings

    s = Settings.load(home=demo_home, env={})
    s.home = demo_home
    s.fusion.cold_weights = {"readers": 2.0}
    s.fusion.weights.pop("readers", None)
    s.validate()
    r = Recommender.open(demo_home, settings=s, llm="none")
    yield r
    r.close()


def test_onboarding_uses_readers_like_you_through_the_cold_slice_weights(cold_rec):
    """ "I'm new" with three loved books: the hybrid fuses the readers source (Chroma `users`
    neighbours of the new taste vector, real readers), its evidence verifies and its reason shows
    on a card; a stored reader with many books is fused without it; the live Chroma path ranks
    as the exact batch path eval uses."""
    from assistant.chat_engine import ChatEngine

    rec = cold_rec
    hybrid = rec.sources["hybrid"]
    assert "readers" in hybrid.sources and hybrid.sources["readers"].store is not None
    eng = ChatEngine(rec, k=8, llm_picks=0)
    loved = [rec.lib.books[i] for i in (100, 101, 102)]
    replies = list(eng.onboard("readers-cold-onboard", loved="; ".join(b.title for b in loved)))
    cards = replies[-1].cards
    hist = rec.history("readers-cold-onboard")
    assert len(hist) == 3 and hybrid.is_cold(rec.context("readers-cold-onboard"))
    assert len(cards) == 8 and any("readers" in c.sources for c in cards)
    ours = [(c, e) for c in cards for e in c.evidence if e.kind == "readers_like_you"]
    assert ours and all(verify(rec.lib, c.book_id, e, hist) for c, e in ours)
    assert all(set(e.reader_ids) <= set(rec.lib.user_ids) for _, e in ours)  # real readers
    assert any("readers whose taste is closest to yours" in c.explanation for c, _ in ours)
    # a warm reader: the warm weights, where the readers source has none
    u = _readers(rec, 1)[0]
    assert not hybrid.is_cold(rec.context(u))
    assert all("readers" not in r.sources for r in rec.recommend(u, k=10))
    # live (Chroma HNSW) = batch (exact numpy neighbours) for the new reader, given the same
    # neighbours (other tests of this module add readers to Chroma whose stored vectors the exact
    # index rebuilds only to ~1e-7)
    ctx = rec.context("readers-cold-onboard")
    src = hybrid.sources["readers"]
    src._last = None
    live = [r.book_id for r in rec.recommend("readers-cold-onboard", k=20)]
    r1, s1 = src.neighbours([ctx])
    store = src.store
    try:
        src.store, src._last = None, None
        r2, s2 = src.neighbours([ctx])
        assert len(set(r1[0].tolist()) & set(r2[0].tolist())) >= 0.95 * r2.shape[1]
        if r1.tolist() == r2.tolist() and np.array_equal(s1, s2):
            assert [r.book_id for r in rec.recommend("readers-cold-onboard", k=20)] == live
    finally:
        src.store, src._last = store, None
    # the same hybrid without the cold weights ranks differently: the slice is really used
    per = hybrid.source_scores([ctx])
    assert not np.array_equal(
        hybrid.fuse(per, [ctx]), hybrid.fuse(per, [ctx], weights=hybrid.weights)
    )
