"""Grounded LLM explanations: the explainer that writes them and the counter of fallbacks.

The model writes a strict JSON object ``{"explanation": ..., "blurb": ...}`` from the ``explain``
prompt; :func:`assistant.grounding.check_grounding` (names) and
:func:`assistant.claims.check_claims` (claims) decide whether it may be shown. A rejected reply is
replaced by the template text (``source="template"``) and counted in a :class:`FallbackCounter`.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from assistant.claims import LIKED_RATING, ClaimContext, catalog_tag_vocab, check_claims
from assistant.grounding import (
    NameIndex,
    _tokens,
    check_grounding,
    parse_explanation,
)
from assistant.llm.base import LLMBackend, LLMError
from prompts import delimit, prompt_meta, render_messages, system_text
from prompts.format import format_book, format_evidence, format_history
from retrieval.types import Book, Evidence


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
        return {
            "llm": self.llm,
            "template": self.template,
            "fallback_rate": self.fallback_rate,
            "reasons": dict(self.reasons),
        }


class _Grounding:
    """Catalog name indexes and the tag vocabulary, built once per ``books_by_id`` mapping."""

    def __init__(self, books_by_id: Mapping[str, Book]) -> None:
        self.titles = NameIndex((b.title for b in books_by_id.values()), "title")
        self.authors = NameIndex((a for b in books_by_id.values() for a in b.authors), "author")
        self.tags = catalog_tag_vocab(books_by_id.values())


_PARTIAL = {
    k: re.compile(rf'"{k}"\s*:\s*"((?:[^"\\]|\\.)*)') for k in ("why", "explanation", "blurb")
}


def partial_fields(raw: str) -> tuple[str, str]:
    """Best-effort (explanation, blurb) from an unfinished JSON reply, for streaming display."""
    out = []
    for keys in (("explanation", "why"), ("blurb",)):
        m = next((m for m in (_PARTIAL[k].search(raw) for k in keys) if m), None)
        s = m.group(1) if m else ""
        s = re.sub(r"\\u[0-9a-fA-F]{0,3}$|\\$", "", s)
        try:
            out.append(json.loads(f'"{s}"'))
        except json.JSONDecodeError:
            out.append(s)
    return out[0], out[1]


def merge_replies(raw: str) -> str:
    """Consecutive JSON objects (the explanation's reply, then the blurb's) as one object's text;
    anything else comes back unchanged (the strict parse then says what is wrong)."""
    dec, pos, merged = json.JSONDecoder(), 0, {}
    text = raw.strip()
    try:
        while pos < len(text):
            obj, end = dec.raw_decode(text, pos)
            if not isinstance(obj, dict):
                return raw
            merged.update(obj)
            pos = end
            while pos < len(text) and text[pos].isspace():
                pos += 1
    except json.JSONDecodeError:
        return raw
    return json.dumps(merged, ensure_ascii=False) if merged and pos > 0 else raw


HistoryItem = Book | tuple[Book, float | None]


def _pairs(history: Sequence[HistoryItem]) -> list[tuple[Book, float | None]]:
    return [(h, None) if isinstance(h, Book) else (h[0], h[1]) for h in history]


# One sentence of plain text: no quote (it would end the JSON string), no backslash escapes, no
# newline, no angle brackets (the <<< >>> data markers and the prompt's <placeholders>).
_PLAIN = r'[^"<>\\\n]'
_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")


def _literal(text: str) -> str:
    """``text`` as a literal inside a JSON-schema ``pattern`` (llama.cpp's regex subset).

    Only text without regex metacharacters is accepted: llama.cpp 0.3.36's converter writes an
    escaped ``\\.`` inside a group into the grammar as is, which its parser rejects (and the
    process crashed on it), so callers drop such words and titles instead.
    """
    if _REGEX_SPECIAL.search(text):
        raise ValueError(f"{text!r} holds a regex metacharacter")
    return text


def _plain_literal(text: str) -> bool:
    return not _REGEX_SPECIAL.search(text) and '"' not in text


def lead_titles(
    history: Sequence[tuple[Book, float | None]],
    evidence: Sequence[Evidence],
    book: Book,
    shown_k: int = 5,
    k: int = 4,
) -> list[str]:
    """Main titles of the reader's liked books an explanation may open with, best first.

    A book counts as liked when rated at least :data:`assistant.claims.LIKED_RATING`, or, for a
    reader who rated nothing, when it is shelved at all (the claim checker accepts the same).
    Books the evidence names come first; then the best-rated of the ``shown_k`` history lines
    the prompt shows. Titles with a quote or backslash are left out (they cannot sit in a
    pattern literal) and so are titles with regex metacharacters; the pick itself never leads.

    Returns:
        Up to ``k`` titles (without a series suffix), or ``[]`` when the reader liked none.
    """
    from assistant.claims import _title_main

    unrated = all(r is None for _, r in history)
    liked = [
        b for b, r in history if (r is None if unrated else r is not None and r >= LIKED_RATING)
    ]
    order = sorted(range(len(history)), key=lambda i: (-(history[i][1] or 0.0), -i))[:shown_k]
    shown_ids = {history[i][0].book_id for i in order}
    by_id = {b.book_id: b for b in liked}
    ids = [i for e in evidence for i in e.book_ids if i in by_id]
    ids += [history[i][0].book_id for i in order if history[i][0].book_id in by_id]
    out: list[str] = []
    for i in ids:
        title = _title_main(by_id[i].title)
        if i == book.book_id or not title or not _plain_literal(title) or title in out:
            continue
        if i in shown_ids or any(i in e.book_ids for e in evidence):
            out.append(title)
    return out[:k]


# Words any sentence may use besides the facts' own: grammar, not claims.
_GLUE = """a an the of and or with for about to in on at from by as is are was were be its it this
that who whom which their his her he she they them you your also too same both like more most but
into through after before while when where how one what has have had not all than so book books
story stories novel readers reader rated liked loved enjoyed shares share tags tagged similar"""
GLUE_WORDS = tuple(_GLUE.split())
# A blurb speaks of the book, not of the reader or the catalog: no "rated", "liked", "tags".
_NOT_BLURB_TEXT = (
    "readers reader rated liked loved enjoyed shares share tags tagged similar you your"
)
_NOT_BLURB = frozenset(_NOT_BLURB_TEXT.split())
BLURB_GLUE_WORDS = tuple(w for w in GLUE_WORDS if w not in _NOT_BLURB)
_FACT_WORD = re.compile(r"[^\W_]+(?:['’.%-][^\W_]+)*%?")


def fact_words(*texts: str, glue: Sequence[str] = GLUE_WORDS) -> list[str]:
    """The distinct words (case kept) of ``texts`` plus ``glue``: a sentence's vocabulary.

    Args:
        texts: the facts.
        glue: grammar words any sentence may use (default :data:`GLUE_WORDS`).
    """
    seen: dict[str, None] = {}
    for t in (*texts, " ".join(glue)):
        for w in _FACT_WORD.findall(t or ""):
            if _plain_literal(w):
                seen.setdefault(w, None)
                seen.setdefault(w.lower(), None)
    return list(seen)


def vocab_pattern(opening: str, vocab: Sequence[str], min_words: int, max_words: int) -> str:
    """A pattern: ``opening`` (a regex) then ``min_words``..``max_words`` words of ``vocab``
    (separated by spaces or commas) and a full stop. Decoding under it cannot write a name,
    number or word the facts do not hold; the claim checker still judges what the words say."""
    alt = "|".join(_literal(w) for w in sorted(set(vocab), key=lambda w: (-len(w), w)))
    return f"^{opening}((,)? ({alt})){{{min_words},{max_words}}}[.]$"


def explanation_schema(
    base: Mapping[str, object],
    titles: Sequence[str],
    vocab: Sequence[str] = (),
) -> dict[str, object]:
    """``base`` with its strings narrowed by patterns: one plain sentence each (of ``vocab``'s
    words, when given); with ``titles`` the explanation opens "You liked <title>, and this book"
    or "Like <title>, this book"."""
    alts = "|".join(_literal(t) for t in titles)
    opening = f"(You liked ({alts}), and this book|Like ({alts}), this book)" if titles else ""
    if vocab:
        caps = sorted({w[:1].upper() + w[1:] for w in vocab if w[:1].isalpha()})
        first = f"({'|'.join(_literal(w) for w in caps)})"
        pats = {
            "explanation": vocab_pattern(opening or first, vocab, 3, 22),
            "blurb": vocab_pattern(first, vocab, 6, 30),
        }
    else:
        head = f"{opening} " if titles else "[A-Z]"
        pats = {
            "explanation": f"^{head}{_PLAIN}{{8,150}}[.]$",
            "blurb": f"^[A-Z]{_PLAIN}{{20,220}}[.!]$",
        }
    # the base's property order is the order the model writes them in
    props = {k: {"type": "string", "pattern": pats[k]} for k in base["properties"]}  # type: ignore[index]
    return {**dict(base), "properties": props}


# -- GBNF grammars of the llama.cpp path ---------------------------------------------------------
def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _alt(options: Sequence[str]) -> str:
    return "(" + " | ".join(gbnf_literal(o) for o in dict.fromkeys(options)) + ")"


def words_grammar(vocab: Sequence[str], min_words: int, max_words: int) -> str:
    """GBNF for one sentence of ``vocab``'s words (the first capitalised), ``min_words`` to
    ``max_words`` long, separated by spaces or commas, ending in a full stop after a word a
    sentence can end on (not "the", "and", "its": :data:`assistant.claims.DANGLING_WORDS`; a
    blurb cut at the length limit ended "... the story of the school and its.")."""
    from assistant.claims import DANGLING_WORDS

    words = sorted({w for w in vocab if w and _plain_literal(w)})
    caps = sorted({w[:1].upper() + w[1:] for w in words if w[:1].isalpha()})
    ends = [w for w in words if w.lower() not in DANGLING_WORDS] or words
    return (
        f'root ::= first (sep word){{{max(0, min_words - 2)},{max_words - 2}}} sep end "."\n'
        'sep ::= " " | ", "\n'
        f"first ::= {_alt(caps)}\n"
        f"word ::= {_alt(words)}\n"
        f"end ::= {_alt(ends)}\n"
    )


def _liked_ids(history: Sequence[tuple[Book, float | None]]) -> set[str]:
    unrated = all(r is None for _, r in history)
    return {
        b.book_id
        for b, r in history
        if (r is None if unrated else r is not None and r >= LIKED_RATING)
    }


def fact_clauses(
    book: Book,
    evidence: Sequence[Evidence],
    history: Sequence[tuple[Book, float | None]],
    books_by_id: Mapping[str, Book],
    query: str | None = None,
    avoid: Sequence[str] = (),
) -> list[str]:
    """The GBNF clauses of :func:`fact_lines`, without their evidence lines."""
    return [c for _, c in fact_lines(book, evidence, history, books_by_id, query, avoid)]


def fact_lines(
    book: Book,
    evidence: Sequence[Evidence],
    history: Sequence[tuple[Book, float | None]],
    books_by_id: Mapping[str, Book],
    query: str | None = None,
    avoid: Sequence[str] = (),
) -> list[tuple[Evidence, str]]:
    """One GBNF sequence per link fact the explanation may state, each true by construction.

    Every clause is built from one evidence line alone: the books it names are that line's
    (the reader's liked ones where the line has any, marked "which you liked" only then), the
    tags are that line's, the numbers are its own. The model chooses the fact, the book and
    the tags; it cannot relate the pick to a book or tag another line holds (the mistake the
    hand-read found in 5 of 12 free explanations). Books named in ``avoid`` (texts already shown
    this turn) are left out where the line names others, so a reader's three picks do not all
    lean on the same book.

    Returns:
        (evidence line, GBNF sequence) pairs (possibly none: no line that ties the pick to the
        reader); when a line names the reader's own books or request, lines that do not are
        left out.
    """
    from assistant.claims import _title_main, tag_phrase

    liked = _liked_ids(history)
    shown_text = " ".join(avoid)

    def names(ids: Sequence[str]) -> tuple[list[str], bool]:
        """The line's titles the clause may name, and whether they are the reader's liked
        books: liked ones first, books already cited this turn only when nothing else is left."""
        ids = [i for i in ids if i in books_by_id and i != book.book_id]

        def titles(pool: list[str]) -> list[str]:
            ts = [_title_main(books_by_id[i].title) for i in pool]
            return [t for t in ts if t and '"' not in t and "\\" not in t]

        mine = titles([i for i in ids if i in liked])
        other = titles([i for i in ids if i not in liked])

        def cited(t: str) -> bool:  # as words: "It" is not cited by "with it"
            return re.search(rf"(?<!\w){re.escape(t)}(?!\w)", shown_text) is not None

        for pool, is_mine in ((mine, True), (other, False)):
            fresh = [t for t in pool if not cited(t)]
            if fresh:
                return fresh, is_mine
        return (mine, True) if mine else (other, False)

    def tags_rule(tags: Sequence[str]) -> str:
        """One, two or three of the line's tags, each at most once, in the line's order."""
        from itertools import combinations

        # "non-fiction" and "nonfiction" are one tag to a reader
        ts = list({p.replace(" ", ""): p for p in map(tag_phrase, reversed(tags)) if p}.values())
        ts.reverse()
        alts = [
            "the tags " + ", ".join(c[:-1]) + " and " + c[-1] if len(c) > 1 else "the tag " + c[0]
            for n in (1, 2, 3)
            for c in combinations(ts, n)
        ]
        return _alt(alts)

    out: list[tuple[Evidence, str, bool]] = []  # (line, clause, about the reader's own books)
    for e in evidence:
        titles, mine = names(e.book_ids)
        b = _alt(titles) if titles else ""
        which = ' ", which you liked"' if mine else ""
        if e.kind == "similar_to" and b:
            out.append((e, f'"This book is similar to " {b}{which}', mine))
        elif e.kind == "shared_tags" and b and e.tags:
            # The line's tags are each shared with *some* of its books, not with each (in the
            # study 7 of 9 such sentences named a tag the named book lacks): per book, only the
            # tags that book and the pick both carry.
            pick_tags = {tag_phrase(t) for t in book.tags}
            by_title = {
                _title_main(books_by_id[i].title): books_by_id[i]
                for i in e.book_ids
                if i in books_by_id
            }
            per_book = []
            for t in titles:
                own = {tag_phrase(x) for x in by_title[t].tags} if t in by_title else set()
                ts = [x for x in e.tags if tag_phrase(x) in own and tag_phrase(x) in pick_tags]
                if ts:
                    per_book.append(f'({tags_rule(ts)} " with " {gbnf_literal(t)})')
            if per_book:
                alts = " | ".join(per_book)
                out.append((e, f'"This book shares " ({alts}){which}', mine))
        elif e.kind == "same_author" and b and e.authors:
            a = _alt([x for x in e.authors if '"' not in x])
            out.append((e, f'"This book is by " {a} ", who also wrote " {b}{which}', mine))
        elif e.kind == "co_readers" and b and e.count:
            share = f"{e.share:.0%} of " if e.share is not None else ""
            lead = gbnf_literal(f"{share}{e.count} readers who liked ")
            out.append((e, f'{lead} {b} " rated it 4 or 5"', mine))
        elif e.kind == "series_next" and e.series and '"' not in e.series:
            after = f' ", after " {b}' if b else ""
            series = gbnf_literal(e.series)
            out.append((e, f'"This book is the next volume of the series " {series}{after}', mine))
        elif e.kind == "anchor" and b:
            tags = f' ", and this book shares " {tags_rule(e.tags)}' if e.tags else ""
            out.append((e, f'"You asked for books like " {b}{tags}', True))
        elif e.kind == "query_match" and query and _plain_literal(query.strip()):
            req = gbnf_literal(query.strip())
            out.append((e, f'"This book matches your request for " {req}', True))
        elif e.kind == "to_read":
            out.append((e, '"You saved this book to read later"', True))
    # A fact about the reader's own books or request beats one about other books: when there is
    # one, the others are not offered.
    if any(m for *_, m in out):
        return [(e, c) for e, c, m in out if m]
    return [(e, c) for e, c, _ in out]


def explanation_grammar(clauses: Sequence[str]) -> str:
    """GBNF: one of ``clauses``, then a full stop."""
    return "root ::= (" + " | ".join(f"({c})" for c in clauses) + ') "."\n'


GRAMMAR_PROMPT = "explain_facts"  # the explanation prompt of the GBNF path (llama.cpp)
BLURB_MIN_WORDS, BLURB_MAX_WORDS = 8, 32  # one sentence: long enough to say something, short
BLURB_EXTRA_WORDS = 4  # words a blurb may run past its description's length
BLURB_MAX_TOKENS = 56  # to decode (32 words are ~42 tokens)
EXPLANATION_MAX_TOKENS = 96  # the grammar bounds the length; a subtitled title is ~50 tokens


class Explainer:
    """Writes grounded, personal explanations and blurbs with an LLM, else the template text.

    Three ways to get the JSON, best first: a backend with constrained ``generate_json`` /
    ``stream_json`` (``constrained_json``: decoded under the prompt's JSON schema, so it parses); a
    prefill-capable backend, driven field by field
    (``why_prefill``/``blurb_prefill`` from ``prompts/explain.toml``, each field cut at its closing
    quote); any other backend writes the whole object, cut at the first ``}``. Every reply then
    passes two checks before it is shown: names (:func:`check_grounding`) and claims
    (:func:`assistant.claims.check_claims`); otherwise the template is shown and the reason kept.
    """

    def __init__(
        self,
        backend: LLMBackend,
        max_new_tokens: int = 80,
        history_k: int = 5,
        desc_chars: int = 300,
        counter: FallbackCounter | None = None,
        prompt: str = "explain",
        vocab_constrained: bool = True,
    ) -> None:
        """``counter`` may be shared between explainers; :attr:`counter` is readable at any time.

        ``max_new_tokens`` caps each field (explanation, blurb) separately on the field-by-field
        path.
        """
        self.backend = backend
        self.max_new_tokens, self.history_k, self.desc_chars = max_new_tokens, history_k, desc_chars
        self.counter = counter or FallbackCounter()
        self.prompt = prompt
        # On grammar backends, decode each sentence under a pattern of the facts' own words.
        self.vocab_constrained = vocab_constrained
        self._index: tuple[int, int, _Grounding] | None = None
        self._system = system_text(prompt)
        meta = prompt_meta(prompt)
        self._why_prefill = str(meta.get("why_prefill", '{"explanation": "'))
        self._blurb_prefill = str(meta.get("blurb_prefill", '", "blurb": "'))
        self.schema = json.loads(str(meta["json_schema"])) if meta.get("json_schema") else None
        # The blurb's own prompt (no reader data in it), when this prompt names one.
        self.blurb_prompt = str(meta["blurb_prompt"]) if meta.get("blurb_prompt") else None
        if self.blurb_prompt:
            bmeta = prompt_meta(self.blurb_prompt)
            self._blurb_lead = str(bmeta.get("prefill", '{"blurb": "'))
            self._blurb_schema = json.loads(str(bmeta["json_schema"]))

    def _blurb_prompt(self, book: Book) -> tuple[list[dict[str, str]], dict[str, object]] | None:
        """The blurb call's messages (the book's own record only) and schema, or ``None`` when
        the prompt has no blurb prompt or the book has no description."""
        # No description: no model blurb. From tags alone Qwen2.5-1.5B wrote either world
        # knowledge the record does not hold or word salad ("a memoir of his 1, 1, 1, ..."); the
        # card shows the tags themselves instead.
        if not self.blurb_prompt or not book.description.strip():
            return None
        msgs, _ = render_messages(self.blurb_prompt, book=format_book(book, self.desc_chars))
        # The blurb's words: the book's own record (its description in full, its tags).
        own = f"{book.title} {' '.join(book.authors)} {' '.join(book.tags)} {book.description}"
        vocab = fact_words(own.replace("-", " ")) if self.vocab_constrained else ()
        return msgs, explanation_schema(self._blurb_schema, (), vocab)

    def _grounding(self, books_by_id: Mapping[str, Book]) -> _Grounding:
        if self._index is None or self._index[:2] != (id(books_by_id), len(books_by_id)):
            self._index = (id(books_by_id), len(books_by_id), _Grounding(books_by_id))
        return self._index[2]

    def claim_context(
        self,
        book: Book,
        evidence: Sequence[Evidence],
        history: Sequence[HistoryItem],
        books_by_id: Mapping[str, Book],
        query: str | None = None,
    ) -> ClaimContext:
        """The records a text about ``book`` for this reader may rest on."""
        return ClaimContext(
            book,
            tuple(evidence),
            _pairs(history),
            books_by_id,
            query,
            self._grounding(books_by_id).tags,
        )

    def _prepare(
        self,
        book: Book,
        evidence: Sequence[Evidence],
        history: Sequence[HistoryItem],
        books_by_id: Mapping[str, Book],
        template_text: str,
        query: str | None,
        shown: Sequence[str] = (),
    ):
        pairs = _pairs(history)
        history_books = [b for b, _ in pairs]
        msgs, version = render_messages(
            self.prompt,
            history=format_history(pairs, self.history_k, numbered=True),
            # the description goes to the blurb's own prompt when there is one
            candidate=format_book(book, 0 if self.blurb_prompt else self.desc_chars),
            evidence=format_evidence(evidence, books_by_id, numbered=True),
            query=delimit(query, 300) if query else "(none)",
            template=delimit(template_text, 400),
        )
        g = self._grounding(books_by_id)
        ev_books = [books_by_id[i] for e in evidence for i in e.book_ids if i in books_by_id]
        known = [book, *history_books, *ev_books]
        titles = [b.title for b in known] + [b.series for b in known if b.series]
        authors = [a for b in known for a in b.authors] + [a for e in evidence for a in e.authors]
        # Names in the book's own description are facts about it; names in the request are the
        # reader's.
        desc = _tokens(book.description)
        own_titles = [
            book.title,
            *([book.series] if book.series else []),
            *(n for _, _, n in g.titles.find(desc)),
        ]
        own_authors = [*book.authors, *(n for _, _, n in g.authors.find(desc))]
        q = _tokens(query or "")
        titles += own_titles + [n for _, _, n in g.titles.find(q)]
        authors += own_authors + [n for _, _, n in g.authors.find(q)]
        phrases = list(book.tags) + [t for e in evidence for t in e.tags]
        check = dict(
            allowed_titles=titles,
            allowed_authors=authors,
            all_catalog_titles=g.titles,
            all_catalog_authors=g.authors,
            evidence=evidence,
            allowed_phrases=phrases,
            forbidden_texts=[self._system],
            blurb_titles=own_titles,
            blurb_authors=own_authors,
            facts_text="\n".join(m["content"] for m in msgs if m["role"] == "user"),
        )
        ctx = ClaimContext(book, tuple(evidence), pairs, books_by_id, query, g.tags)
        titles = lead_titles(pairs, evidence, book, self.history_k)
        # The explanation's words: the link facts, the reader's books and request, the pick's
        # title, authors and tags (no description: the explanation does not retell the plot).
        user = "\n".join(m["content"] for m in msgs if m["role"] == "user")
        vocab = fact_words(user, format_book(book, 0)) if self.vocab_constrained else ()
        schema = explanation_schema(self.schema, titles, vocab) if self.schema is not None else None
        opening = f"You liked {titles[0]}, and this book" if titles else ""
        blurb = self._blurb_prompt(book)
        if blurb is not None:
            check["facts_text"] += "\n" + blurb[0][-1]["content"]
        grammars = None
        if self._grammar_backend():
            lines = fact_lines(book, evidence, pairs, books_by_id, query, avoid=shown)
            clauses = [c for _, c in lines]
            # the lean prompt of the grammar path: the book, the request, the facts on offer
            msgs, version = render_messages(
                GRAMMAR_PROMPT,
                candidate=format_book(book, 0),
                evidence=format_evidence([e for e, _ in lines], books_by_id, numbered=True),
                query=delimit(query, 300) if query else "(none)",
            )
            bg = None
            if blurb is not None:
                # the blurb's words: its description and tags, not its title or author (a blurb
                # that names them says nothing the card does not)
                own = f"{' '.join(book.tags)} {book.description}".replace("-", " ")
                # a few words past the description's length: past them the study's blurbs
                # rambled on in tag words ("..., a classic war satire with a funny and satire.")
                cap = min(BLURB_MAX_WORDS, len(book.description.split()) + BLURB_EXTRA_WORDS)
                bg = words_grammar(
                    fact_words(own, glue=BLURB_GLUE_WORDS),
                    BLURB_MIN_WORDS,
                    max(BLURB_MIN_WORDS, cap),
                )
            grammars = (explanation_grammar(clauses) if clauses else None, bg)
        return msgs, version, check, ctx, schema, opening, blurb, grammars

    def prime(self) -> int:
        """Evaluate and cache the prompts' shared heads (the system texts) on a backend that can
        (llama.cpp), so a reader's first pick starts past them; call once at start-up.

        Returns:
            Prompt tokens now cached (0 on other backends).
        """
        prime = getattr(self.backend, "prime", None)
        if not callable(prime) or not self._grammar_backend():
            return 0
        n = 0
        for name in (GRAMMAR_PROMPT, self.blurb_prompt):
            if name:
                n += prime(
                    [
                        {"role": "system", "content": system_text(name)},
                        {"role": "user", "content": ""},
                    ]
                )
        return n

    def _grammar_backend(self) -> bool:
        return bool(getattr(self.backend, "supports_grammar", False)) and self.vocab_constrained

    def _raw_chunks(
        self,
        msgs: list[dict[str, str]],
        streaming: bool,
        schema: Mapping[str, object] | None = None,
        opening: str = "",
        blurb_msgs: list[dict[str, str]] | None = None,
        blurb_schema: Mapping[str, object] | None = None,
    ) -> Iterator[str]:
        """The raw JSON replies, as chunks (prefills included): the explanation's object, then
        (from ``blurb_msgs``, a prompt that holds only the book's record) the blurb's; the caller
        joins them with :func:`merge_replies`. A reply that already holds a blurb (a backend that
        wrote the whole object) is not followed by a blurb call.

        ``schema``/``blurb_schema``: the per-call schemas of the constrained path (default: the
        prompt's); ``opening``: the explanation's first words on the prefill path (the shape the
        schema's pattern forces).
        """
        schema = schema if schema is not None else self.schema
        gen_json = getattr(self.backend, "generate_json", None)
        constrained = bool(getattr(self.backend, "constrained_json", False))
        budget = self.max_new_tokens + 12  # one field and the JSON syntax

        def run(m: list[dict[str, str]], stop: list[str], max_tokens: int) -> Iterator[str]:
            if streaming:
                yield from self.backend.stream(m, max_tokens, stop=stop)
            else:
                yield self.backend.generate(m, max_tokens, stop=stop)

        def one(
            m: list[dict[str, str]], sch: Mapping[str, object] | None, lead: str
        ) -> Iterator[str]:
            # Constrained decoding (grammar / server-side schema) whenever the backend has it.
            # Otherwise, streamed or not (so both agree): a prefill, which keeps small models in
            # format better than validate-and-retry, or the whole object; parsed strictly.
            if sch is not None and callable(gen_json) and constrained:
                stream_json = getattr(self.backend, "stream_json", None)
                if streaming and callable(stream_json):
                    yield from stream_json(m, dict(sch), max_new_tokens=budget)
                else:
                    out = gen_json(m, dict(sch), max_new_tokens=budget)
                    yield out if isinstance(out, str) else json.dumps(out)
                return
            if not self.backend.supports_prefill:
                out = ""
                for chunk in run(m, ["}"], 2 * self.max_new_tokens):
                    out += chunk
                    yield chunk
                if "{" in out:
                    yield "}"  # the stop string is cut off
                return
            yield lead
            yield from run(m + [{"role": "assistant", "content": lead}], ['"', "\n"], budget)
            yield '"}'

        first = ""
        for chunk in one(msgs, schema, self._why_prefill + opening):
            first += chunk
            yield chunk
        if blurb_msgs is None or '"blurb"' in first:
            return
        yield from one(blurb_msgs, blurb_schema, self._blurb_lead)

    def _grammar_chunks(
        self,
        msgs: list[dict[str, str]],
        grammars: tuple[str | None, str | None],
        blurb_msgs: list[dict[str, str]] | None,
    ) -> Iterator[str]:
        """The llama.cpp path: the blurb (its prompt is short and holds no reader data, so its
        first word comes soonest), then the explanation, each under its GBNF grammar, as two
        JSON objects the caller merges; the JSON syntax is written here, not decoded."""
        expl, blurb = grammars
        stream = self.backend.stream_grammar  # type: ignore[attr-defined]
        if blurb is not None and blurb_msgs is not None:
            lead = '{"blurb": "'
            yield lead
            yield from stream(blurb_msgs, blurb, prefix=lead, max_new_tokens=BLURB_MAX_TOKENS)
            yield '"}'
        if expl is not None:
            lead = '{"explanation": "'
            yield lead
            yield from stream(msgs, expl, prefix=lead, max_new_tokens=EXPLANATION_MAX_TOKENS)
            yield '"}'

    def _finish(
        self,
        raw: str | None,
        error: str | None,
        check: dict,
        ctx: ClaimContext | None,
        version: str,
        template_text: str,
        shown: Sequence[str],
    ) -> ExplanationResult:
        reason = error or check_grounding(raw or "", **check)
        obj = None
        if reason is None:
            obj, _ = parse_explanation(raw or "")
            assert obj is not None and ctx is not None
            reason = check_claims(obj["why"] or "", obj["blurb"], ctx, shown)
        if reason is None and obj is not None:
            result = ExplanationResult(obj["why"] or "", obj["blurb"], "llm", None, version, raw)
        else:
            result = ExplanationResult(template_text, None, "template", reason, version, raw)
        self.counter.record(result)
        return result

    def explain(
        self,
        book: Book,
        evidence: list[Evidence],
        history_books: Sequence[HistoryItem],
        books_by_id: Mapping[str, Book],
        template_text: str,
        query: str | None = None,
        shown: Sequence[str] = (),
    ) -> ExplanationResult:
        """One checked explanation for ``book``; the template text when the model is off or fails a
        check.

        Args:
            book: the recommended book.
            evidence: the facts the system holds for it.
            history_books: the reader's books, or (book, rating) pairs (ratings make "you loved X"
                checkable).
            books_by_id: the catalog.
            template_text: the evidence rendered by the template (shown on any failure).
            query: the reader's request.
            shown: LLM texts already shown to this reader in this turn (near-duplicates fail).

        Returns:
            The result; ``source`` says whether the text is the model's (checked) or the template.
        """
        *_, result = self._run(
            book, evidence, history_books, books_by_id, template_text, query, shown, streaming=False
        )
        assert isinstance(result, ExplanationResult)
        return result

    def stream_explain(
        self,
        book: Book,
        evidence: list[Evidence],
        history_books: Sequence[HistoryItem],
        books_by_id: Mapping[str, Book],
        template_text: str,
        query: str | None = None,
        shown: Sequence[str] = (),
    ) -> Iterator[str | ExplanationResult]:
        """Yield the display text so far (explanation, then a blank line and the blurb) as it grows,
        then the final :class:`ExplanationResult` (which may replace it with the template)."""
        yield from self._run(
            book, evidence, history_books, books_by_id, template_text, query, shown, streaming=True
        )

    def _run(
        self,
        book: Book,
        evidence: Sequence[Evidence],
        history_books: Sequence[HistoryItem],
        books_by_id: Mapping[str, Book],
        template_text: str,
        query: str | None,
        shown: Sequence[str],
        streaming: bool,
    ) -> Iterator[str | ExplanationResult]:
        if self.backend.name == "none":
            yield self._finish(None, "LLM disabled", {}, None, "none", template_text, shown)
            return
        msgs, version, check, ctx, schema, opening, blurb, grammars = self._prepare(
            book, evidence, history_books, books_by_id, template_text, query, shown
        )
        blurb_msgs, blurb_schema = blurb if blurb is not None else (None, None)
        raw, error, text_so_far = "", None, ""
        if grammars is not None and grammars[0] is None:
            yield self._finish(
                None,
                "no evidence line ties the book to the reader's books or request",
                check,
                ctx,
                version,
                template_text,
                shown,
            )
            return
        chunks = (
            self._grammar_chunks(msgs, grammars, blurb_msgs)
            if grammars is not None
            else self._raw_chunks(msgs, streaming, schema, opening, blurb_msgs, blurb_schema)
        )
        try:
            for chunk in chunks:
                raw += chunk
                if streaming:
                    why, blurb = partial_fields(raw)
                    text = "\n\n".join(x for x in (why, blurb) if x)
                    if text != text_so_far:
                        text_so_far = text
                        yield text
        except LLMError as e:
            # A constrained call that still gives no valid object is the model's failure to parse.
            bad = type(e).__name__ == "LLMBadOutput"
            error = f"not valid JSON ({e})" if bad else f"backend error: {e}"
        raw = merge_replies(raw)
        yield self._finish(None if error else raw, error, check, ctx, version, template_text, shown)
