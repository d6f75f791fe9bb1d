"""Import a reader's own history: a Goodreads library export, or a plain list of titles.

Three steps, each usable alone:

* :func:`read_goodreads_export` parses the file into :class:`ExportRow` objects. Accepted inputs:
  the Goodreads export CSV (My Books > Import and export > Export library), a CSV with a
  ``title`` column (optional ``author``, ``rating``, ``isbn``, ``shelf``, ``date read``), or a
  text file with one ``Title``, ``Title by Author`` or ``Title - Author`` per line.
* :func:`match_rows` maps rows to catalog books: ISBN first (ISBN-10 and -13 compared in one
  canonical form), then the normalised title with the author's surname, then a fuzzy title
  match restricted to books whose author agrees.
* :func:`to_history` turns matches into ratings, a to-read set and a currently-reading set.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from rapidfuzz import fuzz

from .errors import DataError
from .matcher import best_match, matches
from .series import parse_series
from .types import Book, Rating

__all__ = [
    "ExportRow",
    "Match",
    "MatchReport",
    "CatalogIndex",
    "read_goodreads_export",
    "match_rows",
    "to_history",
    "normalize_title",
    "isbn_key",
    "isbn10_to_13",
    "isbn13_to_10",
    "READ_UNRATED",
    "FUZZY_CUTOFF",
    "FUZZY_CUTOFF_NO_AUTHOR",
]

READ_UNRATED = 3.5
"""Rating given to a book on the ``read`` shelf with no stars: the reader finished it and did not
complain, so mildly positive, but below the 4-5 stars that mark a clear favourite."""

FUZZY_CUTOFF = 85.0
"""Minimum ``token_sort_ratio`` for a fuzzy title match among books whose author agrees."""

FUZZY_CUTOFF_NO_AUTHOR = 92.0
"""Stricter cutoff when the row names no author, so nothing else confirms the match."""

_EXPORT_HINT = (
    "expected a Goodreads library export (My Books > Import and export > Export "
    "library), a CSV with a 'title' column, or a .txt with one title per line"
)


@dataclass(frozen=True)
class ExportRow:
    """One book from an import file. ``line`` is the 1-based line where its record starts.

    ``rating`` is 0 for "no stars". ``shelf`` is the Goodreads exclusive shelf, lower-case
    (``read``, ``to-read``, ``currently-reading`` or a custom one); files without a shelf column
    give ``read``. ``raw`` holds a plain-text line whose "by"/"-" split may be wrong ("Stand by
    Me"); the matcher retries it whole.
    """

    line: int
    title: str
    author: str = ""
    additional_authors: tuple[str, ...] = ()
    isbn: str | None = None
    isbn13: str | None = None
    rating: float = 0.0
    date_read: date | None = None
    date_added: date | None = None
    shelf: str = "read"
    bookshelves: tuple[str, ...] = ()
    goodreads_id: str | None = None
    raw: str | None = None


# --------------------------------------------------------------------------- reading files

# Lower-cased header name -> field. Goodreads names first; the rest are for hand-made CSVs.
_ALIASES: dict[str, str] = {
    "title": "title",
    "book title": "title",
    "book": "title",
    "author": "author",
    "authors": "author",
    "author name": "author",
    "additional authors": "additional_authors",
    "isbn": "isbn",
    "isbn10": "isbn",
    "isbn-10": "isbn",
    "isbn13": "isbn13",
    "isbn-13": "isbn13",
    "my rating": "rating",
    "rating": "rating",
    "stars": "rating",
    "date read": "date_read",
    "read at": "date_read",
    "date added": "date_added",
    "exclusive shelf": "shelf",
    "shelf": "shelf",
    "status": "shelf",
    "bookshelves": "bookshelves",
    "book id": "goodreads_id",
}


def _fail(path: Path, line: int | None, problem: str, fix: str) -> DataError:
    where = f"{path}:{line}" if line else f"{path}"
    return DataError(f"{where}: {problem}; {fix}")


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _fail(path, None, "file not found", "check the path") from None
    except IsADirectoryError:
        raise _fail(path, None, "is a directory", "pass the export file itself") from None
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise _fail(
            path,
            line,
            "binary data or UTF-16 text (NUL byte)",
            "re-save it as UTF-8 text; " + _EXPORT_HINT,
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _fail(
            path, line, f"not UTF-8 text ({e.reason})", "re-save the file as UTF-8"
        ) from None


def _clean_isbn(value: str) -> str | None:
    if value.isdigit():
        return value  # the common case in catalogs
    # Goodreads writes ISBNs as spreadsheet formulas: ="0439023483" or ="".
    s = re.sub(r"[^0-9Xx]", "", value.strip().lstrip("=").strip('"')).upper()
    return s or None


_DATE_FORMATS = ("%Y/%m/%d", "%Y-%m-%d", "%Y/%m", "%Y-%m", "%Y")


def _parse_date(value: str, path: Path, line: int, column: str) -> date | None:
    v = value.strip()
    if not v:
        return None
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(v, fmt).date()
        except ValueError:
            continue
    raise _fail(
        path,
        line,
        f"{column} {v!r} is not a date",
        "use YYYY/MM/DD as Goodreads exports do, or leave it empty",
    )


def _parse_rating(value: str, path: Path, line: int, column: str) -> float:
    v = value.strip()
    if not v:
        return 0.0
    try:
        r = float(v)
    except ValueError:
        r = -1.0
    if not 0.0 <= r <= 5.0:
        raise _fail(
            path,
            line,
            f"{column} {v!r} is not a rating",
            "use a number from 0 (unrated) to 5, or leave it empty",
        )
    return r


def _read_csv(path: Path, text: str) -> list[ExportRow]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise _fail(path, 1, "file is empty", _EXPORT_HINT) from None
    except csv.Error as e:
        raise _fail(path, 1, f"unreadable CSV header ({e})", _EXPORT_HINT) from None
    cols: dict[str, int] = {}
    for i, name in enumerate(header):
        key = _ALIASES.get(name.strip().lower())
        if key and key not in cols:
            cols[key] = i
    if "title" not in cols:
        raise _fail(
            path,
            1,
            f"no 'Title' column in header ({', '.join(h.strip() for h in header[:6])}"
            f"{', ...' if len(header) > 6 else ''})",
            _EXPORT_HINT,
        )
    names = {k: header[i].strip() for k, i in cols.items()}
    rows: list[ExportRow] = []
    while True:
        start = reader.line_num + 1
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise _fail(
                path,
                start,
                f"malformed CSV ({e})",
                "check the quotes on this line; a field holding commas or line breaks "
                "must be wrapped in double quotes",
            ) from None
        if not rec or all(not f.strip() for f in rec):
            continue
        if len(rec) != len(header):
            raise _fail(
                path,
                start,
                f"{len(rec)} fields where the header has {len(header)}",
                "quote fields that contain commas, or re-export the file",
            )

        def get(k: str, rec=rec) -> str:
            return rec[cols[k]] if k in cols else ""

        title = " ".join(get("title").split())
        if not title:
            raise _fail(
                path, start, f"empty {names['title']}", "fill in the title or delete the line"
            )
        extra = tuple(a.strip() for a in get("additional_authors").split(",") if a.strip())
        shelves = tuple(s.strip() for s in get("bookshelves").split(",") if s.strip())
        rows.append(
            ExportRow(
                line=start,
                title=title,
                author=" ".join(get("author").split()),
                additional_authors=extra,
                isbn=_clean_isbn(get("isbn")),
                isbn13=_clean_isbn(get("isbn13")),
                rating=_parse_rating(get("rating"), path, start, names.get("rating", "rating")),
                date_read=_parse_date(
                    get("date_read"), path, start, names.get("date_read", "date")
                ),
                date_added=_parse_date(
                    get("date_added"), path, start, names.get("date_added", "date")
                ),
                shelf=(get("shelf").strip().lower() or "read"),
                bookshelves=shelves,
                goodreads_id=get("goodreads_id").strip() or None,
            )
        )
    if not rows:
        # A header-only export would create a reader with nothing: say so instead.
        raise _fail(
            path,
            None,
            "no books after the header line",
            "export your library again once it lists books (Goodreads: My Books > Import "
            "and export > Export library), or add one row per book",
        )
    return rows


_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022]\s+|\d{1,4}[.)]\s+)")
_BY_RE = re.compile(r"^(?P<title>.+)\s+by\s+(?P<author>[^,;]+?)\s*$", re.I)
# Title is greedy so the last " - " splits; "Jean-Paul Sartre" keeps its (unspaced) hyphen.
_DASH_RE = re.compile(r"^(?P<title>.+)\s+[-\u2013\u2014]\s+(?P<author>[^\s\-\u2013\u2014].*?)\s*$")
_MAX_LINE = 400


def _read_lines(path: Path, text: str) -> list[ExportRow]:
    rows: list[ExportRow] = []
    for n, line in enumerate(text.splitlines(), start=1):
        s = _BULLET_RE.sub("", line).strip()
        if not s or s.startswith("#"):
            continue
        if len(s) > _MAX_LINE:
            raise _fail(
                path,
                n,
                f"line is {len(s)} characters long",
                "put one title (optionally 'by Author') per line",
            )
        m = _BY_RE.match(s) or _DASH_RE.match(s)
        if m:
            title, author = m.group("title").strip(), m.group("author").strip()
            rows.append(ExportRow(line=n, title=title, author=author, raw=s))
        elif re.match(r"^(by\s|[-\u2013\u2014]\s)", s, re.I):
            raise _fail(
                path,
                n,
                f"no title before the author in {s!r}",
                "write 'Title by Author' or just the title",
            )
        else:
            rows.append(ExportRow(line=n, title=s))
    if not rows:
        raise _fail(path, None, "no titles found", _EXPORT_HINT)
    return rows


def read_goodreads_export(path: str | Path) -> list[ExportRow]:
    """Read a Goodreads export, a CSV with a ``title`` column, or a one-title-per-line text file.

    A ``.csv``/``.tsv`` file must have a title column; any other file is read as CSV when its
    first line is a header with a title column, else as plain lines (blank lines and lines
    starting with ``#`` are skipped, list bullets are stripped). Raises ``DataError`` (a
    ``ValueError``) naming the file, the line and the fix for anything malformed.
    """
    p = Path(path)
    text = _decode(p)
    if not text.strip():
        raise _fail(p, None, "file is empty", _EXPORT_HINT)
    first = text.lstrip("\r\n").splitlines()[0]
    first_cols = {c.strip().lower() for c in next(csv.reader([first]), [])}
    is_csv = p.suffix.lower() in (".csv", ".tsv") or (
        "," in first and any(_ALIASES.get(c) == "title" for c in first_cols)
    )
    if is_csv and p.suffix.lower() == ".tsv":
        raise _fail(p, None, "tab-separated files are not supported", "save it as CSV")
    return _read_csv(p, text) if is_csv else _read_lines(p, text)


# --------------------------------------------------------------------------- normalising


def isbn10_to_13(isbn10: str) -> str:
    """ISBN-10 -> ISBN-13 (prefix 978, new check digit). The input's check digit is ignored."""
    d = isbn10[:9]
    # "978" contributes 9*1 + 7*3 + 8*1 = 38; the nine digits then weigh 3, 1, 3, ...
    total = 38 + 3 * sum(map(int, d[0::2])) + sum(map(int, d[1::2]))
    return "978" + d + str((10 - total % 10) % 10)


def isbn13_to_10(isbn13: str) -> str | None:
    """ISBN-13 -> ISBN-10, or None when it is not in the 978 range (979 has no ISBN-10)."""
    if not isbn13.startswith("978") or len(isbn13) != 13:
        return None
    core = isbn13[3:12]
    check = (11 - sum((10 - i) * int(c) for i, c in enumerate(core)) % 11) % 11
    return core + ("X" if check == 10 else str(check))


def isbn_key(value: str | None) -> str | None:
    """Canonical form for comparing ISBNs: the ISBN-13, or the cleaned string if not an ISBN."""
    if not value:
        return None
    s = _clean_isbn(value)
    if not s:
        return None
    if len(s) == 10 and s[:9].isdigit():
        return isbn10_to_13(s)
    return s


_ARTICLE_RE = re.compile(r"^(?:the|a|an)\s+")


_APOSTROPHE_RE = re.compile(r"['\u2019\u2018`]")
_NON_WORD_RE = re.compile(r"[^\w]+|_")


@lru_cache(maxsize=65536)
def _fold(s: str) -> str:
    if not s.isascii():  # the slow accent strip only where there are accents
        s = unicodedata.normalize("NFKD", s)
        s = "".join(c for c in s if not unicodedata.combining(c))
    s = s.lower().replace("&", " and ")
    s = _APOSTROPHE_RE.sub("", s)  # "sorcerer's" -> "sorcerers", not "sorcerer s"
    return _NON_WORD_RE.sub(" ", s).strip()


# Where a subtitle or alternate title starts: "Sapiens: A Brief History", "Babel, or the
# Necessity of Violence", "Frankenstein - The 1818 Text", "Persuasion (Penguin Classics)".
_SUBTITLE_RE = re.compile(r"\s*(?::|\s[-\u2013\u2014]\s|[,;]\s*or\s|\()")


def _title_keys(title: str) -> tuple[str, str]:
    """(full key, key without subtitle or '' if there is none), from one parse."""
    base = parse_series(title).title
    full = _ARTICLE_RE.sub("", _fold(base))
    m = _SUBTITLE_RE.search(base)
    head = base[: m.start()] if m else ""
    short = _ARTICLE_RE.sub("", _fold(head)) if head.strip() else ""
    return full, (short if short != full else "")


def normalize_title(title: str) -> str:
    """Matching key for a title: series suffix, case, accents, punctuation and article removed."""
    return _title_keys(title)[0]


def _token_sorted(s: str) -> str:
    # Pre-sorting tokens once lets plain ``fuzz.ratio`` give ``token_sort_ratio`` scores fast.
    return " ".join(sorted(s.split()))


_SUFFIXES = {"jr", "sr", "ii", "iii", "iv", "phd", "md", "dr"}


def _surnames(authors: Iterable[str]) -> frozenset[str]:
    """Last significant word of each author name ("Ursula K. Le Guin" -> "guin").

    A name written "Last, First" also yields "Last": every comma-separated part contributes.
    """
    out: set[str] = set()
    for a in authors:
        out.update(_name_surnames(a))
    return frozenset(out)


@lru_cache(maxsize=65536)
def _name_surnames(name: str) -> frozenset[str]:
    out = set()
    for part in name.split(","):
        words = [w for w in _fold(part).split() if len(w) > 1 and w not in _SUFFIXES]
        if words:
            out.add(words[-1])
    return frozenset(out)


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Match:
    """A row matched to a catalog book. ``score`` is 100 for ISBN and exact title matches."""

    row: ExportRow
    book_id: str
    method: Literal["isbn", "exact", "fuzzy"]
    score: float


@dataclass
class MatchReport:
    """Matched and unmatched rows, each list in file order."""

    matched: list[Match] = field(default_factory=list)
    unmatched: list[ExportRow] = field(default_factory=list)

    @property
    def match_rate(self) -> float:
        """Share of rows matched (0.0 for an empty import)."""
        n = len(self.matched) + len(self.unmatched)
        return len(self.matched) / n if n else 0.0

    def summary(self) -> str:
        """One line for the CLI, e.g. ``matched 41/45 (isbn 30, exact 9, fuzzy 2)``."""
        by = {m: sum(1 for x in self.matched if x.method == m) for m in ("isbn", "exact", "fuzzy")}
        total = len(self.matched) + len(self.unmatched)
        return (
            f"matched {len(self.matched)}/{total} "
            f"(isbn {by['isbn']}, exact {by['exact']}, fuzzy {by['fuzzy']})"
        )


class CatalogIndex:
    """Lookup tables over a catalog, built once (one pass; fine for 271k books)."""

    def __init__(self, books: Sequence[Book]):
        self.book_ids: list[str] = []
        self.titles: list[str] = []  # normalised full titles, by position
        self.sorted_titles: list[str] = []  # the same with tokens sorted, for fuzzy search
        self.surnames: list[frozenset[str]] = []
        self.by_isbn: dict[str, int] = {}
        self.by_title: dict[str, list[int]] = {}
        self.by_short: dict[str, list[int]] = {}
        self.by_surname: dict[str, list[int]] = {}
        for pos, b in enumerate(books):
            self.book_ids.append(b.book_id)
            t, sh = _title_keys(b.title)
            self.titles.append(t)
            self.sorted_titles.append(_token_sorted(t))
            sn = _surnames(b.authors)
            self.surnames.append(sn)
            k = isbn_key(b.isbn)
            if k:
                self.by_isbn.setdefault(k, pos)
            self.by_title.setdefault(t, []).append(pos)
            if sh:
                self.by_short.setdefault(sh, []).append(pos)
            for s in sn:
                self.by_surname.setdefault(s, []).append(pos)

    def _author_ok(self, pos: int, row_surnames: frozenset[str], fuzzy_names: bool) -> bool:
        book = self.surnames[pos]
        if row_surnames & book:
            return True
        # Catch misspellings ("Tolkein") only on the fuzzy path, never on unrelated surnames.
        return fuzzy_names and any(fuzz.ratio(a, b) >= 85 for a in row_surnames for b in book)

    def _exact(self, title: str, short: str, names: frozenset[str]) -> int | None:
        tries = [(self.by_title, title), (self.by_short, title)]
        if short:
            tries += [(self.by_title, short), (self.by_short, short)]
        for table, key in tries:
            for pos in table.get(key, ()):
                # A catalog book without authors cannot disagree on the exact path.
                if not names or not self.surnames[pos] or self._author_ok(pos, names, False):
                    return pos
        return None

    def _fuzzy(self, title: str, short: str, names: frozenset[str]) -> tuple[int, float] | None:
        queries = [_token_sorted(q) for q in (title, short) if q]
        best: tuple[int, float] | None = None
        if names:
            pool = sorted({p for s in names for p in self.by_surname.get(s, ())})
            choices = {p: self.sorted_titles[p] for p in pool}
            for q in queries:
                hit = best_match(q, choices, FUZZY_CUTOFF)
                if hit and (best is None or hit[1] > best[1]):
                    best = (hit[2], hit[1])
            if best is not None:
                return best
            # Surname spelled differently from the catalog: search all titles, then check
            # the author loosely.
            for q in queries:
                for _, score, pos in matches(q, self.sorted_titles, FUZZY_CUTOFF, limit=10):
                    if self._author_ok(pos, names, True) and (best is None or score > best[1]):
                        best = (pos, score)
            return best
        for q in queries:
            hit = best_match(q, self.sorted_titles, FUZZY_CUTOFF_NO_AUTHOR)
            if hit and (best is None or hit[1] > best[1]):
                best = (hit[2], hit[1])
        return best

    def match(self, row: ExportRow) -> Match | None:
        """Best catalog match for one row, or None."""
        for value in (row.isbn13, row.isbn):
            k = isbn_key(value)
            if k and k in self.by_isbn:
                return Match(row, self.book_ids[self.by_isbn[k]], "isbn", 100.0)
        attempts = [(row.title, (row.author, *row.additional_authors) if row.author else ())]
        if row.raw and row.raw != row.title:
            attempts.append((row.raw, ()))
        for title, authors in attempts:
            names = _surnames(authors)
            t, sh = _title_keys(title)
            if not t:
                continue
            pos = self._exact(t, sh, names)
            if pos is not None:
                return Match(row, self.book_ids[pos], "exact", 100.0)
            hit = self._fuzzy(t, sh, names)
            if hit is not None:
                return Match(row, self.book_ids[hit[0]], "fuzzy", float(hit[1]))
        return None


def match_rows(rows: Sequence[ExportRow], books: Sequence[Book] | CatalogIndex) -> MatchReport:
    """Match import rows to catalog books.

    Order per row: ISBN (ISBN13 column, then ISBN; 10 and 13 digit forms compare equal); exact
    normalised title, also with a subtitle (after ":", " - ", ", or", "(") dropped on either
    side, whose author surname agrees; fuzzy ``token_sort_ratio`` >= :data:`FUZZY_CUTOFF` among that
    author's books (>= :data:`FUZZY_CUTOFF_NO_AUTHOR` over the whole catalog when the row names no
    author).
    When the row names an author, a book by someone else never matches by title. Pass a prebuilt
    :class:`CatalogIndex` to match several files against a large catalog.
    """
    index = books if isinstance(books, CatalogIndex) else CatalogIndex(books)
    report = MatchReport()
    for row in rows:
        m = index.match(row)
        if m is None:
            report.unmatched.append(row)
        else:
            report.matched.append(m)
    return report


# --------------------------------------------------------------------------- history


def _unix(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def to_history(report: MatchReport, user_id: str) -> tuple[list[Rating], set[str], set[str]]:
    """Turn matched rows into ``(ratings oldest first, to_read ids, currently_reading ids)``.

    * shelf ``read`` with 1-5 stars -> that rating; with no stars -> :data:`READ_UNRATED`.
    * a custom exclusive shelf (e.g. ``did-not-finish``) -> a rating only when it has stars,
      otherwise ignored.
    * ``to-read`` -> ``to_read`` (books to prioritise, not history).
    * ``currently-reading`` -> ``currently_reading``: not history, since the verdict is not in;
      callers should neither recommend these nor learn from them.

    ``ts`` is the Date Read, else the Date Added, as unix seconds at 00:00 UTC. Rows with neither
    date come after all dated rows, in file order, one second apart (or at 1, 2, ... when no row
    has a date). A book imported twice keeps its latest row, except that a no-stars row never
    replaces a starred one. Books in the ratings are removed from the two sets, and
    currently-reading wins over to-read.
    """
    dated: list[tuple[float, Match]] = []
    undated: list[Match] = []
    to_read: set[str] = set()
    reading: set[str] = set()
    for m in sorted(report.matched, key=lambda x: x.row.line):
        shelf = m.row.shelf
        if shelf == "to-read":
            to_read.add(m.book_id)
            continue
        if shelf == "currently-reading":
            reading.add(m.book_id)
            continue
        if shelf != "read" and m.row.rating <= 0:
            continue
        d = m.row.date_read or m.row.date_added
        if d is None:
            undated.append(m)
        else:
            dated.append((_unix(d), m))
    last = max((ts for ts, _ in dated), default=0.0)
    events = sorted(dated, key=lambda x: x[0]) + [(last + i, m) for i, m in enumerate(undated, 1)]
    best: dict[str, Rating] = {}
    starred: set[str] = set()
    for ts, m in events:
        stars = m.row.rating > 0
        if m.book_id in starred and not stars:
            continue
        best[m.book_id] = Rating(
            user_id=user_id,
            book_id=m.book_id,
            rating=float(m.row.rating) if stars else READ_UNRATED,
            ts=ts,
        )
        if stars:
            starred.add(m.book_id)
    ratings = sorted(best.values(), key=lambda r: r.ts)
    rated = set(best)
    reading -= rated
    to_read -= rated | reading
    return ratings, to_read, reading
