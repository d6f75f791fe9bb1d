"""Reader profiles: one vector per reader from the books they rated.

A profile is the rating-weighted, time-decayed mean of the book embeddings a reader rated:

    weight_i = (rating_i - pivot) / (5 - pivot) * 0.5 ** (age_i / half_life)

Ratings below ``pivot`` get negative weight, so a disliked book pushes the vector *away* from
itself. ``age`` is in days when the data has timestamps, else in events (the reader's later
events count as newer). We keep the unnormalised sum ``S`` (as a unit vector + its norm) and the
time of the newest event, so a new rating updates the profile in O(d) without a rebuild:
``S_new = S * 0.5 ** (dt / half_life) + w_new * e_new``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .config import ProfileConfig
from .types import Rating

DAY = 86400.0


@dataclass
class Profile:
    """A reader's taste vector (unit length) plus what an in-place update needs."""

    vector: np.ndarray
    norm: float  # |S| before normalisation
    t_ref: float  # time (or event number) of the newest event
    n: int  # number of events folded in

    def to_metadata(self) -> dict:
        return {"norm": float(self.norm), "t_ref": float(self.t_ref), "n_ratings": int(self.n)}


def rating_weight(rating: np.ndarray | float, pivot: float) -> np.ndarray | float:
    """Signed weight of a 1-5 rating: 5 -> 1.0, pivot -> 0, 1 -> negative."""
    return (np.asarray(rating, dtype=np.float64) - pivot) / (5.0 - pivot)


def _half_life(cfg: ProfileConfig, has_timestamps: bool) -> float:
    return cfg.half_life_days * DAY if has_timestamps else cfg.half_life_events


def _ages(ts: np.ndarray, has_timestamps: bool) -> np.ndarray:
    """Age of each event relative to the newest, in seconds or in events."""
    if has_timestamps:
        return ts.max() - ts
    order = np.argsort(np.argsort(ts, kind="stable"), kind="stable")
    return (len(ts) - 1 - order).astype(np.float64)


def profile_from_history(
    history: Sequence[Rating],
    vectors: Mapping[str, np.ndarray] | None,
    cfg: ProfileConfig,
    has_timestamps: bool,
    matrix: np.ndarray | None = None,
    index: Mapping[str, int] | None = None,
) -> Profile | None:
    """Build a profile from a list of ratings. Books without a vector are skipped."""
    rows = []
    for r in history:
        if matrix is not None and index is not None and r.book_id in index:
            rows.append((matrix[index[r.book_id]], r.rating, r.ts))
        elif vectors is not None and r.book_id in vectors:
            rows.append((vectors[r.book_id], r.rating, r.ts))
    if not rows:
        return None
    E = np.vstack([x[0] for x in rows]).astype(np.float64)
    ratings = np.array([x[1] for x in rows])
    ts = np.array([x[2] for x in rows], dtype=np.float64)
    w = rating_weight(ratings, cfg.pivot) * 0.5 ** (
        _ages(ts, has_timestamps) / _half_life(cfg, has_timestamps)
    )
    S = w @ E
    t_ref = float(ts.max()) if has_timestamps else float(len(ts) - 1)
    return _from_sum(S, t_ref, len(rows))


def _from_sum(S: np.ndarray, t_ref: float, n: int) -> Profile:
    norm = float(np.linalg.norm(S))
    vec = (S / norm if norm > 0 else S).astype(np.float32)
    return Profile(vector=vec, norm=norm, t_ref=t_ref, n=n)


def update_profile(
    profile: Profile | None,
    book_vector: np.ndarray,
    rating: float,
    ts: float | None,
    cfg: ProfileConfig,
    has_timestamps: bool,
) -> Profile:
    """Fold one new event into a profile in place of a rebuild.

    ``ts``: unix seconds when the data has timestamps; ignored otherwise (the event is the newest).
    """
    hl = _half_life(cfg, has_timestamps)
    w_raw = float(rating_weight(rating, cfg.pivot))
    if profile is None:
        t = float(ts) if has_timestamps and ts is not None else 0.0
        return _from_sum(w_raw * book_vector.astype(np.float64), t, 1)
    S = profile.vector.astype(np.float64) * profile.norm
    if has_timestamps:
        t = float(ts if ts is not None else profile.t_ref)
        if t >= profile.t_ref:
            S = S * 0.5 ** ((t - profile.t_ref) / hl) + w_raw * book_vector
            t_ref = t
        else:  # an older event arriving late: decay it, not the profile
            S = S + w_raw * 0.5 ** ((profile.t_ref - t) / hl) * book_vector
            t_ref = profile.t_ref
    else:
        S = S * 0.5 ** (1.0 / hl) + w_raw * book_vector
        t_ref = profile.t_ref + 1
    return _from_sum(S, t_ref, profile.n + 1)


def build_profiles(
    ratings: pd.DataFrame,
    item_index: Mapping[str, int],
    item_vectors: np.ndarray,
    cfg: ProfileConfig,
    has_timestamps: bool,
) -> tuple[list[str], np.ndarray, list[dict]]:
    """Profiles of every reader at once (vectorised: one sparse matrix product).

    Returns ``(user_ids, unit vectors, metadata)``; equal to calling :func:`profile_from_history`
    per reader.
    """
    df = ratings[ratings["book_id"].isin(item_index.keys())]
    if df.empty:
        return [], np.zeros((0, item_vectors.shape[1]), np.float32), []
    users, uidx = np.unique(df["user_id"].to_numpy(), return_inverse=True)
    items = df["book_id"].map(item_index).to_numpy()
    ts = df["ts"].to_numpy(dtype=np.float64)
    g = pd.DataFrame({"u": uidx, "ts": ts, "pos": np.arange(len(df))})
    if has_timestamps:
        t_ref = g.groupby("u")["ts"].transform("max").to_numpy()
        age = (t_ref - ts) / DAY
        hl = cfg.half_life_days
        t_ref_u = g.groupby("u")["ts"].max().to_numpy()
    else:
        # rank of each event within its reader, newest = 0 (ties by row order)
        g = g.sort_values(["u", "ts", "pos"], kind="stable")
        g["rank"] = g.groupby("u").cumcount(ascending=False)
        age = g.sort_values("pos")["rank"].to_numpy().astype(np.float64)
        hl = cfg.half_life_events
        t_ref_u = (np.bincount(uidx) - 1).astype(np.float64)
    w = rating_weight(df["rating"].to_numpy(), cfg.pivot) * 0.5 ** (age / hl)
    W = sp.csr_matrix((w, (uidx, items)), shape=(len(users), item_vectors.shape[0]))
    S = np.asarray(W @ item_vectors.astype(np.float64))
    norms = np.linalg.norm(S, axis=1)
    vecs = (S / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    counts = np.bincount(uidx)
    meta = [
        {"norm": float(n), "t_ref": float(t), "n_ratings": int(c)}
        for n, t, c in zip(norms, t_ref_u, counts)
    ]
    return [str(u) for u in users], vecs, meta
