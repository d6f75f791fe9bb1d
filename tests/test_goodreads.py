"""Reading a Goodreads export (or a title list), matching it to a catalog, building history."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from retrieval.goodreads import (
    READ_UNRATED,
    CatalogIndex,
    ExportRow,
    isbn10_to_13,
    isbn13_to_10,
    isbn_key,
    match_rows,
    normalize_title,
    read_goodreads_export,
    to_history,
)
from retrieval.types import Book

GOODBOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "goodbooks" / "books.csv"
REPO = Path(__file__).resolve().parents[1]

HEADER = (
    "Book Id,Title,Author,Author l-f,Additional Authors,ISBN,ISBN13,My Rating,Average Rating,"
    "Publisher,Binding,Number of Pages,Year Published,Original Publication Year,Date Read,"
    "Date Added,Bookshelves,Bookshelves with positions,Exclusive Shelf,My Review,Spoiler,"
    "Private Notes,Read Count,Owned Copies"
)


def row(
    book_id="1",
    title="T",
    author="",
    isbn='=""',
    isbn13='=""',
    rating="0",
    date_read="",
    date_added="2020/01/01",
    shelves="",
    shelf="read",
    review="",
) -> str:
    """One export line in Goodreads' own quoting style."""
    f = [
        book_id,
        title,
        author,
        "",
        "",
        isbn,
        isbn13,
        rating,
        "4.00",
        "Pub",
        "Paperback",
        "300",
        "2001",
        "2000",
        date_read,
        date_added,
        shelves,
        "",
        shelf,
        review,
        "",
        "",
        "1",
        "0",
    ]
    out = []
    for v in f:
        if v.startswith("="):
            out.append(v)  # Goodreads writes ISBNs as unquoted spreadsheet formulas: ="0439023483"
        elif any(c in v for c in ',"\n'):
            out.append('"' + v.replace('"', '""') + '"')
        else:
            out.append(v)
    return ",".join(out)


CATALOG = [
    Book("hg", "The Hunger Games (The Hunger Games, #1)", ("Suzanne Collins",), isbn="0439023483"),
    Book("cf", "Catching Fire (The Hunger Games, #2)", ("Suzanne Collins",), isbn="9780439023498"),
    Book(
        "hp1",
        "Harry Potter and the Sorcerer's Stone (Harry Potter, #1)",
        ("J.K. Rowling", "Mary GrandPré"),
    ),
    Book("dune", "Dune", ("Frank Herbert",)),
    Book("wind", "The Name of the Wind (The Kingkiller Chronicle, #1)", ("Patrick Rothfuss",)),
    Book("mist", "Mistborn: The Final Empire (Mistborn, #1)", ("Brandon Sanderson",)),
    Book("stand", "The Stand", ("Stephen King",)),
    Book("sbm", "Stand by Me", ("Stephen King",)),
    Book("hob", "The Hobbit", ("J.R.R. Tolkien",)),
]


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    lines = [
        HEADER,
        # 2: ISBN-13 in the export, ISBN-10 in the catalog.
        row(
            "2767052",
            "The Hunger Games (The Hunger Games, #1)",
            "Suzanne Collins",
            isbn='=""',
            isbn13='="9780439023481"',
            rating="5",
            date_read="2021/03/04",
            date_added="2021/01/01",
        ),
        # 3: ISBN-10 in the export, ISBN-13 in the catalog; a review spanning two lines.
        row(
            "6148028",
            "Catching Fire",
            "Suzanne Collins",
            isbn='="0439023491"',
            rating="4",
            date_read="2021/02/01",
            review='Great, "tense"\nsecond line',
        ),
        # 5: lower case, no apostrophe, no series suffix -> exact after normalising.
        row(
            "3",
            "harry potter and the sorcerers stone",
            "J.K. Rowling",
            rating="3",
            date_added="2019/05/06",
        ),
        # 6: a typo -> fuzzy.
        row("4", "Harry Potter and the Sorcerors Stone", "J.K. Rowling", rating="0", date_added=""),
        # 7: near-title by someone else: must not match.
        row("5", "The Hunger Game", "Jane Smith", rating="2"),
        # 8: subtitle the catalog lacks.
        row(
            "6",
            "The Name of the Wind: 10th Anniversary Edition",
            "Patrick Rothfuss",
            rating="0",
            date_added="",
        ),
        row("7", "Mistborn: The Final Empire", "Brandon Sanderson", shelf="to-read"),  # 9
        row("8", "Dune", "Frank Herbert", shelf="currently-reading"),  # 10
        row("9", "A Book Nobody Has", "No One", rating="4"),  # 11
    ]
    p = tmp_path / "goodreads_library_export.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_read_export_fields(export: Path):
    rows = read_goodreads_export(export)
    assert [r.line for r in rows] == [2, 3, 5, 6, 7, 8, 9, 10, 11]
    hg, cf = rows[0], rows[1]
    assert (hg.isbn, hg.isbn13, hg.rating, hg.shelf) == (None, "9780439023481", 5.0, "read")
    assert hg.date_read == date(2021, 3, 4) and hg.date_added == date(2021, 1, 1)
    assert hg.author == "Suzanne Collins" and hg.goodreads_id == "2767052"
    assert cf.isbn == "0439023491" and cf.isbn13 is None
    assert rows[6].shelf == "to-read" and rows[7].shelf == "currently-reading"
    assert rows[3].date_added is None and rows[3].rating == 0.0


