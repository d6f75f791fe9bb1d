"""Grounded LLM text: explanations and blurbs that may only use facts the system holds.

The model writes a strict JSON object ``{"why": ..., "blurb": ...}`` from the ``explain`` prompt.
:func:`check_grounding` rejects anything that does not parse, is empty or overlong, names a
catalog book/author the reader's history and the candidate's facts do not contain, quotes an
unknown title, uses a name or year the prompt never showed, lets the blurb name another book,
claims a shared author/tags without that evidence, or echoes the prompt. A rejected reply is
replaced by the template text (``source="template"``) and counted in a :class:`FallbackCounter`.

The guard is lexical: it catches invented names, titles, years and relations, not a wrong
description told in common words ("a novel about a mother" for a memoir about a father).
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from assistant.llm.base import LLMBackend, LLMError
from prompts import delimit, prompt_meta, render_messages, system_text
from retrieval.types import Book, Evidence

MAX_WHY_CHARS = 300
MAX_BLURB_CHARS = 600
ECHO_NGRAM = 7  # this many consecutive words shared with the system prompt count as an echo

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_SERIES_SUFFIX = re.compile(r"\s*\(([^()]*)\)\s*$")
_SERIES_NAME = re.compile(r"^(.*?),?\s*#\s*[\d.\-–]+\s*$")
_ARTICLES = {"the", "a", "an"}
_MINOR = {"of", "the", "and", "a", "an", "in", "to", "on", "for", "with", "at", "by", "from", "or", "is"}
_YEAR = re.compile(r"1\d{3}|20\d{2}")
# Capitalised mid-sentence for grammatical reasons, not because they name something.
_COMMON_CAPS = {"i", "im", "ive", "id", "ill", "you", "mr", "mrs", "ms", "dr", "ok"}
_QUOTED = [re.compile(p) for p in (r'"([^"\n]{2,100})"', r"“([^”\n]{2,100})”", r"\*([^*\n]{2,100})\*", r"(?<!\w)_([^_\n]{2,100})_(?!\w)")]
_SHARED_AUTHOR = re.compile(
    r"\b(same (author|writer)|also (written )?by|another (book|novel|story|title|work) (by|from)|"
    r"other (books|novels|works|titles) (by|from)|more (books |novels )?(by|from) (the same|this author)|"
    r"(by|from) the author of|(author|writer) you (love|loved|like|liked|enjoyed|already know)|"
    r"(a|your) favou?rite author)\b",
    re.IGNORECASE,
)
_SHARED_TAGS = re.compile(
    r"\b(same (genre|genres|tags?)|shares? (the )?(tags?|genres?)|also tagged|tagged (as|with))\b", re.IGNORECASE
)


# -- name normalisation and lookup --------------------------------------------------------
def _tokens(text: str) -> list[tuple[str, str]]:
    """(normalised, original) word tokens: accents folded, apostrophes dropped, ``&`` read as ``and``."""
    s = unicodedata.normalize("NFKD", text.replace("&", " and "))
    s = "".join(ch for ch in s if not unicodedata.combining(ch))
    return [(m.group().lower().replace("'", "").replace("’", ""), m.group()) for m in _WORD.finditer(s)]


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
    """Matching form of a title: series suffix, case, punctuation, accents and a leading article removed."""
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

    def __init__(self, names: Iterable[str], kind: Literal["title", "author", "phrase"] = "title") -> None:
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
        """Whether ``key`` is inside some name, or some name is inside ``key`` (token subsequence)."""
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
    """The first name-like word (capitalised mid-sentence) or year in ``prose`` absent from the facts."""
    known = {n for n, _ in _tokens(facts_text)} | _COMMON_CAPS
    for sentence in re.split(r"(?<=[.!?;:])\s+", prose):
        for k, (n, o) in enumerate(_tokens(sentence)):
            if _YEAR.fullmatch(o) and n not in known:
                return f"unsupported year {o} (not in the facts)"
            if k > 0 and o[:1].isupper() and n not in known:
                return f"unsupported name {o!r} (not in the facts)"
    return None


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    toks = [t for t, _ in _tokens(text)]
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def parse_explanation(text: str) -> tuple[dict[str, str | None] | None, str | None]:
    """Strict parse of the model reply: one JSON object with a string ``why`` and optional ``blurb``."""
    s = (text or "").strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", s, re.DOTALL)
    if fence:
        s = fence.group(1)
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at char {e.pos})"
    if not isinstance(obj, dict) or not isinstance(obj.get("why"), str):
        return None, "JSON is not an object with a string 'why'"
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

    allowed = [NameIndex(allowed_titles, "title"), NameIndex(allowed_authors, "author"),
               NameIndex(allowed_phrases, "phrase")]
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
                return f"names {index.kind} {name!r}, which is not in the reader's history or the book's facts"
    if blurb and (blurb_titles is not None or blurb_authors is not None):
        b_toks = _tokens(blurb)
        b_ok = [NameIndex(blurb_titles or (), "title"), NameIndex(blurb_authors or (), "author")]
        b_spans = [(i, j) for idx in b_ok for i, j, _ in idx.find(b_toks)]
        for idx in allowed[:2]:
            for i, j, name in idx.find(b_toks):
                if not any(a <= i and j <= b for a, b in b_spans) and _looks_named(b_toks[i:j], idx.kind):
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


# -- prompt rendering -------------------------------------------------------------------
def format_book(book: Book, desc_chars: int = 200, max_tags: int = 8) -> str:
    """One delimited line of catalog facts about ``book`` (title, authors, year, tags, description)."""
    parts = [book.title]
    if book.authors:
        parts.append("by " + ", ".join(book.authors))
    if book.year is not None:
        parts.append(f"({book.year})")
    text = " ".join(parts)
    if book.tags:
        text += ". Tags: " + ", ".join(book.tags[:max_tags])
    desc = " ".join(book.description.split())
    if desc_chars > 0 and desc:
        text += ". Description: " + (desc if len(desc) <= desc_chars else desc[: desc_chars - 1].rstrip() + "…")
    return delimit(text)


def format_history(history: Sequence[Book | tuple[Book, float]], k: int = 5) -> str:
    """The reader's ``k`` best-rated books (ties: most recent first; input is oldest first), one per line."""
    rated = [(h, None) if isinstance(h, Book) else (h[0], float(h[1])) for h in history]
    order = sorted(range(len(rated)), key=lambda i: (-(rated[i][1] or 0.0), -i))[:k]
    if not order:
        return "(none)"
    lines = []
    for i in order:
        book, rating = rated[i]
        label = f"{book.title} by {', '.join(book.authors)}" if book.authors else book.title
        lines.append(f"- {delimit(label)}" + (f", rated {rating:g}" if rating is not None else ""))
    return "\n".join(lines)


