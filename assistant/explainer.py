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

from assistant.claims import ClaimContext, catalog_tag_vocab, check_claims
from assistant.grounding import (
    MAX_WHY_CHARS,
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


HistoryItem = Book | tuple[Book, float | None]


def _pairs(history: Sequence[HistoryItem]) -> list[tuple[Book, float | None]]:
    return [(h, None) if isinstance(h, Book) else (h[0], h[1]) for h in history]


class Explainer:
    """Writes grounded, personal explanations and blurbs with an LLM, else the template text.

    Three ways to get the JSON, best first: a backend with constrained ``generate_json`` /
    ``stream_json`` (``constrained_json``: decoded under the prompt's JSON schema, so it parses); a prefill-capable backend, driven field by field
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
    ) -> None:
        """``counter`` may be shared between explainers; :attr:`counter` is readable at any time.

        ``max_new_tokens`` caps each field (explanation, blurb) separately on the field-by-field path.
        """
        self.backend = backend
        self.max_new_tokens, self.history_k, self.desc_chars = max_new_tokens, history_k, desc_chars
        self.counter = counter or FallbackCounter()
        self.prompt = prompt
        self._index: tuple[int, int, _Grounding] | None = None
        self._system = system_text(prompt)
        meta = prompt_meta(prompt)
        self._why_prefill = str(meta.get("why_prefill", '{"explanation": "'))
        self._blurb_prefill = str(meta.get("blurb_prefill", '", "blurb": "'))
        self.schema = json.loads(str(meta["json_schema"])) if meta.get("json_schema") else None

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
    ):
        pairs = _pairs(history)
        history_books = [b for b, _ in pairs]
        msgs, version = render_messages(
            self.prompt,
            history=format_history(pairs, self.history_k, numbered=True),
            candidate=format_book(book, self.desc_chars),
            evidence=format_evidence(evidence, books_by_id, numbered=True),
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
        return msgs, version, check, ctx

    def _raw_chunks(self, msgs: list[dict[str, str]], streaming: bool) -> Iterator[str]:
        """The raw JSON reply, as chunks (prefills included)."""
        gen_json = getattr(self.backend, "generate_json", None)
        constrained = bool(getattr(self.backend, "constrained_json", False))
        # Constrained decoding (grammar / server-side schema) whenever the backend has it. Otherwise
        # the paths below, streamed or not (so both agree): field by field with a prefill, which keeps
        # small models in format better than validate-and-retry, or the whole object; parsed strictly.
        if self.schema is not None and callable(gen_json) and constrained:
            stream_json = getattr(self.backend, "stream_json", None)
            budget = 2 * self.max_new_tokens + 16  # both fields and the JSON syntax
            if streaming and callable(stream_json):
                yield from stream_json(msgs, self.schema, max_new_tokens=budget)
            else:
                out = gen_json(msgs, self.schema, max_new_tokens=budget)
                yield out if isinstance(out, str) else json.dumps(out)
            return

        def run(m: list[dict[str, str]], stop: list[str], max_tokens: int) -> Iterator[str]:
            if streaming:
                yield from self.backend.stream(m, max_tokens, stop=stop)
            else:
                yield self.backend.generate(m, max_tokens, stop=stop)

        if not self.backend.supports_prefill:
            out = ""
            for chunk in run(msgs, ["}"], 2 * self.max_new_tokens):
                out += chunk
                yield chunk
            if "{" in out:
                yield "}"  # the stop string is cut off
            return
        why = ""
        yield self._why_prefill
        # ~4 characters a token: a "why" that needs more tokens than this is rejected as overlong anyway.
        why_tokens = min(self.max_new_tokens, MAX_WHY_CHARS // 3)
        for chunk in run(
            msgs + [{"role": "assistant", "content": self._why_prefill}], ['"', "\n"], why_tokens
        ):
            why += chunk
            yield chunk
        yield self._blurb_prefill
        prefix = self._why_prefill + why + self._blurb_prefill
        yield from run(
            msgs + [{"role": "assistant", "content": prefix}], ['"', "\n"], self.max_new_tokens
        )
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
        """One checked explanation for ``book``; the template text when the model is off or fails a check.

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
        msgs, version, check, ctx = self._prepare(
            book, evidence, history_books, books_by_id, template_text, query
        )
        raw, error, text_so_far = "", None, ""
        try:
            for chunk in self._raw_chunks(msgs, streaming):
                raw += chunk
                if streaming:
                    why, blurb = partial_fields(raw)
                    text = why + (f"\n\n{blurb}" if blurb else "")
                    if text != text_so_far:
                        text_so_far = text
                        yield text
        except LLMError as e:
            # A constrained call that still gives no valid object is the model's failure to parse.
            bad = type(e).__name__ == "LLMBadOutput"
            error = f"not valid JSON ({e})" if bad else f"backend error: {e}"
        yield self._finish(None if error else raw, error, check, ctx, version, template_text, shown)
