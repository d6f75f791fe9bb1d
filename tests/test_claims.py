"""The claim checker on hand-made true and false texts about real demo records.

The false texts include the ones a reader saw shown as "checked" before the checker existed
(issue #10): an invented plot, the author made a character, a tautological blurb, a generic
"because it tells about a story ..." explanation.
"""

from __future__ import annotations

import re

import pytest

from assistant.claims import (
    ClaimContext,
    catalog_tag_vocab,
    check_claims,
    facets,
    jaccard,
    plot_support,
    stem,
)
from retrieval.data import load_demo
from retrieval.types import Evidence

DEMO = load_demo()
BOOKS = {b.book_id: b for b in DEMO.books}
BY_TITLE = {b.title.split(" (")[0]: b for b in DEMO.books}
VOCAB = catalog_tag_vocab(DEMO.books)


def ctx(title: str, history=(), evidence=(), query=None) -> ClaimContext:
    return ClaimContext(
        BY_TITLE[title],
        tuple(evidence),
        [(BY_TITLE[t], r) for t, r in history],
        BOOKS,
        query,
        VOCAB,
    )


def bid(title: str) -> str:
    return BY_TITLE[title].book_id


@pytest.fixture
def leviathan() -> ClaimContext:
    """A reader who loved Project Hail Mary and disliked Gone Girl; the pick is Leviathan Wakes."""
    return ctx(
        "Leviathan Wakes",
        [("Project Hail Mary", 5.0), ("Gone Girl", 2.0)],
        [
            Evidence(
                "shared_tags",
                book_ids=(bid("Project Hail Mary"),),
                tags=("science-fiction", "fast-paced"),
            )
        ],
    )


@pytest.fixture
def gone_girl() -> ClaimContext:
    return ctx(
        "Gone Girl",
        [("Leviathan Wakes", 4.0)],
        [Evidence("shared_tags", book_ids=(bid("Leviathan Wakes"),), tags=("mystery",))],
    )


TRUE_WHY = "You loved Project Hail Mary, and this is fast-paced science fiction too."


def test_records_are_what_the_tests_assume():
    lw = BY_TITLE["Leviathan Wakes"]
    assert (
        "missing heiress" in lw.description
        and "science-fiction" in lw.tags
        and lw.series_index == 1
    )
    assert BY_TITLE["Gone Girl"].authors == ("Gillian Flynn",)


# -- true texts pass -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "why, blurb",
    [
        (
            TRUE_WHY,
            "A weary detective on an asteroid station searches for a missing heiress, while an ice "
            "hauler crew survives an attack that could start a war.",
        ),
        (
            "Like Project Hail Mary, this fast-paced science fiction opens The Expanse series.",
            "Set between Earth, Mars and the Belt, a detective hunts a missing heiress while an "
            "ice hauler's crew survives an attack.",
        ),
        (
            "Since you rated Project Hail Mary 5 stars, try this fast-paced space opera.",
            "A space-opera mystery: a detective searches for a missing heiress, and both trails "
            "lead somewhere stranger.",
        ),
    ],
)
def test_true_texts_pass(leviathan, why, blurb):
    assert check_claims(why, blurb, leviathan) is None


def test_true_gone_girl_text_passes(gone_girl):
    assert (
        check_claims(
            "Like Leviathan Wakes, which you enjoyed, it is a mystery.",
            "On their fifth wedding anniversary a man's wife disappears from their Missouri home, "
            "and suspicion falls on him.",
            gone_girl,
        )
        is None
    )