def _title(books_by_id: Mapping[str, Book], book_id: str) -> str | None:
    b = books_by_id.get(book_id)
    return delimit(b.title) if b else None


def format_evidence(evidence: Sequence[Evidence], books_by_id: Mapping[str, Book]) -> str:
    """Evidence as plain-English fact lines, naming only books the system holds."""
    lines = []
    for e in evidence:
        titles = ", ".join(t for t in (_title(books_by_id, i) for i in e.book_ids) if t)
        if e.kind == "similar_to" and titles:
            lines.append(f"- It is similar to {titles}, which the reader liked.")
        elif e.kind == "shared_tags" and e.tags:
            lines.append(f"- It shares the tags {delimit(', '.join(e.tags))}" + (f" with {titles}." if titles else "."))
        elif e.kind == "same_author" and e.authors:
            lines.append(f"- It is by {delimit(', '.join(e.authors))}, who also wrote {titles or 'books the reader liked'}.")
        elif e.kind == "co_readers" and titles:
            share = f"{e.share:.0%} of " if e.share is not None else ""
            lines.append(f"- {share}{e.count or 'several'} readers who liked {titles} rated it 4 or 5.")
        elif e.kind == "popular":
            mean = f" with a mean of {e.value:.2f}" if e.value is not None else ""
            lines.append(f"- It is popular: {e.count or 'many'} ratings{mean}.")
        elif e.kind == "series_next" and e.series:
            lines.append(f"- It is the next volume of the series {delimit(e.series)}" + (f" after {titles}." if titles else "."))
        elif e.kind == "query_match" and e.text:
            lines.append(f"- It matches the reader's request {delimit(e.text, 200)}.")
        elif e.kind == "to_read":
            lines.append("- The reader saved it to read later.")
        elif e.kind == "anchor" and titles:
            bits = [f"the tags {delimit(', '.join(e.tags))}"] if e.tags else []
            if e.count:
                bits.append(f"{e.share:.0%} of {e.count} readers who liked it rated this 4 or 5")
            lines.append(f"- The reader asked for books like {titles}" + (": " + "; ".join(bits) if bits else "") + ".")
    return "\n".join(lines) or "- (no specific facts)"


# -- the explainer ----------------------------------------------------------------------
@dataclass
class ExplanationResult:
    """A shown explanation: from the model (``source="llm"``) or the template fallback."""

    why: str
    blurb: str | None
    source: Literal["llm", "template"]
    rejected_reason: str | None
    prompt_version: str
    raw: str | None = None


