"""Ingest guards: no silent emptying or shrinking of the live index, short error lines for huge
bad input, no traceback on an empty catalog, partial folders cleaned at the next start."""

from __future__ import annotations

import json
import shutil

import pytest

from assistant import Recommender
from retrieval.data import load_demo
from retrieval.errors import ReadnextError
from retrieval.index import check_shrink, current_index_dir
from retrieval.leases import Lease

from .conftest import run_cli
from .test_errors import _one_line_error


@pytest.fixture()
def home(demo_home, tmp_path):
    h = tmp_path / "h"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


def _readers(home) -> int:
    p = run_cli("users", "--json", home=home)
    assert p.returncode == 0, p.stderr
    return len(json.loads(p.stdout))


def test_empty_or_one_line_books_file_is_refused(home, tmp_path):
    live = current_index_dir(home)
    header_only = tmp_path / "books.csv"
    header_only.write_text("book_id,title,authors\n")
    line = _one_line_error(
        run_cli("ingest", "--format", "generic", "--books", str(header_only), home=home),
        "0 books",
        "--force",
    )
    huge = tmp_path / "huge.csv"
    huge.write_text("book_id,title," + "x" * 50_000_000)  # a 50 MB single line
    line = _one_line_error(
        run_cli("ingest", "--format", "generic", "--books", str(huge), home=home), "0 books"
    )
    assert len(line) < 500
    assert current_index_dir(home) == live and _readers(home) == 600


def test_huge_one_line_ratings_file_gives_a_short_error(home, tmp_path):
    books = tmp_path / "books.csv"
    books.write_text("book_id,title\n1,Dune\n")
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("user_id,book_id," + "9" * 50_000_000)
    p = run_cli(
        "ingest", "--format", "generic", "--books", str(books), "--ratings", str(ratings), home=home
    )
    line = _one_line_error(p, "ratings.csv:1", "missing column")
    assert len(p.stderr) < 1000 and len(line) < 500, len(p.stderr)


def test_forced_empty_catalog_answers_queries_with_one_line(home, tmp_path):
    header_only = tmp_path / "books.csv"
    header_only.write_text("book_id,title\n")
    p = run_cli(
        "ingest",
        "--format",
        "generic",
        "--books",
        str(header_only),
        "--force",
        "--no-progress",
        home=home,
    )
    assert p.returncode == 0, p.stderr
    _one_line_error(
        run_cli("recommend", "--query", "a funny fantasy", home=home), "catalog is empty"
    )


def test_shrinking_catalog_or_readers_needs_force(home):
    ds = load_demo()
    check_shrink(ds, home, 0.5)  # same size: fine
    small = load_demo()
    small.books = small.books[: len(small.books) // 3]
    with pytest.raises(ReadnextError, match=r"206 books against 618 .*--force"):
        check_shrink(small, home, 0.5)
    few = load_demo()
    keep = set(sorted(few.ratings["user_id"].unique())[:100])
    few.ratings = few.ratings[few.ratings["user_id"].isin(keep)]
    with pytest.raises(ReadnextError, match=r"100 readers against 600"):
        check_shrink(few, home, 0.5)
    check_shrink(few, home, 0.0)  # min_fraction = 0 turns the guard off


def test_partial_folders_are_cleaned_at_the_next_start(home):
    live = current_index_dir(home)
    killed = home / "indexes" / "demo-killed-partial"
    (killed / "chroma").mkdir(parents=True)
    (killed / "books.jsonl").write_text("{}\n")
    (home / "CURRENT.tmp999").write_text("half a pointer")
    building = home / "indexes" / "demo-being-built"
    building.mkdir()
    lease = Lease(building, exclusive=True)  # an ingest in progress (any process) holds this
    try:
        rec = Recommender.open(home)
        names = {d.name for d in (home / "indexes").iterdir() if d.is_dir()}
        assert names == {live.name, building.name}
        assert not (home / "CURRENT.tmp999").exists()
        rec.close()
    finally:
        lease.release()
    Recommender.open(home).close()
    assert {d.name for d in (home / "indexes").iterdir() if d.is_dir()} == {live.name}