# -- false texts fail, each for the right reason -------------------------------------------------
@pytest.mark.parametrize(
    "why, blurb, needle",
    [
        # issue #10: an invented plot and character built from a title word
        (
            TRUE_WHY,
            "Leviathan Wakes is a story about a man named Leviathan who goes undercover to find a "
            "missing heiress.",
            "character 'Leviathan'",
        ),
        # issue #10: a generic explanation that says nothing true about the book or the reader
        (
            "You may enjoy this book because it tells about a story where your life will be "
            "saved when there are people around whom you can share memories.",
            None,
            "does not support",
        ),
        # issue #10: a tautological blurb
        (
            TRUE_WHY,
            "Leviathan Wakes is a science fiction novel written by James S.A. Corey for the "
            "science fiction genre.",
            "tautology",
        ),
        # the reader rated Gone Girl 2
        ("You loved Gone Girl, and this is fast-paced science fiction too.", None, "rated it 2"),
        ("You gave Gone Girl 5 stars, so try this fast-paced science fiction.", None, "rated it 2"),
        # positions, sequels, numbers, tags, names, authorship the records do not hold
        (
            "Like Project Hail Mary, it is fast-paced science fiction, the second book in the "
            "series.",
            None,
            "series position 2",
        ),
        (
            "Like Project Hail Mary, this fast-paced science fiction is the sequel you wanted.",
            None,
            "sequel",
        ),
        (
            "Like Project Hail Mary, it is fast-paced science fiction with 12 planets.",
            None,
            "number 12",
        ),
        (
            "Like Project Hail Mary, it is fast-paced science fiction with a romance at its heart.",
            None,
            "tag/genre 'romance'",
        ),
        (
            "Like Project Hail Mary, it is fast-paced science fiction.",
            "Captain Holden and his crew survive an attack that could start a war between Earth "
            "and Mars.",
            "'Holden'",
        ),
        (
            "Like Project Hail Mary by Gillian Flynn, it is fast-paced science fiction.",
            None,
            "is by Gillian Flynn",
        ),
        # it is not about this reader's books, request or evidence
        ("This fast-paced science fiction is a great pick for anyone.", None, "not personal"),
    ],
)
def test_false_texts_fail(leviathan, why, blurb, needle):
    reason = check_claims(why, blurb, leviathan)
    assert reason is not None and needle in reason, reason


def test_the_request_does_not_make_a_genre_claim_true():
    """Found by hand-reading the study: the reader asked for a thriller, the model called Speak
    one."""
    c = ctx(
        "Speak",
        [("The Book Thief", 4.0)],
        [
            Evidence(
                "shared_tags", book_ids=(bid("The Book Thief"),), tags=("young-adult", "emotional")
            ),
            Evidence("query_match", text="a dark, tense thriller", value=0.27),
        ],
        query="a dark, tense thriller",
    )
    false = (
        "Speak is a dark, tense thriller that shares the tags young-adult and emotional "
        "with The Book Thief."
    )
    reason = check_claims(false, None, c)
    # both genre words are the request's, not the book's: either one is the reason
    assert reason is not None and any(f"'{w}'" in reason for w in ("thriller", "dark", "tense")), (
        reason
    )
    true = (
        "You asked for a dark, tense thriller; like The Book Thief, Speak is emotional "
        "young-adult fiction."
    )
    assert check_claims(true, None, c) is None


def test_the_author_is_never_a_character(gone_girl):
    reason = check_claims(
        "Like Leviathan Wakes, it is a mystery.",
        "The main character, Gillian Flynn, was left to care for her father after his wife "
        "disappears.",
        gone_girl,
    )
    assert reason is not None and "author 'Gillian Flynn' a character" in reason


def test_a_liked_book_must_be_in_the_history(leviathan):
    reason = check_claims(
        "You loved The Martian, and this is fast-paced science fiction too.", None, leviathan
    )
    # either rule may fire first; both name the unsupported claim
    assert reason is not None and ("Martian" in reason or "not in your history" in reason), reason


def test_near_duplicates_across_a_readers_picks(leviathan):
    first = "You loved Project Hail Mary, and this is fast-paced science fiction with a detective."
    assert check_claims(TRUE_WHY, None, leviathan, shown=[first]) is not None
    assert (
        check_claims(TRUE_WHY, None, leviathan, shown=["A cosy village mystery about a baker."])
        is None
    )
    assert jaccard("a detective hunts an heiress", "a detective hunts an heiress") == 1.0
    # found in the llama.cpp fact sentences: two picks citing different books are not repeats
    # ("book", "similar", "liked" relate the books; they were 3 of the 5 words compared)
    a = "This book is similar to Allegiant, which you liked."
    b = "This book is similar to The Book Thief, which you liked."
    assert jaccard(a, b) < 0.6 and jaccard(a, a) == 1.0
    assert "near-duplicate" in check_claims(TRUE_WHY, None, leviathan, shown=[TRUE_WHY])


