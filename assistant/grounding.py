"""Grounding: the check that LLM text only says what the system holds.

:func:`check_grounding` rejects a model reply that does not parse, is empty or overlong, names a
catalog book/author the reader's history and the candidate's facts do not contain, quotes an
unknown title, uses a name or year the prompt never showed, lets the blurb name another book,
claims a shared author/tags without that evidence, or echoes the prompt.

The guard is lexical: it catches invented names, titles, years and relations, not a wrong
description told in common words ("a novel about a mother" for a memoir about a father).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from typing import Literal

from retrieval.types import Evidence

MAX_WHY_CHARS = 300
MAX_BLURB_CHARS = 600
ECHO_NGRAM = 7  # this many consecutive words shared with the system prompt count as an echo

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_SERIES_SUFFIX = re.compile(r"\s*\(([^()]*)\)\s*$")
_SERIES_NAME = re.compile(r"^(.*?),?\s*#\s*[\d.\-–]+\s*$")
_ARTICLES = {"the", "a", "an"}
_MINOR = {
    "of",
    "the",
    "and",
    "a",
    "an",
    "in",
    "to",
    "on",
    "for",
    "with",
    "at",
    "by",
    "from",
    "or",
    "is",
}
_YEAR = re.compile(r"1\d{3}|20\d{2}")
# Capitalised mid-sentence for grammatical reasons, not because they name something.
_COMMON_CAPS = {"i", "im", "ive", "id", "ill", "you", "mr", "mrs", "ms", "dr", "ok"}
_QUOTED = [
    re.compile(p)
    for p in (
        r'"([^"\n]{2,100})"',
        r"“([^”\n]{2,100})”",
        r"\*([^*\n]{2,100})\*",
        r"(?<!\w)_([^_\n]{2,100})_(?!\w)",
    )
]
_SHARED_AUTHOR = re.compile(
    r"\b(same (author|writer)|also (written )?by|another (book|novel|story|title|work) (by|from)|"
    r"other (books|novels|works|titles) (by|from)|more (books |novels )?(by|from) "
    r"(the same|this author)|"
    r"(by|from) the author of|(author|writer) you (love|loved|like|liked|enjoyed|already know)|"
    r"(a|your) favou?rite author)\b",
    re.IGNORECASE,
)
_SHARED_TAGS = re.compile(
    r"\b(same (genre|genres|tags?)|shares? (the )?(tags?|genres?)|also tagged|tagged (as|with))\b",
    re.IGNORECASE,
)


# -- name normalisation and lookup --------------------------------------------------------
def _tokens(text: str) -> list[tuple[str, str]]:
    """(normalised, original) word tokens: accents folded, apostrophes dropped, ``&`` read as
    ``and``."""
    s = unicodedata.normalize("NFKD", text.replace("&", " and "))
    s = "".join(ch for ch in s if not unicodedata.combining(ch))
    return [
        (m.group().lower().replace("'", "").replace("’", ""), m.group()) for m in _WORD.finditer(s)
    ]


def _key(text: str) -> tuple[str, ...]:
    toks = [n for n, _ in _tokens(text)]
    while len(toks) > 1 and toks[0] in _ARTICLES:
        toks = toks[1:]
    return tuple(toks)


def split_series(title: str) -> tuple[str, str | None]:
    """``"Catching Fire (The Hunger Games, #2)"`` → ``("Catching Fire", "The Hunger Games")``."""
    m = _SERIES_SUFFIX.search(title)
    if not m:
        return title.strip(), None
    inner = _SERIES_NAME.match(m.group(1).strip())
    return title[: m.start()].strip(), (inner.group(1).strip() if inner else None)


def normalize_title(title: str) -> str:
    """Matching form of a title: series suffix, case, punctuation, accents and a leading article
    removed."""
    return " ".join(_key(split_series(title)[0]))


def title_keys(title: str) -> list[tuple[str, ...]]:
    """All matching keys of one catalog title: full title, main title before ``:``, series name."""
    main, series = split_series(title)
    keys = [_key(main)]
    if ":" in main:
        keys.append(_key(main.split(":", 1)[0]))
    if series:
        keys.append(_key(series))
    return [k for k in keys if k]


class NameIndex:
    """Token-tuple lookup of titles (with their series) or author names, for scanning prose."""

    def __init__(
        self, names: Iterable[str], kind: Literal["title", "author", "phrase"] = "title"
    ) -> None:
        self.kind = kind
        self.names: dict[tuple[str, ...], str] = {}
        for name in names:
            if not name:
                continue
            for k in title_keys(name) if kind == "title" else [_key(name)]:
                if k:
                    self.names.setdefault(k, name)
        self.maxlen = max((len(k) for k in self.names), default=0)

    def find(self, toks: Sequence[tuple[str, str]]) -> list[tuple[int, int, str]]:
        """All (start, end, name) spans of ``toks`` that spell a known name."""
        norm = [n for n, _ in toks]
        hits = []
        for i in range(len(norm)):
            for n in range(min(self.maxlen, len(norm) - i), 0, -1):
                name = self.names.get(tuple(norm[i : i + n]))
                if name is not None:
                    hits.append((i, i + n, name))
        return hits

    def contains_fragment(self, key: tuple[str, ...]) -> bool:
        """Whether ``key`` is inside some name, or some name is inside ``key`` (token
        subsequence)."""
        return any(_sub(key, k) or _sub(k, key) for k in self.names)


def _sub(small: tuple[str, ...], big: tuple[str, ...]) -> bool:
    n = len(small)
    return 0 < n <= len(big) and any(big[i : i + n] == small for i in range(len(big) - n + 1))


def _looks_named(toks: Sequence[tuple[str, str]], kind: str) -> bool:
    """Case rule against common-word false positives: 1-word titles never match unquoted,
    2-word titles and 1-word author names must be capitalised in the text."""
    if kind == "title" and len(toks) == 1:
        return False
    if len(toks) <= 2:
        return all(o[:1].isupper() or n in _MINOR for n, o in toks)
    return True


def _title_like(fragment: str) -> bool:
    words = [o for _, o in _tokens(fragment)]
    if not 1 <= len(words) <= 12 or not words[0][:1].isupper():
        return False
    major = [w for w in words if w.lower() not in _MINOR]
    return bool(major) and sum(w[:1].isupper() for w in major) >= 0.6 * len(major)


def _unsupported_words(prose: str, facts_text: str) -> str | None:
    """The first name-like word (capitalised mid-sentence) or year in ``prose`` absent from the
    facts."""
    known = {n for n, _ in _tokens(facts_text)} | _COMMON_CAPS
    for sentence in re.split(r"(?<=[.!?;:])\s+", prose):
        for k, (n, o) in enumerate(_tokens(sentence)):
            if _YEAR.fullmatch(o) and n not in known:
                return f"unsupported year {o} (not in the facts)"
            if (
                k > 0
                and o[:1].isupper()
                and n not in known
                and not (o.endswith(("'s", "’s")) and n[:-1] in known)
            ):  # "Lahiri's": a known name's possessive
                return f"unsupported name {o!r} (not in the facts)"
    return None


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    toks = [t for t, _ in _tokens(text)]
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def parse_explanation(text: str) -> tuple[dict[str, str | None] | None, str | None]:
    """Strict parse of the model reply: one JSON object with a string ``explanation`` (prompt v2;
    v1 called it ``why``) and an optional string ``blurb``. Returns ``{"why", "blurb"}``."""
    s = (text or "").strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", s, re.DOTALL)
    if fence:
        s = fence.group(1)
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at char {e.pos})"
    if isinstance(obj, dict) and "explanation" in obj and "why" not in obj:
        obj = {("why" if k == "explanation" else k): v for k, v in obj.items()}
    if not isinstance(obj, dict) or not isinstance(obj.get("why"), str):
        return None, "JSON is not an object with a string 'explanation' (or 'why')"
    extra = set(obj) - {"why", "blurb"}
    if extra:
        return None, f"unexpected JSON keys {sorted(extra)}"
    blurb = obj.get("blurb")
    if blurb is not None and not isinstance(blurb, str):
        return None, "'blurb' is not a string"
    return {"why": obj["why"].strip(), "blurb": (blurb or "").strip() or None}, None


def check_grounding(
    text: str,
    allowed_titles: Iterable[str],
    allowed_authors: Iterable[str],
    all_catalog_titles: Collection[str] | NameIndex,
    all_catalog_authors: Collection[str] | NameIndex,
    *,
    evidence: Sequence[Evidence] = (),
    allowed_phrases: Iterable[str] = (),
    forbidden_texts: Iterable[str] = (),
    blurb_titles: Iterable[str] | None = None,
    blurb_authors: Iterable[str] | None = None,
    facts_text: str | None = None,
) -> str | None:
    """Return why ``text`` (the raw model reply) must be rejected, or ``None`` when it is grounded.

    ``allowed_*`` are what the reply may name: the reader's history and the candidate's facts
    (``allowed_phrases``: tags and other fact phrases). ``evidence`` decides which relations may
    be claimed; ``forbidden_texts`` (the system prompt) must not be echoed. When given,
    ``blurb_titles``/``blurb_authors`` narrow what the blurb (which describes the candidate
    only) may name: typically the candidate's own title, series and authors. When
    ``facts_text`` (everything the model was shown) is given, every capitalised word that does
    not start a sentence and every year must occur in it: a model can only invent those.
    """
    obj, err = parse_explanation(text)
    if obj is None:
        return err
    why, blurb = obj["why"] or "", obj["blurb"] or ""
    if len(_tokens(why)) < 3:
        return "empty or trivial 'why'"
    if len(why) > MAX_WHY_CHARS:
        return f"'why' too long ({len(why)} > {MAX_WHY_CHARS} chars)"
    if len(blurb) > MAX_BLURB_CHARS:
        return f"'blurb' too long ({len(blurb)} > {MAX_BLURB_CHARS} chars)"
    prose = f"{why}\n{blurb}"
    if "<<<" in prose or ">>>" in prose:
        return "echoes the prompt's data markers"
    grams = _ngrams(prose, ECHO_NGRAM)
    if any(grams & _ngrams(f, ECHO_NGRAM) for f in forbidden_texts if f):
        return "echoes the prompt text"

    allowed = [
        NameIndex(allowed_titles, "title"),
        NameIndex(allowed_authors, "author"),
        NameIndex(allowed_phrases, "phrase"),
    ]
    toks = _tokens(prose)
    ok_spans = [(i, j) for idx in allowed for i, j, _ in idx.find(toks)]
    n_why = len(_tokens(why))
    named = {k for i, j in ok_spans for k in range(i, j) if k < n_why}
    if n_why - len(named) < 3:  # e.g. just "Some Title by Some Author"
        return "'why' is only names, not a reason"
    for catalog, kind in ((all_catalog_titles, "title"), (all_catalog_authors, "author")):
        index = catalog if isinstance(catalog, NameIndex) else NameIndex(catalog, kind)  # type: ignore[arg-type]
        for i, j, name in index.find(toks):
            if any(a <= i and j <= b for a, b in ok_spans):
                continue
            if _looks_named(toks[i:j], index.kind):
                return (
                    f"names {index.kind} {name!r}, which is not in the reader's history or "
                    f"the book's facts"
                )
    if blurb and (blurb_titles is not None or blurb_authors is not None):
        b_toks = _tokens(blurb)
        b_ok = [NameIndex(blurb_titles or (), "title"), NameIndex(blurb_authors or (), "author")]
        b_spans = [(i, j) for idx in b_ok for i, j, _ in idx.find(b_toks)]
        for idx in allowed[:2]:
            for i, j, name in idx.find(b_toks):
                if not any(a <= i and j <= b for a, b in b_spans) and _looks_named(
                    b_toks[i:j], idx.kind
                ):
                    return f"blurb names {idx.kind} {name!r}, which is not the recommended book's"
    for pat in _QUOTED:
        for m in pat.finditer(prose):
            frag = m.group(1).strip()
            if _title_like(frag) and not any(idx.contains_fragment(_key(frag)) for idx in allowed):
                return f"quotes an unknown title {frag!r}"
    if facts_text is not None:
        reason = _unsupported_words(prose, facts_text)
        if reason:
            return reason
    kinds = {e.kind for e in evidence}
    if _SHARED_AUTHOR.search(prose) and "same_author" not in kinds:
        return "claims a shared author without same_author evidence"
    if _SHARED_TAGS.search(prose) and "shared_tags" not in kinds:
        return "claims shared tags/genre without shared_tags evidence"
    return None
