"""The speed-ups of the live path give exactly what the straightforward code gives.

Each fast path (issue #14 part B) is checked against a reference written the plain way, on the
real goodbooks sample (its ratings and series; the vectors play no part in these paths).
"""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import evidence as ev
from retrieval.data import load_dataset
from retrieval.library import LIKED, Library
from retrieval.ranking import disliked_series, series_mask
from retrieval.types import UserContext
from tests.conftest import shared


@pytest.fixture(scope="module")
def lib() -> Library:
    ds = load_dataset("goodbooks", directory=shared("goodbooks-sample"))
    vecs = np.random.default_rng(0).normal(size=(len(ds.books), 8)).astype(np.float32)
    return Library(ds.books, vecs, ds.ratings, ds.has_timestamps, ds.to_read, ds.name)


def _readers(lib: Library, n: int = 25) -> list[str]:
    counts = lib.R.getnnz(axis=1)
    rows = np.argsort(-counts, kind="stable")[:n]
    return [lib.user_ids[r] for r in rows]


def _co_readers_reference(lib: Library, item: int, liked, top: int):
    """co_readers as first written: np.isin per liked book."""
    raters, their = lib.raters(item)
    if not liked or len(raters) < ev.CO_READERS_FAVOURABLE_MIN:
        return []
    found = []
    for k, (h, _) in enumerate(liked):
        mask = np.isin(raters, lib.likers(h), assume_unique=True)
        n = int(mask.sum())
        if n < ev.CO_READERS_FAVOURABLE_MIN:
            continue
        r = their[mask]
        mean, share = round(float(r.mean()), 2), round(float((r >= LIKED).mean()), 2)
        if ev.favourable(n, mean, share):
            found.append((ev._wilson_lower(share, n), n, k, mean, share))
    found.sort(key=lambda x: (-x[0], -x[1], x[2]))
    return [(liked[k][0], n, mean, share) for _, n, k, mean, share in found[:top]]


def test_co_readers_fast_path_equals_reference(lib):
    items = np.argsort(-lib.pop_count, kind="stable")[:60]
    checked = 0
    for u in _readers(lib):
        liked = ev.liked_items(lib, lib.history(u))
        for item in items:
            got = ev.co_readers(lib, int(item), liked, top=ev.CO_READERS_PER_BOOK)
            want = _co_readers_reference(lib, int(item), liked, ev.CO_READERS_PER_BOOK)
            assert [(lib.index[e.book_ids[0]], e.count, e.value, e.share) for e in got] == want, (
                u,
                int(item),
            )
            checked += len(want)
    assert checked > 50  # the sample has real co-reader evidence to compare


def test_series_mask_fast_path_equals_blocked_for(lib):
    sidx = lib.series_index
    assert sidx.info, "the goodbooks sample has numbered series"
    ctxs = [UserContext(user_id=u, history=lib.history(u)) for u in _readers(lib, 60)]
    ctxs.append(UserContext(user_id=None, history=[]))  # a new reader: the default blocks
    mask = series_mask(lib, ctxs)
    touched = 0
    for row, c in zip(mask, ctxs):
        read = [r.book_id for r in c.history]
        want = np.zeros(lib.n_items, dtype=bool)
        want[[lib.index[b] for b in sidx.blocked_for(read) if b in lib.index]] = True
        for key in disliked_series(sidx, c.history):  # and no sequel of a series rated badly
            want[[lib.index[b] for b in sidx.members[key] if b in lib.index and b not in read]] = 1
        assert np.array_equal(row, want), c.user_id
        touched += any(b in sidx.keys for b in read)
    assert touched >= 10  # most of these readers read inside a series


