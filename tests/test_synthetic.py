"""The seeded synthetic catalog (retrieval.synthetic) and the automatic CF choice at scale."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from retrieval.cf import choose_cf_model, ease_fit_bytes
from retrieval.synthetic import SyntheticSpec, generate, synthetic_vectors

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = generate(SyntheticSpec(books=3000, ratings=40_000, seed=11), out)
    return out, summary


def test_same_seed_same_bytes_other_seed_differs(tmp_path, small):
    out, _ = small
    generate(SyntheticSpec(books=3000, ratings=40_000, seed=11), tmp_path / "a")
    generate(SyntheticSpec(books=3000, ratings=40_000, seed=12), tmp_path / "b")
    for name in ("books.csv", "ratings.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (out / name).read_bytes()
        assert (tmp_path / "b" / name).read_bytes() != (out / name).read_bytes()


def test_shape_matches_the_spec(small):
    out, s = small
    books = pd.read_csv(out / "books.csv", dtype=str, keep_default_na=False)
    ratings = pd.read_csv(out / "ratings.csv")
    assert list(ratings.columns) == ["user_id", "book_id", "rating", "timestamp"]
    assert len(books) == 3000 and books["book_id"].is_unique
    assert abs(len(ratings) - 40_000) < 0.05 * 40_000
    assert ratings["user_id"].nunique() == s["users"] == 2000  # ratings / 20 by default
    assert set(ratings["book_id"]) <= set(books["book_id"])
    assert not ratings.duplicated(["user_id", "book_id"]).any()
    assert ratings["rating"].between(1, 5).all()
    assert ratings["timestamp"].is_monotonic_increasing  # chronological row order
    # authors write several books; tags carry the genre
    per_author = books["authors"].value_counts()
    assert per_author.max() >= 4 and 2.0 < per_author.mean() < 4.0
    assert (books["tags"].str.count(r"\|") >= 2).all()
    assert json.loads((out / "synthetic.json").read_text())["ratings"] == len(ratings)


def test_popularity_and_activity_are_skewed(small):
    out, s = small
    ratings = pd.read_csv(out / "ratings.csv")
    counts = ratings["book_id"].value_counts().to_numpy()
    top1 = counts[: len(counts) // 100].sum() / counts.sum()
    assert top1 > 0.15  # uniform would give ~1%
    assert s["top1pct_share"] > 0.15
    per_user = ratings["user_id"].value_counts()
    assert per_user.median() < 0.8 * per_user.mean()  # log-normal: a long tail of heavy readers
    assert per_user.max() > 5 * per_user.median()


def test_series_are_read_in_order_from_volume_one(small):
    out, s = small
    books = pd.read_csv(out / "books.csv", dtype=str, keep_default_na=False)
    assert s["series"] > 50
    ratings = pd.read_csv(out / "ratings.csv", dtype={"book_id": str})
    info = books.set_index("book_id")[["series", "series_index"]]
    r = ratings.join(info, on="book_id")
    r = r[r["series"] != ""]
    r["pos"] = r["series_index"].astype(int)
    assert r["pos"].max() >= 3
    groups = 0
    for _, g in r.groupby(["user_id", "series"]):
        assert list(g["pos"]) == list(range(1, len(g) + 1))  # row order = time order
        groups += 1
    assert groups > 100
    # volume 1 is the most read volume of the catalog's series
    assert r["pos"].value_counts().idxmax() == 1


def test_spec_refuses_bad_sizes():
    with pytest.raises(ValueError, match="books must be >= 10"):
        SyntheticSpec(books=3).validate()


def test_synthetic_vectors_are_seeded_units_that_follow_tags():
    from retrieval.types import Book

    books = [
        Book("a", "A", ("X. Writer",), tags=("fantasy", "dragons")),
        Book("b", "B", ("X. Writer",), tags=("fantasy", "dragons")),
        Book("c", "C", ("Y. Other",), tags=("cookbooks", "travel")),
    ]
    v = synthetic_vectors(books, dim=64, seed=3)
    assert v.shape == (3, 64) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    assert np.array_equal(v, synthetic_vectors(books, dim=64, seed=3))


def test_cf_choice_by_size_and_memory():
    gib = 2**30
    m, why = choose_cf_model(1188, available_bytes=20 * gib)
    assert m == "ease" and "fits" in why
    # the same 10k books on a machine with 4 GiB free: EASE's ~2.2 GiB fit is over half of it
    assert ease_fit_bytes(10_000) > 2 * gib
    m, why = choose_cf_model(10_000, available_bytes=4 * gib)
    assert m == "itemknn" and "GiB available" in why
    m, why = choose_cf_model(100_000, available_bytes=64 * gib)
    assert m == "itemknn" and "max_ease_items" in why
    m, why = choose_cf_model(1_000_000, available_bytes=64 * gib)
    assert m == "als" and "max_itemknn_items" in why
    assert choose_cf_model(500, max_ease_items=100, available_bytes=gib)[0] == "itemknn"


def test_ingest_of_a_generated_set_end_to_end(tmp_path, emb_cache):
    """The generic loader and the real ingest (real embedder, real Chroma) take the files."""
    from assistant import Recommender
    from retrieval.config import Settings
    from retrieval.data import detect_format, load_dataset
    from retrieval.index import Index, ingest

    d = tmp_path / "synth"
    generate(SyntheticSpec(books=300, ratings=3000, seed=5), d)
    assert detect_format(d) == "generic"
    ds = load_dataset("generic", directory=d)
    assert len(ds.books) == 300 and ds.has_timestamps and not ds.notes
    assert sum(b.series is not None for b in ds.books) > 20
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").symlink_to(emb_cache, target_is_directory=True)
    settings = Settings.load(home=home, env={}, sasrec={"max_epochs": 2, "patience": 1})
    out = ingest(ds, settings, progress=False, quiet=True)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vectors"] == "embedder" and meta["cf_model"] == "ease"
    assert meta["cf_choice"].startswith("ease:")
    rec = Recommender(Index.open(home), settings)
    user = ds.ratings["user_id"].value_counts().index[0]
    recs = rec.recommend(user_id=user, k=5)
    seen = set(ds.ratings.loc[ds.ratings["user_id"] == user, "book_id"])
    assert len(recs) == 5 and not {r.book_id for r in recs} & seen


def test_cli_synth_and_ingest_with_synthetic_vectors(tmp_path, emb_cache):
    env = {
        **__import__("os").environ,
        "HF_HUB_OFFLINE": "1",
        "READNEXT_SASREC_ENABLED": "false",
    }
    d, home = tmp_path / "set", tmp_path / "home"
    cli = [sys.executable, "-m", "assistant.cli"]
    p = subprocess.run(
        [*cli, "synth", "--books", "200", "--ratings", "2000", "--seed", "3", "--out", str(d)]
        + ["--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["books"] == 200
    p = subprocess.run(
        [*cli, "ingest", "--dataset", str(d), "--data-dir", str(home), "--synthetic-vectors"]
        + ["--no-progress"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "SYNTHETIC VECTORS" in p.stdout
    meta = json.loads(next((home / "indexes").glob("*/meta.json")).read_text())
    assert meta["vectors"].startswith("synthetic") and meta["embeddings"]["synthetic"] == 200
