"""An in-memory view of one catalog + its interactions, shared by every candidate source.

The same object backs the live recommender (built from the on-disk index) and offline
evaluation (built from a training split), so every model sees data the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .types import Book, Rating

LIKED = 4.0  # a rating at or above this counts as "liked" in evidence and CF confidence


@dataclass
class Library:
    """Books, their vectors, and (training) ratings as sparse matrices.

    ``vectors[i]`` is the unit embedding of ``books[i]``; ``R`` is users x items with the raw
    ratings (1-5); ``user_ids[u]`` names row ``u``.
    """

    books: list[Book]
    vectors: np.ndarray
    ratings: pd.DataFrame
    has_timestamps: bool = False
    to_read: pd.DataFrame | None = None
    name: str = ""
    ordered: bool = True  # events carry an order (timestamps or a chronological file)
    index: dict[str, int] = field(init=False)
    user_ids: list[str] = field(init=False)
    user_index: dict[str, int] = field(init=False)
    R: sp.csr_matrix = field(init=False)

    def __post_init__(self) -> None:
        self.index = {b.book_id: i for i, b in enumerate(self.books)}
        r = self.ratings[self.ratings["book_id"].isin(self.index.keys())]
        self.ratings = r.reset_index(drop=True)
        users, uidx = (
            np.unique(r["user_id"].to_numpy(dtype=str), return_inverse=True) if len(r) else ([], [])
        )
        self.user_ids = [str(u) for u in users]
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        items = (
            r["book_id"].map(self.index).to_numpy(dtype=np.int64)
            if len(r)
            else np.zeros(0, np.int64)
        )
        self.R = sp.csr_matrix(
            (
                r["rating"].to_numpy(dtype=np.float32) if len(r) else np.zeros(0, np.float32),
                (np.asarray(uidx, dtype=np.int64), items),
            ),
            shape=(len(self.user_ids), len(self.books)),
        )
        self.R.sum_duplicates()

    @property
    def n_items(self) -> int:
        return len(self.books)

    @cached_property
    def R_csc(self) -> sp.csc_matrix:
        c = self.R.tocsc()
        c.sort_indices()
        return c

    @cached_property
    def pop_count(self) -> np.ndarray:
        """Number of ratings per book."""
        return np.diff(self.R_csc.indptr).astype(np.int64)

    @cached_property
    def pop_mean(self) -> np.ndarray:
        """Mean rating per book (nan when unrated)."""
        sums = np.asarray(self.R.sum(axis=0)).ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.pop_count > 0, sums / np.maximum(self.pop_count, 1), np.nan)

    @cached_property
    def by_id(self) -> dict[str, Book]:
        return {b.book_id: b for b in self.books}

    @cached_property
    def series_index(self):
        """Series facts of the catalog, built once (see retrieval.series)."""
        from .series import SeriesIndex

        return SeriesIndex.build(self.by_id)

    @cached_property
    def tag_sets(self) -> list[frozenset[str]]:
        return [frozenset(t.lower() for t in b.tags) for b in self.books]

    @cached_property
    def author_sets(self) -> list[frozenset[str]]:
        return [frozenset(a.lower() for a in b.authors) for b in self.books]

    @cached_property
    def _sorted(self) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """Ratings sorted by (ts, row) and each reader's row positions in that frame."""
        order = np.lexsort((np.arange(len(self.ratings)), self.ratings["ts"].to_numpy()))
        df = self.ratings.iloc[order].reset_index(drop=True)
        groups = (
            {str(u): idx for u, idx in df.groupby("user_id", sort=False).indices.items()}
            if len(df)
            else {}
        )
        return df, groups

    def history(self, user_id: str) -> list[Rating]:
        """A reader's ratings in this library, oldest first."""
        df, groups = self._sorted
        idx = groups.get(user_id)
        if idx is None:
            return []
        rows = df.iloc[np.sort(idx)]
        return [
            Rating(user_id, str(b), float(r), float(t))
            for b, r, t in zip(rows["book_id"], rows["rating"], rows["ts"])
        ]

    def histories(self) -> dict[str, list[Rating]]:
        """All readers' histories at once (oldest first), for batch work."""
        out: dict[str, list[Rating]] = {}
        df = self.ratings.iloc[
            np.lexsort((np.arange(len(self.ratings)), self.ratings["ts"].to_numpy()))
        ]
        for u, b, r, t in zip(
            df["user_id"].to_numpy(),
            df["book_id"].to_numpy(),
            df["rating"].to_numpy(),
            df["ts"].to_numpy(),
        ):
            out.setdefault(str(u), []).append(Rating(str(u), str(b), float(r), float(t)))
        return out

    @cached_property
    def _to_read_groups(self) -> dict[str, set[str]]:
        if self.to_read is None or not len(self.to_read):
            return {}
        out: dict[str, set[str]] = {}
        for u, b in zip(
            self.to_read["user_id"].to_numpy(dtype=str), self.to_read["book_id"].to_numpy(dtype=str)
        ):
            out.setdefault(u, set()).add(b)
        return out

    def to_read_of(self, user_id: str) -> set[str]:
        """Books the reader shelved as to-read (a copy: callers may add to it)."""
        return set(self._to_read_groups.get(user_id, ()))

    def raters(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """(user rows, ratings) of everyone who rated ``item``; user rows sorted."""
        c = self.R_csc
        s, e = c.indptr[item], c.indptr[item + 1]
        return c.indices[s:e], c.data[s:e]

    def likers(self, item: int) -> np.ndarray:
        """Sorted user rows who rated ``item`` at or above LIKED (cached)."""
        cache = self.__dict__.setdefault("_likers", {})
        if item not in cache:
            users, r = self.raters(item)
            cache[item] = users[r >= LIKED]
        return cache[item]

    def book(self, book_id: str) -> Book:
        return self.books[self.index[book_id]]

    def history_matrix(self, histories: Sequence[Sequence[Rating]], weight) -> sp.csr_matrix:
        """Readers x items matrix with ``weight(ratings, ages) -> weights`` per reader's history.

        ``ages`` counts events back from the newest (0 = the last book rated; histories are
        oldest first); books outside the library are skipped.
        """
        rows, cols, vals = [], [], []
        for i, h in enumerate(histories):
            known = [r for r in h if r.book_id in self.index]
            if not known:
                continue
            ratings = np.array([r.rating for r in known], dtype=np.float64)
            ages = np.arange(len(known) - 1, -1, -1, dtype=np.float64)
            rows.append(np.full(len(known), i))
            cols.append(np.array([self.index[r.book_id] for r in known], dtype=np.int64))
            vals.append(weight(ratings, ages))
        if not rows:
            return sp.csr_matrix((len(histories), self.n_items))
        m = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(histories), self.n_items),
        )
        m.sum_duplicates()
        return m

    def history_row(self, history: Sequence[Rating], confidence) -> sp.csr_matrix:
        """One reader's history as a 1 x items CF input row (unknown books skipped)."""
        idx = [self.index[r.book_id] for r in history if r.book_id in self.index]
        vals = [r.rating for r in history if r.book_id in self.index]
        if not idx:
            return sp.csr_matrix((1, self.n_items), dtype=np.float32)
        w = confidence(np.asarray(vals, dtype=np.float32))
        m = sp.csr_matrix(
            (w, (np.zeros(len(idx), np.int64), np.asarray(idx))), shape=(1, self.n_items)
        )
        m.sum_duplicates()
        return m
