"""The claim checker: every claim in an explanation or blurb must be backed by a record we hold.

:func:`assistant.grounding.check_grounding` catches invented *names*; this module checks what the
text *says*. A text is split into sentences and each rule below names the first claim that no
record supports (``None``: every claim is supported). The records are the recommended book's own
record (title, authors, year, tags, series, description), the evidence, the reader's history
(titles, authors, ratings) and the reader's request.

Rules (each one measurable, each one tested with hand-made true and false texts):

* **proper nouns**: a capitalised word that does not start a sentence must occur in the records
  the field may use (the blurb: the book's own record; the explanation: also the evidence, the
  history and the request);
* **characters**: a name introduced as a character ("a man named X", "the main character, X")
  must occur in the book's description, and an author is never a character;
* **numbers and years**: every number (digits or a number word) must occur in those records;
* **series position**: "the second book", "book 2", "#2", "sequel", "first in the series",
  "the series" must match the series and position in the records;
* **tags and genres**: a genre/tag term (from the catalog's tag vocabulary) must be one of the
  book's tags or in its description (explanation: also the evidence's and the history's tags);
* **plot**: every blurb sentence, and every explanation sentence that describes the story
  ("about", "follows", "tells", "set in", "character" ...), must have at least
  :data:`PLOT_SUPPORT` of its content words in the book's record (suffix-insensitive);
* **reader claims**: a book the text says the reader liked/loved/enjoyed must be in their history
  rated 4 or more (or shelved positively); a rating it quotes must be the one they gave;
* **authorship**: "X by Y" must pair a title with its own author;
* **relations** (explanation): a clause that relates the pick to a book X ("shares the tags A, B
  with X", "like X", "similar to X", "readers who liked X", "because you liked X") must name an X
  that is not the pick and that an evidence line of the matching kind holds (shares tags:
  ``shared_tags``/``anchor``; like/similar: ``similar_to``/``shared_tags``/``anchor``; readers
  who liked: ``co_readers``/``anchor``; because you liked: any line), and the tags it calls
  shared must be that line's (with no X named: those of a shared-tags line);
* **tautology**: the blurb must carry at least :data:`MIN_FACETS` facts beyond title and authors
  (description words or tags, a multi-word tag counting once);
* **personal**: the explanation must mention one of the reader's books (title, series, author)
  or their request, and the evidence (a tag, author, book, series, readers, popularity);
* **complete**: each text ends a sentence (a reply cut at the length limit is not shown);
* **distinct**: a text whose content words overlap a text already shown to this reader by a
  Jaccard index of at least :data:`DUPLICATE_JACCARD` is a near-duplicate.

The checker is lexical, so it is conservative: a true paraphrase with many new words fails the
plot rule (and the reader sees the template), which is the safe side.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from retrieval.types import Book, Evidence

PLOT_SUPPORT = 0.75  # share of a plot sentence's content words found in the book's record
MIN_FACETS = 3  # distinct description words / tags a blurb must carry beyond title and author
DUPLICATE_JACCARD = 0.6  # content-word Jaccard at which two texts of one reader are near-duplicates
LIKED_RATING = 4.0
MAX_REPEATS = 3  # a content word this often in one text: a loop ("dark, dark, and dark")
# Words an English sentence does not end on: a text ending "... and its." was cut at a limit.
_DANGLING = "the a an and or but nor its their his her my our your that which whose of with by to"
DANGLING_WORDS = frozenset([*_DANGLING.split(), "than", "this", "every"])

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_SENT = re.compile(r"(?<=[.!?;])\s+|\n+")
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "s",
        "t",
        "don",
        "now",
        "ll",
        "re",
        "ve",
        "d",
        "m",
        "o",
        "y",
        "ain",
        "isn",
        "aren",
        "wasn",
        "weren",
        "hasn",
        "haven",
        "hadn",
        "doesn",
        "didn",
        "won",
        "wouldn",
        "shouldn",
        "couldn",
        "mustn",
        "needn",
        "let",
        "lets",
        "it's",
        "that's",
        "one's",
        "whose",
        "within",
        "across",
        "along",
        "among",
        "around",
        "upon",
        "onto",
        "toward",
        "towards",
        "yet",
        "still",
        "even",
        "ever",
        "every",
        "much",
        "many",
        "may",
        "might",
        "must",
        "shall",
        "via",
        "per",
        "whether",
        "though",
        "although",
        "unless",
        "since",
        "thus",
    ]
)
# Words that frame or praise rather than state a fact about the story: not checked as plot claims.
FRAME_WORDS = frozenset(
    [
        # how an explanation relates two books ("shares the same tags"), not a plot claim
        "shares",
        "share",
        "same",
        "similar",
        "tags",
        "tagged",
        "book",
        "books",
        "novel",
        "novels",
        "story",
        "stories",
        "tale",
        "tales",
        "read",
        "reads",
        "reading",
        "reader",
        "readers",
        "read",
        "enjoy",
        "enjoyed",
        "enjoying",
        "enjoys",
        "like",
        "liked",
        "likes",
        "love",
        "loved",
        "loves",
        "lover",
        "lovers",
        "fan",
        "fans",
        "favourite",
        "favorite",
        "recommend",
        "recommended",
        "recommendation",
        "pick",
        "picks",
        "choice",
        "great",
        "good",
        "best",
        "better",
        "wonderful",
        "beautiful",
        "beautifully",
        "compelling",
        "gripping",
        "thrilling",
        "captivating",
        "engaging",
        "moving",
        "powerful",
        "delightful",
        "charming",
        "fascinating",
        "brilliant",
        "perfect",
        "classic",
        "page",
        "turner",
        "page-turner",
        "genre",
        "genres",
        "author",
        "authors",
        "writer",
        "writers",
        "written",
        "writes",
        "write",
        "wrote",
        "series",
        "volume",
        "volumes",
        "installment",
        "instalment",
        "entry",
        "sequel",
        "prequel",
        "next",
        "title",
        "titles",
        "work",
        "works",
        "style",
        "tone",
        "voice",
        "prose",
        "kind",
        "sort",
        "similar",
        "same",
        "another",
        "also",
        "offers",
        "offer",
        "delivers",
        "deliver",
        "brings",
        "bring",
        "makes",
        "make",
        "take",
        "takes",
        "journey",
        "experience",
        "world",
        "worlds",
        "filled",
        "full",
        "rich",
        "vivid",
        "unforgettable",
        "unique",
        "fresh",
        "feel",
        "feels",
        "feeling",
        "may",
        "might",
        "will",
        "would",
        "could",
        "should",
        "want",
        "wants",
        "find",
        "finds",
        "found",
        "discover",
        "discovers",
        "explore",
        "explores",
        "exploring",
        "exploration",
        "tells",
        "tell",
        "told",
        "follows",
        "follow",
        "following",
        "about",
        "set",
        "features",
        "feature",
        "centers",
        "centres",
        "focuses",
        "around",
        "readers",
        "through",
        "way",
        "ways",
        "thing",
        "things",
        "lot",
        "lots",
        "something",
        "anything",
        "everything",
        "someone",
        "readers-who",
        "reader's",
        "you'll",
        "you're",
        "you've",
        "it's",
        "fun",
        "funny",
        "wit",
        "witty",
        "tension",
        "suspense",
        "suspenseful",
        "emotional",
        "heartfelt",
        "keep",
        "keeps",
        "kept",
    ]
)
# Sentence cues of a plot claim inside the explanation (the blurb is checked sentence by sentence).
_PLOT_CUE = re.compile(
    r"\b(about|follows|following|tells|told|story of|tale of|set in|centers on|centres on|"
    r"character|characters|protagonist|hero|heroine|narrator|plot|where (a|an|the)|in which)\b",
    re.I,
)
_CHARACTER = re.compile(
    r"\b(?:named|called|character|protagonist|heroine|hero|narrator)\b[,:]?\s+"
    r"((?:[A-Z][\w'’.-]*)(?:\s+[A-Z][\w'’.-]*){0,2})"
)
_NUMBER_WORDS = {
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "twenty": 20,
    "hundred": 100,
    "thousand": 1000,
    "million": 1000000,
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
    "final": -1,
    "last": -1,
}
_VOLUME = r"(?:book|novel|volume|installment|instalment|entry|part|instal?lment)"
_POSITION = [
    re.compile(rf"\b(?P<ord>{'|'.join(_ORDINALS)}|\d+(?:st|nd|rd|th))\s+{_VOLUME}\b", re.I),
    re.compile(
        rf"\b{_VOLUME}\s+(?P<num>\d+|{'|'.join(['one', *_NUMBER_WORDS])})\s+(?:of|in)\b", re.I
    ),
    re.compile(r"#\s?(?P<num>\d+)"),
]
_SEQUEL = re.compile(
    r"\b(sequel|continues the (story|series|saga)|next (book|volume|installment|instalment|"
    r"entry|chapter) (in|of))\b",
    re.I,
)
_SERIES_WORD = re.compile(r"\b(series|saga|trilogy)\b", re.I)
# "you loved X", "books you enjoyed such as X": the sentence claims the reader liked what it names.
_LIKED = re.compile(
    r"\byou\s+(?:really\s+|also\s+|already\s+)?(loved|liked|enjoyed|adored|devoured|"
    r"rated|gave|praised|treasured|raved)\b|\byour (favou?rite|top-rated|five-star|5-star)\b",
    re.I,
)
_LIKED_VERB = (
    r"\byou\s+(?:really\s+|also\s+|already\s+)?(?:loved|liked|enjoyed|adored|devoured|rated|"
    r"gave|praised|treasured)"
)
_DISLIKED = re.compile(r"\byou\s+(disliked|hated|did not like|didn't like)\b", re.I)
_STARS = re.compile(r"\b(\d(?:\.\d)?)\s*(?:stars?|★|/\s*5|out of 5)", re.I)
_GENERIC_TAGS = frozenset(
    {
        "fiction",
        "books",
        "book",
        "novel",
        "novels",
        "adult",
        "literature",
        "general",
        "favorites",
        "favourites",
        "owned",
        "to-read",
        "default",
        "series",
        "kindle",
        "library",
        "ebook",
        "audiobook",
        "my-books",
        "re-read",
        "english",
        "novella",
        # "tells the story of ..." is how prose speaks, not a claim of the tag "stories"
        # (the genre "short stories" is a two-word tag and stays checked)
        "story",
        "stories",
    }
)


# -- words -------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lower-case word tokens with accents folded and apostrophes dropped (``&`` reads ``and``)."""
    s = unicodedata.normalize("NFKD", (text or "").replace("&", " and "))
    s = "".join(ch for ch in s if not unicodedata.combining(ch))
    return [m.group().lower().replace("'", "").replace("’", "") for m in _WORD.finditer(s)]


