"""Identity: with accounts, each account is a reader and nobody reads or changes another's data.

Real servers on 127.0.0.1 (the real `launch`, scrypt-checked logins) driven by gradio_client.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest

from assistant import Recommender
from assistant.accounts import AccountStore
from assistant.chat import build_app, launch
from retrieval.config import Settings

from .conftest import ROOT

A, B, NEW, ADMIN = "u0001", "u0002", "carol", "root"
PW = {A: "pw-of-a-1", B: "pw-of-b-2", NEW: "pw-of-carol", ADMIN: "pw-of-root"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def home(demo_home, tmp_path_factory):
    h = tmp_path_factory.mktemp("ident") / "home"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


@pytest.fixture(scope="module")
def server(home):
    """A real `readnext chat` with three --auth accounts and one admin from the accounts file."""
    AccountStore.for_home(home).add(ADMIN, PW[ADMIN], "admin")
    old_tmp = os.environ.get("GRADIO_TEMP_DIR")
    port = free_port()
    app = launch(
        Settings.load(home=home),
        host="127.0.0.1",
        port=port,
        block=False,
        auth=[f"{u}:{PW[u]}" for u in (A, B, NEW)],
    )
    yield f"http://127.0.0.1:{port}/", app.readnext_service.rec
    app.close()
    app.readnext_service.rec.close()
    if old_tmp is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)


def client(url: str, user: str):
    from gradio_client import Client

    return Client(url, auth=(user, PW[user]), verbose=False)


def test_sign_in_is_required(server):
    from gradio_client import Client

    with pytest.raises(Exception):
        Client(server[0], verbose=False)
    with pytest.raises(Exception):
        Client(server[0], auth=(A, "wrong-password"), verbose=False)


def test_reader_recommends_only_for_themself(server):
    url, rec = server
    a = client(url, A)
    own = a.predict(user_id="", message="what should I read next?", k=5, api_name="/recommend")
    assert own["user_id"] == A and len(own["items"]) == 5
    mine = {r.book_id for r in rec.history(A)}
    theirs = {r.book_id for r in rec.history(B)} - mine
    shown = {i["book_id"] for i in own["items"]}
    cited = {b for i in own["items"] for e in i["evidence"] for b in e.get("book_ids", [])}
    assert cited <= mine | shown  # evidence cites only A's own books (or the pick itself)
    assert not cited & theirs
    other = a.predict(user_id=B, message="what should I read next?", k=5, api_name="/recommend")
    assert "error" in other and "own" in other["error"] and not other.get("items")
    big = a.predict(user_id="", message="hi", k=1000, api_name="/recommend")
    assert "between 1 and 50" in big["error"]


def test_reader_cannot_change_another_reader(server):
    url, rec = server
    a = client(url, A)
    before = len(rec.feedback.events(rec.dataset, B))
    prof = rec.profile(B)
    book = next(b for b in rec.books if b not in {r.book_id for r in rec.history(B)})
    out = a.predict(user_id=B, book_id=book, signal="like", api_name="/feedback")
    assert out["ok"] is False and "own" in out["error"]
    assert len(rec.feedback.events(rec.dataset, B)) == before
    assert (rec.profile(B).vector == prof.vector).all()
    gone = a.predict(user_id=B, confirm=True, api_name="/forget")
    assert "own" in gone["error"] and rec.has_user(B)
    # A's own feedback works and lands in A's history only
    ok = a.predict(user_id="", book_id=book, signal="like", api_name="/feedback")
    assert ok["ok"] and ok["user_id"] == A
    assert book in {r.book_id for r in rec.history(A)}
    assert len(rec.feedback.events(rec.dataset, B)) == before


def test_readers_listing_and_export_show_only_yourself(server):
    url, rec = server
    a = client(url, A)
    assert [r["user_id"] for r in a.predict(limit=500, api_name="/readers")] == [A]
    ex = a.predict(user_id="", api_name="/export")
    assert ex["user_id"] == A and ex["history"] and ex["account"]["role"] == "reader"
    assert "hash" not in json.dumps(ex["account"])
    assert "own" in a.predict(user_id=B, api_name="/export")["error"]
    # the page itself carries no reader ids when there are accounts
    assert B not in json.dumps(a.config)
    root = client(url, ADMIN)
    listed = {r["user_id"] for r in root.predict(limit=500, api_name="/readers")}
    assert {A, B} <= listed
    assert (
        root.predict(user_id=B, message="more fantasy", k=3, api_name="/recommend")["user_id"] == B
    )


def test_import_and_onboarding_act_on_your_own_reader(server):
    url, rec = server
    c = client(url, NEW)
    text = (ROOT / "tests" / "data" / "goodreads_library_export.csv").read_text(encoding="utf-8")
    bad = c.predict(name=B, csv_text=text, api_name="/import_goodreads")
    assert "own" in bad["error"]
    assert (
        "own" in c.predict(name=A, loved="The Hobbit", genres=[], api_name="/new_reader")["error"]
    )
    out = c.predict(name="", csv_text=text, api_name="/import_goodreads")
    assert out["user_id"] == NEW and out["ratings"] >= 15
    hist_b = rec.history(B)
    assert all(r.book_id for r in hist_b) and NEW not in {
        u["user_id"] for u in client(url, B).predict(limit=500, api_name="/readers")
    }
    recs = c.predict(user_id="", message="what should I read next?", k=5, api_name="/recommend")
    assert recs["user_id"] == NEW and recs["items"]


@pytest.fixture(scope="module")
def owner(home):
    """Single-user (loopback, no accounts): the owner may pick any existing reader."""
    rec = Recommender.open(home)
    app = build_app(rec, k=5)
    app.queue(default_concurrency_limit=4)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    from gradio_client import Client

    yield Client(f"http://127.0.0.1:{port}/", verbose=False), rec
    app.close()
    rec.close()


def test_owner_mode_validates_ids_and_creates_no_reader(owner):
    c, rec = owner
    n = len(rec.users())
    out = c.predict(
        user_id="../../etc/passwd", book_id="b0001", signal="like", api_name="/feedback"
    )
    assert out["ok"] is False and "invalid reader id" in out["error"]
    out = c.predict(user_id="nobody-yet", book_id="b0001", signal="like", api_name="/feedback")
    assert out["ok"] is False and "unknown reader" in out["error"]
    guest = c.predict(user_id="", message="a funny fantasy", k=5, api_name="/recommend")
    assert guest["user_id"] is None and guest["items"] and any("guest" in x for x in guest["notes"])
    assert len(rec.users()) == n and not rec.has_user("nobody-yet")
    assert "between 1 and 500" in c.predict(limit=100000, api_name="/readers")["error"]
    assert (
        c.predict(user_id=B, message="hi", k=3, api_name="/recommend")["user_id"] == B
    )  # owner picks


def test_service_forces_the_session_reader(home):
    """The chat UI's handlers ask the service too: a reader's session is always their own."""
    from assistant.accounts import AccountStore
    from assistant.chat_engine import ChatEngine, ChatState
    from assistant.service import AccessDenied, ReaderService

    rec = Recommender.open(home)
    accounts = AccountStore(None, [(A, PW[A], "reader"), (ADMIN, PW[ADMIN], "admin")])
    svc = ReaderService(rec, accounts)
    me = svc.caller(A)
    with pytest.raises(AccessDenied):
        svc.select(me, B)
    with pytest.raises(AccessDenied):
        svc.caller(None)  # no anonymous calls once there are accounts
    with pytest.raises(AccessDenied):
        svc.caller("mallory")
    forged = ChatState(user_id=B, recs=["b0001"]).to_dict()
    assert svc.session_state(me, forged).user_id == A
    assert svc.select(svc.caller(ADMIN), B) == B
    # an anonymous single-user session is an ephemeral guest: feedback is kept in the state only
    eng = ChatEngine(rec, k=5, llm_picks=0)
    n = len(rec.users())
    first = list(eng.respond(ChatState(), "a funny fantasy"))[-1]
    assert first.state.user_id is None and any("nothing is saved" in x for x in first.notes)
    liked = first.state.recs[0]
    after = list(eng.feedback(first.state, 0, "like"))[-1]
    assert after.state.user_id is None and [liked, 5.0] in after.state.session_ratings
    assert liked not in after.state.recs and len(rec.users()) == n
    rec.close()