def test_deferred_profile_writes_store_what_a_synchronous_write_stores(demo_home, tmp_path):
    import shutil

    from assistant import Recommender

    home = tmp_path / "home"
    shutil.copytree(demo_home, home, symlinks=True)
    rec = Recommender.open(home)
    rec.defer_profile_writes()
    user = rec.users()[0]["user_id"]
    rated = {r.book_id for r in rec.history(user)}
    picks = [r.book_id for r in rec.recommend(user_id=user, k=5)]
    book = next(b for b in picks if b not in rated)
    before = rec.profile(user)
    returned = rec.add_feedback(user, book, 5)
    # visible at once: the rated book leaves the next list, before Chroma has been written
    assert book not in [r.book_id for r in rec.recommend(user_id=user, k=5)]
    stored = rec.profile(user)  # waits for the deferred write
    assert stored.n == returned.n == before.n + 1
    np.testing.assert_allclose(stored.vector, returned.vector, atol=1e-6)
    rec.close()
    again = Recommender.open(home)  # durable: another process reads the same stored vector
    try:
        np.testing.assert_allclose(again.profile(user).vector, returned.vector, atol=1e-6)
    finally:
        again.close()


def _records(index_dir):
    from retrieval.store import VectorStore

    vs = VectorStore(index_dir / "chroma")
    try:
        out = {}
        for name in ("books", "users"):
            got = getattr(vs, name).get(include=["embeddings", "metadatas", "documents"])
            out[name] = {
                i: (np.asarray(e, np.float32).tobytes(), m, d)
                for i, e, m, d in zip(
                    got["ids"], got["embeddings"], got["metadatas"], got["documents"]
                )
            }
        return out
    finally:
        vs.close()


def test_warm_ingest_reuses_the_live_chroma_and_holds_what_a_fresh_build_holds(tmp_path, emb_cache):
    import json

    from retrieval.config import Settings
    from retrieval.data import load_demo
    from retrieval.feedback import FeedbackStore
    from retrieval.index import ingest

    short = {"max_epochs": 2, "patience": 1}

    def home(name):
        h = tmp_path / name
        h.mkdir()
        (h / "cache").symlink_to(emb_cache, target_is_directory=True)
        return h

    warm, fresh = home("warm"), home("fresh")
    ingest(load_demo(), Settings.load(home=warm, env={}, sasrec=short), progress=False, quiet=True)
    ds = load_demo()
    reader = str(ds.ratings["user_id"].iloc[0])
    # a server changed this reader's stored vector after the build: the re-ingest rewrites it
    FeedbackStore(warm / "feedback.sqlite").add(ds.name, reader, ds.books[0].book_id, "rating", 5.0)
    out = ingest(ds, Settings.load(home=warm, env={}, sasrec=short), progress=False, quiet=True)
    reuse = json.loads((out / "meta.json").read_text())["chroma_reuse"]
    assert reuse["books"] == {"reused": True, "upserted": 0}
    assert reuse["users"] == {"reused": True, "upserted": 1}  # the feedback rater only
    ref = ingest(
        load_demo(), Settings.load(home=fresh, env={}, sasrec=short), progress=False, quiet=True
    )
    assert json.loads((ref / "meta.json").read_text())["chroma_reuse"]["reused"] is False
    assert _records(out) == _records(ref)


def _sasrec_fast_equals_plain(lib, model, ctxs, tmp_path, k=20):
    """Kept reader states (precomputed and lazily computed) give the plain forward's scores
    and the same top ``k`` for every context; returns how many came from the precomputed rows."""
    from retrieval.sasrec_source import SASRecSource, load_reader_states, save_reader_states

    path = tmp_path / "states.npz"
    assert save_reader_states(model, lib, path)["readers"] > 0
    states = load_reader_states(model, path)
    plain = SASRecSource(lib, model, cache_states=False)
    fast = SASRecSource(lib, model, states)
    lazy = SASRecSource(lib, model)  # nothing precomputed: every state computed on first use
    A = plain.score_batch(ctxs)
    for B in (
        np.array([fast.score(c) for c in ctxs]),
        fast.score_batch(ctxs),
        lazy.score_batch(ctxs),
        np.array([lazy.score(c) for c in ctxs]),  # now from the LRU
    ):
        fin = np.isfinite(A)
        assert np.array_equal(fin, np.isfinite(B))
        np.testing.assert_allclose(B[fin], A[fin], rtol=0, atol=1e-9)
        for i, c in enumerate(ctxs):
            a, b = A[i].copy(), B[i].copy()
            a[plain.exclude_idx(c)] = b[plain.exclude_idx(c)] = -np.inf
            top_a = np.argsort(-a, kind="stable")[:k]
            assert np.array_equal(top_a, np.argsort(-b, kind="stable")[:k]), c.user_id
    return states.hits


