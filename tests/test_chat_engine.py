"""The chat engine (issue #11): cards that stay, streamed turns, Goodreads re-imports, input
limits (reasons: tests/test_explain.py). Real demo index, real embedder, real Chroma, servers."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from assistant import Recommender
from assistant.chat_engine import ChatEngine
from assistant.cli import main as cli
from retrieval.config import Settings
from retrieval.errors import DataError, ReadnextError

from .conftest import ROOT

EXPORT = ROOT / "tests" / "data" / "goodreads_library_export.csv"


@pytest.fixture(scope="module")
def home(demo_home, tmp_path_factory) -> Path:
    h = tmp_path_factory.mktemp("ux") / "home"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


@pytest.fixture(scope="module")
def rec(home):
    r = Recommender.open(home)
    yield r
    r.close()


def _readers(rec, n: int, min_ratings: int = 20) -> list[str]:
    return [u["user_id"] for u in rec.users() if u["n_ratings"] >= min_ratings][:n]


# --------------------------------------------------------------------------- reasons


# --------------------------------------------------------------------------- chat turns


def test_cards_stay_across_why_and_tell_me_more(rec):
    eng = ChatEngine(rec, k=5, llm_picks=0)
    u = _readers(rec, 3)[2]
    st, _ = eng.select_reader(u)
    first = list(eng.respond(st, "what should I read next?"))[-1]
    shown = list(first.state.recs)
    assert len(first.cards) == 5 and not first.keeps_cards
    for msg in ("why #2?", "tell me more about #3", "help", "hello"):
        replies = list(eng.respond(first.state, msg))
        assert replies and all(r.keeps_cards for r in replies), msg
        assert replies[-1].state.recs == shown, msg
    why = list(eng.respond(first.state, "why #2?"))[-1]
    assert rec.books[shown[1]].title in why.text
    # the like button on card #2 still works after "why #2?"
    liked = list(eng.feedback(why.state, 1, "like"))[-1]
    assert shown[1] in {r.book_id for r in rec.history(u)}
    assert liked.cards and shown[1] not in [c.book_id for c in liked.cards]
    # a new request replaces the list
    new = list(eng.respond(liked.state, "more horror"))[-1]
    assert not new.keeps_cards


def test_onboarding_and_import_stream(rec):
    eng = ChatEngine(rec, k=5, llm_picks=0)
    onb = list(eng.onboard("ux-new", "The Hobbit", ["fantasy"]))
    assert len(onb) >= 2 and onb[0].keeps_cards and "Welcome" in onb[0].text
    assert len(onb[-1].cards) == 5 and onb[-1].text.startswith(onb[0].text.split("\n\n")[0])
    imp = list(eng.import_file(EXPORT, "ux-import"))
    assert len(imp) >= 3 and imp[0].text == "Reading your export…"
    assert "Imported 19 rated books" in imp[1].text and len(imp[-1].cards) == 5


def test_a_streamed_first_list_shows_the_welcome_once(rec, monkeypatch):
    """The LLM stage re-yields the same Reply as its text arrives: the welcome stays single."""
    eng = ChatEngine(rec, k=5, llm_picks=0)
    real = eng._recommend

    def twice(st, constraints):
        for r in real(st, constraints):
            yield r
            yield r  # as the LLM stage does, with the cards' text updated in place

    monkeypatch.setattr(eng, "_recommend", twice)
    last = list(eng.onboard("ux-new-twice", "The Hobbit"))[-1]
    assert last.text.count("Welcome") == 1 and last.cards
    last = list(eng.import_file(EXPORT, "ux-import-twice"))[-1]
    assert last.text.count("Imported 19 rated books") == 1 and last.cards


def test_every_chat_handler_is_a_generator(rec):
    """Each event that writes to the chat yields (streams) rather than returning once."""
    from assistant.chat import build_app

    app = build_app(rec, k=5)
    chat = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "rn-chat")
    handlers = [f for f in app.fns.values() if any(o._id == chat._id for o in f.outputs)]
    assert len(handlers) >= 5 + 5 * 4  # send, submit, use, start, import + 4 buttons per card
    assert all(inspect.isgeneratorfunction(f.fn) for f in handlers), [f.name for f in handlers]


# --------------------------------------------------------------------------- import


def _events(rec, user):
    return rec.feedback.events(rec.dataset, user)


def _n_ratings(rec, user):
    return next(u["n_ratings"] for u in rec.users() if u["user_id"] == user)


def test_reimport_is_idempotent_and_a_newer_export_updates(rec, home, tmp_path, capsys):
    args = [
        "import-goodreads",
        str(EXPORT),
        "--user",
        "ux-again",
        "--data-dir",
        str(home),
        "--json",
    ]
    assert cli(args) == 0
    first = json.loads(capsys.readouterr().out)
    rec2 = rec  # reads the feedback store and Chroma afresh on every call
    n_ev, hist = len(_events(rec2, "ux-again")), rec2.history("ux-again")
    assert first["added"] == first["ratings"] == len(hist) == _n_ratings(rec2, "ux-again") == 19
    assert cli(args) == 0  # the same file again: nothing changes
    again = json.loads(capsys.readouterr().out)
    assert (
        again["added"] == again["updated"] == again["to_read_added"] == 0
        and again["unchanged"] == 19
    )
    assert len(_events(rec2, "ux-again")) == n_ev and _n_ratings(rec2, "ux-again") == 19
    # a newer export: Hunger Games 5 -> 2 stars; Way of Kings moved from to-read to read (4★)
    lines = EXPORT.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].replace(",5,4.34,", ",2,4.34,")
    lines = [
        ln.replace(",0,4.64,", ",4,4.64,").replace("to-read,to-read (#1),to-read,", ",,read,")
        if "Way of Kings" in ln
        else ln
        for ln in lines
    ]
    newer = tmp_path / "newer.csv"
    newer.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert cli([*args[:1], str(newer), *args[2:]]) == 0
    upd = json.loads(capsys.readouterr().out)
    assert upd["updated"] == 1 and upd["added"] == 1, upd
    hist = {r.book_id: r.rating for r in rec2.history("ux-again")}
    hg = next(b for b, x in rec2.books.items() if x.title.startswith("The Hunger Games"))
    wok = next(b for b, x in rec2.books.items() if x.title.startswith("The Way of Kings"))
    assert hist[hg] == 2 and hist[wok] == 4 and len(hist) == _n_ratings(rec2, "ux-again") == 20
    # the stored profile equals a rebuild from the updated history
    from retrieval.profiles import profile_from_history

    p = rec2.profile("ux-again")
    want = profile_from_history(
        rec2.history("ux-again"),
        None,
        rec2.settings.profile,
        rec2.lib.has_timestamps,
        matrix=rec2.lib.vectors,
        index=rec2.lib.index,
    )
    assert np.allclose(p.vector, want.vector, atol=1e-5)


def test_currently_reading_is_excluded_and_reported(rec, tmp_path):
    from assistant.importer import import_export

    lines = EXPORT.read_text(encoding="utf-8").splitlines()
    plain = tmp_path / "plain.csv"  # everything but the currently-reading row
    plain.write_text(
        "\n".join(ln for ln in lines if "currently-reading" not in ln) + "\n", encoding="utf-8"
    )
    import_export(rec, plain, "ux-plain")
    top = rec.recommend(user_id="ux-plain", k=1)[0]
    # the same reader, now reading that top pick: it must not be recommended
    hdr, rows = lines[0], lines[1:]
    title = top.title.replace('"', '""')
    reading_row = (
        f'1,"{title}",{top.authors[0]},,,,,0,4.0,P,Paperback,300,2000,2000,,2024/01/01,'
        f"currently-reading,currently-reading (#1),currently-reading,,,,0,0"
    )
    withit = tmp_path / "reading.csv"
    withit.write_text(
        "\n".join([hdr, *(r for r in rows if "currently-reading" not in r), reading_row]) + "\n",
        encoding="utf-8",
    )
    res = import_export(rec, withit, "ux-reading")
    assert top.title in res.currently_reading
    assert (
        "1 book you are reading now" in res.message()
        and "is left out of your picks" in res.message()
    )
    picks = [r.book_id for r in rec.recommend(user_id="ux-reading", k=50)]
    assert top.book_id not in picks
    assert top.book_id not in {
        r.book_id for r in rec.history("ux-reading")
    }  # nothing learned from it


def test_import_messages_read_naturally(rec, tmp_path):
    from assistant.importer import import_export

    lines = EXPORT.read_text(encoding="utf-8").splitlines()
    one = tmp_path / "one.csv"
    keep = [lines[0], lines[1]] + [ln for ln in lines if "Tress of the Emerald Sea" in ln]
    one.write_text("\n".join(keep) + "\n", encoding="utf-8")
    msg = import_export(rec, one, "ux-one").message()
    assert "Imported 1 rated book as ux-one." in msg
    assert "1 book is not in this catalog: “Tress of the Emerald Sea”." in msg
    assert "rows" not in msg


def test_empty_or_unmatched_export_is_a_one_line_error(rec, home, tmp_path, capsys):
    from assistant.importer import import_export

    header_only = tmp_path / "empty.csv"
    header_only.write_text(
        EXPORT.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8"
    )
    assert (
        cli(["import-goodreads", str(header_only), "--user", "ux-empty", "--data-dir", str(home)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and str(header_only) in err
        and "no books after the header" in err
    )
    assert "Export library" in err
    assert not Recommender.open(home).has_user("ux-empty")
    nowhere = tmp_path / "nowhere.txt"
    nowhere.write_text("A Book Nobody Wrote\nAnother Missing Title\n", encoding="utf-8")
    with pytest.raises(DataError, match="none of the 2 books in this file are in the"):
        import_export(rec, nowhere, "ux-nowhere")
    assert not rec.has_user("ux-nowhere")


# --------------------------------------------------------------------------- input limits


def test_long_chat_message_is_refused_politely_without_echo(rec):
    eng = ChatEngine(rec, k=5, llm_picks=0)
    huge = "tell me about dragons " * 5000  # ~110 KB
    r = list(eng.respond(None, huge))[-1]
    assert r.keeps_cards and len(r.text) < 300 and "dragons" not in r.text
    assert f"{len(huge.strip()):,} characters" in r.text and "1,000" in r.text
    ok = list(eng.respond(None, "dragons " * 100))[-1]  # 800 characters: within the limit
    assert ok.cards and all(len(c.explanation) < 400 for c in ok.cards)
    with pytest.raises(ReadnextError, match="loved books is"):
        eng.new_reader("ux-long", "The Hobbit\n" * 500)


def test_long_query_is_a_short_error(home, capsys):
    q = "dragon " * 28_000  # ~200 KB, as in the issue
    assert cli(["recommend", "--query", q, "-k", "10", "--data-dir", str(home)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err) < 400 and "dragon" not in out.err
    assert "196,000 characters" in out.err and "chat.max_message_chars" in out.err


def test_limit_is_configurable_and_validated(home):
    s = Settings.load(home=home, env={"READNEXT_CHAT_MAX_MESSAGE_CHARS": "50"})
    assert s.chat.max_message_chars == 50
    with pytest.raises(ReadnextError, match="max_message_chars"):
        Settings.load(home=home, env={"READNEXT_CHAT_MAX_MESSAGE_CHARS": "0"})
    r = Recommender.open(home, settings=s)
    with pytest.raises(ReadnextError, match="limit is 50"):
        r.recommend(query="a" * 51)
    assert r.recommend(query="funny fantasy", k=3)
    r.close()


def test_api_does_not_echo_a_huge_message(rec):
    import socket

    from gradio_client import Client

    from assistant.chat import build_app

    app = build_app(rec, k=5)
    app.queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        out = client.predict(user_id="", message="fantasy " * 12_500, k=5, api_name="/recommend")
        assert len(json.dumps(out)) < 2_000 and out["items"] == []
    finally:
        app.close()