def test_claims_only_mode_skips_the_usefulness_rules(leviathan):
    generic = "This fast-paced science fiction is a great pick for anyone."
    assert check_claims(generic, None, leviathan, rules="claims") is None
    assert check_claims(generic, None, leviathan) is not None


def test_measures_behind_the_rules(leviathan):
    share, miss = plot_support("a man goes undercover to find a missing heiress", leviathan)
    assert share < 0.75 and {"undercover", "man"} <= set(miss)
    share, _ = plot_support("a weary detective searches for a missing heiress", leviathan)
    assert share == 1.0
    assert facets("Leviathan Wakes is a science fiction novel by James S.A. Corey.", leviathan) == 1
    assert (
        facets(
            "A weary detective searches for a missing heiress on an asteroid station.", leviathan
        )
        >= 3
    )
    assert stem("searches") == "search" and stem("survived") == "surviv"


def test_template_texts_of_real_evidence_pass():
    """The template is the fallback: its claims (ratings, counts, shares, positions) must check
    out."""
    from assistant.explain import template_explanation

    c = ctx(
        "Caliban's War",
        [("Leviathan Wakes", 5.0), ("Project Hail Mary", 4.0)],
        [
            Evidence(
                "series_next", book_ids=(bid("Leviathan Wakes"),), series="The Expanse", value=2.0
            ),
            Evidence(
                "co_readers",
                book_ids=(bid("Project Hail Mary"),),
                count=37,
                value=4.2162,
                share=0.8108,
            ),
        ],
    )
    text = template_explanation(
        c.evidence, BOOKS, {bid("Leviathan Wakes"): 5.0, bid("Project Hail Mary"): 4.0}
    )
    assert check_claims(text, None, c, rules="claims") is None, text


# -- found by reading the Qwen2.5-1.5B study texts (prompt v4 -> v6) ------------------------------
def test_saying_you_loved_the_recommended_book_itself_fails():
    """The model wrote "You loved Lord of the Flies ..." for the pick Lord of the Flies."""
    c = ctx(
        "Leviathan Wakes",
        [("Project Hail Mary", 5.0)],
        [Evidence("shared_tags", book_ids=(bid("Project Hail Mary"),), tags=("science-fiction",))],
    )
    reason = check_claims(
        "You loved Leviathan Wakes, and this shares its science fiction with Project Hail Mary.",
        None,
        c,
    )
    assert reason is not None and "recommended book itself" in reason, reason
    # the same book named as the pick, not as liked, is fine
    assert (
        check_claims(
            "You loved Project Hail Mary, and Leviathan Wakes is science fiction too.", None, c
        )
        is None
    )


def test_the_story_of_is_prose_not_a_genre_claim(leviathan):
    blurb = (
        "It tells the story of a detective who searches for a missing heiress while an ice hauler "
        "crew survives an attack."
    )
    assert check_claims(TRUE_WHY, blurb, leviathan) is None
    # a real two-word genre the records do not hold still fails
    reason = check_claims(
        TRUE_WHY, "A collection of short stories about a missing heiress.", leviathan
    )
    assert reason is not None and "short stories" in reason, reason


def test_the_request_does_not_make_a_genre_claim_true_in_the_blurb():
    """Six of Crows (fantasy heist), reached by a request for a thriller: the model's blurb
    called it "a dark, tense thriller" and the blurb's vocabulary used to include the request."""
    c = ctx(
        "Six of Crows",
        [("Nimona", 5.0)],
        [Evidence("shared_tags", book_ids=(bid("Nimona"),), tags=("fantasy",))],
        query="a dark, tense thriller",
    )
    assert "thriller" not in " ".join(BY_TITLE["Six of Crows"].tags)
    why = "You liked Nimona, and this book shares its fantasy with Nimona."
    # the whole description: a cut one ("... for a.") now fails as cut off
    desc_words = BY_TITLE["Six of Crows"].description.rstrip(".")
    reason = check_claims(why, f"A dark, tense thriller: {desc_words}.", c)
    # any of the request's genre words may be the one named
    assert reason is not None and any(f"'{w}'" in reason for w in ("thriller", "tense", "dark")), (
        reason
    )
    assert check_claims(why, f"A fast-paced fantasy adventure: {desc_words}.", c) is None


