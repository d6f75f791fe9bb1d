"""Tests for eval.splits: holdout sizes and order, random mode, validation, slices, real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval.splits import Split, cold_start_users, relevant_items, temporal_holdout, validation_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _frame(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "book_id", "rating", "ts"])


@pytest.fixture
def ordered_df() -> pd.DataFrame:
    """A: 10 events (rows deliberately not in ts order), B: 5, C: 1, D: 2, E: 3."""
    rows = []
    for t in [3, 10, 1, 7, 9, 2, 8, 4, 6, 5]:
        rows.append(("A", f"a{t}", 5.0 if t % 2 else 3.0, float(t)))
    rows += [("B", f"b{t}", 4.0, float(t)) for t in range(1, 6)]
    rows += [("C", "c1", 5.0, 1.0)]
    rows += [("D", "d1", 4.0, 1.0), ("D", "d2", 2.0, 2.0)]
    rows += [("E", f"e{t}", 4.0, float(t)) for t in range(1, 4)]
    return _frame(rows)


def _test_books(split: Split, user: str) -> set[str]:
    return set(split.test.loc[split.test["user_id"] == user, "book_id"])


def test_last_20_percent_per_user(ordered_df: pd.DataFrame) -> None:
    split = temporal_holdout(ordered_df, frac=0.2)
    # A: 0.2 * 10 = 2 -> the two latest by ts (9, 10), whatever their row positions.
    assert _test_books(split, "A") == {"a9", "a10"}
    # B: 0.2 * 5 = 1 -> ts 5.
    assert _test_books(split, "B") == {"b5"}
    # C has a single event -> all train.
    assert _test_books(split, "C") == set()
    # D: 0.2 * 2 = 0.4 rounds to 0, raised to min_test=1 (and 1 <= n - 1).
    assert _test_books(split, "D") == {"d2"}
    # E: 0.2 * 3 = 0.6 rounds to 1 -> ts 3.
    assert _test_books(split, "E") == {"e3"}
    assert split.method == "temporal"
    assert len(split.train) + len(split.test) == len(ordered_df)
    assert set(split.train.index).isdisjoint(split.test.index)


def test_min_test_bounds(ordered_df: pd.DataFrame) -> None:
    # min_test=0: D's 0.4 rounds to 0 test events; E's 0.6 still rounds to 1.
    split0 = temporal_holdout(ordered_df, frac=0.2, min_test=0)
    assert _test_books(split0, "D") == set()
    assert _test_books(split0, "E") == {"e3"}
    # min_test=3: B gets max(3, 1) = 3 (ts 3,4,5); D is capped at n - 1 = 1; C stays all-train.
    split3 = temporal_holdout(ordered_df, frac=0.2, min_test=3)
    assert _test_books(split3, "B") == {"b3", "b4", "b5"}
    assert _test_books(split3, "D") == {"d2"}
    assert _test_books(split3, "C") == set()
    # Every user keeps at least one training event.
    assert set(split3.train["user_id"]) == {"A", "B", "C", "D", "E"}


def test_rounding_is_half_up() -> None:
    # n = 15, frac = 0.3: 4.5 rounds half up to 5 -> ts 11..15.
    df = _frame([("U", f"b{t}", 4.0, float(t)) for t in range(1, 16)])
    split = temporal_holdout(df, frac=0.3)
    assert sorted(split.test["ts"]) == [11.0, 12.0, 13.0, 14.0, 15.0]


def test_ts_ties_broken_by_row_order() -> None:
    # All three share ts=5; 0.34 * 3 = 1.02 -> 1 test event: the last row, "f3".
    df = _frame([("F", "f1", 4.0, 5.0), ("F", "f2", 4.0, 5.0), ("F", "f3", 4.0, 5.0)])
    split = temporal_holdout(df, frac=0.34)
    assert list(split.test["book_id"]) == ["f3"]


def test_output_keeps_original_index_and_order(ordered_df: pd.DataFrame) -> None:
    split = temporal_holdout(ordered_df)
    assert list(split.train.index) == sorted(split.train.index)
    assert split.test.equals(ordered_df.loc[split.test.index])


def test_random_mode_sizes_and_determinism() -> None:
    rng = np.random.default_rng(1)
    rows = [
        (f"u{u}", f"b{i}", 4.0, float(i))
        for u in range(30)
        for i in range(int(rng.integers(1, 20)))
    ]
    df = _frame(rows)
    temporal = temporal_holdout(df, frac=0.2)
    r1 = temporal_holdout(df, frac=0.2, ordered=False, seed=5)
    r2 = temporal_holdout(df, frac=0.2, ordered=False, seed=5)
    r3 = temporal_holdout(df, frac=0.2, ordered=False, seed=6)
    assert r1.method == "random" and r1.params["ordered"] is False
    assert r1.test.index.equals(r2.test.index)  # same seed -> same split
    assert not r1.test.index.equals(r3.test.index)  # another seed -> another draw
    # Same per-user sizes as the temporal rule.
    pd.testing.assert_series_equal(
        r1.test["user_id"].value_counts().sort_index(),
        temporal.test["user_id"].value_counts().sort_index(),
    )
    # Not simply the latest events: some user has a test event that is not among its newest.
    assert not r1.test.index.equals(temporal.test.index)


def test_random_mode_needs_no_ts() -> None:
    df = _frame([("U", f"b{i}", 4.0, 0.0) for i in range(10)]).drop(columns="ts")
    split = temporal_holdout(df, ordered=False)
    assert len(split.test) == 2  # 0.2 * 10
    with pytest.raises(ValueError, match="ts"):
        temporal_holdout(df, ordered=True)


def test_validation_carved_from_train_only(ordered_df: pd.DataFrame) -> None:
    split = temporal_holdout(ordered_df, frac=0.2)
    val = validation_split(split, frac=0.2)
    # The validation split partitions exactly the training rows; no test row leaks in.
    assert set(val.train.index) | set(val.test.index) == set(split.train.index)
    assert set(val.test.index).isdisjoint(split.test.index)
    assert set(val.train.index).isdisjoint(split.test.index)
    assert val.params["role"] == "validation" and val.method == "temporal"
    # Same rule on A's 8 training events (ts 1..8): round(1.6) = 2 -> ts 7, 8.
    assert _test_books(val, "A") == {"a7", "a8"}
    # Validation events precede the user's test events.
    val_a = val.test.loc[val.test["user_id"] == "A", "ts"]
    assert val_a.max() < split.test.loc[split.test["user_id"] == "A", "ts"].min()
    # A random split yields a random validation split by default.
    rsplit = temporal_holdout(ordered_df, ordered=False)
    assert validation_split(rsplit).method == "random"
    # A plain DataFrame is accepted too.
    assert validation_split(split.train).test.index.equals(val.test.index)


def test_cold_start_users(ordered_df: pd.DataFrame) -> None:
    split = temporal_holdout(ordered_df, frac=0.2)
    # Training counts: A 8, B 4, C 1, D 1, E 2; C has no test events.
    assert cold_start_users(split, min_train=5) == {"B", "D", "E"}
    assert cold_start_users(split, min_train=5, with_test_only=False) == {"B", "C", "D", "E"}
    assert cold_start_users(split, min_train=2) == {"D"}
    with pytest.raises(ValueError):
        cold_start_users(split, min_train=0)


def test_relevant_items(ordered_df: pd.DataFrame) -> None:
    split = temporal_holdout(ordered_df, frac=0.2)
    # Test events: A a9 (5.0) a10 (3.0); B b5 (4.0); D d2 (2.0); E e3 (4.0).
    rel = relevant_items(split.test, threshold=4.0)
    assert rel == {"A": {"a9"}, "B": {"b5"}, "D": set(), "E": {"e3"}}
    assert relevant_items(split.test, threshold=4.0, keep_empty=False) == {
        "A": {"a9"},
        "B": {"b5"},
        "E": {"e3"},
    }
    assert relevant_items(split.test, threshold=5.0, keep_empty=False) == {"A": {"a9"}}


def test_describe(ordered_df: pd.DataFrame) -> None:
    d = temporal_holdout(ordered_df, frac=0.2).describe()
    # 21 events, each on its own book. Test: A 2 + B 1 + D 1 + E 1 = 5; train: 21 - 5 = 16.
    assert d["test"] == {"users": 4, "items": 5, "events": 5}
    assert d["train"] == {"users": 5, "items": 16, "events": 16}
    assert d["method"] == "temporal" and d["params"]["frac"] == 0.2
    assert d["test_users_not_in_train"] == 0 and d["test_items_not_in_train"] == 5


def test_bad_input_messages() -> None:
    df = _frame([("U", "b1", 4.0, 1.0)])
    with pytest.raises(ValueError, match="frac"):
        temporal_holdout(df, frac=1.5)
    with pytest.raises(ValueError, match="str ids"):
        temporal_holdout(df.assign(user_id=[7]))
    with pytest.raises(ValueError, match="nan/inf"):
        temporal_holdout(df.assign(ts=[np.nan]))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['rating'\]"):
        temporal_holdout(df.drop(columns="rating"))


def test_goodbooks_sample_row_order_split() -> None:
    path = DATA / "goodbooks-sample" / "ratings.csv"
    if not path.exists():
        pytest.skip(f"{path} not available")
    df = pd.read_csv(path, dtype={"user_id": str, "book_id": str})
    df["ts"] = np.arange(len(df), dtype=float)  # no timestamps: row order is the chronology
    split = temporal_holdout(df, frac=0.2)
    assert len(split.train) + len(split.test) == len(df)
    assert set(split.train.index).isdisjoint(split.test.index)
    # Every test event comes after all of the same user's train events in row order.
    last_train = split.train.groupby("user_id")["ts"].max()
    first_test = split.test.groupby("user_id")["ts"].min()
    assert (first_test > last_train.reindex(first_test.index)).all()
    # Per-user sizes follow the rule (all users have >= 20 ratings, so min_test never binds).
    n = df["user_id"].value_counts()
    expected = np.floor(0.2 * n + 0.5).astype(int)
    got = split.test["user_id"].value_counts().reindex(n.index, fill_value=0)
    assert (got == expected).all()
    d = split.describe()
    assert d["train"]["users"] == 2000 and d["test"]["users"] == 2000
