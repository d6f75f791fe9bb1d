"""The Gradio chat app: a real server on 127.0.0.1 driven by gradio_client, and the engine
itself."""

from __future__ import annotations

import shutil
import socket

import pytest

from assistant import Recommender
from assistant.chat import build_app, launch
from assistant.chat_engine import ChatEngine, ChatState
from retrieval.config import Settings
from retrieval.errors import ReadnextError

from .conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chat_home(demo_home, tmp_path_factory):
    h = tmp_path_factory.mktemp("chat") / "home"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


@pytest.fixture(scope="module")
def server(chat_home):
    rec = Recommender.open(chat_home)
    app = build_app(rec, k=5)
    app.queue(default_concurrency_limit=4)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", rec
    app.close()
    rec.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


def test_api_lists_named_endpoints(client):
    api = client.view_api(print_info=False, return_format="dict")
    names = set(api["named_endpoints"])
    assert {"/recommend", "/feedback", "/new_reader", "/import_goodreads", "/readers"} <= names


def test_recommend_and_feedback_changes_next_answer(client, server):
    rec = server[1]
    u = next(x["user_id"] for x in rec.users() if x["n_ratings"] >= 30)
    first = client.predict(
        user_id=u, message="what should I read next?", k=5, api_name="/recommend"
    )
    ids = [i["book_id"] for i in first["items"]]
    assert len(ids) == 5 and all(i["explanation"] for i in first["items"])
    read = {r.book_id for r in rec.history(u)}
    assert not read & set(ids)
    assert any("no LLM" in n for n in first["notes"])  # the fallback is visible
    out = client.predict(user_id=u, book_id=ids[0], signal="not_interested", api_name="/feedback")
    assert out["ok"]
    out = client.predict(user_id=u, book_id=ids[1], signal="like", api_name="/feedback")
    assert out["ok"]
    second = client.predict(
        user_id=u, message="what should I read next?", k=5, api_name="/recommend"
    )
    ids2 = [i["book_id"] for i in second["items"]]
    assert (
        ids[0] not in ids2 and ids[1] not in ids2
    )  # dismissed and liked books are not offered again
    assert ids2 != ids
    # persisted: a fresh Recommender on the same data dir sees the feedback
    fresh = Recommender.open(rec.settings.home)
    assert ids[1] in {r.book_id for r in fresh.history(u)}
    fresh.close()


def test_new_reader_onboarding(client, server):
    rec = server[1]
    out = client.predict(
        name="onboard-test",
        loved="The Hobbit\nA Game of Thrones",
        genres=["fantasy"],
        api_name="/new_reader",
    )
    assert "Welcome" in out["text"] and out["user_id"] == "onboard-test"
    items = out["items"]
    assert len(items) == 5
    assert sum("fantasy" in i["tags"] for i in items) >= 4
    hobbit = next(b for b in rec.books.values() if b.title.startswith("The Hobbit"))
    assert hobbit.book_id not in [i["book_id"] for i in items]
    assert hobbit.book_id in {r.book_id for r in rec.history("onboard-test")}


def test_goodreads_import_through_the_api(client, server):
    rec = server[1]
    text = (ROOT / "tests" / "data" / "goodreads_library_export.csv").read_text(encoding="utf-8")
    out = client.predict(name="gr-reader", csv_text=text, api_name="/import_goodreads")
    assert out["user_id"] == "gr-reader"
    assert out["rows"] == 26 and out["matched"] >= 20
    assert set(out["unmatched"]) >= {"Fourth Wing"} or any(
        "Fourth Wing" in u for u in out["unmatched"]
    )
    assert out["to_read"] >= 3 and out["ratings"] >= 15
    recs = client.predict(
        user_id="gr-reader", message="what should I read next?", k=5, api_name="/recommend"
    )
    hist = {r.book_id for r in rec.history("gr-reader")}
    assert recs["items"] and not hist & {i["book_id"] for i in recs["items"]}