def test_a_title_with_an_inner_article_is_found():
    """'The Diary of a Young Girl' (goodbooks) was never matched: every article was dropped from
    the title but not from the text, so a true personal explanation was called not personal."""
    title = "A Wrinkle in Time"
    inner = [b for b in DEMO.books if " a " in b.title.lower() or " the " in b.title.lower()[1:]]
    assert inner, "the demo has a title with an inner article"
    pick = BY_TITLE["Leviathan Wakes"]
    liked = inner[0]
    c = ClaimContext(
        pick,
        (Evidence("shared_tags", book_ids=(liked.book_id,), tags=tuple(liked.tags[:1])),),
        [(liked, 5.0)],
        BOOKS,
        None,
        VOCAB,
    )
    main = liked.title.split(" (")[0]
    why = f"You liked {main}, and this book is similar."
    assert check_claims(why, None, c, rules="all") != (
        "explanation not personal: names none of the reader's books or their request"
    ), title
    # a book the reader has not read is still not personal
    other = "You liked nothing here, and this book is similar."
    assert "not personal" in (check_claims(other, None, c) or "")


# -- relations: found by hand-reading the Qwen2.5-1.5B study (prompt v6) --------------------------
# Each shown text below passed every lexical rule but said the pick shares tags with itself, with
# a book of another evidence line, or listed a history tag as shared. "shares ... with X",
# "like X", "similar to X", "readers who liked X", "because you liked X" must name a book other
# than the pick, held by an evidence line of the matching kind, and the shared tags must be that
# line's.
def _brave_new_world() -> ClaimContext:
    return ctx(
        "Brave New World",
        [("The Way of Kings", 5.0), ("Allegiant", 4.0)],
        [
            Evidence("similar_to", book_ids=(bid("Allegiant"),), value=0.6),
            Evidence(
                "shared_tags",
                book_ids=(bid("The Haunting of Hill House"), bid("To Kill a Mockingbird")),
                tags=("classic", "science-fiction", "dystopian", "thought-provoking"),
            ),
        ],
    )


def _the_giver() -> ClaimContext:
    return ctx(
        "The Giver",
        [("The Book Thief", 5.0), ("Allegiant", 4.0), ("Mockingjay", 4.0)],
        [
            Evidence("similar_to", book_ids=(bid("The Hunger Games"), bid("Allegiant")), value=0.6),
            Evidence(
                "shared_tags",
                book_ids=(bid("Allegiant"), bid("Mockingjay"), bid("The Amber Spyglass")),
                tags=("young-adult", "classic", "dystopian", "short"),
            ),
            Evidence(
                "co_readers", book_ids=(bid("The Book Thief"),), count=12, value=4.2, share=0.9
            ),
        ],
    )


def _wolf_hall() -> ClaimContext:
    """Outlander (romance) is in the history, not in the shared-tags line."""
    return ctx(
        "Wolf Hall",
        [("Outlander", 5.0), ("My Brilliant Friend", 4.0)],
        [
            Evidence(
                "shared_tags",
                book_ids=(bid("My Brilliant Friend"),),
                tags=("historical-fiction", "literary-fiction", "slow-burn"),
            ),
            Evidence(
                "co_readers", book_ids=(bid("My Brilliant Friend"),), count=9, value=4.1, share=0.8
            ),
        ],
    )


BNW_TAGS = "shares the tags classic, science-fiction, dystopian, thought-provoking with"


