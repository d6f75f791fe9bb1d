"""Readers for the datasets readnext ingests, all producing one :class:`Dataset`.

Formats:
- ``generic`` (also the shipped demo): ``books.csv`` with columns ``book_id,title`` and optional
  ``authors`` (comma-separated), ``year``, ``tags`` (``|``-separated), ``description``, ``isbn``,
  ``image_url``, ``series``, ``series_index``; ``ratings.csv`` with ``user_id,book_id,rating`` and
  optional ``timestamp`` (unix seconds or ISO date). Without timestamps, row order is taken as
  event order. Optional ``to_read.csv`` with ``user_id,book_id``.
- ``goodbooks``: the goodbooks-10k layout (``books.csv`` with a ``tags`` column, or the original
  ``tags.csv`` + ``book_tags.csv``; ratings ``user_id,book_id,rating`` in chronological row order).
- ``bookcrossing``: Book-Crossing (``books.csv[.gz]`` keyed by ISBN, ``ratings.csv[.gz]``
  ``user_id,isbn,rating``; rating 0 = implicit interaction).
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError, excerpt, one_line
from .series import parse_series
from .types import Book

DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"


@dataclass
class Dataset:
    """A catalog plus interactions, in memory.

    ``ratings`` has columns ``user_id`` (str), ``book_id`` (str), ``rating`` (float), ``ts``
    (float: unix seconds if ``has_timestamps`` else the event's position in the file).
    """

    name: str
    books: list[Book]
    ratings: pd.DataFrame
    to_read: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["user_id", "book_id"])
    )
    has_timestamps: bool = False
    ordered: bool = True  # row order is chronological (meaningful for temporal splits)
    label: str = ""  # how reports must name it, e.g. "goodbooks-10k (partial ratings: 1,188 books)"
    notes: list[str] = field(default_factory=list)

    def stats(self) -> dict:
        r = self.ratings
        return {
            "name": self.name,
            "label": self.label or self.name,
            "books": len(self.books),
            "rated_books": int(r["book_id"].nunique()) if len(r) else 0,
            "users": int(r["user_id"].nunique()) if len(r) else 0,
            "ratings": int(len(r)),
            "to_read": int(len(self.to_read)),
            "has_timestamps": self.has_timestamps,
            "ordered": self.ordered,
        }


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_csv(path: str | Path, required: Iterable[str], what: str) -> pd.DataFrame:
    """Read a CSV as strings, turning every parse problem into a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found ({what}); check the path")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.ParserError as e:
        line = _bad_line(path)
        where = f"line {line}" if line else "unknown line"
        detail = one_line(str(e).strip().splitlines()[-1] if str(e).strip() else "parse error", 120)
        raise DataError(
            f"{path}:{line or '?'}: malformed CSV ({where}: {detail}); "
            "fix the quoting or the number of fields on that line"
        ) from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); re-save the file as UTF-8") from e
    except pd.errors.EmptyDataError as e:
        raise DataError(
            f"{path}: file is empty; expected a header with {', '.join(required)}"
        ) from e
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}:1: missing column(s) {', '.join(missing)} in header "
            f"({', '.join(excerpt(c, 30) for c in df.columns[:8])}); expected {', '.join(required)}"
        )
    return df


