"""Property-based bad input (hypothesis): the CSV readers, the Goodreads import and the chat
rule parser never raise anything but a one-line DataError/ReadnextError, and never write half."""

from __future__ import annotations

import itertools
import shutil
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assistant.intent import parse_intent
from retrieval.data import load_generic, load_goodbooks
from retrieval.errors import MAX_MESSAGE, ReadnextError
from retrieval.goodreads import match_rows, read_goodreads_export, to_history

BOUNDED = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Cells mix plausible values with the things that break parsers: quotes, separators, newlines,
# NUL-free control characters, unicode, very long strings, numbers out of range.
CELL = st.one_of(
    st.sampled_from(
        [
            "",
            "1",
            "5",
            "0",
            "-3",
            "11",
            "five",
            "3.5",
            "nan",
            "1e9",
            "b0001",
            "Dune",
            '"',
            '""',
            ",",
            "\n",
            "\r\n",
            "|",
            "a|b",
            "2020-01-01",
            "x" * 5000,
        ]
    ),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30),
)
HEADERS = {
    "books": [
        ["book_id", "title"],
        ["book_id", "title", "authors", "tags", "year"],
        ["id", "name"],
        ["book_id", "title", "series", "series_index", "description"],
    ],
    "ratings": [
        ["user_id", "book_id", "rating"],
        ["user_id", "book_id", "rating", "timestamp"],
        ["user", "book", "stars"],
    ],
}


def _csv(header_choices):
    def build(header, rows, raw_tail):
        lines = [",".join(header)] + [",".join(r) for r in rows]
        return "\n".join(lines) + raw_tail

    return st.builds(
        build,
        st.sampled_from(header_choices),
        st.lists(st.lists(CELL, min_size=0, max_size=6), max_size=8),
        st.sampled_from(["", "\n", '\n"unterminated', "\n,,,,,,,,", "\nb0001"]),
    )


def _check_error(e: Exception) -> None:
    msg = str(e)
    assert isinstance(e, ReadnextError), f"{type(e).__name__}: {msg[:200]}"
    assert "\n" not in msg and len(msg) < MAX_MESSAGE + 300, msg[:500]


