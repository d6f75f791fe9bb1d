"""kill -9 of real processes: a chat server during feedback, an ingest at three points."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from assistant import Recommender
from retrieval.index import current_index_dir
from retrieval.profiles import profile_from_history

from .conftest import ROOT
from .live_server import ChatServer

pytestmark = pytest.mark.fault


def _events(home: Path) -> Counter:
    with sqlite3.connect(home / "feedback.sqlite") as c:
        return Counter(c.execute("SELECT user_id, book_id, signal FROM events"))


def _unrated(home: Path, users: list[str], n: int) -> dict[str, list[str]]:
    rec = Recommender.open(home)
    out = {}
    for u in users:
        rated = {r.book_id for r in rec.history(u)}
        out[u] = [b.book_id for b in rec.lib.books if b.book_id not in rated][:n]
    rec.close()
    return out


def test_kill_chat_server_during_feedback(demo_home, tmp_path):
    home = tmp_path / "h"
    shutil.copytree(demo_home, home, symlinks=True)
    users = [f"u{i:04d}" for i in range(1, 5)]
    todo = _unrated(home, users, 200)
    before = _events(home)
    srv = ChatServer(home)
    srv.wait_listening()
    acked: list[tuple[str, str, str]] = []
    sent: list[tuple[str, str, str]] = []
    lock, stop = threading.Lock(), threading.Event()

    def reader(u):
        for i, b in enumerate(todo[u]):
            if stop.is_set():
                return
            sig = "like" if i % 3 == 0 else str(1 + i % 5)
            with lock:
                sent.append((u, b, sig))
            try:
                r = srv.call("feedback", u, b, sig, timeout=120)
            except Exception:
                return  # the server is gone: this one was never acknowledged
            assert r.get("ok"), r
            with lock:
                acked.append((u, b, sig))

    threads = [threading.Thread(target=reader, args=(u,)) for u in users]
    for t in threads:
        t.start()
    end = time.monotonic() + 120
    while len(acked) < 40 and time.monotonic() < end:
        time.sleep(0.05)
    srv.kill()  # SIGKILL mid-stream: requests are in flight
    stop.set()
    for t in threads:
        t.join(60)
    assert len(acked) >= 40, open(srv.log).read()[-2000:]
    new = _events(home) - before
    stored = {(u, b, "rating" if s not in ("like",) else "like") for u, b, s in sent}
    for u, b, s in acked:
        key = (u, b, "like" if s == "like" else "rating")
        assert new[key] == 1, f"acknowledged {key} stored {new[key]} times"
    assert all(n == 1 for n in new.values()), "an event was duplicated"
    assert set(new) <= stored
    print(
        f"\nkill -9 during feedback: {len(acked)} acknowledged, {sum(new.values())} stored, 0 lost"
    )
    # the next rating heals a profile the kill interrupted: it equals a rebuild again
    rec = Recommender.open(home)
    for u in users:
        rec.add_feedback(u, todo[u][-1], 4)
        full = profile_from_history(
            rec.history(u),
            None,
            rec.settings.profile,
            rec.lib.has_timestamps,
            matrix=rec.lib.vectors,
            index=rec.lib.index,
        )
        assert rec.profile(u).n == full.n and np.allclose(
            rec.profile(u).vector, full.vector, atol=1e-4
        )
    rec.close()


def _cache_rows(cache: Path) -> int:
    files = list(cache.glob("embeddings-*.sqlite"))
    if not files:
        return 0
    try:
        with sqlite3.connect(f"file:{files[0]}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM emb").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _ingest(home: Path, hold: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, READNEXT_HOME=str(home), READNEXT_EMBEDDER_BATCH_SIZE="8")
    env.pop("READNEXT_TEST_HOLD_AFTER", None)
    if hold:
        env["READNEXT_TEST_HOLD_AFTER"] = hold
    return subprocess.Popen(
        [sys.executable, "-m", "assistant.cli", "ingest", "--no-progress"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_line(p: subprocess.Popen, needle: str, timeout: float = 300) -> list[str]:
    lines: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = p.stdout.readline()
        if not line and p.poll() is not None:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"ingest never printed {needle!r}: {''.join(lines)[-2000:]}")


def test_kill_ingest_at_three_points(demo_home, tmp_path):
    home = tmp_path / "h"
    shutil.copytree(demo_home, home, symlinks=True)
    (home / "cache").unlink()  # a cold cache of its own: the embedding step really runs
    (home / "cache").mkdir()
    live = current_index_dir(home)
    srv = ChatServer(home)
    srv.wait_listening()
    u = "u0001"
    procs: list[subprocess.Popen] = []

    def start(hold: str | None = None) -> subprocess.Popen:
        procs.append(_ingest(home, hold))
        return procs[-1]

    try:
        expected = [
            x["book_id"] for x in srv.call("recommend", u, "what should I read next?", 5)["items"]
        ]
        # 1. during the embedding: some chunks are done (the server's query vectors share the cache)
        base = _cache_rows(home / "cache")
        p = start()
        end = time.monotonic() + 300
        while (
            _cache_rows(home / "cache") < base + 64 and time.monotonic() < end and p.poll() is None
        ):
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        done = _cache_rows(home / "cache") - base
        assert 0 < done < 618, f"kill missed the embedding step ({done} embedded)"
        # 2. after the Chroma books collection is written; 3. after the CF model is fitted
        for point in ("chroma-books", "cf"):
            p = start(hold=point)
            out = _wait_line(p, f"holding after {point}")
            if point == "chroma-books":  # the rerun resumed: only the rest was embedded
                line = next(x for x in out if x.startswith("embedded"))
                assert line.strip() == f"embedded {618 - done:,} books ({done:,} from the cache)", (
                    line
                )
            p.send_signal(signal.SIGKILL)
            p.wait(30)
            assert current_index_dir(home) == live
            got = srv.call("recommend", u, "what should I read next?", 5)
            assert [x["book_id"] for x in got["items"]] == expected, (
                "the previous index stopped serving"
            )
        partial = [d for d in (home / "indexes").iterdir() if d.is_dir() and d != live]
        assert partial, "the killed ingests left no folder to clean (the test would prove nothing)"
        # the next start cleans the partial folders (the server holds only the live one)
        r = subprocess.run(
            [sys.executable, "-m", "assistant.cli", "users", "--limit", "1"],
            cwd=ROOT,
            env=dict(os.environ, READNEXT_HOME=str(home)),
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        assert [d.name for d in (home / "indexes").iterdir() if d.is_dir()] == [live.name]
        # the rerun completes from the cache, and the running server switches to it
        p = start()
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out
        assert "embedded 0 books (618 from the cache)" in out, out
        new = current_index_dir(home)
        assert new != live
        got = srv.call(
            "feedback", u, expected[0], "like"
        )  # first request after: triggers the switch
        assert got["ok"], got
        end = time.monotonic() + 120
        while live.exists() and time.monotonic() < end:
            srv.call("recommend", u, "what should I read next?", 3)
            time.sleep(0.5)
        assert not live.exists(), "the old index was never released by the server"
        assert [d.name for d in (home / "indexes").iterdir() if d.is_dir()] == [new.name]
        assert srv.call("feedback", u, expected[1], "4")["ok"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        srv.stop()