def test_match_methods(export: Path):
    report = match_rows(read_goodreads_export(export), CATALOG)
    got = {m.row.line: (m.book_id, m.method) for m in report.matched}
    assert got == {
        2: ("hg", "isbn"),
        3: ("cf", "isbn"),
        5: ("hp1", "exact"),
        6: ("hp1", "fuzzy"),
        8: ("wind", "exact"),
        9: ("mist", "exact"),
        10: ("dune", "exact"),
    }
    assert [r.line for r in report.unmatched] == [7, 11]
    fuzzy = next(m for m in report.matched if m.method == "fuzzy")
    assert 85 <= fuzzy.score < 100
    assert report.summary() == "matched 7/9 (isbn 2, exact 4, fuzzy 1)"
    assert report.match_rate == pytest.approx(7 / 9)


def test_wrong_author_never_matches_by_title():
    rows = [
        ExportRow(1, "Dune", "Jane Smith"),
        ExportRow(2, "Dune", "Frank Herbert"),
        ExportRow(3, "Dune"),
    ]
    report = match_rows(rows, CATALOG)
    assert [(m.row.line, m.book_id) for m in report.matched] == [(2, "dune"), (3, "dune")]


def test_subtitles_and_alternate_titles():
    rows = [
        ExportRow(1, "The Hobbit, or There and Back Again", "J.R.R. Tolkien"),
        ExportRow(2, "Dune (Penguin Galaxy)", "Frank Herbert"),
        ExportRow(3, "Dune - Deluxe Edition", "Frank Herbert"),
    ]
    report = match_rows(rows, CATALOG)
    assert [(m.book_id, m.method) for m in report.matched] == [
        ("hob", "exact"),
        ("dune", "exact"),
        ("dune", "exact"),
    ]


def test_misspelled_author_matches_fuzzily():
    report = match_rows([ExportRow(1, "The Hobbit", "J.R.R. Tolkein")], CATALOG)
    assert [(m.book_id, m.method) for m in report.matched] == [("hob", "fuzzy")]


def test_to_history(export: Path):
    report = match_rows(read_goodreads_export(export), CATALOG)
    ratings, to_read, reading = to_history(report, "me")

    def ts(y, m, d):
        return datetime(y, m, d, tzinfo=UTC).timestamp()

    assert to_read == {"mist"} and reading == {"dune"}
    got = [(r.book_id, r.rating, r.ts) for r in ratings]
    # hp1 appears twice (3 stars dated, then an undated no-stars row): the starred row stays.
    # Undated "wind" comes after every dated row.
    assert got == [
        ("hp1", 3.0, ts(2019, 5, 6)),
        ("cf", 4.0, ts(2021, 2, 1)),  # Date Read wins over Date Added
        ("hg", 5.0, ts(2021, 3, 4)),
        ("wind", READ_UNRATED, ts(2021, 3, 4) + 2),  # file order: hp1 dup (+1), then wind (+2)
    ]
    assert all(r.user_id == "me" for r in ratings)