def reason_category(reason: str | None) -> str:
    """A rejection reason without its specifics (quoted names, numbers), for counting."""
    r = re.sub(r""" '[^']*'| "[^"]*"| \(.*?\)| \d+\b""", "", reason or "unknown")
    return r.split(":")[0].strip()


@dataclass
class FallbackCounter:
    """How many explanations came from the model vs. the template, and why the model lost."""

    llm: int = 0
    template: int = 0
    reasons: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, result: ExplanationResult) -> None:
        """Count one result."""
        with self._lock:
            if result.source == "llm":
                self.llm += 1
            else:
                self.template += 1
                self.reasons[reason_category(result.rejected_reason)] += 1

    @property
    def total(self) -> int:
        return self.llm + self.template

    @property
    def fallback_rate(self) -> float:
        """Share of results that fell back to the template (0.0 when nothing was counted)."""
        return self.template / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"llm": self.llm, "template": self.template, "fallback_rate": self.fallback_rate,
                "reasons": dict(self.reasons)}


class _Grounding:
    """Catalog name indexes, built once per ``books_by_id`` mapping."""

    def __init__(self, books_by_id: Mapping[str, Book]) -> None:
        self.titles = NameIndex((b.title for b in books_by_id.values()), "title")
        self.authors = NameIndex((a for b in books_by_id.values() for a in b.authors), "author")


_PARTIAL = {k: re.compile(rf'"{k}"\s*:\s*"((?:[^"\\]|\\.)*)') for k in ("why", "blurb")}


def partial_fields(raw: str) -> tuple[str, str]:
    """Best-effort (why, blurb) from an unfinished JSON reply, for streaming display."""
    out = []
    for k in ("why", "blurb"):
        m = _PARTIAL[k].search(raw)
        s = m.group(1) if m else ""
        s = re.sub(r"\\u[0-9a-fA-F]{0,3}$|\\$", "", s)
        try:
            out.append(json.loads(f'"{s}"'))
        except json.JSONDecodeError:
            out.append(s)
    return out[0], out[1]


