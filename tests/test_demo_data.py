"""Checks on the shipped demo dataset (data/demo) and the Goodreads export fixture.

The catalog is read with the stdlib csv module, independently of the generator, so a broken
generator cannot hide a broken catalog.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
EXPORT = ROOT / "tests" / "data" / "goodreads_library_export.csv"
BOOK_COLUMNS = [
    "book_id",
    "title",
    "authors",
    "year",
    "tags",
    "description",
    "isbn",
    "series",
    "series_index",
]
T_START = datetime(2015, 1, 1, tzinfo=UTC).timestamp()
T_END = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
SERIES_SUFFIX = re.compile(r" \(([^()]+), #(\d+(?:\.\d+)?)\)$")


# ---------------------------------------------------------------- helpers


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "demo_generate_readers", DEMO / "generate_readers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _isbn_ok(s: str) -> bool:
    if re.fullmatch(r"\d{9}[\dX]", s):
        return sum((10 - i) * (10 if c == "X" else int(c)) for i, c in enumerate(s)) % 11 == 0
    if re.fullmatch(r"\d{13}", s):
        return sum((1 if i % 2 == 0 else 3) * int(c) for i, c in enumerate(s)) % 10 == 0
    return False


@pytest.fixture(scope="module")
def books() -> list[dict[str, str]]:
    with open(DEMO / "books.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == BOOK_COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return pd.read_csv(DEMO / "ratings.csv", dtype={"user_id": str, "book_id": str})


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


# ---------------------------------------------------------------- catalog


def test_catalog_size_and_unique_ids(books: list[dict[str, str]]) -> None:
    assert len(books) >= 300
    ids = [b["book_id"] for b in books]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"b\d{4}", i) for i in ids)
    # Same book twice under two ids would split its ratings.
    keys = Counter((b["title"].lower(), b["authors"].lower()) for b in books)
    assert [k for k, n in keys.items() if n > 1] == []


def test_every_book_has_text_fields(books: list[dict[str, str]]) -> None:
    for b in books:
        assert b["title"].strip() and b["authors"].strip(), b["book_id"]
        assert len(b["description"]) >= 40 and b["description"].rstrip().endswith(
            (".", "?", "!")
        ), b["book_id"]
        assert b["description"] != b["title"]
        year = int(b["year"])  # raises on non-integers
        assert -3000 < year <= 2026, b["book_id"]


def test_tags_are_from_a_small_consistent_vocabulary(books: list[dict[str, str]]) -> None:
    counts: Counter[str] = Counter()
    for b in books:
        tags = b["tags"].split("|")
        assert 3 <= len(tags) <= 8, (b["book_id"], tags)
        assert len(set(tags)) == len(tags), b["book_id"]
        assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", t) for t in tags), b["book_id"]
        assert not {"short", "long"} <= set(tags), b["book_id"]
        counts.update(tags)
    assert 40 <= len(counts) <= 80
    assert min(counts.values()) >= 2, [t for t, n in counts.items() if n < 2]
    for needed in (
        "fantasy",
        "science-fiction",
        "mystery",
        "romance",
        "non-fiction",
        "short",
        "long",
        "dark",
        "funny",
        "heartwarming",
        "fast-paced",
        "slow-burn",
    ):
        assert counts[needed] >= 5, needed


def test_isbns_are_valid_when_present(books: list[dict[str, str]]) -> None:
    isbns = [b["isbn"] for b in books if b["isbn"]]
    assert isbns, "expected some ISBNs"
    assert [i for i in isbns if not _isbn_ok(i)] == []
    assert len(set(isbns)) == len(isbns)


def test_series_titles_match_series_columns(books: list[dict[str, str]]) -> None:
    for b in books:
        m = SERIES_SUFFIX.search(b["title"])
        if b["series"]:
            assert m is not None, f"{b['book_id']}: series volume title lacks '(Series, #n)'"
            assert m.group(1) == b["series"], b["book_id"]
            assert float(m.group(2)) == float(b["series_index"]), b["book_id"]
        else:
            assert m is None and b["series_index"] == "", b["book_id"]
    volumes = defaultdict(list)
    for b in books:
        if b["series"]:
            volumes[b["series"]].append(float(b["series_index"]))
    for series, idx in volumes.items():
        assert len(set(idx)) == len(idx), f"duplicate volume numbers in {series}"


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        ("Harry Potter", range(1, 8)),
        ("The Hunger Games", range(1, 4)),
        ("The Lord of the Rings", range(1, 4)),
        ("A Song of Ice and Fire", range(1, 6)),
        ("Dune", range(1, 4)),
        ("The Expanse", range(1, 5)),
        ("Remembrance of Earth's Past", range(1, 4)),
        ("Neapolitan Novels", range(1, 5)),
        ("The Twilight Saga", range(1, 5)),
    ],
)
def test_required_series_are_complete(
    books: list[dict[str, str]], series: str, expected: range
) -> None:
    have = sorted(int(float(b["series_index"])) for b in books if b["series"] == series)
    assert have == list(expected)


def test_hobbit_is_standalone(books: list[dict[str, str]]) -> None:
    hobbit = [b for b in books if b["title"] == "The Hobbit"]
    assert len(hobbit) == 1 and hobbit[0]["series"] == ""


# ---------------------------------------------------------------- generator


def test_generator_is_deterministic(generator: ModuleType, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        seed = "11" if name != "c" else "12"
        generator.main(["--seed", seed, "--users", "40", "--out", str(tmp_path / name)])
    for f in ("ratings.csv", "to_read.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "ratings.csv").read_bytes() != (
        tmp_path / "c" / "ratings.csv"
    ).read_bytes()


def test_committed_outputs_equal_a_fresh_default_run(generator: ModuleType, tmp_path: Path) -> None:
    generator.main(["--out", str(tmp_path)])
    for f in ("ratings.csv", "to_read.csv"):
        assert (tmp_path / f).read_bytes() == (DEMO / f).read_bytes(), (
            f"data/demo/{f} is stale: rerun python data/demo/generate_readers.py"
        )


def test_generator_rejects_bad_catalog(generator: ModuleType, tmp_path: Path) -> None:
    bad = tmp_path / "books.csv"
    bad.write_text("book_id,title\nb1,Something\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"books\.csv:1: missing columns"):
        generator.load_catalog(bad)
    bad.write_text(
        ",".join(BOOK_COLUMNS) + "\nb1,T (S, #1),A,2000,x|y|z,d,,S,one\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"books\.csv:2: .*series_index"):
        generator.load_catalog(bad)


# ---------------------------------------------------------------- population


def test_population_constraints(ratings: pd.DataFrame, books: list[dict[str, str]]) -> None:
    assert list(ratings.columns) == ["user_id", "book_id", "rating", "timestamp"]
    per_user = ratings.groupby("user_id").size()
    assert len(per_user) >= 500
    assert per_user.min() >= 20 and per_user.max() <= 150
    assert all(re.fullmatch(r"u\d{4}", u) for u in per_user.index)
    assert set(ratings["rating"].unique()) <= {1, 2, 3, 4, 5}
    assert set(ratings["book_id"]) <= {b["book_id"] for b in books}
    assert not ratings.duplicated(["user_id", "book_id"]).any()
    assert ratings["timestamp"].between(T_START, T_END).all()
    assert ratings["timestamp"].is_monotonic_increasing


def test_rating_distribution_is_realistic(ratings: pd.DataFrame) -> None:
    share = ratings["rating"].value_counts(normalize=True)
    assert 3.5 <= ratings["rating"].mean() <= 4.1
    assert share[1] >= 0.01 and share[2] >= 0.03
    assert share[4] + share[5] > 0.5


def test_timestamps_strictly_increase_per_user(ratings: pd.DataFrame) -> None:
    gaps = ratings.groupby("user_id")["timestamp"].diff().dropna()
    assert (gaps > 0).all()


def test_series_mostly_read_in_order(ratings: pd.DataFrame, books: list[dict[str, str]]) -> None:
    index = {b["book_id"]: (b["series"], float(b["series_index"])) for b in books if b["series"]}
    in_order = total = 0
    for _, g in ratings[ratings["book_id"].isin(index)].groupby("user_id"):
        last: dict[str, float] = {}
        for book_id in g["book_id"]:  # already in time order
            series, idx = index[book_id]
            if series in last:
                total += 1
                in_order += idx > last[series]
            last[series] = idx
    assert total > 500
    assert in_order / total >= 0.85


def test_popularity_has_a_long_tail(ratings: pd.DataFrame, books: list[dict[str, str]]) -> None:
    counts = ratings["book_id"].value_counts()
    top_decile = counts.iloc[: len(books) // 10].sum()
    assert top_decile / len(ratings) > 0.2  # twice the share an even spread would give
    assert counts.median() < counts.iloc[0] / 4


def test_taste_drifts_over_time(ratings: pd.DataFrame, books: list[dict[str, str]]) -> None:
    """Early reads look more like the middle of a reader's history than like its end."""
    tags = {b["book_id"]: b["tags"].split("|") for b in books}
    vocab = sorted({t for ts in tags.values() for t in ts})
    pos = {t: i for i, t in enumerate(vocab)}

    def profile(ids: pd.Series) -> np.ndarray:
        v = np.zeros(len(vocab))
        for i in ids:
            v[[pos[t] for t in tags[i]]] += 1
        return v / np.linalg.norm(v)

    near, far = [], []
    for _, g in ratings.groupby("user_id"):
        third = len(g) // 3
        first, middle, end = (
            profile(g["book_id"].iloc[a:b])
            for a, b in ((0, third), (third, 2 * third), (2 * third, len(g)))
        )
        near.append(first @ middle)
        far.append(first @ end)
    # Without drift the gap is about 0.03 (series runs sit close in time); with it, about 0.08.
    assert np.mean(near) > np.mean(far) + 0.05


