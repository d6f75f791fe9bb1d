"""Privacy: `readnext forget` leaves no byte of a reader in the data dir; `export` hands all over.

A real ingest, a real chat server on 127.0.0.1 (gradio_client), real Chroma on disk; then every
file under the data dir is scanned for the reader id (UTF-8 and the UTF-32 numpy uses) and for
every profile vector the reader ever had (float32, at any byte offset, within 1e-5).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from assistant.chat import launch
from assistant.service import ReaderService, delete_upload
from retrieval.config import Settings
from retrieval.data import load_demo
from retrieval.index import ingest

from .conftest import ROOT, run_cli

GONE, IMPORTED, KEPT = "u0007", "gr-forget-me", "u0008"
MESSAGE = "a melancholy story about dragons and lighthouses"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_under(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()]


def id_hits(home: Path, user_id: str) -> list[str]:
    pats = [user_id.encode("utf-8"), user_id.encode("utf-32-le")]
    return [
        str(p.relative_to(home))
        for p in files_under(home)
        if any(x in p.read_bytes() for x in pats)
    ]


def vector_hits(home: Path, vectors: list[np.ndarray], tol: float = 1e-5) -> dict[str, int]:
    """Files holding any of ``vectors`` as 384 consecutive float32 values (any alignment)."""
    out: dict[str, int] = {}
    for p in files_under(home):
        buf = p.read_bytes()
        n = 0
        for off in range(4 if len(buf) >= 384 * 4 + 4 else 0):
            a = np.frombuffer(buf, dtype=np.float32, offset=off, count=(len(buf) - off) // 4)
            if len(a) < 384:
                continue
            with np.errstate(invalid="ignore"):
                for v in vectors:
                    for i in np.nonzero(np.abs(a[: len(a) - 383] - v[0]) < tol)[0]:
                        if np.allclose(a[i : i + 384], v, atol=tol):
                            n += 1
        if n:
            out[str(p.relative_to(home))] = n
    return out


@pytest.fixture(scope="module")
def home(emb_cache, tmp_path_factory):
    """A fresh data dir with its own copy of the embedding cache (forget prunes it)."""
    h = tmp_path_factory.mktemp("privacy") / "home"
    (h / "cache").mkdir(parents=True)
    for f in Path(emb_cache).glob("embeddings-*.sqlite"):
        c = sqlite3.connect(f)
        c.execute(f"VACUUM INTO '{h / 'cache' / f.name}'")  # a consistent copy (WAL included)
        c.close()
    ingest(load_demo(), Settings.load(home=h), progress=False, quiet=True)
    return h


def test_forget_leaves_no_trace_and_export_has_everything(home):
    from gradio_client import Client

    port = free_port()
    old_tmp = os.environ.get("GRADIO_TEMP_DIR")
    app = launch(Settings.load(home=home), host="127.0.0.1", port=port, block=False)
    svc: ReaderService = app.readnext_service
    rec = svc.rec
    try:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        vectors = [rec.profile(GONE).vector.copy()]
        picks = c.predict(user_id=GONE, message=MESSAGE, k=12, api_name="/recommend")["items"]
        for i, item in enumerate(picks):
            out = c.predict(
                user_id=GONE, book_id=item["book_id"], signal=str(1 + i % 5), api_name="/feedback"
            )
            assert out["ok"], out
            vectors.append(rec.profile(GONE).vector.copy())
        text = (ROOT / "tests" / "data" / "goodreads_library_export.csv").read_text(
            encoding="utf-8"
        )
        assert (
            c.predict(name=IMPORTED, csv_text=text, api_name="/import_goodreads")["ratings"] >= 15
        )
        imported_vec = rec.profile(IMPORTED).vector.copy()
        c.predict(user_id=IMPORTED, message=MESSAGE, k=5, api_name="/recommend")
        kept_vec = rec.profile(KEPT).vector.copy()

        # export: everything held, as JSON
        ex = c.predict(user_id=GONE, api_name="/export")
        assert len(ex["feedback"]["events"]) == 12 and len(ex["index_ratings"]) == len(
            rec.lib.history(GONE)
        )
        assert np.allclose(ex["profile"]["vector"], vectors[-1], atol=1e-6)
        assert ex["log_lines"] and all(ex["pseudonym_in_logs"] in ln for ln in ex["log_lines"])

        # the scanner works: before forget it finds the id, old vector copies, and log lines
        before = id_hits(home, GONE)
        assert any("ratings.npz" in f for f in before) and any(
            "chroma.sqlite3" in f for f in before
        )
        assert sum(vector_hits(home, vectors).values()) >= 2  # Chroma's log keeps old versions
        log = (home / "logs" / "requests.log").read_text()
        assert ex["pseudonym_in_logs"] in log and GONE not in log  # logs are pseudonymous
        # chat messages are not cached on disk
        h = hashlib.sha1(MESSAGE.encode()).hexdigest()
        for f in (home / "cache").glob("*.sqlite"):
            assert not sqlite3.connect(f).execute("SELECT 1 FROM emb WHERE h = ?", (h,)).fetchall()

        out = c.predict(user_id=GONE, confirm=False, api_name="/forget")
        assert "confirm" in out["error"] and rec.has_user(GONE)
        out = c.predict(user_id=GONE, confirm=True, api_name="/forget")
        assert (
            out["feedback"]["events"] == 12
            and out["profile_vectors"] == 1
            and out["log_lines"] >= 3
        )
        assert not rec.has_user(GONE) and GONE not in {u["user_id"] for u in rec.users()}
        assert (
            "unknown reader"
            in c.predict(user_id=GONE, message="hi", k=3, api_name="/recommend")["error"]
        )
        assert c.predict(
            user_id=KEPT, message="what should I read next?", k=3, api_name="/recommend"
        )["items"]  # others unharmed
    finally:
        app.close()
        rec.close()
        if old_tmp is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)

    # the CLI path, with no server running
    r = run_cli("forget", "--user", IMPORTED, "--json", home=home)
    assert r.returncode == 2 and "--yes" in r.stderr
    r = run_cli("forget", "--user", IMPORTED, "--yes", "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["feedback"]["events"] >= 15

    for who, vecs in ((GONE, vectors), (IMPORTED, [imported_vec])):
        assert id_hits(home, who) == [], who
        assert vector_hits(home, vecs) == {}, who
    assert vector_hits(home, [kept_vec])  # the other readers' vectors are still there
    r = run_cli("recommend", "--user", KEPT, "-k", "3", "--json", home=home)
    assert r.returncode == 0 and len(json.loads(r.stdout)["items"]) == 3
    r = run_cli("history", "--user", GONE, home=home)
    assert r.returncode == 2 and "unknown" in r.stderr


def test_export_cli_writes_everything(home):
    r = run_cli("export", "--user", KEPT, "--json", home=home)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["user_id"] == KEPT and data["history"] and len(data["profile"]["vector"]) == 384
    assert set(data) >= {"account", "index_ratings", "index_to_read", "feedback", "log_lines"}
    r = run_cli("export", "--user", "../../etc/passwd", home=home)
    assert r.returncode == 2 and "invalid reader id" in r.stderr and r.stderr.count("\n") == 1


def test_uploads_are_deleted_after_import(home, tmp_path):
    from assistant import Recommender

    up = home / "uploads" / ("f" * 40)
    up.mkdir(parents=True)
    f = up / "goodreads_library_export.csv"
    shutil.copy(ROOT / "tests" / "data" / "goodreads_library_export.csv", f)
    rec = Recommender.open(home)
    svc = ReaderService(rec)
    out = svc.import_goodreads(svc.caller(None), "upload-reader", path=str(f), delete_file=True)
    assert out["user_id"] == "upload-reader" and not f.exists() and not up.exists()
    bad = up.parent / "bad.csv"
    bad.write_text("not,a,goodreads,file\n1,2,3,4\n")
    with pytest.raises(Exception):
        svc.import_goodreads(svc.caller(None), "bad-upload", path=str(bad), delete_file=True)
    assert not bad.exists() and not rec.has_user("bad-upload")
    delete_upload(bad)  # idempotent
    rec.close()


def test_reingest_leaves_erased_readers_out(home):
    """After forget, ingesting the same dataset again does not bring the reader back."""
    r = run_cli("history", "--user", GONE, home=home)
    assert r.returncode == 2  # erased by the first test of this module
    out = ingest(load_demo(), Settings.load(home=home), progress=False, quiet=True)
    meta = json.loads((out / "meta.json").read_text())
    assert any("erased with `readnext forget`" in n for n in meta["notes"])
    assert id_hits(home, GONE) == []
    assert run_cli("history", "--user", KEPT, home=home).returncode == 0


def test_purging_a_reader_keeps_the_users_collection_hnsw_settings(tmp_path):
    """The rebuild after a forget recreates ``users`` with its own (wider) HNSW search, not
    Chroma's default: readers-like-you stays as exact after a forget as before it."""
    from retrieval.privacy import purge_from_collection
    from retrieval.store import USERS_EF_SEARCH, VectorStore

    vs = VectorStore(tmp_path / "chroma")
    rng = np.random.default_rng(0)
    vs.upsert("users", ["a", "b", "c"], rng.normal(size=(3, 8)).astype(np.float32))
    before = vs.users.configuration["hnsw"]
    assert before["ef_search"] == USERS_EF_SEARCH
    assert purge_from_collection(vs, "users", ["a"]) == 1
    assert vs.users.configuration["hnsw"] == before and vs.count("users") == 2
    vs.close()
    again = VectorStore(tmp_path / "chroma")  # as the next process opens it
    try:
        assert again.users.configuration["hnsw"] == before
        assert again.books.configuration["hnsw"]["ef_search"] != USERS_EF_SEARCH
        assert sorted(again.users.get()["ids"]) == ["b", "c"]
    finally:
        again.close()