def test_to_history_undated_only_uses_positions():
    rows = [ExportRow(1, "Dune", "Frank Herbert", rating=4), ExportRow(2, "The Stand", rating=0)]
    ratings, _, _ = to_history(match_rows(rows, CATALOG), "u")
    assert [(r.book_id, r.rating, r.ts) for r in ratings] == [
        ("dune", 4.0, 1.0),
        ("stand", READ_UNRATED, 2.0),
    ]


def test_to_history_custom_shelf():
    rows = [
        ExportRow(1, "Dune", "Frank Herbert", shelf="did-not-finish"),
        ExportRow(2, "The Hobbit", "J.R.R. Tolkien", rating=2, shelf="did-not-finish"),
    ]
    ratings, to_read, reading = to_history(match_rows(rows, CATALOG), "u")
    assert [r.book_id for r in ratings] == ["hob"] and not to_read and not reading


# ----------------------------------------------------------------------------- other formats


def test_plain_title_list(tmp_path: Path):
    p = tmp_path / "my_books.txt"
    p.write_text(
        "# books I read\n"
        "Dune by Frank Herbert\n"
        "\n"
        "- The Hobbit - J.R.R. Tolkien\n"
        "1. Catching Fire\n"
        "Stand by Me\n",
        encoding="utf-8",
    )
    rows = read_goodreads_export(p)
    assert [(r.line, r.title, r.author) for r in rows] == [
        (2, "Dune", "Frank Herbert"),
        (4, "The Hobbit", "J.R.R. Tolkien"),
        (5, "Catching Fire", ""),
        (6, "Stand", "Me"),
    ]
    report = match_rows(rows, CATALOG)
    # "Stand by Me" is not "The Stand" by "Me": the whole line is retried as a title.
    assert [m.book_id for m in report.matched] == ["dune", "hob", "cf", "sbm"]
    ratings, _, _ = to_history(report, "u")
    assert {r.rating for r in ratings} == {READ_UNRATED}


def test_simple_csv_with_title_column(tmp_path: Path):
    p = tmp_path / "list.csv"
    p.write_text("title,author,rating\nDune,Frank Herbert,5\nThe Hobbit,,\n", encoding="utf-8")
    rows = read_goodreads_export(p)
    assert [(r.title, r.author, r.rating, r.shelf) for r in rows] == [
        ("Dune", "Frank Herbert", 5.0, "read"),
        ("The Hobbit", "", 0.0, "read"),
    ]


def test_txt_with_csv_header_is_read_as_csv(tmp_path: Path):
    p = tmp_path / "list.txt"
    p.write_text("Title,Author\nDune,Frank Herbert\n", encoding="utf-8")
    assert [(r.title, r.author) for r in read_goodreads_export(p)] == [("Dune", "Frank Herbert")]


# ----------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "body, where, what",
    [
        (HEADER + "\n" + row(title="Ok") + "\n" + row(title="Ok") + ",extra\n", ":3:", "25 fields"),
        (HEADER + "\n" + row(title="Ok", rating="6") + "\n", ":2:", "not a rating"),
        (HEADER + "\n" + row(title="Ok", rating="five") + "\n", ":2:", "not a rating"),
        (
            HEADER + "\n" + row(title="Ok") + "\n" + row(title="Ok", date_read="17/04/2023") + "\n",
            ":3:",
            "not a date",
        ),
        (HEADER + "\n" + row(title="") + "\n", ":2:", "empty Title"),
        ("Name,Writer\nDune,Frank Herbert\n", ":1:", "no 'Title' column"),
        (HEADER + "\n" + row(title="Ok") + "\n" + '1,"Unclosed,2\n', ":3:", "malformed CSV"),
        ("", "", "file is empty"),
    ],
)
def test_malformed_csv(tmp_path: Path, body: str, where: str, what: str):
    p = tmp_path / "bad.csv"
    p.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError) as e:
        read_goodreads_export(p)
    msg = str(e.value)
    assert f"{p}{where}" in msg and what in msg
    assert "; " in msg and "\n" not in msg  # says what to do, on one line


