"""Series parsing, reading-order filter and next-volume source."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from retrieval.series import SeriesIndex, next_in_series, parse_series, series_filter, series_key
from retrieval.types import Book

GOODBOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "goodbooks" / "books.csv"


# ----------------------------------------------------------------------------- parse_series


@pytest.mark.parametrize(
    "title, clean, series, index",
    [
        ("Catching Fire (The Hunger Games, #2)", "Catching Fire", "The Hunger Games", 2.0),
        (
            "The Fellowship of the Ring (The Lord of the Rings, #1)",
            "The Fellowship of the Ring",
            "The Lord of the Rings",
            1.0,
        ),
        ("Dune (Dune Chronicles #1)", "Dune", "Dune Chronicles", 1.0),  # no comma before '#'
        (
            "The Slow Regard of Silent Things (The Kingkiller Chronicle #2.5)",
            "The Slow Regard of Silent Things",
            "The Kingkiller Chronicle",
            2.5,
        ),
        (
            "The Color of Magic (Discworld, #1; Rincewind #1)",
            "The Color of Magic",
            "Discworld",
            1.0,
        ),
        ("Night Play (Dark-Hunter #5, Were-Hunter #1)", "Night Play", "Dark-Hunter", 5.0),
        (
            "Raising Steam (Discworld, #40, Moist von Lipwig #3 )",
            "Raising Steam",
            "Discworld",
            40.0,
        ),
        ("Ranma ½, Vol. 1 (Ranma ½ (US 2nd), #1)", "Ranma ½, Vol. 1", "Ranma ½ (US 2nd)", 1.0),
        (
            "A Storm of Swords: Blood and Gold (A Song of Ice and Fire, #3: Part 2 of 2)",
            "A Storm of Swords: Blood and Gold",
            "A Song of Ice and Fire",
            3.0,
        ),
        (
            "From the Two Rivers, Part 1 (Wheel of time, #1-1)",
            "From the Two Rivers, Part 1",
            "Wheel of time",
            1.0,
        ),  # a one-volume "range" is that volume
        (
            "One Thousand White Women (One Thousand White Women#1)",
            "One Thousand White Women",
            "One Thousand White Women",
            1.0,
        ),
    ],
)
def test_parse_series_volumes(title, clean, series, index):
    info = parse_series(title)
    assert (info.title, info.series, info.index, info.omnibus) == (clean, series, index, False)


@pytest.mark.parametrize(
    "title, series, first, last",
    [
        ("Harry Potter Boxed Set, Books 1-5 (Harry Potter, #1-5)", "Harry Potter", 1.0, 5.0),
        ("The Hunger Games Trilogy Boxset (The Hunger Games, #1-3)", "The Hunger Games", 1.0, 3.0),
        ("The Oedipus Cycle (The Theban Plays, #1–3)", "The Theban Plays", 1.0, 3.0),  # en dash
        ("Four: A Divergent Story Collection (Divergent, #0.1 - 0.4)", "Divergent", 0.1, 0.4),
        ("The Twilight Saga Complete Collection (Twilight, #1-4 + 3.5)", "Twilight", 1.0, 4.0),
        ("The Selection Stories (The Selection, #0.5, 2.5)", "The Selection", 0.5, 2.5),
    ],
)
def test_parse_series_omnibus(title, series, first, last):
    info = parse_series(title)
    assert info.omnibus and info.index is None
    assert (info.series, info.first, info.last) == (series, first, last)
    assert not info.is_volume and not info.is_novella


@pytest.mark.parametrize(
    "title",
    [
        "Persuasion (Penguin Classics)",
        "The Silmarillion (Middle-Earth Universe)",
        "Nickel and Dimed: On (Not) Getting By in America",
        "Saga #1",  # '#' outside a trailing parenthesis
        "To Kill a Mockingbird",
    ],
)
def test_parse_series_not_a_series(title):
    info = parse_series(title)
    assert info.series is None and info.index is None and not info.omnibus
    assert info.title == title


def test_novella_flags():
    assert parse_series("Novella (S, #0.5)").is_novella
    assert parse_series("Volume (S, #2)").is_volume
    assert not parse_series("Volume (S, #2)").is_novella


def test_series_key_groups_spellings():
    assert series_key("The Hunger Games") == series_key("hunger games") == "hunger games"
    assert series_key("Discworld") != series_key("Rincewind")


def _goodbooks_titles() -> dict[str, str]:
    if not GOODBOOKS.exists():
        pytest.skip(f"{GOODBOOKS} absent")
    with GOODBOOKS.open(encoding="utf-8") as f:
        return {r["book_id"]: r["title"] for r in csv.DictReader(f)}


def test_goodbooks_titles_parse():
    titles = _goodbooks_titles()
    # Independent rule of thumb: a series title ends in "( ... #<digit> ... )".
    marked = {bid for bid, t in titles.items() if re.search(r"\([^()]*#\s*\d[^()]*\)\s*$", t)}
    parsed = {bid for bid, t in titles.items() if parse_series(t).series}
    assert len(marked) > 4000  # about 44% of goodbooks titles are in a numbered series
    assert marked <= parsed  # every marked title parses
    # The only extra ones have nested parentheses inside the series name (e.g. "Ranma ½ (US 2nd)").
    assert all("(" in parse_series(titles[b]).series for b in parsed - marked)
    # Titles without '#' never get a series.
    assert not any(parse_series(t).series for t in titles.values() if "#" not in t)
    # Spot checks on known rows.
    assert parse_series(titles["1"]).series == "The Hunger Games"
    assert parse_series(titles["1"]).index == 1.0
    hp = next(t for t in titles.values() if t.startswith("Harry Potter Boxed Set, Books 1-5"))
    assert parse_series(hp).omnibus
    com = next(t for t in titles.values() if t.startswith("The Color of Magic"))
    assert (parse_series(com).series, parse_series(com).index) == ("Discworld", 1.0)


# ----------------------------------------------------------------------------- filter / next


def _catalog(*books: Book) -> dict[str, Book]:
    return {b.book_id: b for b in books}


S = _catalog(
    Book("v1", "One", series="Saga", series_index=1),
    Book("v2", "Two", series="Saga", series_index=2),
    Book("v3", "Three", series="Saga", series_index=3),
    Book("v4", "Four", series="Saga", series_index=4),
    Book("n15", "Interlude", series="Saga", series_index=1.5),
    # No series fields: the series comes from the title.
    Book("box", "The Saga Box Set (Saga, #1-3)"),
    Book("x", "Standalone"),
)
ALL = list(S)


def test_filter_nothing_read_allows_only_first_volume():
    assert series_filter(ALL, [], S) == {"v2", "v3", "v4"}


def test_filter_after_first_volume():
    # v2 is next; v3/v4 skip it; the box set holds v1, which was read.
    assert series_filter(ALL, ["v1"], S) == {"v3", "v4", "box"}


def test_filter_after_two_volumes():
    assert series_filter(ALL, ["v1", "v2"], S) == {"v4", "box"}


def test_filter_novella_neither_blocks_nor_is_blocked():
    # Reading the novella does not unlock v2, and the novella itself is never dropped.
    assert series_filter(ALL, ["n15"], S) == {"v2", "v3", "v4"}


def test_filter_read_omnibus_covers_its_volumes():
    assert series_filter(["v4", "v2"], ["box"], S) == set()


def test_filter_catalog_gap_does_not_block():
    cat = {k: v for k, v in S.items() if k != "v3"}
    assert series_filter(["v4"], ["v1", "v2"], cat) == set()


def test_filter_later_volume_read_elsewhere():
    # A reader who reached volume 3 may get volume 4 (and the earlier ones they skipped).
    assert series_filter(["v1", "v2", "v4"], ["v3"], S) == set()


def test_filter_uses_titles_and_groups_series_names():
    cat = _catalog(
        Book("hg1", "The Hunger Games (The Hunger Games, #1)"),
        Book("hg2", "Catching Fire (Hunger Games, #2)"),  # same series, spelled without "The"
        Book("hg3", "Mockingjay (The Hunger Games, #3)"),
    )
    assert series_filter(list(cat), [], cat) == {"hg2", "hg3"}
    assert series_filter(list(cat), ["hg1"], cat) == {"hg3"}


def test_filter_prebuilt_index_gives_same_answer():
    idx = SeriesIndex.build(S)
    assert series_filter(ALL, ["v1"], S, index=idx) == series_filter(ALL, ["v1"], S)


def test_next_in_series_liked():
    nxt = next_in_series({"v1": 5, "v2": 4}, S)
    assert list(nxt) == ["Saga"] and nxt["Saga"].book_id == "v3"


def test_next_in_series_disliked_or_finished():
    assert next_in_series({"v1": 2, "v2": 3}, S) == {}  # mean 2.5 < 3.5
    assert next_in_series({"v1": 3, "v2": 3}, S, liked_threshold=3.0)["Saga"].book_id == "v3"
    assert next_in_series({"v1": 5, "v2": 5, "v3": 5, "v4": 5}, S) == {}


def test_next_in_series_after_novella_omnibus_and_gap():
    assert next_in_series({"n15": 5}, S)["Saga"].book_id == "v1"  # a novella covers nothing
    assert next_in_series({"box": 4}, S)["Saga"].book_id == "v4"
    assert next_in_series({"v1": 5, "v3": 5}, S)["Saga"].book_id == "v4"  # above the highest read


def test_next_in_series_prefers_first_edition_in_catalog_order():
    cat = dict(S)
    cat["v3b"] = Book("v3b", "Three, Part 2", series="Saga", series_index=3)
    assert next_in_series({"v1": 5, "v2": 5}, cat)["Saga"].book_id == "v3"


def test_next_in_series_on_goodbooks():
    titles = _goodbooks_titles()
    books = {bid: Book(bid, t) for bid, t in titles.items()}
    nxt = next_in_series({"1": 5.0}, books)  # book 1 = The Hunger Games (#1)
    assert nxt["The Hunger Games"].title == "Catching Fire (The Hunger Games, #2)"