def stem(word: str) -> str:
    """A crude suffix stripper: enough to match "searches"/"search", "survived"/"survive"."""
    w = word.lower()
    for suf, rep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("ly", ""), ("s", "")):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            return w[: len(w) - len(suf)] + rep
    return w


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 5 and long_.startswith(short)


class Vocabulary:
    """A bag of stems with prefix-tolerant lookup (``survive`` matches ``surviv``)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.stems: set[str] = set()
        for t in texts:
            self.stems.update(stem(w) for w in words(t))
        self._by_prefix: dict[str, list[str]] = {}
        for s in self.stems:
            self._by_prefix.setdefault(s[:5], []).append(s)

    def has(self, word: str) -> bool:
        s = stem(word)
        if s in self.stems:
            return True
        return len(s) >= 5 and any(_same(s, o) for o in self._by_prefix.get(s[:5], ()))


def content_words(text: str) -> list[str]:
    """Words that can carry a claim: not stop words, not digits."""
    return [w for w in words(text) if w not in STOPWORDS and not w.isdigit() and len(w) > 1]


def sentences(text: str) -> list[str]:
    """The text's sentences (split at ``.!?;`` followed by space, and at newlines)."""
    return [s.strip() for s in _SENT.split(text or "") if s and s.strip()]


def tag_phrase(tag: str) -> str:
    """``"science-fiction"`` → ``"science fiction"`` (how prose spells a tag)."""
    return " ".join(words(tag.replace("-", " ").replace("_", " ")))


