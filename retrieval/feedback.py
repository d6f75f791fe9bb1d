"""Durable reader feedback (ratings, likes, "read it", "not interested") in SQLite.

Each write is its own transaction in WAL mode with ``synchronous=FULL``: once ``add`` returns,
the event survives a crash or power loss. The index is never rewritten for feedback. The store
is opened once and shared by every thread: each thread gets its own SQLite connection (a
connection must not be used by two threads at once), opened on its first call and reused.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ReadnextError

# What each chat signal means for the profile (a 1-5 rating) and whether the book is "read".
SIGNALS: dict[str, tuple[float | None, bool]] = {
    "like": (5.0, True),  # thumbs up on a recommendation: read it and loved it / strong interest
    "dislike": (1.5, False),  # thumbs down: pull the profile away, do not show again
    "read": (3.5, True),  # "I've read that" without a rating: mild positive, exclude
    "not_interested": (2.0, False),  # exclude; a mild push away
    "to_read": (None, False),  # shelve for later: a candidate to prioritise
    # Reading it now (Goodreads "currently-reading"): never recommend it, learn nothing yet.
    "currently_reading": (None, False),
}


@dataclass(frozen=True)
class FeedbackEvent:
    user_id: str
    book_id: str
    signal: str  # "rating" or a key of SIGNALS
    rating: float | None
    ts: float


def normalize_signal(value: float | int | str) -> tuple[str, float | None]:
    """Turn ``4``, ``"4"``, ``"like"``, ``"👍"`` ... into ``(signal, rating or None)``."""
    if isinstance(value, str):
        v = value.strip().lower().replace(" ", "_").replace("-", "_")
        v = {
            "👍": "like",
            "up": "like",
            "thumbs_up": "like",
            "👎": "dislike",
            "down": "dislike",
            "thumbs_down": "dislike",
            "read_it": "read",
            "seen": "read",
            "not": "not_interested",
            "toread": "to_read",
            "want": "to_read",
            "reading": "currently_reading",
        }.get(v, v)
        if v in SIGNALS:
            return v, SIGNALS[v][0]
        try:
            value = float(v)
        except ValueError:
            raise ReadnextError(
                f"unknown feedback {value!r}: use a rating 1-5 or one of {', '.join(SIGNALS)}"
            ) from None
    r = float(value)
    if not 1 <= r <= 5:
        raise ReadnextError(f"rating {value} out of range: use 1 to 5")
    return "rating", r


class FeedbackStore:
    """Append-only feedback log keyed by dataset, plus readers created in the app."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.executescript("""
                CREATE TABLE IF NOT EXISTS events (
                  id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL,
                  user_id TEXT NOT NULL, book_id TEXT NOT NULL, signal TEXT NOT NULL, rating REAL,
                  ts REAL NOT NULL, created REAL NOT NULL);
                CREATE INDEX IF NOT EXISTS events_user ON events(dataset, user_id);
                CREATE TABLE IF NOT EXISTS readers (
                  dataset TEXT NOT NULL, user_id TEXT NOT NULL, origin TEXT, created REAL NOT NULL,
                  PRIMARY KEY (dataset, user_id));
            """)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            self._local.conn = c
        return c

    def add(
        self,
        dataset: str,
        user_id: str,
        book_id: str,
        signal: str,
        rating: float | None,
        ts: float | None = None,
    ) -> FeedbackEvent:
        now = time.time()
        ev = FeedbackEvent(user_id, book_id, signal, rating, now if ts is None else ts)
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            c.execute(
                "INSERT INTO events (dataset, user_id, book_id, signal, rating, ts, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (dataset, user_id, book_id, signal, rating, ev.ts, now),
            )
            c.execute("COMMIT")
        return ev

    def add_many(self, dataset: str, events: list[FeedbackEvent]) -> None:
        now = time.time()
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            c.executemany(
                "INSERT INTO events (dataset, user_id, book_id, signal, rating, ts, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(dataset, e.user_id, e.book_id, e.signal, e.rating, e.ts, now) for e in events],
            )
            c.execute("COMMIT")

    def add_reader_with_events(
        self, dataset: str, user_id: str, origin: str, events: list[FeedbackEvent]
    ) -> None:
        """Create a reader (if new) and append their events, all in one transaction."""
        now = time.time()
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(
                "INSERT OR IGNORE INTO readers VALUES (?, ?, ?, ?)", (dataset, user_id, origin, now)
            )
            c.executemany(
                "INSERT INTO events (dataset, user_id, book_id, signal, rating, ts, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(dataset, e.user_id, e.book_id, e.signal, e.rating, e.ts, now) for e in events],
            )
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def events(self, dataset: str, user_id: str | None = None) -> list[FeedbackEvent]:
        q = "SELECT user_id, book_id, signal, rating, ts FROM events WHERE dataset = ?"
        args: list = [dataset]
        if user_id is not None:
            q += " AND user_id = ?"
            args.append(user_id)
        with self._conn() as c:
            return [FeedbackEvent(*row) for row in c.execute(q + " ORDER BY id", args)]

    def add_reader(self, dataset: str, user_id: str, origin: str) -> None:
        with self._conn() as c:
            c.execute(
                "INSERT OR IGNORE INTO readers VALUES (?, ?, ?, ?)",
                (dataset, user_id, origin, time.time()),
            )

    def readers(self, dataset: str) -> list[str]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT user_id FROM readers WHERE dataset = ? UNION "
                "SELECT DISTINCT user_id FROM events WHERE dataset = ?",
                (dataset, dataset),
            )
            return sorted(r[0] for r in rows)

    # -- privacy (``readnext forget`` / ``export``) ----------------------------------------------

    def export(self, user_id: str) -> dict:
        """Every row held about ``user_id``, in every dataset: ``{"readers", "events"}``."""
        with self._conn() as c:
            readers = [
                {"dataset": d, "origin": o, "created": t}
                for d, o, t in c.execute(
                    "SELECT dataset, origin, created FROM readers WHERE user_id = ? ORDER BY "
                    "created",
                    (user_id,),
                )
            ]
            events = [
                {"dataset": d, "book_id": b, "signal": s, "rating": r, "ts": ts, "created": cr}
                for d, b, s, r, ts, cr in c.execute(
                    "SELECT dataset, book_id, signal, rating, ts, created FROM events "
                    "WHERE user_id = ? ORDER BY id",
                    (user_id,),
                )
            ]
        return {"readers": readers, "events": events}

    def forget(self, user_id: str) -> dict[str, int]:
        """Delete every row of ``user_id`` so that no byte of it stays in the file or its WAL.

        ``secure_delete`` zeroes freed pages, ``VACUUM`` rewrites the file, and a truncating
        checkpoint empties the ``-wal`` file that would otherwise still hold the old pages.
        """
        with self._conn() as c:
            c.execute("PRAGMA secure_delete=ON")
            c.execute("BEGIN IMMEDIATE")
            n_ev = c.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            n_rd = c.execute("DELETE FROM readers WHERE user_id = ?", (user_id,)).rowcount
            c.execute("COMMIT")
            c.execute("VACUUM")
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"events": int(n_ev), "readers": int(n_rd)}
