"""Bad input gets one clear line and a non-zero exit; ingest is atomic."""

from __future__ import annotations

import json
import shutil

import pytest

from assistant import Recommender
from retrieval.config import Settings
from retrieval.data import load_generic
from retrieval.errors import DataError, ReadnextError
from retrieval.index import current_index_dir, ingest

from .conftest import ROOT, run_cli


def _one_line_error(p, *needles):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("readnext: error:")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_unknown_user_and_book(demo_home):
    _one_line_error(
        run_cli("recommend", "--user", "nobody-here", home=demo_home), "unknown user", "nobody-here"
    )
    _one_line_error(
        run_cli("explain", "--user", "u0001", "--book", "no-such-book", home=demo_home),
        "unknown book",
        "no-such-book",
    )
    _one_line_error(
        run_cli("feedback", "--user", "u0001", "--book", "b0001", "--rating", "9", home=demo_home),
        "out of range",
    )


def test_missing_data_dir(tmp_path):
    _one_line_error(
        run_cli("users", "--data-dir", str(tmp_path / "nope")), "does not exist", "readnext ingest"
    )
    (tmp_path / "empty").mkdir()
    _one_line_error(
        run_cli("users", "--data-dir", str(tmp_path / "empty")), "no index", "readnext ingest"
    )


def test_empty_history(demo_home, tmp_path):
    home = tmp_path / "h"
    shutil.copytree(demo_home, home, symlinks=True)
    p = run_cli(
        "feedback",
        "--user",
        "newbie",
        "--book",
        "b0001",
        "--signal",
        "to_read",
        "--create",
        home=home,
    )
    assert p.returncode == 0, p.stderr
    _one_line_error(run_cli("history", "--user", "newbie", home=home), "no rated books")
    # but recommending for them works: cold start, with a note
    p = run_cli("recommend", "--user", "newbie", "--json", home=home)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["items"] and any("cold start" in n for n in out["notes"])


def test_malformed_csv_names_file_and_line(tmp_path):
    books = tmp_path / "books.csv"
    books.write_text(
        'book_id,title,authors\n1,Dune,Frank Herbert\n2,"Emma,Jane Austen\n3,Beloved,Toni '
        "Morrison\n"
    )
    with pytest.raises(DataError) as e:
        load_generic(books)
    assert str(books) in str(e.value)
    books.write_text("book_id,title,authors\n1,Dune,Frank Herbert\n2,Emma,Jane Austen,extra\n")
    with pytest.raises(DataError, match=r"books.csv:3"):
        load_generic(books)
    books.write_text("book_id,title\n1,Dune\n2,Emma\n")
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("user_id,book_id,rating\na,1,5\na,2,five\n")
    with pytest.raises(DataError, match=r"ratings.csv:3: rating 'five'"):
        load_generic(books, ratings)
    ratings.write_text("user,book,stars\na,1,5\n")
    with pytest.raises(DataError, match=r"ratings.csv:1: missing column"):
        load_generic(books, ratings)
    p = run_cli(
        "ingest",
        "--format",
        "generic",
        "--books",
        str(books),
        "--ratings",
        str(ratings),
        "--data-dir",
        str(tmp_path / "home"),
    )
    _one_line_error(p, "ratings.csv:1", "missing column")
    assert not (tmp_path / "home" / "CURRENT").exists()


def test_failed_ingest_leaves_previous_index_working(demo_home, tmp_path, emb_cache):
    home = tmp_path / "h"
    shutil.copytree(demo_home, home, symlinks=True)
    before = current_index_dir(home)
    rec = Recommender.open(home)
    u = rec.users()[0]["user_id"]
    expected = [r.book_id for r in rec.recommend(user_id=u, k=5)]
    rec.close()
    books = tmp_path / "b.csv"
    books.write_text("book_id,title,tags\nx1,Some Book,fantasy\nx2,Other Book,horror\n")
    ds = load_generic(books)
    for step in ("embed", "chroma-books", "cf"):
        with pytest.raises(Exception, match="simulated failure"):
            ingest(
                ds,
                Settings.load(home=home, env={}),
                progress=False,
                quiet=True,
                fail_after=step,
                force=True,
            )
        assert current_index_dir(home) == before
        assert [p.name for p in (home / "indexes").iterdir() if p.is_dir()] == [
            before.name
        ]  # partial build removed
    rec = Recommender.open(home)
    assert [r.book_id for r in rec.recommend(user_id=u, k=5)] == expected
    rec.close()
    # a 2-book catalog against the live 618 is refused unless forced (the shrink guard)
    with pytest.raises(ReadnextError, match="--force"):
        ingest(ds, Settings.load(home=home, env={}), progress=False, quiet=True)
    assert current_index_dir(home) == before
    # a successful ingest swaps in the new index and removes the old one
    ingest(ds, Settings.load(home=home, env={}), progress=False, quiet=True, force=True)
    assert current_index_dir(home) != before and not before.exists()
    assert len(Recommender.open(home).books) == 2


def test_ingest_cli_help_lists_formats():
    p = run_cli("ingest", "--help")
    assert p.returncode == 0 and "goodbooks" in p.stdout and "bookcrossing" in p.stdout
    assert (ROOT / "data" / "demo" / "README.md").exists()
