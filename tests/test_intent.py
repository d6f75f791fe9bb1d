"""Rule-based intent parser: every phrase from the spec, with hand-written expectations."""

from __future__ import annotations

import pytest

from assistant.intent import Intent, parse_intent

TITLES = [
    "The Hunger Games (The Hunger Games, #1)",
    "Catching Fire (The Hunger Games, #2)",
    "Twilight (Twilight, #1)",
    "Dune (Dune Chronicles #1)",
    "Dune Messiah (Dune Chronicles #2)",
    "The Stand",
    "Gone with the Wind",
    "It",
]
TAGS = [
    "fantasy",
    "romance",
    "horror",
    "thriller",
    "thrillers",
    "dark",
    "science-fiction",
    "sci-fi",
    "young-adult",
    "ya",
    "humor",
    "funny",
    "mystery",
    "lighthearted",
    "vampires",
    "classics",
    "short-stories",
    "space-opera",
    "fiction",
]
AUTHORS = [
    "Ursula K. Le Guin",
    "Terry Pratchett",
    "Frank Herbert",
    "Stephen King",
    "Suzanne Collins",
]

DEFAULTS = Intent(kind="recommend").to_dict()


def parse(text: str) -> dict:
    return parse_intent(text, TITLES, TAGS, AUTHORS).to_dict()


def expect(**kw) -> dict:
    d = dict(DEFAULTS)
    d.update(kw)
    return d


def same(got: dict, want: dict) -> None:
    """Compare, treating tag lists as sets (their order carries no meaning)."""
    for k in ("include_tags", "exclude_tags"):
        assert set(got.pop(k)) == set(want.pop(k)), k
    assert got == want


SPEC = [
    ("what should I read next?", expect(kind="recommend")),
    (
        "something like Dune but shorter",
        expect(kind="more_like", title_ref="Dune (Dune Chronicles #1)", shorter=True),
    ),
    (
        "something like the hunger games but lighter",
        expect(kind="more_like", title_ref="The Hunger Games (The Hunger Games, #1)", lighter=True),
    ),
    ("more fantasy", expect(kind="refine", include_tags=["fantasy"], query_text="fantasy")),
    (
        "more dark thrillers",
        expect(
            kind="refine",
            include_tags=["dark", "thriller", "thrillers"],
            query_text="dark thrillers",
        ),
    ),
    ("not romance", expect(kind="refine", exclude_tags=["romance"])),
    ("no horror please", expect(kind="refine", exclude_tags=["horror"])),
    ("why this one?", expect(kind="why")),
    ("why #2?", expect(kind="why", ref_index=2)),
    ("tell me more about #2", expect(kind="details", ref_index=2)),
    ("I've read that", expect(kind="read_it")),
    ("already read #3", expect(kind="read_it", ref_index=3)),
    ("not interested in #1", expect(kind="not_interested", ref_index=1)),
    (
        "not interested in Twilight",
        expect(kind="not_interested", title_ref="Twilight (Twilight, #1)"),
    ),
    ("books by Ursula K. Le Guin", expect(kind="recommend", authors=["Ursula K. Le Guin"])),
    ("something newer", expect(kind="refine", newer=True)),
    ("published after 2000", expect(kind="refine", year_min=2001)),
    ("before 1950", expect(kind="refine", year_max=1949)),
    (
        "a short funny book",
        expect(kind="recommend", shorter=True, include_tags=["funny", "humor"], query_text="funny"),
    ),
]


@pytest.mark.parametrize("text, want", SPEC, ids=[t for t, _ in SPEC])
def test_spec_phrases(text: str, want: dict):
    same(parse(text), dict(want))


