"""Request understanding, lexical + anchor retrieval, follow-ups and the conversation eval,
on the real demo index (real embedder, real Chroma)."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest

from assistant import Recommender
from assistant.chat_engine import ChatEngine
from assistant.intent import IntentParser, follow_up, intent_parser, recommend_request
from retrieval.matcher import CatalogMatcher
from retrieval.types import Book

from .conftest import run_cli


@pytest.fixture(scope="module")
def conv_home(demo_home, tmp_path_factory):
    h = tmp_path_factory.mktemp("conv") / "home"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


@pytest.fixture(scope="module")
def rec(conv_home):
    r = Recommender.open(conv_home, llm="none")
    yield r
    r.close()


def _book(rec, prefix: str) -> Book:
    return next(b for b in rec.books.values() if b.title.startswith(prefix))


# ---------------------------------------------------------------------------- the matcher


def test_one_matcher_for_titles_authors_and_series(rec):
    m = CatalogMatcher(list(rec.books.values()))
    assert m.title("the hunger gmaes").title == "The Hunger Games (The Hunger Games, #1)"
    assert m.title("dune by frank herbert").title == "Dune (Dune, #1)"
    assert m.title("Mistborn").title == "The Final Empire (Mistborn, #1)"  # a series -> volume 1
    assert m.title("zzzz qqqq wwww") is None
    assert m.title("the hunger gmaes", exact_only=True) is None
    assert m.author("pratchett") == "Terry Pratchett"  # a unique surname
    assert m.author("pratchet") == "Terry Pratchett"  # a near spelling of it
    assert m.author("Ursula K. Le Guin") == "Ursula K. Le Guin"
    assert m.author("Agatha Cristie") == "Agatha Christie"
    assert m.author("Nobody Atall") is None


def test_chat_engine_and_goodreads_share_the_matcher(rec):
    import retrieval.goodreads as gr

    eng = ChatEngine(rec, k=5, llm_picks=0)
    assert eng.find_title("the hunger gmaes") == _book(rec, "The Hunger Games (").book_id
    assert gr.best_match.__module__ == "retrieval.matcher"  # goodreads' fuzzy calls go through it


# ---------------------------------------------------------------------------- lexical + dense


def test_two_tag_requests_find_books_carrying_both(rec):
    """Target: >= 3 of the top 5 carry both tags whenever >= 5 unread books do (cold reader).

    "Unread" books that series order forbids (volume 4 while 3 is unread) cannot be offered, so
    a pair counts when >= 5 recommendable books carry both tags.
    """
    from retrieval.series import series_filter

    p = intent_parser(rec)
    books = list(rec.books.values())
    tags = sorted({t for b in books for t in b.tags} - {"short", "long"})
    met = total = 0
    missed = []
    for t1, t2 in itertools.combinations(tags, 2):
        both = [b.book_id for b in books if t1 in b.tags and t2 in b.tags]
        blocked = series_filter(both, (), rec.books, index=rec.lib.series_index)
        if len(set(both) - blocked) < 5:
            continue
        it = p.parse(f"a {t1.replace('-', ' ')} {t2.replace('-', ' ')} book")
        req = follow_up(None, it, None, rec.books, rec.settings.request.tag_boost)
        items = recommend_request(rec, req, None, 5).items
        total += 1
        n = sum(t1 in r.tags and t2 in r.tags for r in items)
        met += n >= 3
        if n < 3:
            missed.append((t1, t2, n, [r.title for r in items]))
    # Measured 218/218 (and 932/932 with warm readers) in isolation; one full-session run gave
    # 208/218, so the bound leaves room for near-tie orderings instead of hiding them.
    assert total > 100 and met >= 0.95 * total, missed[:5]


def test_cli_query_uses_the_request_understanding(conv_home):
    r = run_cli("recommend", "--query", "a funny fantasy", "-k", "5", "--json", home=conv_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["understood"]["intent"]["include_tags"]) == {"funny", "fantasy"}
    both = [i for i in out["items"] if {"funny", "fantasy"} <= set(i["tags"])]
    assert len(both) >= 3
    assert any(s == "lexical" for i in out["items"] for s in i["sources"])


# ---------------------------------------------------------------------------- anchors + follow-ups


def test_like_x_uses_neighbours_never_the_anchor_text(rec):
    eng = ChatEngine(rec, k=5, llm_picks=0)
    u = next(x["user_id"] for x in rec.users() if x["n_ratings"] >= 30)
    st, _ = eng.select_reader(u)
    dune = _book(rec, "Dune (Dune, #1)")
    r = list(eng.respond(st, "something like Dune but shorter"))[-1]
    assert (
        "books like “Dune (Dune, #1)”" in r.text and "shorter" in r.text
    )  # says what it understood
    ids = [c.book_id for c in r.cards]
    assert dune.book_id not in ids and len(ids) == 5
    for c in r.cards:
        assert dune.description[:40] not in c.explanation and "Tags:" not in c.explanation
        assert "It matches what you asked for" not in c.explanation
    assert sum(any(e.kind == "anchor" for e in c.evidence) for c in r.cards) >= 3
    assert sum("short" in c.tags for c in r.cards) >= 3
    assert r.state.ref_book == dune.book_id and r.state.constraints["shorter"]
    # anchor evidence is re-checkable against the data
    from retrieval.evidence import verify

    hist = rec.history(u)
    assert all(
        verify(rec.lib, c.book_id, e, hist)
        for c in r.cards
        for e in c.evidence
        if e.kind == "anchor"
    )
    # "but newer" refines the same anchor: newer than Dune itself
    r2 = list(eng.respond(r.state, "newer"))[-1]
    assert r2.state.ref_book == dune.book_id and r2.state.constraints["shorter"]
    assert all(c.year and c.year > dune.year for c in r2.cards)
    # a wanted tag the anchor lacks is a new topic: the anchor goes, the other constraints stay
    r3 = list(eng.respond(r2.state, "more fantasy, not romance"))[-1]
    assert r3.state.ref_book is None and "like “Dune" not in r3.text
    assert all("fantasy" in c.tags and "romance" not in c.tags for c in r3.cards)
    # a new request resets everything
    r4 = list(eng.respond(r3.state, "books by Terry Pratchett"))[-1]
    assert r4.state.constraints["include_tags"] == [] and not r4.state.constraints["shorter"]
    assert r4.cards and all("Terry Pratchett" in c.authors for c in r4.cards)


def test_follow_up_rules():
    books = {"a": Book("a", "Dune", ("Frank Herbert",), 1965, ("science-fiction",))}
    from assistant.intent import Intent

    first = follow_up(None, Intent(kind="more_like", shorter=True), "a", books)
    assert first.anchor == "a" and first.constraints.shorter
    more = follow_up(first, Intent(kind="refine", newer=True), None, books)
    assert more.anchor == "a" and more.constraints.shorter and more.constraints.ref_year == 1965
    fresh = follow_up(
        more, Intent(kind="recommend", include_tags=["horror"], query_text="horror"), None, books
    )
    assert fresh.anchor is None and not fresh.constraints.shorter and fresh.query == "horror"


# ---------------------------------------------------------------------------- the LLM path


class _JsonLLM:
    """A fake backend with the ``generate_json`` API: returns a fixed object."""

    name = "scripted"
    model_id = "scripted"

    def __init__(self, obj):
        self.obj, self.calls, self.schemas = obj, 0, []

    def generate_json(self, messages, schema, max_new_tokens=256, deadline=None):
        self.calls += 1
        self.schemas.append(schema)
        assert "<<<" in messages[-1]["content"]
        if isinstance(self.obj, Exception):
            raise self.obj
        return self.obj


def test_llm_intent_is_schema_constrained_and_validated(rec):
    books = list(rec.books.values())
    obj = {
        "title": "the hunger gmaes",
        "ref": None,
        "authors": ["Nobody Atall", "pratchett"],
        "want": ["scary", "not-a-tag"],
        "avoid": ["romance"],
        "year_min": 2001,
        "year_max": None,
        "flags": ["shorter"],
        "kind": "more_like",
        "topic": "x",
    }
    llm = _JsonLLM(obj)
    p = IntentParser(books, llm)
    it = p.parse("like the hunger gmaes, scary, by pratchett, no romance")
    assert llm.calls == 1 and p.last_source == "llm"
    schema = llm.schemas[0]
    # the schema offers only the catalog's tags (length is the "shorter" flag, not a tag)
    assert set(schema["properties"]["want"]["items"]["enum"]) == set(p.tags) - {"short", "long"}
    assert it.kind == "more_like" and it.title_ref == "The Hunger Games (The Hunger Games, #1)"
    assert it.include_tags == ["horror"] and it.exclude_tags == [
        "romance"
    ]  # synonyms, no invention
    assert it.authors == ["Terry Pratchett"] and it.year_min == 2001 and it.shorter
    # a title or author the message never names is the model's invention: dropped
    it2 = IntentParser(books, _JsonLLM(obj)).parse("a cozy mystery")
    assert it2.title_ref is None and it2.authors == [] and it2.kind == "recommend"
    # the same message again is answered from the cache (greedy decoding gives the same JSON)
    p.parse("like the hunger  gmaes, scary, by pratchett, no romance")
    assert llm.calls == 1 and p.cache_hits == 1
    for bad in ({"kind": "dance"}, "not json", RuntimeError("backend down")):
        p2 = IntentParser(books, _JsonLLM(bad))
        it2 = p2.parse("not romance")
        assert p2.fallbacks == 1 and p2.last_source == "rules"
        assert it2.kind == "refine" and it2.exclude_tags == ["romance"]


def test_llm_plus_rules_keeps_the_rules_and_fills_what_they_left_out(rec):
    from assistant.intent import unexplained_words

    books = list(rec.books.values())
    # the v2-prompt failure on "published before 1980" (held-out): kind more_like, older set
    wrong = {"kind": "more_like", "want": ["mystery"], "flags": ["older"]}
    alone = IntentParser(books, _JsonLLM(wrong), mode="llm")
    both = IntentParser(books, _JsonLLM(wrong), mode="llm+rules")
    a = alone.parse("published before 1980")
    b = both.parse("published before 1980")
    assert a.year_max is None and a.older and a.kind == "recommend"
    assert both.last_source == "llm+rules"
    # the rules read every word: nothing is left for the LLM to add
    assert b.kind == "refine" and b.year_max == 1979 and not b.older and b.include_tags == []
    # words the rules cannot place: the LLM's tags are added, the rules' polarity wins
    words = unexplained_words(both.rules("a story about wizards, not romance"))
    assert "wizards" in words and "romance" not in words
    llm = {"kind": "recommend", "want": ["magic", "romance"], "avoid": ["horror"]}
    c = IntentParser(books, _JsonLLM(llm), mode="llm+rules").parse(
        "a story about wizards, not romance"
    )
    assert c.kind == "recommend" and c.include_tags == ["magic"]
    assert c.exclude_tags == ["romance", "horror"]
    # an anchor only the LLM found (and the message names) makes it "like X"
    hg = {"kind": "more_like", "title": "the hunger gaems"}
    msg = "that hunger gaems book was great"
    assert IntentParser(books).parse(msg).title_ref is None  # the rules see no title here
    d = IntentParser(books, _JsonLLM(hg), mode="llm+rules").parse(msg)
    assert d.kind == "more_like" and d.title_ref == "The Hunger Games (The Hunger Games, #1)"
    with pytest.raises(ValueError, match="mode"):
        IntentParser(books, None, mode="llm-only")


# ---------------------------------------------------------------------------- measured


def test_rules_parser_meets_the_labelled_set_target(rec):
    from eval.intents import DEFAULT_SET, HELDOUT_SET, load_requests, score

    p = IntentParser(list(rec.books.values()))
    for path in (DEFAULT_SET, HELDOUT_SET):
        reqs = load_requests(path)
        res = score(p.parse, reqs, n_boot=100)
        assert res["fully_correct"] >= 0.85, (path.name, res["failures"])
    assert len(load_requests(DEFAULT_SET)) + len(load_requests(HELDOUT_SET)) >= 60


@pytest.mark.slow
def test_conversation_eval_runs_through_the_chat_engine(demo_home, tmp_path):
    from eval.conversation import run_conversation_eval

    out = run_conversation_eval(
        "demo",
        readers=12,
        turns=3,
        seed=7,
        out=tmp_path,
        cache_dir=demo_home / "cache",
        progress=False,
        n_boot=100,
    )
    r = out["results"]["rules"]
    assert r["leak_rate"] == 0.0 and r["readers"] == 12
    assert [p["turn"] for p in r["per_turn"]] == [1, 2, 3]
    rec3 = [p["recall@10"] for p in r["per_turn"]]
    assert rec3 == sorted(rec3)  # a found target stays found
    convs = [json.loads(x) for x in (tmp_path / "conversations.jsonl").read_text().splitlines()]
    assert len(convs) == 12 and all(t["message"] for c in convs for t in c["turns"])
    assert (tmp_path / "report.md").read_text().startswith("# Simulated-reader conversations")


class _RulesAsJSON:
    """A scripted LLM whose JSON is the rules' own parse of the message (chat_intent v3 keys):
    the LLM side of the study must then reproduce the rules side exactly."""

    name = model_id = "rules-as-json"

    def __init__(self, books):
        self.parser = IntentParser(books)
        self.calls = 0

    def generate_json(self, messages, schema, max_new_tokens=256, deadline=None):
        import re

        self.calls += 1
        text = re.search(r"<<<(.*)>>>", messages[-1]["content"], re.S).group(1)
        it = self.parser.rules(text)
        obj = {"kind": it.kind, "want": it.include_tags, "avoid": it.exclude_tags}
        if it.title_ref:
            obj["title"] = re.sub(r"\s*\([^)]*#[^)]*\)\s*$", "", it.title_ref)
        if it.ref_index is not None:
            obj["ref"] = it.ref_index
        obj.update(authors=it.authors, year_min=it.year_min, year_max=it.year_max)
        obj["flags"] = [f for f in ("shorter", "lighter", "newer", "older") if getattr(it, f)]
        obj["topic"] = it.query_text
        return obj


@pytest.mark.slow
def test_conversation_study_compares_parsers_on_the_same_readers(demo_home, tmp_path):
    from eval.conversation import run_conversation_eval
    from retrieval.data import load_demo

    fake = _RulesAsJSON(load_demo().books)
    out = run_conversation_eval(
        "demo",
        readers=10,
        turns=3,
        seed=7,
        parsers=("rules", "llm", "llm+rules"),
        llm=fake,
        llm_readers=4,
        out=tmp_path,
        cache_dir=demo_home / "cache",
        progress=False,
        n_boot=100,
    )
    res = out["results"]
    assert res["rules"]["readers"] == 10 and out["meta"]["llm_readers"] == {
        "llm": 4,
        "llm+rules": 4,
    }
    for name in ("llm", "llm+rules"):
        same = res[f"rules_on_{name}_readers"]
        assert res[name]["readers"] == 4 and same["readers"] == 4
        # the same 4 readers, the same parses: the same lists, so every paired difference is 0
        assert [p["recall@10"] for p in res[name]["per_turn"]] == [
            p["recall@10"] for p in same["recall_per_turn"]
        ]
        assert all(d["mean"] == 0 for d in res[f"{name}_minus_rules"].values())
        assert res[name]["intent_fallbacks"] == 0 and res[name]["mode"] == name
        assert 0 < res[name]["model_calls"] + res[name]["cached_parses"] <= res[name]["turns_total"]
    # the second LLM parser hears the same messages: every answer comes from the shared cache
    assert res["llm+rules"]["model_calls"] == 0 and fake.calls == res["llm"]["model_calls"]
    report = (tmp_path / "report.md").read_text()
    assert "Side by side on the same 4 readers (parser `llm+rules`)" in report


def test_a_follow_up_wish_changes_the_list_or_says_why_not(rec):
    eng = ChatEngine(rec, k=5, llm_picks=0)
    u = next(x["user_id"] for x in rec.users() if x["n_ratings"] >= 30)
    st, _ = eng.select_reader(u)
    r1 = list(eng.respond(st, "more fantasy"))[-1]
    r2 = list(eng.respond(r1.state, "shorter"))[-1]
    assert all("fantasy" in c.tags for c in r2.cards)  # the wish never leaves the topic
    if any("short" in b.tags and "fantasy" in b.tags for b in rec.books.values()):
        short = sum("short" in c.tags for c in r2.cards)
        assert short > sum("short" in c.tags for c in r1.cards) and short >= 1
    # a wish the picks cannot meet is said, not silently ignored
    from assistant.recommender import _unmet_wishes
    from retrieval.constraints import Constraints

    long_only = [c for c in r1.cards if "short" not in c.tags]
    said = _unmet_wishes(Constraints(shorter=True), long_only)
    assert said and "tagged short" in said[0]
    assert not _unmet_wishes(Constraints(shorter=True), [c for c in r2.cards])


def test_a_typed_name_with_spaces_becomes_a_reader_id():
    from retrieval.errors import ReadnextError
    from retrieval.privacy import reader_id_from_name

    assert reader_id_from_name("  Iris   Murdoch ") == "Iris-Murdoch"
    for bad in ("../etc", "a/b", "", "x" * 80):
        with pytest.raises(ReadnextError):
            reader_id_from_name(bad)
