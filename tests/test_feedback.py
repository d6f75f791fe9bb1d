"""Feedback (:mod:`retrieval.feedback`) is durable, survives a reopen, changes the next answer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from assistant import Recommender
from retrieval.profiles import profile_from_history

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "data" / "demo" / "tuned-config.toml"


@pytest.fixture()
def home(demo_home, tmp_path):
    h = tmp_path / "h"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


def test_feedback_changes_next_answer_and_survives_reopen(home):
    rec = Recommender.open(home)
    u = next(x["user_id"] for x in rec.users() if x["n_ratings"] >= 20)
    before = rec.recommend(user_id=u, k=5)
    top = before[0].book_id
    stored0 = rec.profile(u)
    rec.add_feedback(u, top, "not_interested")
    after = rec.recommend(user_id=u, k=5)
    assert top not in [r.book_id for r in after]
    # a 5-star rating moves the stored vector toward that book, in place
    target = before[1].book_id
    rec.add_feedback(u, target, 5)
    stored1 = rec.profile(u)
    v = rec.lib.vectors[rec.lib.index[target]]
    assert stored1.n == stored0.n + 2
    assert float(stored1.vector @ v) > float(stored0.vector @ v)
    # the stored vector equals a rebuild from the full history (index ratings + feedback)
    full = profile_from_history(
        rec.history(u),
        None,
        rec.settings.profile,
        rec.lib.has_timestamps,
        matrix=rec.lib.vectors,
        index=rec.lib.index,
    )
    assert np.allclose(stored1.vector, full.vector, atol=1e-4)
    rec.close()
    rec2 = Recommender.open(home)
    assert target in {r.book_id for r in rec2.history(u)}
    assert top not in [r.book_id for r in rec2.recommend(user_id=u, k=5)]
    assert np.allclose(rec2.profile(u).vector, stored1.vector, atol=1e-6)
    rec2.close()


def test_new_reader_onboarding(home):
    # with the demo's own tuned settings, as `make chat` runs the demo (scripts/chat.sh): the
    # goodbooks-tuned defaults (SASRec weight 8) gave this reader 4 fantasy books of 10
    shutil.copy(DEMO_CONFIG, home / "config.toml")
    rec = Recommender.open(home)
    fantasy = [b.book_id for b in rec.lib.books if "fantasy" in b.tags][:3]
    rec.create_reader("alice", [(b, 5) for b in fantasy], origin="test")
    assert {"user_id": "alice", "n_ratings": 3} in rec.users()
    recs = rec.recommend(user_id="alice", k=10)
    assert not set(fantasy) & {r.book_id for r in recs}
    assert sum("fantasy" in r.tags for r in recs) >= 5
    assert rec.similar_readers("alice", 3)
    rec.close()