def test_to_read_marks(ratings: pd.DataFrame, books: list[dict[str, str]]) -> None:
    to_read = pd.read_csv(DEMO / "to_read.csv", dtype=str)
    assert list(to_read.columns) == ["user_id", "book_id"]
    assert set(to_read["user_id"]) == set(ratings["user_id"])
    assert set(to_read["book_id"]) <= {b["book_id"] for b in books}
    assert not to_read.duplicated().any()
    overlap = to_read.merge(ratings, on=["user_id", "book_id"])
    assert overlap.empty, "a to-read mark must be for an unread book"


# ---------------------------------------------------------------- Goodreads export fixture


def _norm_title(t: str) -> str:
    """Crude title key: no series suffix, subtitle, leading 'The' or case (enough for the
    fixture)."""
    t = re.sub(r"\s*\([^()]*#[\d.]+\)$", "", t.replace("\u2019", "'")).lower()
    t = re.split(r":|, or ", t)[0]
    return re.sub(r"^the ", "", t).strip()


def test_goodreads_export_fixture_shape(books: list[dict[str, str]]) -> None:
    with open(EXPORT, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames is not None and reader.fieldnames[:3] == [
            "Book Id",
            "Title",
            "Author",
        ]
        assert len(reader.fieldnames) == 24
        rows = list(reader)
    assert 20 <= len(rows) <= 30
    shelves = Counter(r["Exclusive Shelf"] for r in rows)
    assert shelves["to-read"] == 4 and shelves["currently-reading"] == 1
    assert shelves["read"] == len(rows) - 5
    for r in rows:
        assert re.fullmatch(r'=""|="\d{9}[\dX]"', r["ISBN"]) and re.fullmatch(
            r'=""|="\d{13}"', r["ISBN13"]
        )
        assert re.fullmatch(r"\d{4}/\d{2}/\d{2}", r["Date Added"])
        if r["Exclusive Shelf"] == "read":
            assert r["My Rating"] in {"1", "2", "3", "4", "5"}
            assert re.fullmatch(r"\d{4}/\d{2}/\d{2}", r["Date Read"])
        else:
            assert r["My Rating"] == "0" and r["Date Read"] == ""
    assert {r["My Rating"] for r in rows if r["Exclusive Shelf"] == "read"} == {
        "1",
        "2",
        "3",
        "4",
        "5",
    }

    # ISBNs that are present point at demo books; exactly three titles are absent from the demo.
    catalog_isbns = {b["isbn"] for b in books if b["isbn"]}
    isbns = [r["ISBN"][2:-1] for r in rows if r["ISBN"] != '=""']
    assert len(isbns) >= 8 and set(isbns) <= catalog_isbns
    catalog_titles = {_norm_title(b["title"]) for b in books}
    missing = [r["Title"] for r in rows if _norm_title(r["Title"]) not in catalog_titles]
    assert len(missing) == 3, missing
