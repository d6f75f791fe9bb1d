"""Chroma as a server: ``chroma.mode = "http"`` sends ingest and recommend to a real
``chroma run`` on 127.0.0.1 (temporary path, random port), started and stopped by the test.

Bounded: the server starts in a second or two; the demo ingest (cached embeddings) takes ~10 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from retrieval.config import Settings
from retrieval.errors import ReadnextError

from .live_server import free_port

CHROMA = Path(sys.executable).with_name("chroma")


@pytest.fixture
def chroma_server(tmp_path):
    """A real ``chroma run`` on a random loopback port; always stopped at teardown."""
    if not CHROMA.is_file():
        pytest.skip(f"{CHROMA} missing (chromadb's server binary)")
    port = free_port()
    log = open(tmp_path / "chroma.log", "w")
    proc = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(tmp_path / "chroma-db"), "--host", "127.0.0.1"]
        + ["--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, ANONYMIZED_TELEMETRY="False"),
    )
    try:
        end = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"chroma run exited: {(tmp_path / 'chroma.log').read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                raise TimeoutError("chroma run: no heartbeat after 30 s")
            time.sleep(0.1)
        yield port, tmp_path / "chroma-db"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        log.close()


def _settings(home: Path, port: int) -> Settings:
    env = {
        "READNEXT_CHROMA_MODE": "http",
        "READNEXT_CHROMA_PORT": str(port),
        "READNEXT_LLM_BACKEND": "none",
    }
    return Settings.load(home=home, env=env, sasrec={"max_epochs": 2, "patience": 1})


def test_ingest_and_recommend_through_a_chroma_server(chroma_server, tmp_path, emb_cache):
    from assistant import Recommender
    from retrieval.data import load_demo
    from retrieval.index import ingest
    from retrieval.store import VectorStore, chroma_client

    port, db = chroma_server
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").symlink_to(emb_cache, target_is_directory=True)
    s = _settings(home, port)
    assert s.chroma.mode == "http" and s.chroma.port == port
    out = ingest(load_demo(), s, progress=False, quiet=True)

    # nothing embedded in the index folder: the vectors live in the server's collections
    assert not (out / "chroma").exists()
    names = {c.name for c in chroma_client(out / "chroma", s.chroma).list_collections()}
    assert names == {f"readnext-{out.name}-books", f"readnext-{out.name}-users"}
    assert any(db.iterdir())  # the server persisted them under its --path

    rec = Recommender.open(settings=s)
    try:
        assert rec.store.names["books"] == f"readnext-{out.name}-books"
        n_books = len(rec.books)
        assert rec.store.count("books") == n_books
        assert rec.store.count("users") > 0
        res = rec.recommend_full(user_id="u0001", query="a funny fantasy book", k=5)
        assert len(res.items) == 5
        assert len({r.book_id for r in res.items}) == 5
        assert "content" in {s for r in res.items for s in r.sources}  # dense retrieval answered
        # feedback updates the reader's vector on the server
        before = rec.store.get_vectors("users", ["u0001"])["u0001"]
        rec.add_feedback("u0001", res.items[0].book_id, 1)
        after = VectorStore(out / "chroma", chroma=s.chroma).get_vectors("users", ["u0001"])
        assert not (before == after["u0001"]).all()
    finally:
        rec.close()

    # the same index read embedded finds nothing: the mode really switched the storage
    shutil.rmtree(out / "chroma", ignore_errors=True)
    assert VectorStore(out / "chroma").count("books") == 0


def test_unreachable_server_is_one_clear_line(tmp_path):
    from retrieval.store import VectorStore

    s = _settings(tmp_path, free_port())  # nothing listens there
    with pytest.raises(ReadnextError) as e:
        VectorStore(tmp_path / "chroma", chroma=s.chroma)
    msg = str(e.value)
    assert "\n" not in msg and "cannot reach the Chroma server" in msg and "chroma run" in msg


def test_chroma_settings_are_validated():
    with pytest.raises(ReadnextError, match="chroma.mode"):
        Settings.load(env={"READNEXT_CHROMA_MODE": "cloud"})
    with pytest.raises(ReadnextError, match="chroma.port"):
        Settings.load(env={"READNEXT_CHROMA_PORT": "70000"})


def test_rest_workers_share_feedback_through_a_chroma_server(chroma_server, tmp_path, emb_cache):
    """``readnext serve --workers 2``: a rating taken by one worker is in the next list that the
    other worker answers, and its profile reaches the Chroma server both share."""
    from retrieval.data import load_demo
    from retrieval.index import ingest
    from retrieval.store import VectorStore

    from .conftest import ROOT

    port, _ = chroma_server
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").symlink_to(emb_cache, target_is_directory=True)
    s = _settings(home, port)
    out = ingest(load_demo(), s, progress=False, quiet=True)
    env = dict(
        os.environ,
        READNEXT_CHROMA_MODE="http",
        READNEXT_CHROMA_PORT=str(port),
        READNEXT_LLM_BACKEND="none",
    )
    key = subprocess.run(
        [sys.executable, "-m", "assistant.cli", "keys", "create", "--admin", "--json"]
        + ["--data-dir", str(home)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    key = __import__("json").loads(key)["key"]
    rest_port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant.cli", "serve", "--workers", "2"]
        + ["--port", str(rest_port), "--data-dir", str(home)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{rest_port}"
    clients: dict[int, httpx.Client] = {}
    try:
        end = time.monotonic() + 240
        # one keep-alive connection per client: each sticks to the worker that accepted it
        while len(clients) < 2:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < end, "two workers did not answer in 240 s"
            c = httpx.Client(
                base_url=url,
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
                limits=httpx.Limits(max_connections=1),
            )
            try:
                pid = c.get("/v1/healthz").json()["worker"]
            except httpx.HTTPError:
                c.close()
                time.sleep(0.3)
                continue
            if pid in clients:
                c.close()
            else:
                clients[pid] = c
        (pa, a), (pb, b) = clients.items()
        assert pa != pb and a.get("/v1/healthz").json()["worker"] == pa
        body = {"reader": "u0001", "query": "what should I read next?", "k": 5}
        top = b.post("/v1/recommend", json=body).json()["items"][0]["book_id"]
        before = VectorStore(out / "chroma", chroma=s.chroma).get_vectors("users", ["u0001"])
        fb = a.post("/v1/feedback", json={"reader": "u0001", "book_id": top, "signal": 1})
        assert fb.status_code == 200, fb.text
        assert b.get("/v1/healthz").json()["worker"] == pb  # the other worker answers next
        ids = [r["book_id"] for r in b.post("/v1/recommend", json=body).json()["items"]]
        assert top not in ids
        hist = b.get("/v1/readers/u0001/history").json()["items"]
        assert hist[-1]["book_id"] == top and hist[-1]["rating"] == 1
        after = VectorStore(out / "chroma", chroma=s.chroma).get_vectors("users", ["u0001"])
        assert not (before["u0001"] == after["u0001"]).all()  # written to the shared server
    finally:
        for c in clients.values():
            c.close()
        proc.terminate()  # the parent stops its workers (SIGTERM) and exits
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert "worker 1" in (tmp_path / "serve.log").read_text()


def test_several_workers_over_an_embedded_chroma_are_refused(tmp_path):
    from .conftest import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "assistant.cli", "serve", "--workers", "3"]
        + ["--data-dir", str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ, READNEXT_LLM_BACKEND="none"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    msg = out.stderr.strip()
    assert "\n" not in msg and "--workers 3 needs Chroma as a server" in msg, msg