def _bad_line(path: Path) -> int | None:
    """Find the first physical line whose field count differs from the header (for messages)."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except (StopIteration, csv.Error):
            return 1
        try:
            for row in reader:
                if len(row) != len(header):
                    return reader.line_num
        except csv.Error:
            return reader.line_num
    return None


def _numeric(
    df: pd.DataFrame,
    col: str,
    path: Path,
    what: str,
    lo: float | None = None,
    hi: float | None = None,
) -> np.ndarray:
    vals = pd.to_numeric(df[col].str.strip(), errors="coerce")
    bad = vals.isna()
    if lo is not None:
        bad |= vals < lo
    if hi is not None:
        bad |= vals > hi
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        rng = f" in {lo:g}..{hi:g}" if lo is not None and hi is not None else ""
        raise DataError(
            f"{path}:{i + 2}: {what} {excerpt(df[col].iloc[i])} is not a number{rng}; fix or "
            "remove that row"
        )
    return vals.to_numpy(dtype=np.float64)


def _split_list(s: str, sep: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(sep) if x.strip())


def _int_or_none(s: str) -> int | None:
    try:
        return int(float(s))
    except (TypeError, ValueError):
        return None


def _float_or_none(s: str) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def _make_book(
    book_id: str,
    title: str,
    authors: tuple[str, ...],
    year: int | None,
    tags: tuple[str, ...],
    description: str = "",
    isbn: str | None = None,
    image_url: str | None = None,
    series: str | None = None,
    series_index: float | None = None,
) -> Book:
    if series is None:
        info = parse_series(title)
        if info.series and not info.omnibus:
            series, series_index = info.series, info.index
    return Book(
        book_id=book_id,
        title=title.strip(),
        authors=authors,
        year=year,
        tags=tags,
        description=description.strip(),
        isbn=isbn or None,
        image_url=image_url or None,
        series=series or None,
        series_index=series_index,
    )


def _check_ids(
    ratings: pd.DataFrame, books: list[Book], path: Path, notes: list[str]
) -> pd.DataFrame:
    known = {b.book_id for b in books}
    mask = ratings["book_id"].isin(known)
    if not mask.all():
        n = int((~mask).sum())
        notes.append(f"{path}: dropped {n} ratings of books not in the catalog")
        ratings = ratings[mask]
    dup = ratings.duplicated(["user_id", "book_id"], keep="last")
    if dup.any():
        notes.append(f"{path}: {int(dup.sum())} repeated (user, book) ratings; kept the latest")
        ratings = ratings[~dup]
    return ratings.reset_index(drop=True)


def load_generic(
    books_path: str | Path,
    ratings_path: str | Path | None = None,
    to_read_path: str | Path | None = None,
    name: str = "generic",
    label: str = "",
) -> Dataset:
    """Load the documented generic CSV layout (the demo uses it too)."""
    books_path = Path(books_path)
    bdf = read_csv(books_path, ["book_id", "title"], "books")
    if bdf["book_id"].duplicated().any():
        i = int(np.flatnonzero(bdf["book_id"].duplicated().to_numpy())[0])
        raise DataError(
            f"{books_path}:{i + 2}: duplicate book_id {excerpt(bdf['book_id'].iloc[i])}; ids must "
            "be unique"
        )
    empty = (bdf["title"].str.strip() == "") | (bdf["book_id"].str.strip() == "")
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(f"{books_path}:{i + 2}: empty book_id or title; every book needs both")
    col = lambda c: bdf[c] if c in bdf.columns else pd.Series([""] * len(bdf))
    books = [
        _make_book(
            bid.strip(),
            title,
            _split_list(authors, ","),
            _int_or_none(year),
            _split_list(tags, "|"),
            desc,
            isbn.strip() or None,
            img.strip() or None,
            series.strip() or None,
            _float_or_none(sidx),
        )
        for bid, title, authors, year, tags, desc, isbn, img, series, sidx in zip(
            bdf["book_id"],
            bdf["title"],
            col("authors"),
            col("year"),
            col("tags"),
            col("description"),
            col("isbn"),
            col("image_url"),
            col("series"),
            col("series_index"),
        )
    ]
    notes: list[str] = []
    ratings = pd.DataFrame(columns=["user_id", "book_id", "rating", "ts"])
    has_ts = False
    if ratings_path is not None:
        ratings_path = Path(ratings_path)
        rdf = read_csv(ratings_path, ["user_id", "book_id", "rating"], "ratings")
        r = _numeric(rdf, "rating", ratings_path, "rating", 0, 10)
        if "timestamp" in rdf.columns and (rdf["timestamp"].str.strip() != "").all():
            ts = pd.to_numeric(rdf["timestamp"], errors="coerce")
            if ts.isna().any():  # ISO dates
                parsed = pd.to_datetime(rdf["timestamp"], errors="coerce", utc=True)
                if parsed.isna().any():
                    i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
                    raise DataError(
                        f"{ratings_path}:{i + 2}: timestamp {excerpt(rdf['timestamp'].iloc[i])} is "
                        "neither unix seconds nor a date; fix that row"
                    )
                ts = parsed.astype("int64") // 10**9
            ts = ts.to_numpy(dtype=np.float64)
            has_ts = True
        else:
            ts = np.arange(len(rdf), dtype=np.float64)
        ratings = pd.DataFrame(
            {
                "user_id": rdf["user_id"].str.strip(),
                "book_id": rdf["book_id"].str.strip(),
                "rating": r,
                "ts": ts,
            }
        )
        ratings = _check_ids(ratings, books, ratings_path, notes)
    to_read = pd.DataFrame(columns=["user_id", "book_id"])
    if to_read_path is not None and Path(to_read_path).is_file():
        tdf = read_csv(to_read_path, ["user_id", "book_id"], "to-read marks")
        known = {b.book_id for b in books}
        to_read = tdf[["user_id", "book_id"]][tdf["book_id"].isin(known)].reset_index(drop=True)
    return Dataset(
        name=name,
        books=books,
        ratings=ratings,
        to_read=to_read,
        has_timestamps=has_ts,
        ordered=True,
        label=label or name,
        notes=notes,
    )


def load_demo(directory: str | Path = DEMO_DIR) -> Dataset:
    """The demo shipped with readnext: our own catalog and a synthetic reader population."""
    d = Path(directory)
    ds = load_generic(
        d / "books.csv",
        d / "ratings.csv",
        d / "to_read.csv",
        name="demo",
        label="readnext demo (synthetic readers)",
    )
    return ds


def load_goodbooks(
    books_path: str | Path,
    ratings_path: str | Path | None = None,
    tags_path: str | Path | None = None,
    book_tags_path: str | Path | None = None,
    to_read_path: str | Path | None = None,
    max_tags: int = 8,
) -> Dataset:
    """Load the goodbooks-10k layout. Row order of ratings is chronological (no timestamps)."""
    books_path = Path(books_path)
    bdf = read_csv(books_path, ["book_id", "title", "authors"], "goodbooks books")
    tags_by_book: dict[str, tuple[str, ...]] = {}
    if "tags" in bdf.columns:
        for bid, tags, kg in zip(
            bdf["book_id"],
            bdf["tags"],
            bdf["keyword_genres"] if "keyword_genres" in bdf.columns else [""] * len(bdf),
        ):
            t = list(_split_list(tags, "|"))
            if len(t) < 3:  # fall back to the noisier keyword genres for sparsely tagged books
                t += [g for g in _split_list(kg, "|") if g not in t][: 5 - len(t)]
            tags_by_book[bid] = tuple(t[:max_tags])
    elif tags_path and book_tags_path:
        tag_names = read_csv(tags_path, ["tag_id", "tag_name"], "goodbooks tags")
        bt = read_csv(
            book_tags_path, ["goodreads_book_id", "tag_id", "count"], "goodbooks book tags"
        )
        bt = bt.merge(tag_names, on="tag_id", how="left")
        bt["count"] = pd.to_numeric(bt["count"], errors="coerce").fillna(0)
        gr2id = (
            dict(zip(bdf["goodreads_book_id"], bdf["book_id"]))
            if "goodreads_book_id" in bdf.columns
            else {}
        )
        bt = bt.sort_values(["goodreads_book_id", "count"], ascending=[True, False])
        for gid, grp in bt.groupby("goodreads_book_id", sort=False):
            names = [n for n in grp["tag_name"] if isinstance(n, str) and not _junk_tag(n)]
            tags_by_book[gr2id.get(gid, gid)] = tuple(names[:max_tags])
    year_col = "original_publication_year" if "original_publication_year" in bdf.columns else None
    books = []
    for i, row in enumerate(bdf.itertuples(index=False)):
        r = row._asdict()
        title = r.get("title", "")
        books.append(
            _make_book(
                str(r["book_id"]).strip(),
                title,
                _split_list(r.get("authors", ""), ","),
                _int_or_none(r.get(year_col, "")) if year_col else None,
                tags_by_book.get(r["book_id"], ()),
                "",
                (r.get("isbn") or "").strip() or None,
                (r.get("image_url") or "").strip() or None,
            )
        )
    books = [b if "nophoto" not in (b.image_url or "") else _replace_image(b) for b in books]
    notes: list[str] = []
    ratings = pd.DataFrame(columns=["user_id", "book_id", "rating", "ts"])
    if ratings_path is not None:
        ratings_path = Path(ratings_path)
        rdf = read_csv(ratings_path, ["user_id", "book_id", "rating"], "goodbooks ratings")
        r = _numeric(rdf, "rating", ratings_path, "rating", 1, 5)
        ratings = pd.DataFrame(
            {
                "user_id": rdf["user_id"].str.strip(),
                "book_id": rdf["book_id"].str.strip(),
                "rating": r,
                "ts": np.arange(len(rdf), dtype=np.float64),
            }
        )
        ratings = _check_ids(ratings, books, ratings_path, notes)
    to_read = pd.DataFrame(columns=["user_id", "book_id"])
    if to_read_path is not None and Path(to_read_path).is_file():
        tdf = read_csv(to_read_path, ["user_id", "book_id"], "to-read marks")
        to_read = tdf[["user_id", "book_id"]].reset_index(drop=True)
    n_rated = int(ratings["book_id"].nunique()) if len(ratings) else 0
    partial = ratings_path is not None and "partial" in Path(ratings_path).name
    name = "goodbooks-10k"
    label = (
        f"goodbooks-10k (partial ratings: {n_rated:,} books)"
        if partial
        else f"goodbooks-10k ({Path(ratings_path).name if ratings_path else 'no ratings'}: "
        f"{n_rated:,} rated books)"
    )
    return Dataset(
        name=name,
        books=books,
        ratings=ratings,
        to_read=to_read,
        has_timestamps=False,
        ordered=True,
        label=label,
        notes=notes
        + ["no timestamps: row order is chronological (approximately, see the data README)"],
    )


def _replace_image(b: Book) -> Book:
    from dataclasses import replace

    return replace(b, image_url=None)


_JUNK = {
    "to-read",
    "currently-reading",
    "favorites",
    "owned",
    "books-i-own",
    "kindle",
    "ebook",
    "library",
    "default",
    "my-books",
    "wish-list",
    "audiobook",
    "book-club",
    "re-read",
    "series",
    "own",
    "i-own",
}


def _junk_tag(name: str) -> bool:
    n = name.lower()
    return n in _JUNK or n.startswith(("read-", "to-read", "favorite", "favourite", "owned"))


def load_bookcrossing(
    directory: str | Path, min_item_ratings: int = 1, explicit_only: bool = False
) -> Dataset:
    """Load Book-Crossing (Ziegler et al., WWW 2005). No timestamps and no order: splits are random.

    Rating 0 is an implicit interaction; we keep it as rating 0 (the profile treats it as a mild
    positive) unless ``explicit_only``. Books are keyed by ISBN.
    """
    d = Path(directory)
    bpath = d / "books.csv.gz" if (d / "books.csv.gz").exists() else d / "books.csv"
    rpath = d / "ratings.csv.gz" if (d / "ratings.csv.gz").exists() else d / "ratings.csv"
    rdf = read_csv(rpath, ["user_id", "isbn", "rating"], "bookcrossing ratings")
    r = _numeric(rdf, "rating", rpath, "rating", 0, 10)
    ratings = pd.DataFrame(
        {
            "user_id": rdf["user_id"],
            "book_id": rdf["isbn"].str.strip().str.upper(),
            "rating": r,
            "ts": np.arange(len(rdf), dtype=np.float64),
        }
    )
    if explicit_only:
        ratings = ratings[ratings["rating"] > 0]
    bdf = read_csv(bpath, ["isbn", "title"], "bookcrossing books")
    bdf["isbn"] = bdf["isbn"].str.strip().str.upper()
    bdf = bdf.drop_duplicates("isbn")
    if min_item_ratings > 1:
        counts = ratings["book_id"].value_counts()
        keep = set(counts.index[counts >= min_item_ratings])
        ratings = ratings[ratings["book_id"].isin(keep)]
        bdf = bdf[bdf["isbn"].isin(keep)]
    books = [
        _make_book(
            i,
            t,
            _split_list(a, ";") if a else (),
            _int_or_none(y) if y not in ("0", "") else None,
            (),
            "",
            i,
            img or None,
        )
        for i, t, a, y, img in zip(
            bdf["isbn"],
            bdf["title"],
            bdf.get("author", [""] * len(bdf)),
            bdf.get("year", [""] * len(bdf)),
            bdf.get("image_url", [""] * len(bdf)),
        )
    ]
    notes: list[str] = []
    ratings = _check_ids(ratings.reset_index(drop=True), books, rpath, notes)
    return Dataset(
        name="bookcrossing",
        books=books,
        ratings=ratings,
        has_timestamps=False,
        ordered=False,
        label=f"Book-Crossing ({len(ratings):,} ratings, {len(books):,} books)",
        notes=notes + ["no timestamps or order: per-user random holdout"],
    )


def load_dataset(
    fmt: str,
    books: str | Path | None = None,
    ratings: str | Path | None = None,
    tags: str | Path | None = None,
    book_tags: str | Path | None = None,
    to_read: str | Path | None = None,
    directory: str | Path | None = None,
) -> Dataset:
    """Dispatch on ``fmt`` (demo | generic | goodbooks | bookcrossing)."""
    if fmt == "demo":
        return load_demo(directory or DEMO_DIR)
    if fmt == "generic":
        if directory and not books:
            books, ratings = Path(directory) / "books.csv", Path(directory) / "ratings.csv"
            to_read = to_read or Path(directory) / "to_read.csv"
        if not books:
            raise DataError("--format generic needs --books PATH (and usually --ratings PATH)")
        return load_generic(books, ratings, to_read, name=Path(books).resolve().parent.name)
    if fmt == "goodbooks":
        if directory and not books:
            d = Path(directory)
            books = d / "books.csv"
            ratings = ratings or next(
                (
                    p
                    for p in (d / "ratings.csv", d / "ratings.csv.gz", d / "ratings_partial.csv.gz")
                    if p.exists()
                ),
                None,
            )
            to_read = to_read or next(
                (p for p in (d / "to_read.csv", d / "to_read_partial.csv.gz") if p.exists()), None
            )
        if not books:
            raise DataError("--format goodbooks needs --books PATH --ratings PATH")
        return load_goodbooks(books, ratings, tags, book_tags, to_read)
    if fmt == "bookcrossing":
        if not directory and books:
            directory = Path(books).parent
        if not directory:
            raise DataError("--format bookcrossing needs --dataset DIR")
        return load_bookcrossing(directory)
    raise DataError(f"unknown format {fmt!r}; use one of demo, generic, goodbooks, bookcrossing")


def detect_format(directory: str | Path) -> str:
    """Guess the format of a dataset folder from its files."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: dataset folder not found; pass an existing folder")
    if (d / "books.csv").exists():
        head = (d / "books.csv").open(encoding="utf-8").readline()
        if "goodreads_book_id" in head or "original_publication_year" in head:
            return "goodbooks"
        return "generic"
    if (d / "books.csv.gz").exists():
        return "bookcrossing"
    raise DataError(f"{d}: no books.csv or books.csv.gz; not a dataset folder readnext knows")
