"""Request understanding: a chat message or ``--query`` -> a structured :class:`Intent`.

The one home of intent parsing. :class:`IntentParser` asks a capable LLM for JSON under
:data:`INTENT_SCHEMA` (every value then checked against the catalog) and uses the rules
(:func:`parse_intent`) otherwise or when the model's answer does not validate;
:func:`follow_up` turns a parsed intent plus the previous request into the request to run
("but shorter" refines the last one, a new request resets it); :func:`describe_request` says
in words what was understood.

Rules:

``parse_intent("something like Dune but shorter", known_titles=...)`` gives
``Intent(kind="more_like", title_ref="Dune", shorter=True, ...)``. The parser never invents
facts: tags are only those present in ``known_tags``; titles and authors are taken from
``known_titles``/``known_authors`` when those are given (and left unset when nothing matches),
or copied verbatim from the text when those lists are empty.

Kinds:
  recommend       a fresh request ("what should I read next?", "a short funny book")
  more_like       books similar to a title or to a listed item ("something like Dune")
  refine          adjust the current list ("more fantasy", "not romance", "published after 2000");
                  a caller with no current list should treat it as ``recommend``
  why             explain a recommendation ("why #2?")
  details         describe a book ("tell me more about #2")
  read_it         the reader has read it ("already read #3")
  not_interested  dismiss a book ("not interested in Twilight")
  greeting, help  small talk and usage help

``ref_index`` is 1-based as shown to the reader ("#2" -> 2); "the last one" gives -1. None with
a kind that needs a target means "the book under discussion".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Literal

from retrieval.constraints import Constraints
from retrieval.matcher import CatalogMatcher
from retrieval.types import Book

__all__ = [
    "INTENT_SCHEMA",
    "PARSER_MODES",
    "combine_intents",
    "unexplained_words",
    "intent_from_json",
    "intent_schema",
    "Intent",
    "IntentKind",
    "IntentParser",
    "RequestState",
    "describe_request",
    "follow_up",
    "parse_intent",
    "TAG_SYNONYMS",
]

IntentKind = Literal[
    "recommend",
    "more_like",
    "refine",
    "why",
    "details",
    "read_it",
    "not_interested",
    "greeting",
    "help",
]


@dataclass
class Intent(Constraints):
    """What the reader asked for: a kind (see the module docstring) plus the constraints they
    stated (tags, authors, years, shorter/lighter/newer/older, inherited from
    :class:`~retrieval.constraints.Constraints`)."""

    kind: IntentKind = "recommend"
    ref_index: int | None = None
    title_ref: str | None = None
    query_text: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists copied), e.g. for JSON logs or an LLM prompt."""
        d = asdict(self)
        d.pop("ref_year")  # set by the chat from a referenced book, never parsed from a message
        d.pop("tag_boost")  # a setting (request.tag_boost), not part of what the reader said
        return d


# Phrase -> tags it may mean. Only tags present in ``known_tags`` are ever output.
TAG_SYNONYMS: dict[str, tuple[str, ...]] = {
    "sci fi": ("science-fiction", "sci-fi"),
    "scifi": ("science-fiction", "sci-fi", "scifi"),
    "science fiction": ("science-fiction", "sci-fi"),
    "sf": ("science-fiction", "sci-fi", "sf"),
    "ya": ("young-adult", "ya"),
    "young adult": ("young-adult", "ya"),
    "teen": ("young-adult", "teen"),
    "teens": ("young-adult", "teen"),
    "scary": ("horror",),
    "creepy": ("horror",),
    "spooky": ("horror",),
    "horror": ("horror",),
    "funny": ("humor", "funny", "comedy", "humour"),
    "humorous": ("humor", "funny", "comedy"),
    "hilarious": ("humor", "funny", "comedy"),
    "comic": ("humor", "funny", "comedy"),
    "humour": ("humor", "humour", "funny"),
    "humor": ("humor", "humour", "funny"),
    "light": ("lighthearted", "funny", "heartwarming"),
    "lighthearted": ("lighthearted", "funny", "heartwarming"),
    "light hearted": ("lighthearted", "funny", "heartwarming"),
    "feel good": ("feel-good", "heartwarming", "lighthearted"),
    "uplifting": ("uplifting", "heartwarming", "inspirational"),
    "heartwarming": ("heartwarming", "feel-good"),
    "cozy": ("cozy", "cozy-mystery"),
    "dark": ("dark",),
    "grim": ("dark", "grimdark"),
    "grimdark": ("grimdark", "dark"),
    "romantic": ("romance",),
    "love story": ("romance",),
    "love stories": ("romance",),
    "whodunit": ("mystery",),
    "whodunnit": ("mystery",),
    "detective": ("detective", "mystery"),
    "true story": ("non-fiction", "nonfiction"),
    "non fiction": ("non-fiction", "nonfiction"),
    "nonfiction": ("non-fiction", "nonfiction"),
    "historical": ("historical-fiction", "historical"),
    "kids": ("childrens", "children", "kids"),
    "children": ("childrens", "children"),
    "childrens": ("childrens", "children"),
    "graphic novel": ("graphic-novels", "graphic-novel"),
    "graphic novels": ("graphic-novels", "graphic-novel"),
    "memoir": ("memoir", "memoirs"),
    "biography": ("biography", "biographies"),
    "thriller": ("thriller", "thrillers"),
    "thrillers": ("thriller", "thrillers"),
    "dystopia": ("dystopia", "dystopian"),
    "dystopian": ("dystopian", "dystopia"),
    "classic": ("classics", "classic"),
    "classics": ("classics", "classic"),
    "spy": ("spy", "espionage"),
    "space": ("space-opera",),
    "vampire": ("vampires", "vampire"),
    "vampires": ("vampires", "vampire"),
    # comparatives and adjectives of genre nouns ("but funnier", "something philosophical")
    "funnier": ("humor", "funny", "comedy", "humour"),
    "scarier": ("horror",),
    "darker": ("dark",),
    "philosophical": ("philosophy",),
    "magical": ("magic",),
    "mysterious": ("mystery",),
    "political": ("politics",),
    "scientific": ("science",),
    "psychological": ("psychology",),
    "mythological": ("mythology",),
    "spiritual": ("spirituality",),
    "romantic comedy": ("romance", "funny", "humor"),
}

# Words that are tags in goodbooks but mean something else in a request.
_NOT_TAGS = {
    "book",
    "books",
    "novel",
    "novels",
    "read",
    "reads",
    "reading",
    "short",
    "new",
    "love",
    "king",
    "play",
    "series",
    "one",
    "more",
    "like",
    "good",
    "best",
    "me",
    "i",
    "it",
    "a",
    "the",
    "and",
    "or",
    "not",
    "no",
    "to",
    "of",
    "in",
    "on",
    "by",
    "for",
    "with",
    "something",
    "anything",
    "please",
    "next",
    "novella",
    "lighter",
}

# Words that may not start or end a multi-word tag phrase.
_EDGE_WORDS = {
    "book",
    "books",
    "novel",
    "novels",
    "read",
    "reads",
    "reading",
    "the",
    "a",
    "an",
    "and",
    "or",
    "of",
    "in",
    "on",
    "for",
    "with",
    "to",
    "me",
    "i",
    "it",
    "more",
    "like",
    "something",
    "anything",
    "please",
    "some",
    "any",
}

_ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "1st": 1,
    "2nd": 2,
    "3rd": 3,
    "4th": 4,
    "5th": 5,
    "6th": 6,
    "7th": 7,
    "8th": 8,
    "9th": 9,
    "10th": 10,
    "last": -1,
}
_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_ORD = "|".join(_ORDINALS)
_NUMW = "|".join(_NUMBER_WORDS)
_ITEM = r"(?:one|book|option|pick|suggestion|recommendation|title)"
_REF_RES = [
    re.compile(r"#\s*(\d{1,2})\b"),
    re.compile(rf"\b(?:number|no\.|num\.?)\s*(\d{{1,2}}|{_NUMW})\b", re.I),
    re.compile(rf"\b{_ITEM}\s+(?:#\s*)?(\d{{1,2}})\b", re.I),
    re.compile(rf"\b(?:the\s+)?({_ORD})\s+{_ITEM}\b", re.I),
    re.compile(rf"\bthe\s+({_ORD})\b(?=\s*(?:[?.!,;]|$))", re.I),
]

_GREETING_RE = re.compile(
    r"^\s*(?:hi|hello|hey|hiya|howdy|hallo|yo|greetings|good\s+(?:morning|afternoon|evening)|"
    r"thanks|thank\s+you|cheers)\b(?:\s+there)?[\s!,.?]*"
    r"(?:how\s+are\s+you(?:\s+doing)?)?[\s!,.?]*",
    re.I,
)
_HELP_RE = re.compile(
    r"^\s*(?:/?help|\?|commands)\s*[!?.]*\s*$|\bwhat\s+can\s+(?:you|i)\s+do\b|"
    r"\bhow\s+(?:does|do)\s+(?:this|it|you)\s+work\b|\bhow\s+do\s+i\s+use\b|"
    r"\bwhat\s+do\s+you\s+do\b",
    re.I,
)
_WHY_RE = re.compile(
    r"\bwhy\b(?:\s+(?:did|do|would)\s+you\s+(?:recommend|suggest|pick|choose|"
    r"include|show)(?:ed)?)?(?:\s+(?:is|was))?",
    re.I,
)
_READ_IT_RE = re.compile(
    r"\b(?:(?:already|i(?:'|\u2019)ve|i\s+have|i\s+had|i(?:'|\u2019)d)\s+(?:already\s+)?"
    r"(?:read|finished)(?:\s+(?:it|that|this)(?:\s+one)?\s+already)?|"
    r"(?:^\s*|\bi\s+)(?:read|finished)\s+(?=(?:it|that|this)\b)|"
    r"(?:i\s+)?(?:read|finished)\s+(?=#|number\b|the\s+(?:" + _ORD + r")\b))",
    re.I,
)
# "should I read #2?" asks, it does not report.
_MODAL_BEFORE_RE = re.compile(
    r"\b(?:should|shall|can|could|would|will|to|want|going)\s+(?:i\s+)?$", re.I
)
_READ_BEFORE_REF_RE = re.compile(r"\b(?:i\s+)?(?:already\s+)?(?:read|finished)\s*$", re.I)
_NOT_INTERESTED_RE = re.compile(
    r"\b(?:not\s+interested(?:\s+in)?|no\s+interest\s+in|not\s+for\s+me|"
    r"not\s+my\s+(?:thing|cup\s+of\s+tea)|(?:i\s+)?(?:don'?t|do\s+not)\s+(?:want|like|recommend|"
    r"show(?:\s+me)?)|dismiss|remove|hide|skip)\b",
    re.I,
)
_DETAILS_RE = re.compile(
    r"\b(?:tell\s+me\s+(?:more\s+)?about|more\s+(?:info(?:rmation)?|details)(?:\s+(?:on|about))?|"
    r"more\s+about|details\s+(?:on|about|of|for)|what(?:'s|\s+is)(?=.*\babout\s*[?.!]*\s*$)|"
    r"describe|who\s+wrote|summary\s+of|synopsis\s+of|details)\b",
    re.I,
)
_MORE_LIKE_RE = re.compile(
    r"(?:\b(?:something|anything|books?|stuff|more|others?|ones?|titles?|novels?|reads?)\s+"
    r"(?:(?:just|a\s+bit|kind\s+of|sort\s+of|a\s+lot)\s+)?like|\bsimilar\s+to|"
    r"\bin\s+the\s+(?:vein|style|spirit)\s+of|\breminiscent\s+of|\bcomparable\s+to|"
    r"\b(?:for\s+)?fans?\s+of|^\s*like|\bi\s+(?:really\s+)?(?:loved|liked|enjoyed|adored))\b",
    re.I,
)
_REQUEST_RE = re.compile(
    r"\b(?:what\s+(?:should|shall|can|could|do)\s+i\s+read(?:\s+next)?|what\s+to\s+read(?:\s+next)?|"
    r"read\s+next|(?:can|could|would)\s+you\s+(?:please\s+)?(?:recommend|suggest|find|give|show)"
    r"(?:\s+me)?|(?:please\s+)?(?:recommend|suggest)(?:\s+me)?|i(?:'m|\s+am)\s+looking\s+for|"
    r"looking\s+for|i\s+(?:want|need)(?:\s+to\s+read)?|i(?:'d|\s+would)\s+like(?:\s+to\s+read)?|"
    r"give\s+me|find\s+me|show\s+me|any\s+(?:good\s+)?(?:recommendations?|suggestions?|ideas?)|"
    r"recommendations?|suggestions?)\b",
    re.I,
)
_BOOKISH_RE = re.compile(r"\b(?:books?|novels?|reads?)\b", re.I)
_REFINE_START_RE = re.compile(
    r"^\s*(?:more|less|fewer|only|just|not|no|without|but|and|except|"
    r"something|anything|maybe|how\s+about|what\s+about|instead)\b",
    re.I,
)

# "something dark and atmospheric" is a new request; "something newer" refines the list.
_FRESH_START_RE = re.compile(r"^\s*(?:something|anything|maybe)\b", re.I)