def _sasrec_contexts(lib, users):
    """Each reader as ingested, and after a new rating and a re-rating (a changed history)."""
    ctxs = [UserContext(user_id=u, history=lib.history(u)) for u in users]
    rng = np.random.default_rng(0)
    for u in users[::4]:
        h = list(lib.history(u))
        new = lib.books[int(rng.integers(lib.n_items))].book_id
        ctxs.append(UserContext(user_id=u, history=[*h, type(h[0])(u, new, 5.0, 1e12)]))
        if len(h) > 2:  # the oldest book re-rated: it moves to the newest position
            ctxs.append(UserContext(user_id=u, history=[*h[1:], h[0]]))
    ctxs.append(UserContext(user_id=None, history=[]))  # nothing known: no opinion
    return ctxs


def test_sasrec_kept_states_equal_the_forward_pass_on_every_demo_reader(tmp_path):
    from retrieval.config import SASRecConfig
    from retrieval.data import load_demo
    from retrieval.sasrec import train_sasrec

    ds = load_demo()
    vecs = np.zeros((len(ds.books), 4), np.float32)
    lib = Library(ds.books, vecs, ds.ratings, ds.has_timestamps, None, ds.name, True)
    model = train_sasrec(lib, SASRecConfig(max_epochs=2, patience=1, threads=1), progress=False)
    users = list(lib.user_ids)
    hits = _sasrec_fast_equals_plain(lib, model, _sasrec_contexts(lib, users), tmp_path)
    # every ingested reader came from the precomputed rows (twice: score and score_batch)
    assert hits >= 2 * len(users)


def test_sasrec_kept_states_equal_the_forward_pass_on_goodbooks_sample_readers(tmp_path):
    from retrieval.config import SASRecConfig
    from retrieval.sasrec import train_sasrec

    ds = load_dataset("goodbooks", directory=shared("goodbooks-sample"))
    vecs = np.zeros((len(ds.books), 4), np.float32)
    lib = Library(ds.books, vecs, ds.ratings, ds.has_timestamps, ds.to_read, ds.name, True)
    model = train_sasrec(lib, SASRecConfig(max_epochs=1, patience=1, threads=1), progress=False)
    counts = lib.R.getnnz(axis=1)
    # the longest histories (truncated to max_len) and a seeded sample of the rest
    rows = np.argsort(-counts, kind="stable")
    pick = np.concatenate([rows[:50], np.random.default_rng(1).choice(rows[50:], 250, False)])
    users = [lib.user_ids[r] for r in pick]
    assert counts[pick].max() > model.cfg.max_len
    hits = _sasrec_fast_equals_plain(lib, model, _sasrec_contexts(lib, users), tmp_path)
    assert hits >= 2 * len(users)


def _evidence_dict_reference(e):
    """Evidence.to_dict as first written: dataclasses.asdict, then the empty fields dropped."""
    from dataclasses import asdict

    d = {k: v for k, v in asdict(e).items() if v not in (None, (), []) and k != "reader_ids"}
    for k in ("book_ids", "tags", "authors", "terms"):
        if k in d:
            d[k] = list(d[k])
    return d