MORE = [
    ("hi", expect(kind="greeting")),
    ("Hello there!", expect(kind="greeting")),
    ("thanks!", expect(kind="greeting")),
    ("help", expect(kind="help")),
    ("what can you do?", expect(kind="help")),
    ("hello! what should I read next?", expect(kind="recommend")),
    ("why did you recommend Dune?", expect(kind="why", title_ref="Dune (Dune Chronicles #1)")),
    ("why the second one?", expect(kind="why", ref_index=2)),
    ("tell me about number 3", expect(kind="details", ref_index=3)),
    ("what is #4 about?", expect(kind="details", ref_index=4)),
    ("i read the second one", expect(kind="read_it", ref_index=2)),
    ("I've read Dune", expect(kind="read_it", title_ref="Dune (Dune Chronicles #1)")),
    ("I've already read it", expect(kind="read_it")),  # "it" is the book, not the novel "It"
    ("skip #4", expect(kind="not_interested", ref_index=4)),
    ("not interested in the last one", expect(kind="not_interested", ref_index=-1)),
    ("not interested in romance", expect(kind="refine", exclude_tags=["romance"])),
    ("I don't like horror", expect(kind="refine", exclude_tags=["horror"])),
    ("more like #2", expect(kind="more_like", ref_index=2)),
    ("more like this", expect(kind="more_like")),
    (
        "something like the hunger gmaes",
        expect(kind="more_like", title_ref="The Hunger Games (The Hunger Games, #1)"),
    ),
    (
        "something like Gone with the Wind but newer",  # "with" inside the title is kept
        expect(kind="more_like", title_ref="Gone with the Wind", newer=True),
    ),
    (
        "something like a cozy space opera",  # no such title: a free request
        expect(kind="recommend", include_tags=["space-opera"], query_text="cozy space opera"),
    ),
    (
        "fantasy but no romance",
        expect(
            kind="recommend",
            include_tags=["fantasy"],
            exclude_tags=["romance"],
            query_text="fantasy",
        ),
    ),
    (
        "fantasy without romance or vampires",
        expect(
            kind="recommend",
            include_tags=["fantasy"],
            exclude_tags=["romance", "vampires"],
            query_text="fantasy",
        ),
    ),
    (
        "less romance, more horror",
        expect(
            kind="refine", include_tags=["horror"], exclude_tags=["romance"], query_text="horror"
        ),
    ),
    (
        "scary ya books",
        expect(
            kind="recommend", include_tags=["horror", "ya", "young-adult"], query_text="scary ya"
        ),
    ),
    (
        "sci-fi from the 90s",
        expect(
            kind="recommend",
            include_tags=["science-fiction", "sci-fi"],
            year_min=1990,
            year_max=1999,
            query_text="sci-fi",
        ),
    ),
    ("between 1990 and 2005", expect(kind="refine", year_min=1990, year_max=2005)),
    ("since 2010", expect(kind="refine", year_min=2010)),
    (
        "19th century classics",
        expect(
            kind="recommend",
            include_tags=["classics"],
            year_min=1800,
            year_max=1899,
            query_text="classics",
        ),
    ),
    ("anything by pratchett", expect(kind="recommend", authors=["Terry Pratchett"])),
    ("more Ursula K. Le Guin", expect(kind="recommend", authors=["Ursula K. Le Guin"])),
    (
        "short stories",
        expect(kind="recommend", include_tags=["short-stories"], query_text="short stories"),
    ),
    (
        "space opera with political intrigue",
        expect(
            kind="recommend",
            include_tags=["space-opera"],
            query_text="space opera with political intrigue",
        ),
    ),
    ("something older", expect(kind="refine", older=True)),
]


@pytest.mark.parametrize("text, want", MORE, ids=[t for t, _ in MORE])
def test_more_phrases(text: str, want: dict):
    same(parse(text), dict(want))


def test_without_known_lists_phrases_are_copied():
    i = parse_intent("something like Dune but shorter")
    assert (i.kind, i.title_ref, i.shorter) == ("more_like", "Dune", True)
    i = parse_intent("not interested in Twilight")
    assert (i.kind, i.title_ref) == ("not_interested", "Twilight")
    i = parse_intent("books by Ursula K. Le Guin")
    assert (i.kind, i.authors) == ("recommend", ["Ursula K. Le Guin"])
    i = parse_intent("a short funny book")
    assert (i.include_tags, i.shorter, i.query_text) == ([], True, "funny")  # no tags to offer
    i = parse_intent("no horror please")  # refused words leave the query even without tags
    assert (i.kind, i.exclude_tags, i.query_text) == ("refine", [], "")


def test_only_known_tags_are_output():
    i = parse_intent("a short funny book", known_tags=["funny"])
    assert i.include_tags == ["funny"]
    i = parse_intent("something sci-fi", known_tags=["fantasy"])
    assert i.include_tags == [] and i.query_text == "sci-fi"


def test_unknown_title_stays_in_query():
    i = parse_intent("not interested in Moby Dick", TITLES, TAGS)
    assert (i.kind, i.title_ref, i.query_text) == ("not_interested", None, "Moby Dick")


def test_to_dict_is_plain_and_complete():
    d = parse_intent("why #2?").to_dict()
    assert set(d) == {
        "kind",
        "ref_index",
        "title_ref",
        "include_tags",
        "exclude_tags",
        "authors",
        "year_min",
        "year_max",
        "shorter",
        "lighter",
        "newer",
        "older",
        "query_text",
    }
    assert d["kind"] == "why" and d["ref_index"] == 2 and d["include_tags"] == []


def test_empty_text():
    assert parse_intent("").kind == "recommend"
    assert parse_intent("   ").query_text == ""