@pytest.mark.parametrize(
    "make, false, needle",
    [
        # the pick named as the book it shares tags with (shown on Brave New World's own card)
        (
            _brave_new_world,
            f"You liked The Way of Kings, and this book {BNW_TAGS} Brave New World.",
            "recommended book itself ('Brave New World')",
        ),
        (
            _brave_new_world,
            "You liked Allegiant, and this book is like Brave New World.",
            "recommended book itself",
        ),
        # tags said to be shared with a book of another evidence line (similar_to, co_readers)
        (
            _the_giver,
            "You liked The Book Thief, and this book shares the tags young-adult, classic, "
            "dystopian, short with The Hunger Games, which the reader liked.",
            "'The Hunger Games', which no shared-tags evidence",
        ),
        (
            _the_giver,
            "You liked The Book Thief, and this book shares the tags young-adult and classic with "
            "The Book Thief.",
            "'The Book Thief', which no shared-tags evidence",
        ),
        # a tag of the reader's history listed as shared with a book whose line lacks it
        (
            _wolf_hall,
            "You liked Outlander, and this book shares the same historical fiction, slow-burn and "
            "romance tags as My Brilliant Friend.",
            "tag 'romance' with 'My Brilliant Friend'",
        ),
        (
            _wolf_hall,
            "You liked Outlander, and this book shares the tags romance and slow-burn.",
            "tag 'romance'",
        ),
        # readers who liked X: X must be a co-readers line's book
        (
            _wolf_hall,
            "Readers who liked Outlander also rated this book highly.",
            "'Outlander', which no co-readers evidence",
        ),
        # because you liked X: X must be in some evidence line
        (
            _wolf_hall,
            "We picked it because you liked Outlander, and it is historical fiction.",
            "'Outlander', which no evidence line",
        ),
        (
            _the_giver,
            "You liked Mockingjay, and this book is similar to Mockingjay and The Giver.",
            "recommended book itself ('The Giver')",
        ),
    ],
)
def test_a_wrong_relation_fails(make, false, needle):
    reason = check_claims(false, None, make())
    assert reason is not None and needle in reason, reason


@pytest.mark.parametrize(
    "make, false",
    [
        (
            _brave_new_world,
            f"You liked The Way of Kings, and this book {BNW_TAGS} To Kill a Mockingbird.",
        ),
        (
            _brave_new_world,
            f"You liked The Way of Kings, and this book {BNW_TAGS} The Haunting of Hill House and "
            "To Kill a Mockingbird.",
        ),
        (
            _the_giver,
            "You liked The Book Thief, and this book shares the tags young-adult, classic, "
            "dystopian, short with Mockingjay, which the reader liked.",
        ),
    ],
)
def test_a_tag_the_named_book_lacks_fails(make, false):
    """Listed as true before the per-book tag rule: a shared-tags line holds tags each shared
    with *some* of its books, and these name a tag the named book's own record lacks."""
    reason = check_claims(false, None, make())
    assert reason is not None and "record does not hold" in reason, reason


@pytest.mark.parametrize(
    "make, true",
    [
        (
            _brave_new_world,
            "You liked The Way of Kings, and this book shares the tags classic, thought-provoking "
            "with To Kill a Mockingbird.",
        ),
        (
            _brave_new_world,
            "You liked The Way of Kings, and this book shares the tag classic with The Haunting of "
            "Hill House and To Kill a Mockingbird.",
        ),
        (_brave_new_world, "You liked Allegiant, and this book is similar to Allegiant."),
        (_brave_new_world, "Like Allegiant, which you liked, Brave New World is dystopian."),
        (
            _the_giver,
            "You liked The Book Thief, and this book shares the tags young-adult, dystopian with "
            "Mockingjay, which the reader liked.",
        ),
        (_the_giver, "You liked Mockingjay, and this book is similar to The Hunger Games."),
        (_the_giver, "Readers who liked The Book Thief rated it highly."),
        (
            _wolf_hall,
            "You liked Outlander, and this book shares the same historical fiction and slow-burn "
            "tags as My Brilliant Friend.",
        ),
        (_wolf_hall, "Readers who liked My Brilliant Friend also rated this book highly."),
        (_wolf_hall, "We picked it because you liked My Brilliant Friend, and it is slow-burn."),
        # the pick named as the subject, not as the related book
        (
            _wolf_hall,
            "You liked Outlander, and Wolf Hall shares the tag slow-burn with My Brilliant Friend.",
        ),
    ],
)
def test_a_right_relation_passes(make, true):
    assert check_claims(true, None, make()) is None


def test_template_relations_pass():
    """The templates of every relation kind name their own line's books and tags."""
    from assistant.explain import render_evidence

    for c in (_brave_new_world(), _the_giver(), _wolf_hall()):
        rated = {h.book_id: r for h, r in c.history}
        for e in c.evidence:
            text = render_evidence(e, BOOKS, rated)
            assert check_claims(text, None, c, rules="claims") is None, text


