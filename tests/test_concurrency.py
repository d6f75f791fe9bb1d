"""Many readers at once: stores opened once, no lost profile updates, atomic all-or-nothing writes,
and a live index switch that lets requests in flight finish on the old index."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from assistant import Recommender
from retrieval.config import Settings
from retrieval.data import load_demo
from retrieval.errors import NotFoundError
from retrieval.index import current_index_dir, ingest
from retrieval.profiles import profile_from_history


@pytest.fixture()
def home(demo_home, tmp_path):
    h = tmp_path / "h"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


def _rebuild(rec, u):
    return profile_from_history(
        rec.history(u),
        None,
        rec.settings.profile,
        rec.lib.has_timestamps,
        matrix=rec.lib.vectors,
        index=rec.lib.index,
    )


def test_four_concurrent_first_feedbacks_on_a_fresh_recommender(home):
    rec = Recommender.open(home)  # nothing opened yet: the first calls race to open Chroma
    users = [u["user_id"] for u in rec.users()[:4]]
    gate = threading.Barrier(4)

    def first(u):
        gate.wait()
        rec.add_feedback(u, "b0083", 4)
        return u

    with ThreadPoolExecutor(4) as ex:
        assert sorted(ex.map(first, users)) == sorted(users)  # an exception would re-raise here
    for u in users:
        stored, full = rec.profile(u), _rebuild(rec, u)
        assert stored.n == full.n and np.allclose(stored.vector, full.vector, atol=1e-4)
    rec.close()


def test_stored_profile_equals_rebuild_after_8_threads_x_10_ratings(home):
    rec = Recommender.open(home)
    u = rec.users()[0]["user_id"]
    rated = {r.book_id for r in rec.history(u)}
    books = [b.book_id for b in rec.lib.books if b.book_id not in rated][:80]
    n0 = len(rec.history(u))
    gate = threading.Barrier(8)

    def rater(t):
        gate.wait()
        for i in range(10):
            rec.add_feedback(u, books[t * 10 + i], 1 + (t + i) % 5)

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(rater, range(8)))
    stored, full = rec.profile(u), _rebuild(rec, u)
    assert len(rec.history(u)) == n0 + 80
    assert stored.n == full.n == n0 + 80, "a profile update was lost"
    assert np.allclose(stored.vector, full.vector, atol=1e-4)
    rec.close()
    # a second process sees the same stored vector
    rec2 = Recommender.open(home)
    assert np.allclose(rec2.profile(u).vector, full.vector, atol=1e-4)
    rec2.close()


def test_create_reader_is_all_or_nothing(home):
    rec = Recommender.open(home)
    with pytest.raises(NotFoundError):
        rec.create_reader("half", [("b0001", 5), ("b0002", 4), ("no-such-book", 5)], origin="test")
    assert not rec.has_user("half")
    with sqlite3.connect(home / "feedback.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM events WHERE user_id = 'half'").fetchone()[0] == 0
    rec.create_reader("whole", [("b0001", 5), ("b0002", 4)], origin="test", to_read=["b0003"])
    assert len(rec.history("whole")) == 2 and rec.profile("whole").n == 2
    rec.close()


def test_requests_in_flight_finish_on_the_old_index_then_it_is_collected(home):
    rec = Recommender.open(home)
    u = rec.users()[0]["user_id"]
    old = rec.index.path
    rec.add_feedback(u, "b0083", 5)  # opens the store of the old index
    ingest(load_demo(), Settings.load(home=home, env={}), progress=False, quiet=True)
    new = current_index_dir(home)
    assert new != old and old.exists(), "the served index was deleted under a running reader"
    seen, switched = [], threading.Event()
    inside = threading.Event()

    def in_flight():
        with rec._serving.shared():  # what every public method holds for one request
            inside.set()
            seen.append(rec.index.path)
            time.sleep(0.5)
            seen.append(rec.index.path)

    t = threading.Thread(target=in_flight)
    t.start()
    inside.wait()
    r = threading.Thread(target=lambda: rec.reload() and switched.set())
    r.start()
    time.sleep(0.2)
    assert not switched.is_set(), "the switch did not wait for the request in flight"
    t.join()
    r.join(30)
    assert switched.is_set() and seen == [old, old]
    assert rec.index.path == new and not old.exists()  # released and collected after the switch
    # feedback after the switch goes to the new index's store (the old one is gone)
    rec.add_feedback(u, "b0084", 4)
    assert np.allclose(rec.profile(u).vector, _rebuild(rec, u).vector, atol=1e-4)
    assert rec.profile(u).n == _rebuild(rec, u).n  # the feedback before the switch is folded in
    rec.close()
