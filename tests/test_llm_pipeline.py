"""The LLM stage inside the pipeline, with the real offline model (SmolLM2-135M GGUF on CPU)."""

from __future__ import annotations

import json
import shutil

import pytest

from assistant import Recommender
from assistant.chat_engine import ChatEngine
from assistant.grounding import check_grounding  # noqa: F401  (the guard the pipeline relies on)
from retrieval.config import Settings
from retrieval.index import Index

from .conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm():
    from assistant.llm import load_backend

    return load_backend("tiny")


@pytest.fixture(scope="module")
def home(demo_home, tmp_path_factory):
    h = tmp_path_factory.mktemp("llm") / "home"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


def _rec(home, llm, weight: float) -> Recommender:
    s = Settings.load(home=home, env={})
    s.llm.rerank_weight = weight
    # The real model on a shared, busy CPU: deadlines generous enough that they test text, not
    # speed.
    s.llm.timeout_s, s.llm.turn_budget_s = 600.0, 1800.0
    return Recommender(Index.open(home), s, llm=llm)


def test_rerank_is_a_permutation_and_weight_zero_keeps_retrieval_order(home, llm):
    rec = _rec(home, llm, 0.0)
    u = next(x["user_id"] for x in rec.users() if x["n_ratings"] >= 40)
    base = [r.book_id for r in rec.recommend(user_id=u, k=20)]
    res = rec.recommend_full(user_id=u, k=20, rerank="llm")
    assert [
        r.book_id for r in res.items
    ] == base  # a weak model must not degrade the default ranking
    rec2 = _rec(home, llm, 1.0)
    res2 = rec2.recommend_full(user_id=u, k=20, rerank="llm")
    got = [r.book_id for r in res2.items]
    assert (
        sorted(got) == sorted(base) and len(set(got)) == 20
    )  # a permutation of the same candidates
    assert all(r.llm_score is not None for r in res2.items)
    assert all(r.retrieval_score is not None for r in res2.items)


def test_llm_explanations_pass_the_guard_or_fall_back(home, llm):
    rec = _rec(home, llm, 0.0)
    allowed_titles = {b.title for b in rec.books.values()}
    n_llm = 0
    for u in [x["user_id"] for x in rec.users() if x["n_ratings"] >= 30][:3]:
        hist = {r.book_id for r in rec.history(u)}
        items = rec.recommend(user_id=u, k=3, explain_llm=3)
        for r in items:
            assert r.explanation
            assert r.explanation_source in ("llm", "template")
            assert r.prompt_version
            if r.explanation_source == "llm":
                n_llm += 1
                text = (r.explanation or "") + " " + (r.blurb or "")
                # any catalog title named in LLM text is the candidate's own or one from the history
                named = {t for t in allowed_titles if len(t) > 6 and t.split(" (")[0] in text}
                ok = {rec.books[r.book_id].title} | {rec.books[b].title for b in hist}
                assert named <= ok, named - ok
            else:
                assert (
                    r.rejected_reason or r.explanation
                )  # the template text, with the reason recorded
    # The tiny model passes the guard sometimes; the point is that nothing unchecked gets through.
    assert n_llm >= 0


def test_cli_rerank_llm_json(home):
    p = run_cli(
        "recommend",
        "--user",
        "u0003",
        "-k",
        "3",
        "--rerank",
        "llm",
        "--llm",
        "tiny",
        "--json",
        "--explain-llm",
        "1",
        home=home,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["items"]) == 3
    for item in out["items"]:
        assert "llm_score" in item and item["llm_score"] is not None
        assert item["explanation_source"] in ("llm", "template")
    assert "blurb" in out["items"][0]


def test_chat_streams_llm_text_into_top_pick(home, llm):
    rec = _rec(home, llm, 0.0)
    eng = ChatEngine(rec, k=3, llm_picks=1)
    u = next(x["user_id"] for x in rec.users() if x["n_ratings"] >= 30)
    st, _ = eng.select_reader(u)
    # Replies share their card objects (the UI re-renders them as they fill in), so record what
    # each reply showed at the moment it was yielded.
    replies, shown = [], []
    for r in eng.respond(st, "what should I read next?"):
        replies.append(r)
        shown.append(r.cards[0].explanation_source if r.cards else None)
    assert len(replies) >= 3  # cards first, then streamed updates, then the checked result
    assert replies[0].cards and shown[0] == "template"
    assert "streaming" in shown  # LLM text shows up while it is generated
    final = replies[-1]
    assert final.streaming is False
    assert final.cards[0].explanation_source in ("llm", "template")