def _phrase_in(phrase: str, toks: Sequence[str]) -> bool:
    p = phrase.split()
    n = len(p)
    return n > 0 and any(
        all(_same(stem(toks[i + k]), stem(p[k])) for k in range(n))
        for i in range(len(toks) - n + 1)
    )


def name_key(name: str) -> list[str]:
    """A name's words without a *leading* article: "The Diary of a Young Girl" -> diary of a
    young girl (dropping every article, as before, made titles with an inner "a" or "the"
    unmatchable, so "You liked The Diary of a Young Girl" was called not personal)."""
    ws = words(name)
    while len(ws) > 1 and ws[0] in ("the", "a", "an"):
        ws = ws[1:]
    return ws


def _title_main(title: str) -> str:
    return re.sub(r"\s*\([^()]*\)\s*$", "", title).strip()


# -- the context -------------------------------------------------------------------------------
@dataclass
class ClaimContext:
    """Everything a text about ``book`` for one reader may rest on.

    Attributes:
        book: the recommended book's own record.
        evidence: the facts the system holds for this recommendation.
        history: the reader's books with their ratings (``None``: shelved without a rating).
        books_by_id: the catalog, to resolve evidence book ids.
        query: the reader's request, if any.
        tag_vocab: every tag phrase of the catalog (which words count as genre/tag claims).
    """

    book: Book
    evidence: Sequence[Evidence] = ()
    history: Sequence[tuple[Book, float | None]] = ()
    books_by_id: Mapping[str, Book] = field(default_factory=dict)
    query: str | None = None
    tag_vocab: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        b = self.book
        ev_books = [
            self.books_by_id[i] for e in self.evidence for i in e.book_ids if i in self.books_by_id
        ]
        self.ev_books = ev_books
        self.own_text = " ".join(
            [
                b.title,
                *b.authors,
                *(map(tag_phrase, b.tags)),
                b.series or "",
                b.description,
                str(b.year or ""),
            ]
        )
        self.own = Vocabulary([self.own_text])
        self.own_tags = {tag_phrase(t) for t in b.tags}
        ev_text = []
        for e in self.evidence:
            # a query_match's text is the request itself, kept apart in ``query``
            ev_text += [
                *e.authors,
                *(tag_phrase(t) for t in e.tags),
                e.series or "",
                "" if e.kind == "query_match" else e.text or "",
            ]
        hist_text = [f"{h.title} {' '.join(h.authors)} {h.series or ''}" for h, _ in self.history]
        self.ev_text = " ".join(
            ev_text + [f"{x.title} {' '.join(x.authors)} {x.series or ''}" for x in ev_books]
        )
        self.hist_text = " ".join(hist_text)
        self.reader = Vocabulary([self.ev_text, self.hist_text, self.query or "", self.own_text])
        self.reader_no_query = Vocabulary([self.ev_text, self.hist_text, self.own_text])
        self.reader_tags = (
            self.own_tags
            | {tag_phrase(t) for e in self.evidence for t in e.tags}
            | {tag_phrase(t) for h, _ in self.history for t in h.tags}
            | {tag_phrase(t) for x in ev_books for t in x.tags}
        )
        self.numbers = self._numbers()
        self.vocab_tags = sorted(
            {t for t in self.tag_vocab if t and t not in _GENERIC_TAGS},
            key=lambda t: -len(t.split()),
        )

    def _numbers(self) -> set[float]:
        """Every number a text may state: the book's, the evidence's and the reader's ratings."""
        b = self.book
        nums: set[float] = set()
        for t in [
            b.title,
            b.description,
            b.series or "",
            self.query or "",
            self.ev_text,
            self.hist_text,
        ]:
            nums.update(float(x) for x in re.findall(r"\d+(?:\.\d+)?", t))
        said = set(
            words(
                " ".join([b.title, b.description, self.query or "", self.ev_text, self.hist_text])
            )
        )
        nums.update(float(v) for w, v in _NUMBER_WORDS.items() if w in said)
        for x in [
            b.year,
            b.series_index,
            *(h.year for h, _ in self.history),
            *(h.series_index for h, _ in self.history),
        ]:
            if x is not None:
                nums.add(float(x))
        for _, r in self.history:
            if r is not None:
                nums.add(float(r))
        for e in self.evidence:
            for v in (e.count, e.value, e.share):
                if v is not None:
                    nums.update(
                        {float(v), round(float(v), 1), round(float(v), 2), float(round(float(v)))}
                    )
            if e.share is not None:
                nums.add(float(round(e.share * 100)))
        nums.update({4.0, 5.0})  # "rated it 4 or 5" is how the evidence lines speak of co-readers
        return nums

    # history lookups
    def history_title_hits(self, toks: Sequence[str]) -> list[tuple[Book, float | None]]:
        out = []
        for h, r in self.history:
            for name in {_title_main(h.title), h.series or ""}:
                key = name_key(name) if name else []
                if (
                    key
                    and len(key) >= 1
                    and _phrase_in(" ".join(key), toks)
                    and (len(key) > 1 or len(key[0]) > 4)
                ):
                    out.append((h, r))
                    break
        return out


