"""Train/test/validation holdouts over an interactions table, plus evaluation slices.

Input is a pandas DataFrame with columns ``user_id`` (str), ``book_id`` (str), ``rating`` (float)
and ``ts`` (float: unix time, or the row position when the data only has a chronological order).
Every function is vectorised (factorize + lexsort + bincount) so a 572k-row table splits in well
under a second, and deterministic for a given input and seed.

Output frames keep the input's original index and row order, so a test row can always be traced
back to the source table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype, is_string_dtype

__all__ = [
    "Split",
    "temporal_holdout",
    "validation_split",
    "cold_start_users",
    "relevant_items",
]

SplitMethod = Literal["temporal", "random"]
_ID_COLUMNS = ("user_id", "book_id")


@dataclass
class Split:
    """A train/test partition of one interactions table.

    ``method`` is ``"temporal"`` (each user's latest events held out) or ``"random"`` (a seeded
    random subset per user, used when the data has no meaningful order); reports should say which.
    ``params`` records the arguments that produced the split, for reproducibility.
    """

    train: pd.DataFrame
    test: pd.DataFrame
    method: SplitMethod
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Size statistics: users, items and events per part, plus overlap counts.

        ``test_users_not_in_train`` and ``test_items_not_in_train`` flag cold users/items that a
        collaborative model cannot score.
        """
        train_users = set(self.train["user_id"].unique())
        train_items = set(self.train["book_id"].unique())
        test_users = set(self.test["user_id"].unique())
        test_items = set(self.test["book_id"].unique())
        return {
            "method": self.method,
            "params": dict(self.params),
            "train": {
                "users": len(train_users),
                "items": len(train_items),
                "events": len(self.train),
            },
            "test": {"users": len(test_users), "items": len(test_items), "events": len(self.test)},
            "test_users_not_in_train": len(test_users - train_users),
            "test_items_not_in_train": len(test_items - train_items),
        }


