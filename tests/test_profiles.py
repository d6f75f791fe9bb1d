"""Profiles (:mod:`retrieval.profiles`): an update in place equals a rebuild; low ratings push
away; recent events weigh more (feedback through the Recommender: tests/test_feedback.py)."""

from __future__ import annotations

import numpy as np

from retrieval.config import ProfileConfig
from retrieval.profiles import build_profiles, profile_from_history, update_profile
from retrieval.types import Rating


def test_incremental_update_equals_rebuild():
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(30, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = {f"b{i}": i for i in range(30)}
    cfg = ProfileConfig(half_life_days=30, half_life_events=5)
    for has_ts in (True, False):
        hist = [
            Rating("u", f"b{i}", float(rng.integers(1, 6)), 1e9 + 86400 * 3 * i) for i in range(12)
        ]
        p = None
        for r in hist:
            p = update_profile(p, vecs[index[r.book_id]], r.rating, r.ts, cfg, has_ts)
        full = profile_from_history(hist, None, cfg, has_ts, matrix=vecs, index=index)
        assert np.allclose(p.vector, full.vector, atol=1e-5)
        assert p.n == full.n == 12
        import pandas as pd

        df = pd.DataFrame(
            {
                "user_id": "u",
                "book_id": [r.book_id for r in hist],
                "rating": [r.rating for r in hist],
                "ts": [r.ts for r in hist],
            }
        )
        users, bv, meta = build_profiles(df, index, vecs, cfg, has_ts)
        assert users == ["u"] and np.allclose(bv[0], full.vector, atol=1e-5)


def test_low_ratings_push_the_profile_away():
    vecs = np.eye(4, dtype=np.float32)
    index = {f"b{i}": i for i in range(4)}
    cfg = ProfileConfig()
    p = profile_from_history(
        [Rating("u", "b0", 5, 0), Rating("u", "b1", 1, 1)],
        None,
        cfg,
        False,
        matrix=vecs,
        index=index,
    )
    assert p.vector[0] > 0 > p.vector[1]


def test_recent_events_weigh_more():
    vecs = np.eye(4, dtype=np.float32)
    index = {f"b{i}": i for i in range(4)}
    cfg = ProfileConfig(half_life_events=2)
    p = profile_from_history(
        [Rating("u", "b0", 5, 0), Rating("u", "b1", 5, 1)],
        None,
        cfg,
        False,
        matrix=vecs,
        index=index,
    )
    assert p.vector[1] > p.vector[0] > 0