def test_evidence_to_dict_fast_path_equals_asdict(lib):
    from retrieval.types import Evidence

    records = [
        Evidence("popular", count=0, value=0.0),  # zeros are kept, only empties dropped
        Evidence(
            "readers_like_you",
            book_ids=("a", "b"),
            tags=("x",),
            authors=("A",),
            series="S",
            text="t",
            count=3,
            value=4.5,
            share=0.8,
            neighbours=0,
            terms=("dragon",),
            reader_ids=("u1",),  # never serialised
        ),
    ]
    items = np.argsort(-lib.pop_count, kind="stable")[:40]
    for u in _readers(lib, 10):
        liked = ev.liked_items(lib, lib.history(u))
        for item in items:
            records += ev.co_readers(lib, int(item), liked, top=3)
    assert len(records) > 50
    for e in records:
        got, want = e.to_dict(), _evidence_dict_reference(e)
        assert got == want and list(got) == list(want), e


def test_constraint_masks_equal_the_per_book_checks(lib):
    """``allow_mask``/``boost_vector`` over the catalog == ``allows``/``boost`` book by book,
    bit for bit, for tags in any case, authors, years and every follow-up flag."""
    from retrieval.constraints import BookFacets, Constraints

    facets = BookFacets(lib.books)
    counts: dict[str, int] = {}
    for b in lib.books:
        for t in b.tags:
            counts[t] = counts.get(t, 0) + 1
    common = sorted(counts, key=lambda t: (-counts[t], t))[:6]
    years = sorted(b.year for b in lib.books if b.year is not None)
    mid = years[len(years) // 2]
    author = next(b.authors[0] for b in lib.books if b.authors)
    cases = [
        Constraints(),
        Constraints(include_tags=[common[0]]),
        Constraints(include_tags=[common[0].upper(), common[1], "no-such-tag"], tag_boost=2.0),
        Constraints(include_tags=[common[2], common[2]]),  # a repeated tag counts twice
        Constraints(exclude_tags=[common[3], "NO-SUCH"]),
        Constraints(authors=[author.split()[-1].upper()]),
        Constraints(year_min=mid - 10, year_max=mid + 10),
        Constraints(include_tags=[common[4]], shorter=True, lighter=True),
        Constraints(shorter=True, lighter=True, newer=True),
        Constraints(include_tags=["fantasy"], newer=True, ref_year=mid),
        Constraints(older=True, ref_year=mid, exclude_tags=[common[5]], tag_boost=1.2),
    ]
    for c in cases:
        allow = np.array([c.allows(b) for b in lib.books], dtype=bool)
        boost = np.array([c.boost(b) for b in lib.books], dtype=np.float64)
        assert np.array_equal(c.allow_mask(facets), allow), c
        assert np.array_equal(c.boost_vector(facets), boost), c
    assert not facets.mask("no-such-tag").any() and "no-such-tag" not in facets._masks


def test_constraint_masks_equal_the_per_book_checks_on_length_and_mood_tags():
    from retrieval.constraints import BookFacets, Constraints
    from retrieval.types import Book

    rng = np.random.default_rng(0)
    vocab = ["Short", "long", "funny", "Dark", "war", "fantasy", "cozy", "horror", "romance"]
    books = [
        Book(
            f"b{i}",
            f"T{i}",
            authors=(f"Author {i % 7}",),
            year=None if i % 9 == 0 else int(rng.integers(1900, 2040)),
            tags=tuple(rng.choice(vocab, size=int(rng.integers(0, 4)), replace=False)),
        )
        for i in range(400)
    ]
    facets = BookFacets(books)
    for shorter in (False, True):
        for lighter in (False, True):
            for newer, ref in ((False, None), (True, None), (True, 1990)):
                for inc in ([], ["fantasy"], ["romance", "FUNNY"]):
                    c = Constraints(
                        include_tags=inc,
                        exclude_tags=["horror"] if lighter else [],
                        shorter=shorter,
                        lighter=lighter,
                        newer=newer,
                        ref_year=ref,
                        authors=["author 3"] if shorter and newer else [],
                    )
                    allow = np.array([c.allows(b) for b in books], dtype=bool)
                    boost = np.array([c.boost(b) for b in books], dtype=np.float64)
                    assert np.array_equal(c.allow_mask(facets), allow), c
                    assert np.array_equal(c.boost_vector(facets), boost), c