_YEAR = r"([12]\d{3})"
_PUB = r"(?:(?:published|written|released|came\s+out|from)\s+)?"
_YEAR_RES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"\bbetween\s+{_YEAR}\s+and\s+{_YEAR}\b", re.I), "between"),
    (re.compile(rf"\b(?:newer|more\s+recent|later)\s+than\s+{_YEAR}\b", re.I), "after"),
    (re.compile(rf"\b(?:older|earlier)\s+than\s+{_YEAR}\b", re.I), "before"),
    (re.compile(rf"\b{_PUB}(?:after|post)\s+(?:the\s+year\s+)?{_YEAR}\b", re.I), "after"),
    (
        re.compile(
            rf"\b{_PUB}(?:since|from)\s+(?:the\s+year\s+)?{_YEAR}(?:\s+on(?:wards?)?)?\b", re.I
        ),
        "since",
    ),
    (
        re.compile(rf"\b{_PUB}(?:before|prior\s+to|pre)\s+(?:the\s+year\s+)?{_YEAR}\b", re.I),
        "before",
    ),
    (re.compile(rf"\b{_PUB}(?:until|up\s+to|through)\s+{_YEAR}\b", re.I), "until"),
    (
        re.compile(
            r"\b(?:(?:published|written|set|from|in)\s+)?(?:the\s+)?(1\d|20)(\d)0'?s\b", re.I
        ),
        "decade4",
    ),
    (re.compile(r"\b(?:(?:published|written|from|in)\s+)?the\s+'?(\d)0'?s\b", re.I), "decade2"),
    (
        re.compile(
            r"\b(?:(?:published|written|from|in)\s+)?(?:the\s+)?(1\d|20|21)(?:st|nd|rd|th)"
            r"\s+century\b",
            re.I,
        ),
        "century",
    ),
    (re.compile(rf"\b(?:published|written|released|came\s+out)\s+in\s+{_YEAR}\b", re.I), "in"),
]
_SHORTER_RE = re.compile(
    r"\b(?:shorter|short(?!\s+stor)|quick(?:er)?(?:\s+reads?)?|brief|"
    r"less\s+long|not\s+(?:too|so|very)\s+long|fewer\s+pages|"
    r"under\s+\d+\s+pages)\b",
    re.I,
)
_LIGHTER_RE = re.compile(
    r"\b(?:lighter|less\s+(?:dark|heavy|serious|intense|depressing|sad|grim)|"
    r"not\s+(?:so|too|as)\s+(?:dark|heavy|serious|intense|depressing|sad|grim)|"
    r"happier|more\s+upbeat|more\s+cheerful)\b",
    re.I,
)
_LIGHT_ADJ_RE = re.compile(
    r"\b(?:light|light-?hearted|feel[-\s]?good|uplifting|cheerful|"
    r"heartwarming)\b(?!\s+(?:on|of)\b)",
    re.I,
)
_NEWER_RE = re.compile(
    r"\b(?:newer|more\s+recent|recent(?:ly\s+published)?|latest|"
    r"new\s+releases?)\b",
    re.I,
)
_OLDER_RE = re.compile(r"\b(?:older|less\s+recent|vintage|old(?:er)?[-\s]school)\b", re.I)
_AUTHOR_CUE_RE = re.compile(r"\b(?:written\s+by|authored\s+by|by|author)\s+", re.I)
# Where a title/author phrase ends: punctuation or a word that starts a modifier.
# A period ends a phrase unless it follows an initial ("Ursula K. Le Guin").
_STOP_RE = re.compile(
    r"[,;!?\x00]|(?<![\s.][A-Z])\.|\s(?:but|except|though|although|please|only|"
    r"instead|yet|published|written|released|which|that\s+(?:is|are)|"
    r"and\s+(?:not|no|more|less|something|also)|"
    r"with(?:out)?\s+(?:less|more|fewer|no|any)|or\s+something)\b",
    re.I,
)
_DEICTIC_RE = re.compile(
    r"^(?:it|that|this|these|those|them|one|the\s+(?:book|one)|"
    r"(?:this|that)\s+(?:one|book|title))\b",
    re.I,
)
_LEADING_FILLER_RE = re.compile(
    r"^(?:(?:did|do|would)\s+you\s+(?:recommend|suggest|pick|choose)"
    r"(?:ed)?|recommend(?:ed)?|suggest(?:ed)?|in|about|on|to|of|is|was|"
    r"the\s+book|a\s+book\s+called|called|me|please)\s+",
    re.I,
)
_NEG_WORDS = {
    "not",
    "no",
    "without",
    "except",
    "avoid",
    "exclude",
    "excluding",
    "nothing",
    "none",
    "hate",
    "dislike",
    "never",
    "less",
    "fewer",
    "skip",
    "minus",
    "isnt",
    "arent",
    "wasnt",
    "nor",
}
_NEG_PHRASES_RE = re.compile(
    r"\b(?:don'?t|do\s+not|doesn'?t|won'?t)\s+(?:like|want|enjoy|need)\b|"
    r"\banything\s+but\b|\bother\s+than\b|\binstead\s+of\b|\bbut\s+not\b|"
    r"\bnot\s+interested\s+in\b",
    re.I,
)
_POS_RESET = {"more", "only", "just", "prefer", "rather", "want", "like", "love", "instead"}
_CLAUSE_END = {"but", "though", "however", "yet", "although"}
_FILLER = {
    "a",
    "an",
    "the",
    "some",
    "something",
    "anything",
    "any",
    "book",
    "books",
    "novel",
    "novels",
    "read",
    "reads",
    "please",
    "more",
    "me",
    "for",
    "to",
    "of",
    "and",
    "or",
    "but",
    "with",
    "that",
    "this",
    "one",
    "ones",
    "is",
    "are",
    "i",
    "like",
    "thanks",
    "other",
    "others",
    "also",
    "maybe",
    "just",
    "really",
    "very",
    "good",
    "great",
    "nice",
    "else",
    "again",
    "now",
    "next",
    "it",
    "in",
    "about",
    "on",
    "no",
    "not",
    "from",
    "by",
    "stuff",
    "kind",
    "sort",
    "what",
    "bit",
    "lot",
    "much",
    "can",
    "you",
    "would",
    "could",
    "should",
    "so",
    "too",
    "there",
    "here",
    "why",
    "similar",
    "than",
    "get",
    "try",
    "let's",
    "lets",
    "how",
}


# ---------------------------------------------------------------------------- lookup tables


@lru_cache(maxsize=8)
def _matcher(titles: tuple[str, ...], authors: tuple[str, ...]) -> CatalogMatcher:
    """The shared catalog matcher over bare title/author lists (cached: callers pass the same
    catalog on every message)."""
    return CatalogMatcher.from_titles(titles, authors)


def _tag_key(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s.lower().replace("'", "").replace("\u2019", "")).strip()