@BOUNDED
@given(
    books=_csv(HEADERS["books"]),
    ratings=st.one_of(st.none(), _csv(HEADERS["ratings"])),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_generic_csv_readers_never_traceback(tmp_path_factory, books, ratings, raw):
    d = tmp_path_factory.mktemp("csv")
    bp, rp = d / "books.csv", d / "ratings.csv"
    if raw is not None:
        bp.write_bytes(raw)
    else:
        bp.write_text(books, encoding="utf-8")
    if ratings is not None:
        rp.write_text(ratings, encoding="utf-8")
    try:
        ds = load_generic(bp, rp if ratings is not None else None)
    except Exception as e:
        _check_error(e)
        return
    ids = {b.book_id for b in ds.books}
    assert all(b.book_id and b.title for b in ds.books)
    assert set(ds.ratings["book_id"]) <= ids
    assert ds.ratings["rating"].between(0, 10).all()


@BOUNDED
@given(
    books=_csv(
        [
            ["book_id", "title", "authors"],
            ["book_id", "title", "authors", "tags"],
            ["book_id", "goodreads_book_id", "title", "authors", "original_publication_year"],
        ]
    ),
    ratings=_csv(HEADERS["ratings"]),
)
def test_goodbooks_reader_never_tracebacks(tmp_path_factory, books, ratings):
    d = tmp_path_factory.mktemp("gb")
    (d / "books.csv").write_text(books, encoding="utf-8")
    (d / "ratings.csv").write_text(ratings, encoding="utf-8")
    try:
        ds = load_goodbooks(d / "books.csv", d / "ratings.csv")
    except Exception as e:
        _check_error(e)
        return
    assert ds.ratings["rating"].between(1, 5).all()


GR_HEADER = [
    "Book Id",
    "Title",
    "Author",
    "Additional Authors",
    "ISBN",
    "ISBN13",
    "My Rating",
    "Date Read",
    "Date Added",
    "Exclusive Shelf",
    "Bookshelves",
]
GR_CELL = st.one_of(
    CELL,
    st.sampled_from(
        [
            "read",
            "to-read",
            "currently-reading",
            "did-not-finish",
            '="0441013597"',
            '=""',
            "2019/03/04",
            "2019-13-45",
            "The Hobbit",
            "J.R.R. Tolkien",
            "Dune",
            "Frank Herbert",
        ]
    ),
)


@pytest.fixture(scope="module")
def import_rec(demo_home, tmp_path_factory):
    from assistant import Recommender

    h = tmp_path_factory.mktemp("props") / "h"
    shutil.copytree(demo_home, h, symlinks=True)
    rec = Recommender.open(h)
    yield rec
    rec.close()


_ids = itertools.count()


@BOUNDED
@given(
    header=st.one_of(
        st.just(GR_HEADER), st.lists(st.sampled_from(GR_HEADER + ["junk", ""]), max_size=6)
    ),
    rows=st.lists(st.lists(GR_CELL, min_size=0, max_size=12), max_size=6),
    suffix=st.sampled_from([".csv", ".txt"]),
    raw=st.one_of(st.none(), st.binary(max_size=120)),
)
def test_goodreads_import_is_all_or_nothing(
    import_rec, tmp_path_factory, header, rows, suffix, raw
):
    rec = import_rec
    f = tmp_path_factory.mktemp("gr") / f"export{suffix}"
    if raw is not None:
        f.write_bytes(raw)
    else:
        f.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]), encoding="utf-8")
    user = f"prop-{next(_ids)}"
    try:
        report = match_rows(read_goodreads_export(f), list(rec.books.values()))
        ratings, to_read, _ = to_history(report, user)
        rec.create_reader(
            user,
            [(r.book_id, r.rating) for r in ratings],
            origin="test",
            to_read=to_read,
            timestamps=[r.ts for r in ratings],
        )
    except Exception as e:
        _check_error(e)
        with sqlite3.connect(rec.settings.home / "feedback.sqlite") as c:
            n = c.execute("SELECT COUNT(*) FROM events WHERE user_id = ?", (user,)).fetchone()[0]
            r = c.execute("SELECT COUNT(*) FROM readers WHERE user_id = ?", (user,)).fetchone()[0]
        assert n == 0 and r == 0, "a failed import left a partial reader behind"
        return
    hist = rec.history(user)
    assert len(hist) == len({r.book_id for r in ratings})
    if ratings:
        assert rec.profile(user) is not None


TITLES = ["Dune", "The Hobbit", "It", "Emma", "A Game of Thrones (A Song of Ice and Fire, #1)"]
TAGS = ["fantasy", "science-fiction", "horror", "romance", "mystery", "classics"]
AUTHORS = ["Frank Herbert", "Stephen King", "Jane Austen"]
WORDS = st.sampled_from(
    [
        "like",
        "not",
        "no",
        "but",
        "shorter",
        "newer",
        "than",
        "before",
        "after",
        "1990",
        "by",
        "more",
        "#2",
        "why",
        "tell",
        "me",
        "about",
        "the",
        "it",
        "Dune",
        "King",
        "fantasy",
        "horror",
        "sci-fi",
        "funny",
        "help",
        "hi",
        "!",
        "?",
        "'",
        '"',
        "—",
        "19",
        "2020s",
        "80s",
        "-",
        "(",
        ")",
        "é",
        "🐉",
    ]
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    text=st.one_of(
        st.text(max_size=200), st.lists(WORDS, max_size=25).map(" ".join), st.just("x" * 20000)
    )
)
def test_chat_rule_parser_never_raises(text):
    for intent in (parse_intent(text, TITLES, TAGS, AUTHORS), parse_intent(text)):
        d = intent.to_dict()
        assert d["kind"]
        assert set(d.get("include_tags") or []) <= set(TAGS) or not intent.include_tags