# -- the rules ---------------------------------------------------------------------------------
def _proper_nouns(text: str, vocab: Vocabulary) -> str | None:
    for s in sentences(text):
        toks = _WORD.findall(s)
        for k, o in enumerate(toks):
            if k == 0 or not o[:1].isupper() or o.lower() in ("i", "i'm", "i've"):
                continue
            prev = toks[k - 1]
            if prev.endswith(":"):
                continue
            w = words(o)
            if w and not vocab.has(w[0]):
                return f"names {o!r}, which no record holds"
    return None


def _characters(text: str, ctx: ClaimContext) -> str | None:
    desc = Vocabulary([ctx.book.description])
    authors = {
        w
        for b in [ctx.book, *(h for h, _ in ctx.history), *ctx.ev_books]
        for a in b.authors
        for w in words(a)
    }
    for m in _CHARACTER.finditer(text):
        name = words(m.group(1))
        if not name:
            continue
        if set(name) & authors and not all(desc.has(w) for w in name):
            return f"makes the author {m.group(1)!r} a character"
        if not all(desc.has(w) for w in name):
            return f"invents a character {m.group(1)!r} (not in the description)"
    for s in sentences(text):
        if re.search(r"\b(main character|protagonist|heroine|hero|narrator)\b", s, re.I):
            toks = words(s)
            for b in [ctx.book, *(h for h, _ in ctx.history)]:
                for a in b.authors:
                    if _phrase_in(" ".join(words(a)), toks):
                        return f"makes the author {a!r} a character"
    return None


def _numbers(text: str, ctx: ClaimContext) -> str | None:
    for m in re.finditer(r"(?<![\w#])(\d+(?:\.\d+)?)(?:%)?", text):
        v = float(m.group(1))
        if v not in ctx.numbers:
            return f"states the number {m.group(1)}, which no record holds"
    for w in words(text):
        if w in _NUMBER_WORDS and float(_NUMBER_WORDS[w]) not in ctx.numbers:
            return f"states the number {w!r}, which no record holds"
    return None


def _series(text: str, ctx: ClaimContext, blurb: bool) -> str | None:
    b = ctx.book
    books = [b] if blurb else [b, *(h for h, _ in ctx.history), *ctx.ev_books]
    positions = {x.series_index for x in books if x.series_index is not None}
    has_series = any(x.series for x in books) or any(e.series for e in ctx.evidence)
    for pat in _POSITION:
        for m in pat.finditer(text):
            if m.groupdict().get("ord"):
                o = m.group("ord").lower()
                n = _ORDINALS.get(o)
                if n is None:
                    n = int(re.match(r"\d+", o).group())
            else:
                raw = m.group("num").lower()
                n = int(raw) if raw.isdigit() else (1 if raw == "one" else _NUMBER_WORDS[raw])
            if n == -1:
                if not has_series:
                    return "claims a series position, but no record holds a series"
                continue
            if not has_series or float(n) not in positions:
                return f"claims series position {n}, which the records do not hold"
    if _SEQUEL.search(text):
        follows = any(e.kind == "series_next" for e in ctx.evidence) or (b.series_index or 0) > 1
        if not follows:
            return "calls it a sequel / next volume, which the records do not hold"
    if (
        _SERIES_WORD.search(text)
        and not has_series
        and not re.search(r"\bseries\b", b.description, re.I)
    ):
        return "speaks of a series, but no record holds one"
    return None