# -- the llama.cpp explanation grammar: every sentence it can produce is true --------------------
def _expand(rule: str) -> list[str]:
    """All strings of a GBNF sequence made of "literals", ( a | b ) groups and juxtaposition
    (the subset assistant.explainer.fact_clauses writes)."""
    import re as _re

    toks = _re.findall(r'"(?:[^"\\]|\\.)*"|[()|]', rule)

    def seq(i: int) -> tuple[list[str], int]:
        out = [""]
        while i < len(toks) and toks[i] not in (")", "|"):
            if toks[i] == "(":
                alts, i = group(i + 1)
            else:
                alts, i = [bytes(toks[i][1:-1], "utf-8").decode("unicode_escape")], i + 1
            out = [a + b for a in out for b in alts]
        return out, i

    def group(i: int) -> tuple[list[str], int]:
        alts: list[str] = []
        while True:
            s, i = seq(i)
            alts += s
            if toks[i] == ")":
                return alts, i + 1
            i += 1  # "|"

    return seq(0)[0]


def _clause_texts(c: ClaimContext) -> list[str]:
    from assistant.explainer import fact_clauses

    out = []
    for clause in fact_clauses(c.book, c.evidence, c.history, BOOKS, c.query):
        out += [s + "." for s in _expand(clause)]
    return out


@pytest.mark.parametrize("make", [_brave_new_world, _the_giver], ids=["brave", "giver"])
def test_every_sentence_the_fact_grammar_allows_passes_the_checker(make):
    c = make()
    texts = _clause_texts(c)
    assert texts
    bad = [(t, r) for t in texts if (r := check_claims(t, None, c))]
    assert not bad, bad[:3]


def test_the_fact_grammar_never_relates_the_pick_to_another_lines_book_or_tag():
    c = _brave_new_world()
    texts = _clause_texts(c)
    # Allegiant is only in the similar_to line, Hill House only in the shared-tags line
    assert not [t for t in texts if "shares the tag" in t and "Allegiant" in t]
    assert not [t for t in texts if "similar to" in t and "Hill House" in t]
    assert any("which you liked" in t for t in texts if "Allegiant" in t)
    assert not [t for t in texts if "which you liked" in t and "Hill House" in t]
    # a fact about the reader's own book (Allegiant) is offered, so one about books the reader
    # never shelved (the shared-tags line's) is not
    assert not [t for t in texts if "Hill House" in t]
    # the same shape with the relation swapped by hand is caught by the checker
    assert check_claims("This book shares the tags classic with Allegiant.", None, c)


def test_the_fact_grammar_offers_real_choices():
    texts = _clause_texts(_the_giver())
    assert len(texts) > 5  # facts x the reader's books x tags
    assert {t.split()[2] for t in texts} >= {"is", "shares"}  # similar to, shares the tags
    # one tag reads "the tag", more "the tags"
    assert any("shares the tag dystopian with" in t for t in texts)
    assert not any(re.search(r"the tag \w+( \w+)? and", t) for t in texts)
    assert any(t.startswith("90% of 12 readers who liked The Book Thief") for t in texts)


def test_the_fact_grammar_leaves_out_books_already_cited_this_turn():
    from assistant.explainer import fact_clauses

    c = _the_giver()
    first = fact_clauses(c.book, c.evidence, c.history, BOOKS)
    later = fact_clauses(
        c.book, c.evidence, c.history, BOOKS, avoid=["This book is similar to Allegiant."]
    )
    assert any("Allegiant" in x for x in first)
    # the similar_to line still has The Hunger Games; the shared-tags line keeps its other books
    assert not any('"Allegiant"' in x for x in later)


def test_a_request_of_frame_words_is_personal_when_quoted_whole():
    """Found in the llama.cpp study: "something funny" is all frame words, so "This book
    matches your request for something funny." was called not personal."""
    c = ctx(
        "The Colour of Magic",
        [("Gone Girl", 4.0)],
        [Evidence("query_match", tags=("funny",), text="something funny", value=0.2)],
        query="something funny",
    )
    assert check_claims("This book matches your request for something funny.", None, c) is None
    # naming a word of it is not quoting the request
    assert "not personal" in check_claims("This book is funny.", None, c)