@lru_cache(maxsize=8)
def _tag_table(tags: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Surface phrase (space-separated, lower-case) -> known tags it means."""
    by_key: dict[str, str] = {}
    for t in tags:
        by_key.setdefault(_tag_key(t), t)
    known = set(tags)
    table: dict[str, list[str]] = {}

    def add(surface: str, tag: str) -> None:
        lst = table.setdefault(surface, [])
        if tag not in lst:
            lst.append(tag)

    for key, tag in by_key.items():
        if key in _NOT_TAGS or len(key) < 2:
            continue
        add(key, tag)
        # Plural/singular variants point at the same tag ("thrillers" also means "thriller").
        for v in _variants(key):
            if v not in _NOT_TAGS and v in by_key:
                add(key, by_key[v])
            if v not in _NOT_TAGS:
                add(v, tag)
    for phrase, syn in TAG_SYNONYMS.items():
        for t in syn:
            if t in known:
                add(phrase, t)
    return {k: tuple(v) for k, v in table.items()}


def _variants(key: str) -> list[str]:
    out = []
    if key.endswith("ies"):
        out.append(key[:-3] + "y")
    elif key.endswith("s") and not key.endswith("ss"):
        out.append(key[:-1])
    if key.endswith("y"):
        out.append(key[:-1] + "ies")
    elif not key.endswith("s"):
        out.append(key + "s")
    return out


# ---------------------------------------------------------------------------- the parser


class _Work:
    """The text with consumed (control) spans blanked out, offsets preserved."""

    def __init__(self, text: str):
        self.text = text
        self.chars = list(text)

    @property
    def s(self) -> str:
        return "".join(self.chars)

    def consume(self, start: int, end: int) -> None:
        for i in range(start, end):
            self.chars[i] = "\x00"

    def remaining(self) -> str:
        return re.sub(r"\x00+", " ", self.s)


def _phrase_after(work: _Work, pos: int) -> tuple[int, int]:
    """Span of the phrase starting at ``pos`` (leading fillers skipped) up to a stop."""
    s = work.s
    start = pos
    while start < len(s) and s[start] in " \t":
        start += 1
    while True:
        m = _LEADING_FILLER_RE.match(s, start)
        if not m:
            break
        start = m.end()
    stop = _STOP_RE.search(s, start)
    end = stop.start() if stop else len(s)
    while end > start and s[end - 1] in " \t'\"":
        end -= 1
    while start < end and s[start] in "'\"":
        start += 1
    return start, end


def _word_ends(s: str, start: int, end: int) -> list[int]:
    """Offsets where a word inside s[start:end] ends, longest prefix first."""
    return sorted({start + m.end() for m in re.finditer(r"\S+", s[start:end])}, reverse=True)


def _match_title(
    work: _Work, start: int, end: int, cat: CatalogMatcher, exact_only: bool = False
) -> tuple[str, int] | None:
    """Known title named at s[start:end]: (title, end offset of the words it used).

    Prefixes are tried longest first (see :meth:`CatalogMatcher.title_prefix`).
    """
    s = work.s
    got = cat.title_prefix([(e, s[start:e]) for e in _word_ends(s, start, end)], exact_only)
    return (got[0].title, got[1]) if got else None


def _find_ref(work: _Work) -> tuple[int, int] | None:
    """Consume the first list reference ("#2", "the second one"): (1-based index, start)."""
    for rx in _REF_RES:
        m = rx.search(work.s)
        if m:
            g = m.group(1).lower()
            val = int(g) if g.isdigit() else _ORDINALS.get(g, _NUMBER_WORDS.get(g))
            work.consume(m.start(), m.end())
            return val, m.start()
    return None


def _find_years(work: _Work, intent: Intent) -> None:
    for rx, how in _YEAR_RES:
        for m in list(rx.finditer(work.s)):
            g = m.groups()
            lo = hi = None
            if how == "between":
                lo, hi = sorted((int(g[0]), int(g[1])))
            elif how == "after":
                lo = int(g[0]) + 1  # "after 2000" excludes 2000
            elif how == "since":
                lo = int(g[0])
            elif how == "before":
                hi = int(g[0]) - 1  # "before 1950" excludes 1950
            elif how == "until":
                hi = int(g[0])
            elif how == "decade4":
                lo = int(g[0]) * 100 + int(g[1]) * 10
                hi = lo + 9
            elif how == "decade2":
                d = int(g[0]) * 10
                lo = (1900 + d) if d >= 30 else (2000 + d)  # "the 90s" -> 1990s, "the 10s" -> 2010s
                hi = lo + 9
            elif how == "century":
                lo = (int(g[0]) - 1) * 100
                hi = lo + 99
            elif how == "in":
                lo = hi = int(g[0])
            if lo is not None:
                intent.year_min = lo if intent.year_min is None else max(intent.year_min, lo)
            if hi is not None:
                intent.year_max = hi if intent.year_max is None else min(intent.year_max, hi)
            work.consume(m.start(), m.end())


def _find_flags(work: _Work, intent: Intent) -> None:
    for rx, attr in (
        (_SHORTER_RE, "shorter"),
        (_LIGHTER_RE, "lighter"),
        (_NEWER_RE, "newer"),
        (_OLDER_RE, "older"),
    ):
        for m in list(rx.finditer(work.s)):
            setattr(intent, attr, True)
            work.consume(m.start(), m.end())
    if _LIGHT_ADJ_RE.search(work.s):
        intent.lighter = True  # kept in the text: these words also carry tags and meaning


def _find_authors(work: _Work, cat: CatalogMatcher | None, intent: Intent) -> None:
    for m in list(_AUTHOR_CUE_RE.finditer(work.s)):
        start, end = _phrase_after(work, m.end())
        phrase = work.s[start:end].strip()
        if not phrase:
            continue
        words = phrase.split()[:6]
        if cat is None:
            # Names are capitalised words: stop at the first lower-case word after the name. A
            # reader typing all in lower case gets up to three non-filler words.
            lower = not any(c.isupper() for c in work.text)
            name = []
            for w in words:
                if lower and (w.lower() in _FILLER or len(name) == 3):
                    break
                if not lower and not w[:1].isupper():
                    break
                name.append(w)
            found = " ".join(name).strip()
            if found:
                intent.authors.append(found)
                work.consume(m.start(), start + len(found))
            continue
        got = None
        for k in range(len(words), 0, -1):
            cand = " ".join(words[:k])
            # a full name, or a surname / name tail unique in the catalog ("by Le Guin")
            name = cat.author(cand, fuzzy=False)
            if name:
                got = (name, cand)
                break
        if got is None:
            name = cat.author(phrase)
            if name:
                got = (name, phrase)
        if got:
            if got[0] not in intent.authors:
                intent.authors.append(got[0])
            work.consume(m.start(), start + len(got[1]))
    if cat is not None:
        # Full names named without "by" ("more Ursula K. Le Guin").
        toks = [(mm.start(), mm.end(), mm.group().lower()) for mm in re.finditer(r"[\w']+", work.s)]
        for i in range(len(toks)):
            for n in range(5, 1, -1):
                if i + n > len(toks):
                    continue
                name = cat.full_author(" ".join(t[2].replace("'", "") for t in toks[i : i + n]))
                if name:
                    if name not in intent.authors:
                        intent.authors.append(name)
                    work.consume(toks[i][0], toks[i + n - 1][1])
                    break


def _find_tags(work: _Work, tags: tuple[str, ...], intent: Intent) -> bool:
    """Tags named in the remaining text; a negation cue flips them to ``exclude_tags``.

    Every word in a negated clause is removed from the text, tag or not, so refused things never
    reach the embedding query. Returns True when the text held a negation.
    """
    negated = False
    table = _tag_table(tags)
    s = work.s
    neg_spans = [(m.start(), m.end()) for m in _NEG_PHRASES_RE.finditer(s)]
    toks = [
        (m.start(), m.end(), m.group().lower().replace("'", "").replace("\u2019", ""))
        for m in re.finditer(r"[\w'\u2019]+", s)
    ]
    neg = False
    cue: tuple[int, int] | None = None
    used_cues: list[tuple[int, int]] = []
    i = 0
    while i < len(toks):
        st, en, w = toks[i]
        gap = s[toks[i - 1][1] : st] if i else ""
        if re.search(r"[,;.!?]", gap):
            neg = False
        phrase_neg = next((sp for sp in neg_spans if sp[0] <= st < sp[1]), None)
        if phrase_neg:
            neg, cue = True, phrase_neg
            while i < len(toks) and toks[i][0] < phrase_neg[1]:
                i += 1
            continue
        if w in _NEG_WORDS:
            neg, cue = True, (st, en)
            i += 1
            continue
        if w in _CLAUSE_END or w in _POS_RESET and not (i and toks[i - 1][2] in _NEG_WORDS):
            neg = False
        hit = None
        for n in range(4, 0, -1):
            if i + n > len(toks):
                continue
            # Words of one phrase: separated by spaces/hyphens/slashes only.
            if any(
                not re.fullmatch(r"[\s\-/]+", s[toks[j][1] : toks[j + 1][0]])
                for j in range(i, i + n - 1)
            ):
                continue
            if (
                n > 1
                and (toks[i][2] in _EDGE_WORDS or toks[i + n - 1][2] in _EDGE_WORDS)
                and " ".join(t[2] for t in toks[i : i + n]) not in TAG_SYNONYMS
            ):
                continue  # "ya books" is the tag "ya", not the shelf "ya-books"
            key = " ".join(t[2] for t in toks[i : i + n])
            if key in table:
                hit = (n, table[key])
                break
        if hit is None:
            if neg and w not in _CLAUSE_END:
                work.consume(st, en)
                negated = True
                if cue and cue not in used_cues:
                    used_cues.append(cue)
            i += 1
            continue
        n, found = hit
        target = intent.exclude_tags if neg else intent.include_tags
        for t in found:
            if t not in target:
                target.append(t)
        if neg:
            negated = True
            work.consume(st, toks[i + n - 1][1])
            if cue and cue not in used_cues:
                used_cues.append(cue)
        i += n
    for a, b in used_cues:
        work.consume(a, b)
    # A tag both asked for and refused ("fantasy, no dark fantasy") counts as refused.
    intent.include_tags = [t for t in intent.include_tags if t not in intent.exclude_tags]
    return negated


def _clean_query(text: str) -> str:
    s = _REQUEST_RE.sub(" ", text)
    s = re.sub(r"[?!]+|\s[-\u2013\u2014]\s", " ", s)
    words = s.split()

    def bare(w: str) -> str:
        return w.strip(".,;:!?\"'()").lower()

    while words and (bare(words[0]) in _FILLER or not bare(words[0])):
        words.pop(0)
    while words and (bare(words[-1]) in _FILLER or not bare(words[-1])):
        words.pop()
    return " ".join(words).strip(" ,;:.")


def parse_intent(
    text: str,
    known_titles: Sequence[str] = (),
    known_tags: Sequence[str] = (),
    known_authors: Sequence[str] = (),
    matcher: CatalogMatcher | None = None,
) -> Intent:
    """Parse one chat message into an :class:`Intent` with rules only (no model).

    ``known_titles``/``known_authors``: when given, ``title_ref`` and ``authors`` are elements of
    them (exact normalised match on the longest prefix of the phrase, else fuzzy ratio >= 88/85);
    when empty, the phrase is copied from the text. ``known_tags``: the only tags ever output;
    phrases are mapped through :data:`TAG_SYNONYMS` and plural/singular forms. ``query_text`` is
    the message without control phrases (requests, references, refused tags, years, modifiers,
    the title and author phrases), meant for embedding search.
    """
    tags = tuple(known_tags)
    if matcher is None and (known_titles or known_authors):
        matcher = _matcher(tuple(known_titles), tuple(known_authors))
    # With a catalog, titles and authors are the catalog's own; without, phrases are copied.
    titles = matcher if matcher is not None and (known_titles or not known_authors) else None
    authors = matcher if matcher is not None and (known_authors or not known_titles) else None
    raw = " ".join((text or "").split())
    if _HELP_RE.search(raw):
        return Intent(kind="help")
    g = _GREETING_RE.match(raw)
    if g and not raw[g.end() :].strip(" !?.,"):
        return Intent(kind="greeting")
    work = _Work(raw)
    if g:
        work.consume(0, g.end())
    intent = Intent(kind="recommend")
    ref = _find_ref(work)
    intent.ref_index = ref[0] if ref else None
    _find_years(work, intent)

    cue_kind, cue_end = _find_cue(work, ref)
    targeted = cue_kind is not None and intent.ref_index is None and not _deictic_at(work, cue_end)
    refused: list[str] = []
    if targeted and cue_kind == "not_interested":
        refused = _genre_target(work, cue_end, titles, tags)
    if targeted and not refused and titles is not None:
        st, en = _phrase_after(work, cue_end)
        hit = _match_title(work, st, en, titles)
        if hit:
            intent.title_ref = hit[0]
            work.consume(st, hit[1])

    _find_flags(work, intent)
    _find_authors(work, authors, intent)

    if targeted and not refused and titles is None and cue_kind != "why":
        # No catalog to check against: the phrase itself is the reference.
        st, en = _phrase_after(work, cue_end)
        if work.s[st:en].strip():
            intent.title_ref = work.s[st:en].strip()
            work.consume(st, en)
    if refused:
        st, en = _phrase_after(work, cue_end)
        intent.exclude_tags.extend(refused)
        work.consume(st, en)
    negated = _find_tags(work, tags, intent)
    intent.query_text = _clean_query(work.remaining())
    intent.kind = _decide_kind(intent, cue_kind, bool(refused), negated, targeted, titles, raw, g)
    return intent


def _find_cue(work: _Work, ref: tuple[int, int] | None) -> tuple[IntentKind | None, int]:
    """The first kind cue by priority (why > read_it > not_interested > details > more_like)."""
    for rx, kind in (
        (_WHY_RE, "why"),
        (_READ_IT_RE, "read_it"),
        (_NOT_INTERESTED_RE, "not_interested"),
        (_DETAILS_RE, "details"),
        (_MORE_LIKE_RE, "more_like"),
    ):
        m = rx.search(work.s)
        if m is None and kind == "read_it" and ref:
            # "I read the second one": the reference itself is already consumed.
            m = _READ_BEFORE_REF_RE.search(work.s, 0, ref[1])
        if m and kind == "read_it" and _MODAL_BEFORE_RE.search(work.s, 0, m.start()):
            m = None
        if m:
            work.consume(m.start(), m.end())
            return kind, m.end()  # type: ignore[return-value]
    return None, 0


def _deictic_at(work: _Work, pos: int) -> bool:
    """True when the phrase at ``pos`` is empty or points at the current book ("that one")."""
    st, en = _phrase_after(work, pos)
    return st >= en or bool(_DEICTIC_RE.match(work.s[st:en]))


def _genre_target(
    work: _Work, pos: int, titles: CatalogMatcher | None, tags: tuple[str, ...]
) -> list[str]:
    """Tags refused by "not interested in <phrase>" when the phrase is only genre words.

    A phrase that names a known title exactly ("not interested in Twilight") is a book, not a
    genre, and gives [].
    """
    st, en = _phrase_after(work, pos)
    if not tags or (titles is not None and _match_title(work, st, en, titles, exact_only=True)):
        return []
    sub = _Work("not " + work.s[st:en])
    probe = Intent(kind="refine")
    _find_tags(sub, tags, probe)
    return probe.exclude_tags if not _clean_query(sub.remaining()) else []


def _decide_kind(
    intent: Intent,
    cue: IntentKind | None,
    refused: bool,
    negated: bool,
    targeted: bool,
    titles: CatalogMatcher | None,
    raw: str,
    greeting: re.Match[str] | None,
) -> IntentKind:
    if refused:
        return "refine"  # "not interested in romance"
    if cue == "more_like" and targeted and titles is not None and intent.title_ref is None:
        return "recommend"  # "something like a cozy mystery": no known title, a free request
    if cue is not None:
        return cue
    if _REQUEST_RE.search(raw) or intent.authors:
        return "recommend"
    modifiers = (
        intent.year_min is not None
        or intent.year_max is not None
        or intent.shorter
        or intent.lighter
        or intent.newer
        or intent.older
        or negated
    )
    body = raw[greeting.end() :] if greeting else raw
    fresh_topic = bool(_FRESH_START_RE.match(body)) and bool(
        intent.include_tags or intent.query_text
    )
    if (_REFINE_START_RE.match(body) and not fresh_topic) or (
        modifiers and not intent.query_text and not _BOOKISH_RE.search(raw)
    ):
        return "refine"  # "more fantasy", "not romance", "published after 2000"
    return "recommend"


# ---------------------------------------------------------------------------- the LLM parser

KINDS: tuple[str, ...] = (
    "recommend",
    "more_like",
    "refine",
    "why",
    "details",
    "read_it",
    "not_interested",
    "greeting",
    "help",
)
FLAGS: tuple[str, ...] = ("shorter", "lighter", "newer", "older")
# Tags the schema never offers: length is the ``shorter`` flag, not a wanted tag.
_FLAG_TAGS = {"short", "long"}
_NULL_INT = {"type": ["integer", "null"]}
_NULL_STR = {"type": ["string", "null"], "maxLength": 80}


def intent_schema(tags: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON the LLM must produce (chat_intent v3), for one catalog.

    Only ``kind`` is required (it comes first); every other key is written only when the message
    states it, in this order, so a typical answer is ~15 tokens instead of ~55 (decoding time is
    the cost on a CPU: one token per step, forced keys included).

    Args:
        tags: the catalog's tags; ``want``/``avoid`` become enums of them (minus ``short`` /
            ``long``, which are the ``shorter`` flag), so a constrained decoder cannot invent a
            tag. Empty: free strings (mapped through the synonym table afterwards).

    Returns:
        A JSON schema (``additionalProperties`` false).
    """
    vocab = [t for t in tags if t not in _FLAG_TAGS]
    item: dict[str, Any] = {"type": "string", "enum": vocab} if vocab else {"type": "string"}
    tag_list = {"type": "array", "items": item, "minItems": 1, "maxItems": 6}
    props: dict[str, Any] = {
        "kind": {"type": "string", "enum": list(KINDS)},
        "title": {"type": "string", "maxLength": 80},
        "ref": {"type": "integer"},
        "authors": {
            "type": "array",
            "items": {"type": "string", "maxLength": 60},
            "minItems": 1,
            "maxItems": 3,
        },
        "want": tag_list,
        "avoid": tag_list,
        "year_min": {"type": "integer"},
        "year_max": {"type": "integer"},
        "flags": {
            "type": "array",
            "items": {"type": "string", "enum": list(FLAGS)},
            "minItems": 1,
            "maxItems": 4,
        },
        "topic": {"type": "string", "maxLength": 60},
    }
    return {
        "type": "object",
        "properties": props,
        "required": ["kind"],
        "additionalProperties": False,
    }


INTENT_SCHEMA: dict[str, Any] = intent_schema()
"""The catalog-independent shape of :func:`intent_schema` (tags as free strings)."""


def _example_json(ex: dict[str, Any]) -> str:
    """A worked example's answer in the model's format: ``kind`` first, then only the keys the
    message states, in schema order."""
    import json

    keys = list(intent_schema()["properties"])
    return json.dumps({k: ex[k] for k in keys if k in ex and k != "text"})


def prompt_examples() -> list[dict[str, Any]]:
    """The worked examples of the ``chat_intent`` prompt (``[[examples]]``: ``text`` + answer)."""
    from prompts import prompt_meta

    exs = prompt_meta("chat_intent").get("examples") or []
    return [dict(e) for e in exs if isinstance(e, dict) and "text" in e and "kind" in e]


def _json_object(raw: str) -> dict | None:
    import json

    m = re.search(r"\{.*\}", raw or "", re.S)
    if not m:
        return None
    try:
        data = json.loads(m.group(0))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# How much of a named title / author must appear in the message (rapidfuzz partial_ratio on
# folded text): "like the hunger gmaes" evidences "The Hunger Games"; "a cozy mystery" does not
# evidence "The Great Gatsby" (an invented anchor measured on the held-out set, v2 prompt).
EVIDENCE_CUTOFF = 80.0


def in_text(name: str, text: str) -> bool:
    """Whether ``name`` (a title or author as the model wrote it) appears in ``text``, allowing
    typos: fuzzy partial match of the folded strings at :data:`EVIDENCE_CUTOFF`."""
    from rapidfuzz import fuzz

    from retrieval.matcher import fold

    a, b = fold(name), fold(text)
    a = re.sub(r"^(?:the|a|an)\s+", "", a)
    if len(a) < 3:
        return False
    if len(a) > len(b):
        return fuzz.ratio(a, b) >= EVIDENCE_CUTOFF
    return fuzz.partial_ratio(a, b) >= EVIDENCE_CUTOFF


def intent_from_json(
    data: Any, tags: Sequence[str], matcher: CatalogMatcher, text: str | None = None
) -> Intent | None:
    """Validate the LLM's JSON and keep only what the catalog (and the message) supports.

    Accepts the v3 keys (:func:`intent_schema`) and the v2 flat keys (``anchor_title``,
    ``ref_index``, ``include_tags``, ``exclude_tags``, booleans, ``query_text``).

    Args:
        data: the decoded JSON object.
        tags: the catalog's tags (a tag outside them is mapped through the synonym table or
            dropped, never invented).
        matcher: resolves the title and authors to the catalog's own.
        text: the reader's message; when given, a title or author is kept only if the message
            names it (:func:`in_text`): the model may not invent an anchor the reader never
            mentioned.

    Returns:
        The intent, or None when the object is not an intent at all (no valid ``kind``).
    """
    if not isinstance(data, dict) or data.get("kind", data.get("intent")) not in KINDS:
        return None
    intent = Intent(kind=data.get("kind", data.get("intent")))
    table = _tag_table(tuple(tags))

    def get(new: str, old: str) -> Any:
        return data[new] if new in data else data.get(old)

    def known_tags(xs: Any) -> list[str]:
        out: list[str] = []
        for x in xs if isinstance(xs, list) else []:
            for t in table.get(_tag_key(str(x)), ()):
                if t not in out:
                    out.append(t)
        return out

    intent.include_tags = known_tags(get("want", "include_tags"))
    intent.exclude_tags = known_tags(get("avoid", "exclude_tags"))
    intent.include_tags = [t for t in intent.include_tags if t not in intent.exclude_tags]
    for a in data.get("authors") or []:
        if not isinstance(a, str) or (text is not None and not in_text(a, text)):
            continue
        name = matcher.author(a)
        if name and name not in intent.authors:
            intent.authors.append(name)
    for key in ("year_min", "year_max"):
        v = data.get(key)
        ok = isinstance(v, int) and not isinstance(v, bool) and -3000 < v < 2100
        setattr(intent, key, v if ok else None)
    flags = data.get("flags")
    for key in FLAGS:
        on = key in flags if isinstance(flags, list) else data.get(key) is True
        setattr(intent, key, on)
    ref = get("ref", "ref_index")
    if isinstance(ref, int) and not isinstance(ref, bool) and (ref == -1 or 1 <= ref <= 50):
        intent.ref_index = ref
    title = get("title", "anchor_title")
    if isinstance(title, str) and title.strip():
        num = re.fullmatch(r"#?\s*(\d{1,2})", title.strip())
        if num and intent.ref_index is None:
            intent.ref_index = int(num.group(1))
        elif text is None or in_text(title, text):
            hit = matcher.title(title)
            intent.title_ref = hit.title if hit else None
    q = get("topic", "query_text")
    intent.query_text = " ".join(q.split())[:200] if isinstance(q, str) else ""
    # "something like a cozy mystery", "books by X": no book named, so a fresh request (with
    # nothing at all named, "more like this" means the book under discussion)
    named = intent.title_ref is not None or intent.ref_index is not None
    topical = bool(intent.query_text or intent.include_tags or intent.authors)
    if intent.kind == "more_like" and not named and topical:
        intent.kind = "recommend"
    return intent


def unexplained_words(rules: Intent) -> list[str]:
    """Words of a message the rules did not account for: the rules' leftover text
    (``query_text``) minus filler and minus the words of the tags they matched.

    Args:
        rules: :func:`parse_intent` of the message.

    Returns:
        The folded words, in order ("a story about wizards" -> ["story", "wizards"]; "recommend
        me a memoir" -> [] once the rules matched the ``memoir`` tag).
    """
    from retrieval.matcher import fold

    tag_words = {w for t in rules.include_tags + rules.exclude_tags for w in fold(t).split()}
    skip = _FILLER | _GENERIC_WORDS | _NOT_TAGS | tag_words
    return [w for w in fold(rules.query_text or "").split() if w not in skip and len(w) > 1]


def combine_intents(llm: Intent, rules: Intent) -> Intent:
    """The *rules + LLM* parse: the rules' parse, with the LLM filling what they left out.

    The rules decide what is a fact of the text's surface: the kind of message (the dialogue
    act: why / details / read it / dismiss / like X / a new request / a refinement), list
    references, years, the shorter/lighter/newer/older cue words, and every tag, title and
    author they matched. Only when the message holds words the rules did not account for
    (:func:`unexplained_words`: "a story about wizards") are the LLM's content fields added:
    its tags (the rules' polarity wins a conflict), a title the rules did not find (then the
    kind becomes ``more_like`` when the LLM says so) and authors, all already checked against
    the catalog and the message (:func:`intent_from_json` with ``text``). So the LLM adds
    understanding where the rules have none and cannot undo what they read exactly.

    Args:
        llm: the validated LLM parse (:func:`intent_from_json` with the message).
        rules: :func:`parse_intent` of the same message.

    Returns:
        A new intent.
    """
    out = Intent(**{k: v for k, v in vars(rules).items()})
    out.include_tags, out.exclude_tags = list(rules.include_tags), list(rules.exclude_tags)
    out.authors = list(rules.authors)
    if not unexplained_words(rules):
        return out
    taken = set(rules.include_tags) | set(rules.exclude_tags)
    out.include_tags += [t for t in llm.include_tags if t not in taken]
    out.exclude_tags += [
        t for t in llm.exclude_tags if t not in taken and t not in out.include_tags
    ]
    out.authors += [a for a in llm.authors if a not in out.authors]
    if rules.title_ref is None and llm.title_ref is not None:
        out.title_ref = llm.title_ref
        if llm.kind == "more_like" and rules.kind in ("recommend", "refine"):
            out.kind = "more_like"
    return out


PARSER_MODES = ("llm", "llm+rules")


class IntentParser:
    """Parses requests for one catalog: the LLM under :func:`intent_schema` when ``llm`` is
    given, else (and whenever its answer fails validation) the rules.

    Args:
        books: the catalog, most popular first (ties in title lookup go to the first).
        llm: an ``LLMBackend`` or None for rules only.
        prompt_tags: how many of the most common tags the prompt lists (and the schema allows).
        deadline_s: time the LLM gets per message (backends with ``generate_json`` honour it).
        mode: with an LLM, ``"llm"`` (its validated answer alone) or ``"llm+rules"``
            (:func:`combine_intents`: the rules' parse, the LLM filling in what they left out).
        cache_size: LLM answers kept per message text (greedy decoding: the same message gives
            the same answer, so a repeat costs nothing); 0 turns the cache off.
        cache: an answer cache to share with another parser of the same catalog and model
            (e.g. to score ``llm`` and ``llm+rules`` from one model call per message).
    """

    def __init__(
        self,
        books: Sequence[Book],
        llm: Any = None,
        prompt_tags: int = 120,
        deadline_s: float = 20.0,
        mode: str = "llm",
        cache_size: int = 512,
        cache: dict[str, dict[str, Any] | None] | None = None,
    ) -> None:
        if mode not in PARSER_MODES:
            raise ValueError(f"mode must be one of {PARSER_MODES}, got {mode!r}")
        counts: dict[str, int] = {}
        for b in books:
            for t in b.tags:
                counts[t] = counts.get(t, 0) + 1
        self.tags: list[str] = sorted(counts, key=lambda t: (-counts[t], t))
        self.matcher = CatalogMatcher(books)
        self.llm = llm
        self.prompt_tags = prompt_tags
        self.deadline_s = deadline_s
        self.mode = mode
        self.cache_size = cache_size
        self.schema = intent_schema(self.tags[:prompt_tags])
        self.cache: dict[str, dict[str, Any] | None] = {} if cache is None else cache
        self._shots: list[dict[str, str]] | None = None
        self.cache_hits = 0
        self.llm_calls = 0
        self.fallbacks = 0
        self.last_source = "rules"
        self.last_error: str | None = None

    def rules(self, text: str) -> Intent:
        """The rule-based parse (no model)."""
        return parse_intent(text, known_tags=self.tags, matcher=self.matcher)

    def parse(self, text: str, shown: Sequence[str] = (), llm: Any = None) -> Intent:
        """Parse one message.

        Args:
            text: the reader's message.
            shown: titles of the list the reader sees now (numbered from 1). Not sent to the
                model since prompt v3 (a reference is a number in the text, resolved by the
                caller against this list), kept for callers and future prompts.
            llm: a per-turn view of the backend (its time budget) to use instead of ``self.llm``;
                ignored when this parser has no LLM.

        Returns:
            The intent; ``last_source`` says which parser produced it ("llm", "llm+rules" or
            "rules").
        """
        self.last_source = "rules"
        if self.llm is None:
            return self.rules(text)
        try:
            got = self.llm_parse(text, shown, llm)
            self.last_error = None if got is not None else "no valid JSON intent"
        except Exception as e:  # a failing backend must never break the chat: rules answer
            got, self.last_error = None, f"{type(e).__name__}: {e}"[:200]
        if got is None:
            self.fallbacks += 1
            return self.rules(text)
        if self.mode == "llm+rules":
            got = combine_intents(got, self.rules(text))
        self.last_source = self.mode
        return got

    def messages(self, text: str) -> list[dict[str, str]]:
        """The chat messages sent to the model: the system text, the worked examples as
        user/assistant turns (a prefix shared by every call, so llama.cpp evaluates it once),
        then the reader's message."""
        if self._shots is None:
            shots: list[dict[str, str]] = []
            for ex in prompt_examples():
                shots.append(self._render(ex["text"])[-1])
                shots.append({"role": "assistant", "content": _example_json(ex)})
            self._shots = shots
        msgs = self._render(text)
        return msgs[:-1] + self._shots + msgs[-1:]

    def _render(self, text: str) -> list[dict[str, str]]:
        from prompts import delimit, render_messages

        msgs, _version = render_messages(
            "chat_intent",
            utterance=delimit(text, 500),
            tags=", ".join(t for t in self.tags[: self.prompt_tags] if t not in _FLAG_TAGS),
        )
        return msgs

    def llm_json(self, text: str, llm: Any = None) -> dict[str, Any] | None:
        """The model's raw JSON answer for ``text`` (cached per message), or None."""
        key = " ".join((text or "").split())
        if self.cache_size and key in self.cache:
            self.cache_hits += 1
            return self.cache[key]
        llm = llm or self.llm
        msgs = self.messages(text)
        # A wrapper (ResilientBackend) always has generate_json; use it only when the wrapped
        # backend implements it too (every LLMBackend does; a bare generate-only object not).
        inner = getattr(llm, "inner", llm)
        gen_json = getattr(llm, "generate_json", None)
        self.llm_calls += 1
        if callable(gen_json) and callable(getattr(inner, "generate_json", None)):
            import time

            data = gen_json(
                msgs, self.schema, max_new_tokens=160, deadline=time.monotonic() + self.deadline_s
            )
            if isinstance(data, str):
                data = _json_object(data)
        else:
            data = _json_object(llm.generate(msgs, max_new_tokens=160))
        data = data if isinstance(data, dict) else None
        if self.cache_size:
            if len(self.cache) >= self.cache_size:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = data
        return data

    def llm_parse(self, text: str, shown: Sequence[str] = (), llm: Any = None) -> Intent | None:
        """The LLM's parse, validated against the catalog and the message, or None when it
        produced no usable intent.

        Args:
            text: the reader's message.
            shown: see :meth:`parse` (not sent to the model).
            llm: a per-turn backend view, as in :meth:`parse`.

        Returns:
            The validated intent or None.
        """
        return intent_from_json(self.llm_json(text, llm), self.tags, self.matcher, text=text)


def use_llm_for_intents(mode: str, spec: Any, llm: Any) -> bool:
    """Whether to parse with the LLM: ``mode`` "on"/"off", or "auto" = any configured model
    except the offline 135M default (whose JSON for this task is unusable, measured in
    ``eval/results/intent``)."""
    if mode == "off" or llm is None or str(spec).lower() == "none":
        return False
    return mode == "on" or str(spec).lower() not in ("local", "none")


def intent_parser(rec: Any) -> IntentParser:
    """The :class:`IntentParser` for a ``Recommender`` (its catalog, popular books first, and
    its LLM when ``chat.llm_intent`` allows)."""
    lib = rec.lib
    order = sorted(range(lib.n_items), key=lambda i: -int(lib.pop_count[i]))
    books = [lib.books[i] for i in order]
    spec = rec.settings.llm.backend if rec._llm_spec is None else rec._llm_spec
    mode = rec.settings.chat.llm_intent
    llm = None
    if (
        mode != "off"
        and str(spec).lower() != "none"
        and (mode == "on" or str(spec).lower() != "local")
    ):
        llm = rec.llm
    # "llm+rules", not the LLM alone: on the development requests the combination scored 1.000
    # and the LLM alone 0.588 (eval/results/intent/report.md; chosen there, not on held-out)
    return IntentParser(
        books, llm if use_llm_for_intents(mode, spec, llm) else None, mode="llm+rules"
    )


# ---------------------------------------------------------------------------- follow-ups


@dataclass
class RequestState:
    """The request a list answers, carried across turns so follow-ups can refine it.

    Attributes:
        query: free text for the embedding and BM25 (never a book's own text).
        constraints: wanted/refused tags, authors, years, shorter/lighter/newer/older.
        anchor: book id of "something like X", or None.
    """

    query: str | None = None
    constraints: Constraints = field(default_factory=Constraints)
    anchor: str | None = None

    @property
    def query_tags(self) -> list[str]:
        """Tags the request wants, for lexical retrieval."""
        return list(self.constraints.include_tags)


_GENERIC_WORDS = {
    "what",
    "should",
    "i",
    "read",
    "next",
    "something",
    "a",
    "book",
    "books",
    "good",
    "to",
    "recommend",
    "me",
    "please",
    "some",
    "give",
    "any",
    "suggestions",
    "suggest",
    "can",
    "you",
    "another",
    "new",
    "now",
    "more",
    "the",
    "one",
    "ones",
    "else",
    "could",
    "would",
    "like",
}


def _generic(q: str) -> bool:
    """'what should I read next' carries no topic: it is not a query."""
    return set(re.findall(r"[a-z']+", q.lower())) <= _GENERIC_WORDS


def follow_up(
    prev: RequestState | None,
    intent: Intent,
    anchor: str | None,
    books: dict[str, Book],
    tag_boost: float = 1.5,
) -> RequestState:
    """The request to run after ``intent``, given the previous one.

    A ``refine`` ("more fantasy", "but shorter", "not romance", "after 2000") keeps the last
    request (its text, anchor and constraints) and adds to it, except that wanting tags the
    anchor does not carry drops the anchor (a new topic); anything else ("something like X", a
    new topic, "books by Y") starts afresh. "Newer"/"older" with an anchor mean newer or
    older than the anchor.

    Args:
        prev: the request the current list answers (None: first turn).
        intent: the parsed message (kind recommend, more_like or refine).
        anchor: the book id the message points at for "like X" (already resolved), or None.
        books: the catalog by id (for the anchor's year).
        tag_boost: rank-score factor per wanted tag (``request.tag_boost``).
    """
    if intent.kind == "refine" and prev is not None:
        base, query, anchor = prev.constraints, prev.query, prev.anchor
        if (
            anchor in books
            and intent.include_tags
            and not (
                {t.lower() for t in intent.include_tags} & {t.lower() for t in books[anchor].tags}
            )
        ):
            anchor = None  # "more fantasy" after "like Dune": a new topic, not more Dune
        if intent.query_text and not _generic(intent.query_text) and not intent.include_tags:
            query = intent.query_text  # "more about dragons": the topic words refine the text
    else:
        base, query = Constraints(tag_boost=tag_boost), intent.query_text or None
        if intent.kind != "more_like":
            anchor = None
    c = base.refined_by(intent)
    c.tag_boost = tag_boost
    c.ref_year = books[anchor].year if anchor and (c.newer or c.older) and anchor in books else None
    if query and _generic(query):
        query = None
    return RequestState(query=query, constraints=c, anchor=anchor)


def describe_request(req: RequestState, books: dict[str, Book]) -> str:
    """What was understood, in words: 'books like “Dune”; shorter; with fantasy; no romance'."""
    parts = []
    c = req.constraints
    if req.anchor and req.anchor in books:
        a = books[req.anchor]
        parts.append(f"books like “{a.title}”")
    if req.query:
        parts.append(f"about “{req.query}”")
    if c.include_tags:
        parts.append("with " + ", ".join(c.include_tags))
    if c.exclude_tags:
        parts.append("no " + ", ".join(c.exclude_tags))
    if c.authors:
        parts.append("by " + ", ".join(c.authors))
    if c.year_min is not None and c.year_max is not None:
        parts.append(
            f"published {c.year_min}–{c.year_max}"
            if c.year_min != c.year_max
            else f"published in {c.year_min}"
        )
    elif c.year_min is not None:
        parts.append(f"published {c.year_min} or later")
    elif c.year_max is not None:
        parts.append(f"published {c.year_max} or earlier")
    anchor_title = f"“{books[req.anchor].title}”" if req.anchor in books else ""
    if c.shorter:
        parts.append(
            "shorter"
            + (f" than {anchor_title}" if anchor_title else "")
            + " (by the catalog's short/long tags)"
        )
    if c.lighter:
        parts.append("lighter in mood" + (f" than {anchor_title}" if anchor_title else ""))
    for flag in ("newer", "older"):
        if getattr(c, flag):
            rel = f" than {anchor_title} ({c.ref_year})" if c.ref_year is not None else ""
            parts.append(flag + rel)
    return "; ".join(parts)


def recommend_request(
    rec: Any, req: RequestState, user_id: str | None, k: int, exclude: Sequence[str] = (), **kw: Any
) -> Any:
    """Run a request through ``rec.recommend_full`` (the CLI and the chat share this)."""
    c = req.constraints
    return rec.recommend_full(
        user_id=user_id,
        query=req.query,
        k=k,
        constraints=None if c.is_empty() else c,
        exclude=list(exclude) + ([req.anchor] if req.anchor else []),
        anchors=[req.anchor] if req.anchor else [],
        query_tags=req.query_tags,
        **kw,
    )