def _tag_spans(toks: Sequence[str], vocab_tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """The tag phrases named in ``toks`` as (start, length, tag), longest tags taken first."""
    taken = [False] * len(toks)
    out = []
    for tag in vocab_tags:
        p = tag.split()
        n = len(p)
        for i in range(len(toks) - n + 1):
            if any(taken[i : i + n]):
                continue
            if all(stem(toks[i + k]) == stem(p[k]) for k in range(n)):
                for k in range(n):
                    taken[i + k] = True
                out.append((i, n, tag))
    return out


def _tags(text: str, allowed: set[str], ctx: ClaimContext, vocab: Vocabulary) -> str | None:
    toks = words(text)
    for i, n, tag in _tag_spans(toks, ctx.vocab_tags):
        p = tag.split()
        said = toks[i : i + n]
        if (
            tag not in allowed
            and not all(vocab.has(w) for w in p)
            and not all(vocab.has(w) for w in said)
        ):
            return f"claims the tag/genre {tag!r}, which the records do not hold"
    return None


def plot_support(sentence: str, ctx: ClaimContext) -> tuple[float, list[str]]:
    """Share of the sentence's checkable content words found in the book's record, and the
    misses."""
    ws = [w for w in content_words(sentence) if w not in FRAME_WORDS]
    if not ws:
        return 1.0, []
    miss = [w for w in ws if not ctx.own.has(w)]
    return 1 - len(miss) / len(ws), miss


def _plot(text: str, ctx: ClaimContext, every_sentence: bool) -> str | None:
    for s in sentences(text):
        # In the explanation, words about the reader's own books are not claims about this plot.
        probe = s
        if not every_sentence:
            # quoted spans are titles or the reader's request, checked by the name rules
            probe = re.sub(r"“[^”]*”|\"[^\"]*\"", " ", probe)
            probe = _strip_names(probe, [h for h, _ in ctx.history] + list(ctx.ev_books))
            if ctx.query:
                probe = re.sub(re.escape(ctx.query), " ", probe, flags=re.I)
            for h, _ in ctx.history:
                for part in h.authors:
                    probe = re.sub(re.escape(part), " ", probe, flags=re.I)
            if not _PLOT_CUE.search(probe):
                continue
        share, miss = plot_support(probe, ctx)
        if share < PLOT_SUPPORT:
            return (
                f"describes the story in words the book's record does not support "
                f"({share:.0%} supported; e.g. {', '.join(miss[:4])})"
            )
    return None


def _strip_names(sentence: str, books: Sequence[Book]) -> str:
    """The sentence with the names of ``books`` (full and main titles, series) blanked out."""
    forms = sorted(
        {f for b in books for f in (b.title, _title_main(b.title), b.series or "") if f},
        key=len,
        reverse=True,
    )
    for f in forms:
        sentence = re.sub(re.escape(f), " ", sentence, flags=re.I)
    return sentence


_RATED_AFTER = re.compile(
    r"^[”\"’'*_]?\s*(?:\(\s*)?(\d(?:\.\d)?)\s*(?:stars?|★|/\s*5|out of 5)", re.I
)


def _reader_claims(text: str, ctx: ClaimContext) -> str | None:
    own = [h for h, _ in ctx.history] + list(ctx.ev_books) + [ctx.book]
    for s in sentences(text):
        # a rating quoted right after one of the reader's titles ("X (4★)", "X 5 stars") is theirs
        forms = sorted(
            ((f, h, r) for h, r in ctx.history for f in {h.title, _title_main(h.title)}),
            key=lambda x: -len(x[0]),
        )
        scan = s
        for form, h, r in forms:  # longest first, blanked once read: "Night" is not "Ladies' Night"
            for m in list(re.finditer(r"(?<!\w)" + re.escape(form) + r"(?!\w)", scan, flags=re.I)):
                q = _RATED_AFTER.match(scan[m.end() :])
                if q and r is not None and float(q.group(1)) != float(r):
                    return (
                        f"quotes your rating of {h.title!r} as {q.group(1)}, but you rated it {r:g}"
                    )
            scan = re.sub(
                r"(?<!\w)" + re.escape(form) + r"(?!\w)",
                lambda m: "_" * len(m.group()),
                scan,
                flags=re.I,
            )
        liked, disliked = _LIKED.search(s), _DISLIKED.search(s)
        if not (liked or disliked):
            continue
        # "You loved <the recommended book>": the reader has not read it (it would not be picked)
        if liked and all(h.book_id != ctx.book.book_id for h, _ in ctx.history):
            main = _title_main(ctx.book.title)
            if re.search(
                _LIKED_VERB + r"\s+(?:the book\s+)?[“\"]?" + re.escape(main) + r"(?!\w)", s, re.I
            ):
                return (
                    f"says you liked {main!r}, the recommended book itself, which you have not read"
                )
        toks = words(s)
        for h, r in ctx.history:
            if h.book_id == ctx.book.book_id:
                continue
            key = name_key(_title_main(h.title))
            if (
                not key
                or not _phrase_in(" ".join(key), toks)
                or (len(key) == 1 and len(key[0]) <= 4)
            ):
                continue
            if liked and r is not None and r < LIKED_RATING and not _STARS.search(s):
                return f"says you liked {h.title!r}, but you rated it {r:g}"
            if disliked and r is not None and r > 2:
                return f"says you disliked {h.title!r}, but you rated it {r:g}"
        # a catalog title the sentence says you liked, that is neither in your history nor the
        # evidence
        rest = words(_strip_names(s, own))
        for x in ctx.books_by_id.values():
            key = name_key(_title_main(x.title))
            if len(key) >= 2 and x.book_id != ctx.book.book_id and _phrase_in(" ".join(key), rest):
                return f"says you liked {x.title!r}, which is not in your history"
    return None


def _authorship(text: str, ctx: ClaimContext) -> str | None:
    books = [ctx.book, *(h for h, _ in ctx.history), *ctx.ev_books]
    all_authors = {a for b in books for a in b.authors}
    for b in books:
        t = words(_title_main(b.title))
        if not t:
            continue
        toks = words(text)
        n = len(t)
        for i in range(len(toks) - n + 1):
            if toks[i : i + n] != t:
                continue
            j = i + n
            if j < len(toks) and toks[j] == "by":
                after = toks[j + 1 : j + 5]
                for a in all_authors:
                    aw = words(a)
                    if after[: len(aw)] == aw and a not in b.authors:
                        return (
                            f"says {_title_main(b.title)!r} is by {a}, which its record does "
                            f"not say"
                        )
    return None


# -- relations -----------------------------------------------------------------------------------
# Which evidence kinds back which relation a clause claims between the pick and a named book.
_REL_TAGS = ("shared_tags", "anchor")  # "shares the tags A, B with X"
_REL_SIMILAR = (
    "similar_to",
    "shared_tags",
    "anchor",
)  # "like X", "similar to X", "shares ... with X"
_REL_AUTHOR = ("same_author",)  # "shares an author with X"
_REL_READERS = ("co_readers", "anchor")  # "readers who liked X ...", "fans of X"
_REL_ANY = None  # "because you liked X": any evidence line that names X
_REL_LABEL = {
    _REL_TAGS: "shared-tags",
    _REL_SIMILAR: "similar-book",
    _REL_AUTHOR: "same-author",
    _REL_READERS: "co-readers",
}
_REL_VERB = {
    _REL_TAGS: "shares tags with",
    _REL_SIMILAR: "is like",
    _REL_AUTHOR: "shares an author with",
    _REL_READERS: "shares readers with",
}
_SHARE_WORDS = frozenset({"share", "shares", "shared", "sharing"})


def _wordset(ws: str) -> frozenset[str]:
    return frozenset(ws.split())


_NOT_LIKE = _wordset(
    "you i we they he she who that would wed youd theyd id ll youll might will may do did dont "
    "didnt to really also if readers reader people fans those"
)
_OBJ_FILLER = _wordset(
    "the a an book books novel novels title titles you your liked loved enjoyed rated highly read "
    "such as including like both ones those other others especially namely"
)
_OBJ_JOIN = _wordset(", and or nor the a an as well")
_RELATION_VERBS = _wordset("liked loved enjoyed like love enjoy rated read gave adored")


def _name_index(ctx: ClaimContext) -> dict[tuple[str, ...], list[Book]]:
    """Name key -> the known books (the pick, the history, the evidence) it names; a key that is
    some book's title names only the books with that title, not a series of that name."""
    titles: dict[tuple[str, ...], list[Book]] = {}
    series: dict[tuple[str, ...], list[Book]] = {}
    seen: set[str] = set()
    for b in [ctx.book, *(h for h, _ in ctx.history), *ctx.ev_books]:
        if b.book_id in seen:
            continue
        seen.add(b.book_id)
        titles.setdefault(tuple(name_key(_title_main(b.title))), []).append(b)
        if b.series:
            series.setdefault(tuple(name_key(b.series)), []).append(b)
    out = dict(series)
    out.update(titles)
    out.pop((), None)
    return out


def _tokens_cased(text: str) -> list[tuple[str, str, str]]:
    """(lower-case, as written, the text before it) word tokens, aligned with :func:`words`."""
    s = unicodedata.normalize("NFKD", (text or "").replace("&", " and "))
    s = "".join(ch for ch in s if not unicodedata.combining(ch))
    out = []
    end = 0
    for m in _WORD.finditer(s):
        out.append(
            (m.group().lower().replace("'", "").replace("’", ""), m.group(), s[end : m.start()])
        )
        end = m.end()
    return out


def _mark_names(
    sentence: str, index: Mapping[tuple[str, ...], list[Book]]
) -> tuple[list[str], list[list[Book]]]:
    """The sentence's tokens with each known book name (longest first) replaced by ``§k``, and
    the books each ``§k`` names, with a ``,`` token where a comma, colon or dash stands between
    words outside a name. A one-word name of four letters or fewer counts only when it is
    capitalised ("Lit", "Dry")."""
    toks = _tokens_cased(sentence)
    low = [t for t, _, _ in toks]
    found = []
    for key in index:
        n = len(key)
        for i in range(len(low) - n + 1):
            if all(_same(stem(low[i + k]), stem(key[k])) for k in range(n)):
                if n == 1 and len(key[0]) <= 4 and not toks[i][1][:1].isupper():
                    continue
                found.append((i, n, key))
    found.sort(key=lambda x: (-x[1], x[0]))
    taken = [False] * len(low)
    spans = []
    for i, n, key in found:
        if not any(taken[i : i + n]):
            taken[i : i + n] = [True] * n
            spans.append((i, n, key))
    starts = {i: (n, key) for i, n, key in spans}
    seq: list[str] = []
    named: list[list[Book]] = []
    i = 0
    while i < len(low):
        if re.search(r"[,:—–]", toks[i][2]):
            seq.append(",")
        if i in starts:
            n, key = starts[i]
            seq.append(f"§{len(named)}")
            named.append(index[key])
            i += n
        else:
            seq.append(low[i])
            i += 1
    return seq, named


def _object(seq: Sequence[str], j: int) -> list[int]:
    """The ``§k`` names a relation cue at ``seq[j:]`` points to: "X", "X, Y and Z", "books you
    liked, such as X"."""
    skipped = 0
    while j < len(seq) and seq[j] in _OBJ_FILLER and skipped < 8:
        j, skipped = j + 1, skipped + 1
    out: list[int] = []
    closed = True  # the last two names are joined by "and"/"or", not only by a comma
    while j < len(seq) and seq[j].startswith("§"):
        out.append(int(seq[j][1:]))
        j += 1
        k = j
        while k < len(seq) and (seq[k] in _OBJ_JOIN or seq[k].isdigit()):
            k += 1
        if k > j and k < len(seq) and seq[k].startswith("§"):
            closed = bool({"and", "or", "nor"} & set(seq[j:k]))
            j = k
    # "Like X, Speak is ...": a name after a bare comma starts the next clause, not the list
    return out if closed else out[:1]


def _relations_in(seq: Sequence[str], ctx: ClaimContext):
    """(kinds, names, tags) for every relation clause of a marked sentence: the evidence kinds
    that back it, the ``§k`` it names, and the tags it says are shared (shares-clauses only)."""
    for i, t in enumerate(seq):
        nxt = seq[i + 1] if i + 1 < len(seq) else ""
        if t in _SHARE_WORDS:
            j = i + 1
            while j < len(seq) and not seq[j].startswith("§"):
                if seq[j] in ("with", "as") and seq[j - 1] != "such":
                    break
                j += 1
            what = list(seq[i + 1 : j])
            obj = _object(seq, j + 1) if j < len(seq) and seq[j] in ("with", "as") else []
            tags = [tag for _, _, tag in _tag_spans(what, ctx.vocab_tags)]
            if tags or {"tag", "tags", "tagged", "genre", "genres"} & set(what):
                kinds = _REL_TAGS
            elif {"author", "authors", "writer"} & set(what):
                kinds = _REL_AUTHOR
            elif {"readers", "reader", "fans", "audience"} & set(what):
                kinds = _REL_READERS
            else:
                kinds = _REL_SIMILAR
            yield kinds, obj, tags
        elif t in ("similar", "close", "comparable", "akin"):
            for j in range(i + 1, min(i + 7, len(seq))):
                if seq[j].startswith("§"):
                    break
                if seq[j] == "to":
                    yield _REL_SIMILAR, _object(seq, j + 1), []
                    break
        elif (t == "like" and (i == 0 or seq[i - 1] not in _NOT_LIKE)) or (
            t == "of" and i > 0 and seq[i - 1] in ("reminiscent", "vein", "spirit")
        ):
            yield _REL_SIMILAR, _object(seq, i + 1), []
        elif t in ("readers", "reader", "people", "fans", "those") and (
            nxt in ("who", "that") and i + 2 < len(seq) and seq[i + 2] in _RELATION_VERBS
        ):
            yield _REL_READERS, _object(seq, i + 3), []
        elif t in ("fans", "readers") and nxt == "of":
            yield _REL_READERS, _object(seq, i + 2), []
        elif (
            t in ("because", "since")
            and nxt == "you"
            and i + 2 < len(seq)
            and seq[i + 2] in _RELATION_VERBS
        ):
            yield _REL_ANY, _object(seq, i + 3), []


def _relations(text: str, ctx: ClaimContext) -> str | None:
    """A relation clause ("shares the tags A with X", "like X", "readers who liked X", "because
    you liked X") must name a book other than the pick that an evidence line of a matching kind
    holds, and the tags it says are shared must be that line's."""
    index = _name_index(ctx)
    pick = ctx.book.book_id
    for s in sentences(text):
        seq, named = _mark_names(s, index)
        for kinds, obj, tags in _relations_in(seq, ctx):
            lines = [e for e in ctx.evidence if kinds is None or e.kind in kinds]
            label = _REL_LABEL.get(kinds, "")
            backing: list[Evidence] = []
            for k in obj:
                books = named[k]
                ids = {b.book_id for b in books if b.book_id != pick}
                hit = [e for e in lines if ids & set(e.book_ids)]
                if not hit:
                    name = _title_main(books[0].title)
                    if any(b.book_id == pick for b in books):
                        name = _title_main(ctx.book.title)
                        return (
                            f"names the recommended book itself ({name!r}) as the book it "
                            f"{_REL_VERB.get(kinds, 'relates to')}"
                        )
                    what = f"no {label} evidence" if label else "no evidence line"
                    return f"relates the book to {name!r}, which {what} for it holds"
                backing += hit
            if tags:
                held = backing or [e for e in lines if e.tags]
                shared = {tag_phrase(t) for e in held for t in e.tags}
                for tag in tags:
                    # "biography, memoir" reads as the catalog tag "biographies memoirs": a
                    # many-word span is held when each of its words is a shared tag
                    if not any(_phrase_same(tag, x) for x in shared) and not (
                        len(tag.split()) > 1
                        and all(any(_phrase_same(w, x) for x in shared) for w in tag.split())
                    ):
                        with_ = f" with {_title_main(named[obj[0]][0].title)!r}" if obj else ""
                        return (
                            f"says it shares the tag {tag!r}{with_}, which that evidence does not "
                            "hold"
                        )
                    # a line's tags are each shared with *some* of its books: the book named
                    # must carry the tag itself (where its record has tags)
                    for k in obj:
                        for b in named[k]:
                            own = {tag_phrase(t) for t in b.tags}
                            if own and not any(_phrase_same(tag, x) for x in own):
                                return (
                                    f"says it shares the tag {tag!r} with "
                                    f"{_title_main(b.title)!r}, which that book's record does "
                                    "not hold"
                                )
    return None


def _phrase_same(a: str, b: str) -> bool:
    pa, pb = a.split(), b.split()
    return len(pa) == len(pb) and all(stem(x) == stem(y) for x, y in zip(pa, pb))


def facets(blurb: str, ctx: ClaimContext) -> int:
    """Distinct facts a blurb carries beyond the title and authors (description words, tags)."""
    b = ctx.book
    toks = words(blurb)
    name_words = {w for w in words(f"{b.title} {' '.join(b.authors)} {b.series or ''}")}
    found: set[str] = set()
    used: set[int] = set()
    for tag in sorted(ctx.own_tags, key=lambda t: -len(t.split())):
        p = tag.split()
        for i in range(len(toks) - len(p) + 1):
            if (
                all(_same(stem(toks[i + k]), stem(x)) for k, x in enumerate(p))
                and tag not in _GENERIC_TAGS
            ):
                found.add("tag:" + tag)
                used.update(range(i, i + len(p)))
    desc = Vocabulary([b.description])
    for i, w in enumerate(toks):
        if i in used or w in STOPWORDS or w in FRAME_WORDS or w in name_words or len(w) < 3:
            continue
        if desc.has(w):
            found.add(stem(w))
    return len(found)


def _personal(text: str, ctx: ClaimContext) -> str | None:
    toks = words(text)
    # the evidence's books are the reader's own too ("similar to X, which you liked")
    mine = [*(h for h, _ in ctx.history), *ctx.ev_books]
    reader = bool(ctx.history_title_hits(toks)) or any(
        _phrase_in(" ".join(name_key(n)), toks)
        for b in mine
        for n in (_title_main(b.title), *b.authors)
        if len(words(n)) >= 2
    )
    q = [w for w in content_words(ctx.query or "") if w not in FRAME_WORDS]
    if q and any(w in toks or any(_same(stem(w), stem(t)) for t in toks) for w in q):
        reader = True
    # a request of frame words only ("something funny") is personal when quoted whole
    if ctx.query and words(ctx.query) and _phrase_in(" ".join(words(ctx.query)), toks):
        reader = True
    if not reader:
        return "not personal: names none of the reader's books or their request"
    ev = False
    for e in ctx.evidence:
        names = [*e.authors, *(tag_phrase(t) for t in e.tags), e.series or ""]
        names += [_title_main(ctx.books_by_id[i].title) for i in e.book_ids if i in ctx.books_by_id]
        if (
            any(n and _phrase_in(" ".join(name_key(n)), toks) for n in names)
            or e.kind == "co_readers"
            and re.search(r"\breaders?\b", text, re.I)
            or e.kind == "popular"
            and re.search(r"\b(popular|widely read|ratings?|loved by many)\b", text, re.I)
            or e.kind == "to_read"
            and re.search(r"\b(to-read|to read|saved|shelf|list)\b", text, re.I)
        ):
            ev = True
        elif e.kind == "query_match" and q:
            ev = ev or reader
    if ctx.evidence and not ev:
        return "not grounded in the evidence: mentions none of its books, tags, authors or readers"
    return None


def check_claims(
    explanation: str,
    blurb: str | None,
    ctx: ClaimContext,
    shown: Sequence[str] = (),
    rules: str = "all",
) -> str | None:
    """Why the texts must not be shown, or ``None`` when every claim is supported.

    Args:
        explanation: the "why you" text.
        blurb: the pitch of the book (``None``/empty: none).
        ctx: the records the texts may rest on.
        shown: texts already shown to this reader in this turn (for near-duplicates).
        rules: ``"all"``, or ``"claims"`` for the truth rules only (no tautology, personal or
            near-duplicate rule: those judge usefulness, not truth).

    Returns:
        A one-line reason naming the field and the first unsupported claim, or ``None``.
    """
    blurb = blurb or ""
    own_only = Vocabulary([ctx.own_text, ctx.query or ""])
    own_record = Vocabulary([ctx.own_text])
    for field_name, text, is_blurb in (("explanation", explanation, False), ("blurb", blurb, True)):
        if not text:
            continue
        vocab = own_only if is_blurb else ctx.reader
        allowed_tags = ctx.own_tags if is_blurb else ctx.reader_tags
        # The request may be quoted, but its words do not make a genre claim about the book true
        # ("Speak is a dark, tense thriller" because the reader asked for one is false).
        tag_text = text
        if ctx.query:  # only where the text quotes it as the request
            q = re.escape(ctx.query.strip())
            tag_text = re.sub(
                rf"[“\"‘']\s*{q}\s*[”\"’']|(asked for|requested|request for|looking for|"
                rf"you want(ed)?|your request,?)\s*{q}",
                " ",
                text,
                flags=re.I,
            )
        # nor in the blurb ("A dark, tense thriller about ..." for a fantasy heist the reader
        # reached by asking for a thriller)
        tag_vocab = own_record if is_blurb else ctx.reader_no_query
        for reason in (
            _proper_nouns(text, vocab),
            _characters(text, ctx),
            _numbers(text, ctx),
            _series(
                _strip_names(text, [ctx.book, *(h for h, _ in ctx.history), *ctx.ev_books]),
                ctx,
                is_blurb,
            ),
            _tags(tag_text, allowed_tags, ctx, tag_vocab),
            _plot(text, ctx, every_sentence=is_blurb),
            _reader_claims(text, ctx) if not is_blurb else None,
            _authorship(text, ctx),
            _relations(text, ctx) if not is_blurb else None,
        ):
            if reason:
                return f"{field_name} {reason}"
    if rules == "claims":
        return None
    for field_name, text in (("explanation", explanation), ("blurb", blurb)):
        if text and not re.search(r"[.!?…][\"”’')\]]*\s*$", text):
            return f"{field_name} is cut off mid-sentence"
        # "... and the story of the school and its.": a full stop after a word no sentence
        # ends on is a sentence cut at a length limit
        last = words(text)[-1:] if text else []
        if last and last[0] in DANGLING_WORDS:
            return f"{field_name} is cut off mid-sentence (ends on {last[0]!r})"
    for field_name, text in (("explanation", explanation), ("blurb", blurb)):
        counts = Counter(stem(w) for w in content_words(text) if w not in FRAME_WORDS)
        word, n = counts.most_common(1)[0] if counts else ("", 0)
        if n >= MAX_REPEATS:
            return f"{field_name} repeats itself ({word!r} {n} times)"
    if blurb and facets(blurb, ctx) < MIN_FACETS:
        return f"blurb is a tautology: fewer than {MIN_FACETS} facts beyond title and author"
    reason = _personal(explanation, ctx)
    if reason:
        return f"explanation {reason}"
    for prev in shown:
        for text in (explanation, blurb):
            if text and jaccard(text, prev, ctx) >= DUPLICATE_JACCARD:
                return "near-duplicate of a text already shown to this reader"
    return None


def jaccard(a: str, b: str, ctx: ClaimContext | None = None) -> float:
    """Content-word (stem) Jaccard index of two texts; the book's own name words and the frame
    words that relate books ("similar", "book", "liked": :data:`FRAME_WORDS`) are ignored, so
    two short fact sentences that cite different books are not near-duplicates."""
    skip = set(words(f"{ctx.book.title} {' '.join(ctx.book.authors)}")) if ctx else set()
    skip |= FRAME_WORDS
    sa = {stem(w) for w in content_words(a) if w not in skip}
    sb = {stem(w) for w in content_words(b) if w not in skip}
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


def catalog_tag_vocab(books: Iterable[Book]) -> frozenset[str]:
    """Every tag phrase in the catalog, the vocabulary of tag/genre claims."""
    return frozenset(tag_phrase(t) for b in books for t in b.tags)