def test_shares_the_tags_names_only_tags_the_named_book_holds():
    """Found by hand-reading the llama.cpp study: a shared-tags line holds tags each shared with
    *some* of its books, and 7 of 9 shown sentences named a tag the named book lacks ("shares
    the tags classic, war and satire with I, Robot": I, Robot is not war or satire)."""
    from assistant.claims import tag_phrase

    c = _the_giver()
    for t in _clause_texts(c):
        if "shares the tag" not in t:
            continue
        named = next(
            b
            for b in (BY_TITLE["Allegiant"], BY_TITLE["Mockingjay"])
            if b.title.split(" (")[0] in t
        )
        said = re.split(r"shares the tags? ", t)[1].split(" with ")[0]
        said = said.replace(" and ", ", ").split(", ")
        assert set(said) <= {tag_phrase(x) for x in named.tags}, t
    # the checker says so too
    giver_tags = [x for x in BY_TITLE["The Giver"].tags if x not in BY_TITLE["Allegiant"].tags]
    assert giver_tags
    lie = f"This book shares the tags {tag_phrase(giver_tags[0])} with Allegiant, which you liked."
    c2 = ctx(
        "The Giver",
        [("Allegiant", 4.0)],
        [
            Evidence(
                "shared_tags",
                book_ids=(bid("Allegiant"), bid("Mockingjay")),
                tags=(giver_tags[0], BY_TITLE["Allegiant"].tags[0]),
            )
        ],
    )
    assert "does not hold" in (check_claims(lie, None, c2) or "")


def test_a_text_ending_on_a_dangling_word_is_cut_off():
    """Found by hand-reading the llama.cpp study: blurbs cut at the word limit ended "... the
    story of the school and its." and "... a satire and funny story that."."""
    c = ctx("The Nickel Boys", [("Gone Girl", 4.0)])
    cut = (
        "A Black teenager is sent to a brutal reform school in 1960s Florida, where he makes an "
        "unlikely friend and the story of the school and its."
    )
    whole = (
        "A bright Black teenager in 1960s Florida is sent to a brutal reform school, where he "
        "makes an unlikely friend."
    )
    assert "cut off" in (check_claims("", cut, c) or "")
    assert "cut off" not in (check_claims("", whole, c) or "")


def test_the_blurb_grammar_cannot_end_on_a_dangling_word():
    from assistant.explainer import words_grammar

    g = words_grammar(["a", "the", "school", "and", "its", "friend"], 3, 8)
    end = next(x for x in g.splitlines() if x.startswith("end ::="))
    assert '"school"' in end and '"friend"' in end
    assert not any(f'"{w}"' in end for w in ("a", "the", "and", "its"))


def test_a_text_that_repeats_itself_fails():
    """Found by hand-reading the llama.cpp study: word-grammar blurbs that looped passed every
    claim rule ("... on a dark adventure in the dark, dark, and dark, but not so dark ...")."""
    c = ctx("The Last Wish", [("Gone Girl", 4.0)])
    loop = (
        "Geralt of Rivia, a monster hunter for hire, is on a dark adventure in the dark, dark, and "
        "dark, but not so dark, as the dark of the dark."
    )
    assert "repeats itself ('dark'" in (check_claims("", loop, c) or "")
    ok = "Geralt of Rivia, a monster hunter for hire, meets twisted fairy tales in dark stories."
    assert "repeats itself" not in (check_claims("", ok, c) or "")


def test_a_tag_spelled_two_ways_is_offered_once():
    from assistant.explainer import fact_clauses

    c = ctx(
        "The Glass Castle" if "The Glass Castle" in BY_TITLE else "The Giver",
        [("Allegiant", 4.0)],
    )
    book = c.book
    allegiant = BY_TITLE["Allegiant"]
    from dataclasses import replace

    b2 = replace(book, tags=("non-fiction", "nonfiction", "dystopian"))
    a2 = replace(allegiant, tags=("non-fiction", "nonfiction", "dystopian"))
    books = {**BOOKS, b2.book_id: b2, a2.book_id: a2}
    ev = [Evidence("shared_tags", book_ids=(a2.book_id,), tags=("non-fiction", "nonfiction"))]
    texts = [t for cl in fact_clauses(b2, ev, [(a2, 4.0)], books) for t in _expand(cl)]
    assert texts and not any("non fiction and nonfiction" in t for t in texts), texts
