"""Reasons worth reading (:mod:`assistant.explain`): strength order, no repeats, true co-reader
evidence, varied reasons, short lists, a book you already judged. Real demo index."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from assistant import Recommender
from assistant.explain import ReasonMemory, choose_reasons, list_explanations
from retrieval.evidence import (
    CO_READERS_FAVOURABLE_MIN,
    FAVOURABLE_MEAN,
    FAVOURABLE_SHARE,
    favourable,
    liked_items,
    strength,
    verify,
)
from retrieval.library import LIKED
from retrieval.types import Evidence

CO_READER_RE = re.compile(
    r"(\d+)% of the (\d+) readers who liked .*? gave it 4★ or more \(([\d.]+)★ on average\)"
)


@pytest.fixture(scope="module")
def home(demo_home, tmp_path_factory) -> Path:
    h = tmp_path_factory.mktemp("ux") / "home"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


@pytest.fixture(scope="module")
def rec(home):
    r = Recommender.open(home)
    yield r
    r.close()


def _readers(rec, n: int, min_ratings: int = 20) -> list[str]:
    return [u["user_id"] for u in rec.users() if u["n_ratings"] >= min_ratings][:n]


def test_strength_orders_reasons_by_how_much_they_say():
    series = Evidence("series_next", book_ids=("a",), series="S", value=2)
    author = Evidence("same_author", authors=("X",), book_ids=("a",))
    close = Evidence("similar_to", book_ids=("a",), value=0.55)
    loose = Evidence("similar_to", book_ids=("a",), value=0.36)
    strong_co = Evidence("co_readers", book_ids=("a",), count=80, value=4.6, share=0.95)
    weak_co = Evidence("co_readers", book_ids=("a",), count=6, value=3.9, share=0.67)
    tags = Evidence("shared_tags", tags=("fantasy",), book_ids=("a",), count=1)
    popular = Evidence("popular", count=300, value=4.1)
    assert strength(series) > strength(author) > strength(close) > strength(loose)
    assert strength(strong_co) > strength(weak_co) > strength(tags) > strength(popular)
    assert all(
        0 <= strength(e) <= 1
        for e in (series, author, close, loose, strong_co, weak_co, tags, popular)
    )


def test_later_picks_do_not_repeat_the_book_earlier_picks_cited():
    # Two picks hold the same evidence: the first leads with its strongest records; the second
    # would repeat "co-readers of B" and "close to A", so it leads with the tags shared with D, E.
    same = [
        Evidence("similar_to", book_ids=("A",), value=0.62),
        Evidence("co_readers", book_ids=("B",), count=40, value=4.4, share=0.9),
        Evidence("shared_tags", tags=("fantasy", "magic"), book_ids=("D", "E"), count=2),
    ]
    mem = ReasonMemory()
    first = choose_reasons(same, mem)
    second = choose_reasons(same, mem)
    assert [e.kind for e in first] == ["co_readers", "similar_to"]
    assert second[0].kind == "shared_tags"
    # alone, each pick would say the same thing
    assert [e.kind for e in choose_reasons(same)] == ["co_readers", "similar_to"]
    # a second reason never names the same book of yours as the first
    twins = [
        Evidence("same_author", authors=("X",), book_ids=("A",)),
        Evidence("similar_to", book_ids=("A", "C"), value=0.7),
    ]
    assert len(choose_reasons(twins)) == 1


def test_co_reader_evidence_is_favourable_and_verifies(rec):
    lib = rec.lib
    seen = 0
    for u in _readers(rec, 12):
        ctx = rec.context(u)
        for r in rec.recommend(user_id=u, k=10):
            for e in r.evidence:
                assert verify(lib, r.book_id, e, ctx.history), (u, r.book_id, e)
                if e.kind == "co_readers":
                    seen += 1
                    assert e.count >= CO_READERS_FAVOURABLE_MIN and e.value >= FAVOURABLE_MEAN
                    assert e.share >= FAVOURABLE_SHARE
            for m in CO_READER_RE.finditer(r.explanation):
                assert int(m.group(1)) >= 60 and float(m.group(3)) >= FAVOURABLE_MEAN
            assert (
                "rated it" not in r.explanation or "★ on average (" not in r.explanation
            )  # old wording
    assert seen > 0, "the demo has favourable co-reader evidence to show"


def test_an_unfavourable_co_reader_record_does_not_verify(rec):
    """True numbers that argue against the book are not a reason: verify() refuses them."""
    lib = rec.lib
    for u in _readers(rec, 20):
        hist = rec.context(u).history
        for h, _ in liked_items(lib, hist)[:5]:
            likers = set(lib.likers(h).tolist())
            for item in np.argsort(-lib.pop_count)[:60]:
                users, r = lib.raters(int(item))
                mask = np.array([x in likers for x in users.tolist()], dtype=bool)
                n = int(mask.sum())
                if n < CO_READERS_FAVOURABLE_MIN or int(item) == h:
                    continue
                mean, share = (
                    round(float(r[mask].mean()), 2),
                    round(float((r[mask] >= LIKED).mean()), 2),
                )
                if favourable(n, mean, share):
                    continue
                e = Evidence(
                    "co_readers", book_ids=(lib.books[h].book_id,), count=n, value=mean, share=share
                )
                assert not verify(lib, lib.books[int(item)].book_id, e, hist)
                return
    pytest.skip("no unfavourable co-reader pair in the demo")


def test_reasons_vary_across_a_list(rec):
    """No book of the reader's is cited by most of their top 10 (before: up to 10 of 10)."""
    worst = []
    for u in _readers(rec, 25):
        items = rec.recommend(user_id=u, k=10)
        cited = Counter(t for r in items for t in set(re.findall(r"“([^”]+)”", r.explanation)))
        worst.append(max(cited.values(), default=0))
        first = [r.explanation.split(". ")[0] for r in items]
        assert len(set(first)) >= 8, (u, first)
    assert max(worst) <= 5, worst
    assert sum(worst) / len(worst) <= 3.5, worst


def test_list_explanations_keep_one_or_two_sentences(rec):
    u = _readers(rec, 1)[0]
    items = rec.recommend(user_id=u, k=10)
    texts = list_explanations(
        [r.evidence for r in items], rec.books, {r.book_id: r.rating for r in rec.history(u)}
    )
    assert texts == [r.explanation for r in items]
    for t in texts:
        assert 1 <= t.count("It ") + t.count("% of the ") <= 2, t


def test_explaining_a_book_you_already_judged_says_so_plainly(rec):
    u = _readers(rec, 1)[0]
    hist = rec.history(u)
    top = max(hist, key=lambda r: r.rating)
    e = rec.explain(u, top.book_id)
    assert e.explanation == (
        f"You have already read this book (you rated it {top.rating:g}★), "
        "so it is not among your recommendations."
    )
    assert top.book_id not in {b for x in e.evidence for b in x.book_ids}  # never its own reason
    other = rec.recommend(user_id=u, k=1)[0].book_id
    rec.add_feedback(u, other, "not_interested")
    assert "not interested" in rec.explain(u, other).explanation


def test_years_read_as_a_reader_writes_them():
    from retrieval.types import year_text

    assert (year_text(1937), year_text(-340), year_text(None)) == ("1937", "340 BC", "")