def test_not_utf8_and_missing_file(tmp_path: Path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("Title\nCaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv:2: not UTF-8.*re-save"):
        read_goodreads_export(p)
    with pytest.raises(ValueError, match=r"nope\.csv: file not found"):
        read_goodreads_export(tmp_path / "nope.csv")


def test_bad_plain_text_line(tmp_path: Path):
    p = tmp_path / "list.txt"
    p.write_text("Dune\nby Frank Herbert\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"list\.txt:2: no title before the author"):
        read_goodreads_export(p)


# ----------------------------------------------------------------------------- helpers


def test_isbn_conversions():
    # Hand-checked examples (Wikipedia's ISBN article uses 0-306-40615-2 and 0-8044-2957-X).
    assert isbn10_to_13("0306406152") == "9780306406157"
    assert isbn13_to_10("9780306406157") == "0306406152"
    assert isbn10_to_13("080442957X") == "9780804429573"
    assert isbn13_to_10("9780804429573") == "080442957X"
    assert isbn13_to_10("9791234567896") is None  # 979 prefix has no ISBN-10
    assert isbn_key('="0439023483"') == isbn_key("978-0-439-02348-1") == "9780439023481"
    assert isbn_key('=""') is None


def test_normalize_title():
    assert (
        normalize_title("Harry Potter and the Sorcerer's Stone (Harry Potter, #1)")
        == "harry potter and the sorcerers stone"
    )
    assert normalize_title("The Hunger Games") == "hunger games"
    assert normalize_title("Angels & Demons (Robert Langdon, #1)") == "angels and demons"
    assert normalize_title("Thinking, Fast and Slow") == "thinking fast and slow"


def test_goodbooks_catalog():
    if not GOODBOOKS.exists():
        pytest.skip(f"{GOODBOOKS} absent")
    with GOODBOOKS.open(encoding="utf-8") as f:
        books = [
            Book(
                r["book_id"],
                r["title"],
                tuple(a.strip() for a in r["authors"].split(",")),
                isbn=r["isbn"] or None,
            )
            for r in csv.DictReader(f)
        ]
    index = CatalogIndex(books)
    rows = [
        ExportRow(1, "whatever", isbn13="9780439023481"),  # book 1, by ISBN-13
        ExportRow(2, "Harry Potter and the Sorcerer's Stone", "J.K. Rowling"),  # book 2
        ExportRow(3, "twilight", "Stephenie Meyer"),  # book 3
        ExportRow(4, "To Kill a Mockingbird"),  # book 4, no author
        ExportRow(5, "The Great Gatsby", "F Scott Fitzgerald", isbn="0000000000"),  # book 5
        ExportRow(6, "The Hunger Games", "Jane Smith"),  # wrong author
    ]
    report = match_rows(rows, index)
    assert [(m.row.line, m.book_id, m.method) for m in report.matched] == [
        (1, "1", "isbn"),
        (2, "2", "exact"),
        (3, "3", "exact"),
        (4, "4", "exact"),
        (5, "5", "exact"),
    ]
    assert [r.line for r in report.unmatched] == [6]


def test_sample_export_against_demo_catalog():
    export, catalog = (
        REPO / "tests" / "data" / "goodreads_library_export.csv",
        REPO / "data" / "demo" / "books.csv",
    )
    if not (export.exists() and catalog.exists()):
        pytest.skip("sample export or demo catalog absent")
    with catalog.open(encoding="utf-8") as f:
        books = [
            Book(
                r["book_id"],
                r["title"],
                tuple(a.strip() for a in r["authors"].split(",")),
                isbn=r.get("isbn") or None,
            )
            for r in csv.DictReader(f)
        ]
    by_id = {b.book_id: b for b in books}
    rows = read_goodreads_export(export)
    report = match_rows(rows, books)
    assert report.match_rate >= 0.75
    for m in report.matched:  # no false positives: same ISBN, or the same title up to subtitles
        book = by_id[m.book_id]
        if m.method == "isbn":
            assert isbn_key(book.isbn) in {isbn_key(m.row.isbn), isbn_key(m.row.isbn13)}
            continue

        def heads(t: str) -> set[str]:
            base = normalize_title(t)
            cut = normalize_title(t.split(":")[0].split(", or ")[0].split(" (")[0])
            return {base, cut}

        assert heads(m.row.title) & heads(book.title), (m.row.title, book.title)
    ratings, to_read, reading = to_history(report, "sample")
    for m in report.matched:
        if m.row.shelf == "to-read":
            assert m.book_id in to_read or m.book_id in {r.book_id for r in ratings}
        if m.row.shelf == "currently-reading":
            assert m.book_id in reading
    assert [r.ts for r in ratings] == sorted(r.ts for r in ratings)