def _check_frame(df: pd.DataFrame, need_ts: bool, where: str) -> None:
    """Raise a one-line ValueError naming what is wrong with ``df`` and how to fix it."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(
            f"{where}: expected a pandas DataFrame of interactions, got {type(df).__name__}"
        )
    needed = ["user_id", "book_id", "rating"] + (["ts"] if need_ts else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        hint = (
            " (use the row position as ts when the data only has an order)"
            if "ts" in missing
            else ""
        )
        raise ValueError(f"{where}: DataFrame lacks column(s) {missing}; expected {needed}{hint}")
    for col in _ID_COLUMNS:
        # Int ids would silently never match the str ids the rest of the project uses.
        if len(df) and not is_string_dtype(df[col]):
            raise ValueError(
                f"{where}: column {col!r} must hold str ids, got dtype {df[col].dtype}; "
                f"read CSVs with dtype={{'user_id': str, 'book_id': str}} or call .astype(str)"
            )
        if df[col].isna().any():
            row = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise ValueError(
                f"{where}: column {col!r} has a missing id at row position {row}; drop such rows "
                "first"
            )
    if need_ts:
        if not is_numeric_dtype(df["ts"]):
            raise ValueError(
                f"{where}: column 'ts' must be numeric (unix time or row position), got "
                f"{df['ts'].dtype}"
            )
        bad = ~np.isfinite(df["ts"].to_numpy(dtype=float))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{where}: column 'ts' is nan/inf at row position {row}; fill or drop it, or pass "
                "ordered=False"
            )


def _check_params(frac: float, min_test: int, where: str) -> None:
    if not 0.0 < frac < 1.0:
        raise ValueError(f"{where}: frac must be in (0, 1), got {frac!r}")
    if int(min_test) != min_test or min_test < 0:
        raise ValueError(f"{where}: min_test must be a non-negative int, got {min_test!r}")


def _tail_mask(user_codes: np.ndarray, order: np.ndarray, frac: float, min_test: int) -> np.ndarray:
    """Boolean mask (input row order) of the last ``n_test(user)`` rows of each user in ``order``.

    ``order`` must sort rows by user code ascending, then oldest-to-newest within a user.
    n_test = max(min_test, round_half_up(frac * n)), capped at n - 1; users with n < 2 keep all.
    """
    n_rows = len(user_codes)
    counts = np.bincount(user_codes)
    # +1e-9 so that e.g. 0.3 * 15 = 4.4999999999999996 still rounds half up to 5.
    n_test = np.maximum(np.floor(frac * counts + 0.5 + 1e-9).astype(np.int64), int(min_test))
    n_test = np.where(counts < 2, 0, np.minimum(n_test, counts - 1))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    sorted_users = user_codes[order]
    pos_in_user = np.arange(n_rows) - starts[sorted_users]
    mask = np.empty(n_rows, dtype=bool)
    mask[order] = pos_in_user >= (counts - n_test)[sorted_users]
    return mask


def temporal_holdout(
    df: pd.DataFrame,
    frac: float = 0.2,
    min_test: int = 1,
    ordered: bool = True,
    seed: int = 0,
) -> Split:
    """Hold out the last ``frac`` of each user's events as test.

    Per user with n events: n_test = max(min_test, round_half_up(frac * n)), never more than
    n - 1, so every user with a test event keeps at least one training event; users with fewer
    than 2 events go entirely to train. Events are ordered by ``ts`` with ties broken by original
    row order.

    With ``ordered=False`` (no meaningful order) the same number of events per user is drawn at
    random with ``numpy.random.default_rng(seed)`` and the split is tagged ``method="random"``;
    ``ts`` is then not required. The draw depends on the input's row order as well as the seed.
    """
    where = "temporal_holdout"
    _check_params(frac, min_test, where)
    _check_frame(df, need_ts=ordered, where=where)
    user_codes, _ = pd.factorize(df["user_id"], sort=False)
    user_codes = np.asarray(user_codes, dtype=np.int64)
    row_pos = np.arange(len(df))
    if ordered:
        # lexsort: last key is primary -> user, then ts, then original row position.
        order = np.lexsort((row_pos, df["ts"].to_numpy(dtype=float), user_codes))
    else:
        order = np.lexsort((np.random.default_rng(seed).random(len(df)), user_codes))
    test_mask = (
        _tail_mask(user_codes, order, frac, min_test) if len(df) else np.zeros(0, dtype=bool)
    )
    method: SplitMethod = "temporal" if ordered else "random"
    params = {"frac": frac, "min_test": int(min_test), "ordered": ordered, "seed": seed}
    return Split(train=df.iloc[~test_mask], test=df.iloc[test_mask], method=method, params=params)


def validation_split(
    train: pd.DataFrame | Split,
    frac: float = 0.2,
    min_test: int = 1,
    ordered: bool | None = None,
    seed: int = 0,
) -> Split:
    """Carve a validation split out of training data only, for hyper-parameter search.

    Applies the :func:`temporal_holdout` rule to ``train`` (a DataFrame, or a :class:`Split`
    whose ``.train`` is used, so its test rows can never leak in). The result's ``test`` is the
    validation part. ``ordered=None`` means: follow the given Split's method, else True.
    """
    if isinstance(train, Split):
        if ordered is None:
            ordered = train.method == "temporal"
        train = train.train
    if ordered is None:
        ordered = True
    split = temporal_holdout(train, frac=frac, min_test=min_test, ordered=ordered, seed=seed)
    split.params["role"] = "validation"
    return split


def cold_start_users(split: Split, min_train: int = 5, *, with_test_only: bool = True) -> set[str]:
    """Users with fewer than ``min_train`` training ratings (evaluate them as a separate slice).

    By default only users that have test events are returned, since only they can be scored;
    pass ``with_test_only=False`` to include train-only users too. Users present only in test
    (zero training ratings) count as cold.
    """
    if int(min_train) != min_train or min_train < 1:
        raise ValueError(f"cold_start_users: min_train must be a positive int, got {min_train!r}")
    train_counts = split.train["user_id"].value_counts()
    users = split.test["user_id"].unique()
    if not with_test_only:
        users = pd.unique(
            np.concatenate([split.train["user_id"].to_numpy(), split.test["user_id"].to_numpy()])
        )
    counts = train_counts.reindex(users, fill_value=0)
    return set(counts.index[counts.to_numpy() < min_train])


def relevant_items(
    test_df: pd.DataFrame, threshold: float = 4.0, *, keep_empty: bool = True
) -> dict[str, set[str]]:
    """Map each test user to the set of held-out books rated ``>= threshold``.

    With ``keep_empty`` (default) every test user is a key, possibly with an empty set, so that
    :func:`eval.metrics.evaluate_rankings` can count the users it has to skip.
    """
    _check_frame(test_df, need_ts=False, where="relevant_items")
    rel = test_df.loc[test_df["rating"].to_numpy(dtype=float) >= threshold, ["user_id", "book_id"]]
    codes, users = pd.factorize(rel["user_id"], sort=False)
    order = np.argsort(codes, kind="stable")
    books = rel["book_id"].to_numpy(dtype=object)[order]
    bounds = np.cumsum(np.bincount(codes, minlength=len(users)))[:-1]
    out: dict[str, set[str]] = {}
    if keep_empty:
        out = {u: set() for u in test_df["user_id"].unique()}
    for user, chunk in zip(users, np.split(books, bounds) if len(users) else []):
        out[user] = set(chunk.tolist())
    return out