class Explainer:
    """Writes grounded explanations with an LLM, falling back to the template text.

    With a prefill-capable backend the JSON is written field by field (``why_prefill`` and
    ``blurb_prefill`` from ``prompts/explain.toml``; each field stops at its closing quote or a
    newline, ``max_new_tokens`` each). Other backends write the whole object, cut at the first ``}``.
    """

    def __init__(
        self,
        backend: LLMBackend,
        max_new_tokens: int = 120,
        history_k: int = 5,
        desc_chars: int = 300,
        counter: FallbackCounter | None = None,
    ) -> None:
        """``counter`` may be shared between explainers; :attr:`counter` is readable at any time."""
        self.backend = backend
        self.max_new_tokens, self.history_k, self.desc_chars = max_new_tokens, history_k, desc_chars
        self.counter = counter or FallbackCounter()
        self._index: tuple[int, int, _Grounding] | None = None
        self._system = system_text("explain")
        meta = prompt_meta("explain")
        self._why_prefill = str(meta.get("why_prefill", '{"why": "'))
        self._blurb_prefill = str(meta.get("blurb_prefill", '", "blurb": "'))

    def _grounding(self, books_by_id: Mapping[str, Book]) -> _Grounding:
        if self._index is None or self._index[:2] != (id(books_by_id), len(books_by_id)):
            self._index = (id(books_by_id), len(books_by_id), _Grounding(books_by_id))
        return self._index[2]

    def _prepare(self, book: Book, evidence: Sequence[Evidence], history_books: Sequence[Book],
                 books_by_id: Mapping[str, Book], template_text: str, query: str | None):
        msgs, version = render_messages(
            "explain",
            history=format_history(list(history_books), self.history_k),
            candidate=format_book(book, self.desc_chars),
            evidence=format_evidence(evidence, books_by_id),
            query=delimit(query, 300) if query else "(none)",
            template=delimit(template_text, 400),
        )
        g = self._grounding(books_by_id)
        ev_books = [books_by_id[i] for e in evidence for i in e.book_ids if i in books_by_id]
        known = [book, *history_books, *ev_books]
        titles = [b.title for b in known] + [b.series for b in known if b.series]
        authors = [a for b in known for a in b.authors] + [a for e in evidence for a in e.authors]
        # Names in the book's own description are facts about it; names in the request are the reader's.
        desc = _tokens(book.description)
        own_titles = [book.title, *([book.series] if book.series else []), *(n for _, _, n in g.titles.find(desc))]
        own_authors = [*book.authors, *(n for _, _, n in g.authors.find(desc))]
        q = _tokens(query or "")
        titles += own_titles + [n for _, _, n in g.titles.find(q)]
        authors += own_authors + [n for _, _, n in g.authors.find(q)]
        phrases = list(book.tags) + [t for e in evidence for t in e.tags]
        check = dict(allowed_titles=titles, allowed_authors=authors, all_catalog_titles=g.titles,
                     all_catalog_authors=g.authors, evidence=evidence, allowed_phrases=phrases,
                     forbidden_texts=[self._system], blurb_titles=own_titles, blurb_authors=own_authors,
                     facts_text="\n".join(m["content"] for m in msgs if m["role"] == "user"))
        return msgs, version, check

    def _raw_chunks(self, msgs: list[dict[str, str]], title: str, streaming: bool) -> Iterator[str]:
        """The raw JSON reply, as chunks (prefills included)."""
        def run(m: list[dict[str, str]], stop: list[str], max_tokens: int) -> Iterator[str]:
            if streaming:
                yield from self.backend.stream(m, max_tokens, stop=stop)
            else:
                yield self.backend.generate(m, max_tokens, stop=stop)

        if not self.backend.supports_prefill:
            out = ""
            for chunk in run(msgs, ["}"], self.max_new_tokens):
                out += chunk
                yield chunk
            if "{" in out:
                yield "}"  # the stop string is cut off
            return
        why = ""
        yield self._why_prefill
        # ~4 characters a token: a "why" that needs more tokens than this is rejected as overlong anyway.
        why_tokens = min(self.max_new_tokens, MAX_WHY_CHARS // 3)
        for chunk in run(msgs + [{"role": "assistant", "content": self._why_prefill}], ['"', "\n"], why_tokens):
            why += chunk
            yield chunk
        blurb_prefill = self._blurb_prefill.replace("{title}", json.dumps(title)[1:-1])
        yield blurb_prefill
        prefix = self._why_prefill + why + blurb_prefill
        yield from run(msgs + [{"role": "assistant", "content": prefix}], ['"', "\n"], self.max_new_tokens)
        yield '"}'

    def _finish(self, raw: str | None, error: str | None, check: dict, version: str, template_text: str) -> ExplanationResult:
        reason = error or check_grounding(raw or "", **check)
        if reason is None:
            obj, _ = parse_explanation(raw or "")
            assert obj is not None
            result = ExplanationResult(obj["why"] or "", obj["blurb"], "llm", None, version, raw)
        else:
            result = ExplanationResult(template_text, None, "template", reason, version, raw)
        self.counter.record(result)
        return result

    def explain(
        self,
        book: Book,
        evidence: list[Evidence],
        history_books: list[Book],
        books_by_id: Mapping[str, Book],
        template_text: str,
        query: str | None = None,
    ) -> ExplanationResult:
        """One grounded explanation for ``book``; the template text when the model is off or ungrounded."""
        *_, result = self._run(book, evidence, history_books, books_by_id, template_text, query, streaming=False)
        assert isinstance(result, ExplanationResult)
        return result

    def stream_explain(
        self,
        book: Book,
        evidence: list[Evidence],
        history_books: list[Book],
        books_by_id: Mapping[str, Book],
        template_text: str,
        query: str | None = None,
    ) -> Iterator[str | ExplanationResult]:
        """Yield the display text so far (``why``, then a blank line and the ``blurb``) as it grows,
        then the final :class:`ExplanationResult` (which may replace it with the template)."""
        yield from self._run(book, evidence, history_books, books_by_id, template_text, query, streaming=True)

    def _run(self, book: Book, evidence: Sequence[Evidence], history_books: Sequence[Book],
             books_by_id: Mapping[str, Book], template_text: str, query: str | None,
             streaming: bool) -> Iterator[str | ExplanationResult]:
        if self.backend.name == "none":
            yield self._finish(None, "LLM disabled", {}, "none", template_text)
            return
        msgs, version, check = self._prepare(book, evidence, history_books, books_by_id, template_text, query)
        raw, error, shown = "", None, ""
        try:
            for chunk in self._raw_chunks(msgs, split_series(book.title)[0], streaming):
                raw += chunk
                if streaming:
                    why, blurb = partial_fields(raw)
                    text = why + (f"\n\n{blurb}" if blurb else "")
                    if text != shown:
                        shown = text
                        yield text
        except LLMError as e:
            error = f"backend error: {e}"
        yield self._finish(None if error else raw, error, check, version, template_text)