def test_engine_conversation_flow(chat_home):
    rec = Recommender.open(chat_home)
    eng = ChatEngine(rec, k=5, llm_picks=0)
    u = next(x["user_id"] for x in rec.users() if x["n_ratings"] >= 30)
    st, _ = eng.select_reader(u)
    r = list(eng.respond(st, "what should I read next?"))[-1]
    assert len(r.cards) == 5
    st = r.state
    # "why #2?" explains the second card from its evidence
    why = list(eng.respond(st, "why #2?"))[-1]
    assert rec.books[st.recs[1]].title in why.text
    # "tell me more about #1"
    more = list(eng.respond(st, "tell me more about #1"))[-1]
    assert rec.books[st.recs[0]].title in more.text
    # refine: "not fantasy" removes fantasy from the list
    r2 = list(eng.respond(st, "not fantasy"))[-1]
    assert r2.cards and all("fantasy" not in c.tags for c in r2.cards)
    # "more horror" boosts horror
    r3 = list(eng.respond(r2.state, "more horror"))[-1]
    assert sum("horror" in c.tags for c in r3.cards) >= 3
    # "something like Dune but shorter": similar, short books first, Dune itself excluded
    r4 = list(eng.respond(r3.state, "something like Dune but shorter"))[-1]
    dune = next(b for b in rec.books.values() if b.title.startswith("Dune (Dune, #1)"))
    assert dune.book_id not in [c.book_id for c in r4.cards]
    assert sum("short" in c.tags for c in r4.cards) >= 2
    # "I've read #1" records it and it disappears
    first = r4.state.recs[0]
    r5 = list(eng.respond(r4.state, "I've read #1"))[-1]
    assert first not in [c.book_id for c in r5.cards]
    assert first in {h.book_id for h in rec.history(u)}
    # "published after 2000"
    r6 = list(eng.respond(ChatState(user_id=u), "published after 2000"))[-1]
    assert r6.cards and all(c.year and c.year >= 2000 for c in r6.cards)
    rec.close()


def test_public_bind_requires_auth(chat_home):
    s = Settings.load(home=chat_home, env={})
    with pytest.raises(ReadnextError, match="--auth"):
        launch(s, host="0.0.0.0", port=free_port(), block=False)


class _ScriptedLLM:
    """A fake LLM for fast unit tests of the intent path: returns a fixed reply."""

    name = "scripted"
    model_id = "scripted"
    supports_logprobs = False
    supports_deadline = False  # the ResilientBackend wrapper asks

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.calls = 0

    def generate(self, messages, max_new_tokens=160, stop=None) -> str:
        self.calls += 1
        assert "<<<" in messages[-1]["content"]  # the reader's text arrives delimited
        return self.reply


def test_llm_intent_is_validated_and_rules_are_the_fallback(chat_home):
    from retrieval.index import Index

    s = Settings.load(home=chat_home, env={})
    # the chat_intent v2 schema (assistant.intent.INTENT_SCHEMA): flat fields, "kind"
    good = _ScriptedLLM(
        '{"kind": "refine", "anchor_title": null, "ref_index": null, '
        '"include_tags": ["horror", "not-a-tag"], "exclude_tags": [], "authors": ["Nobody Atall"], '
        '"year_min": 1990, "year_max": null, "shorter": false, "lighter": false, "newer": false, '
        '"older": false, "query_text": "scary"}'
    )
    rec = Recommender(Index.open(chat_home), s, llm=good)
    eng = ChatEngine(rec, k=5, llm_picks=0)
    assert eng.intents.mode == "llm+rules"  # the chat's default with an LLM (measured best)
    eng.intents.mode = "llm"  # here: the LLM's own answer, to check its validation
    it = eng.parse("give me something scary and recent")
    assert good.calls == 1 and it.kind == "refine"
    assert (
        it.include_tags == ["horror"] and it.authors == [] and it.year_min == 1990
    )  # unknown values dropped
    bad = _ScriptedLLM("Sure! Here are some great books for you.")
    rec2 = Recommender(Index.open(chat_home), s, llm=bad)
    eng2 = ChatEngine(rec2, k=5, llm_picks=0)
    it2 = eng2.parse("not romance")
    assert bad.calls == 1 and eng2.intent_fallbacks == 1
    assert it2.kind == "refine" and it2.exclude_tags == ["romance"]  # the rule-based parse
