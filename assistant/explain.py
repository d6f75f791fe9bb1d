"""Template explanations: one sentence per piece of evidence, nothing else.

These are the ground truth the LLM text is checked against, and what a reader sees whenever
there is no LLM or its text fails the grounding guard.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from retrieval.types import Book, Evidence


def _title(books: Mapping[str, Book], book_id: str) -> str:
    b = books.get(book_id)
    return f"“{b.title}”" if b else book_id


def _stars(r: float | None) -> str:
    if r is None:
        return ""
    return f"{r:g}★"


def _titles(books: Mapping[str, Book], ids: Sequence[str], rated: Mapping[str, float], n: int = 2) -> str:
    parts = []
    for b in ids[:n]:
        s = _title(books, b)
        if b in rated:
            s += f" ({_stars(rated[b])})"
        parts.append(s)
    return " and ".join(parts)


def render_evidence(e: Evidence, books: Mapping[str, Book], rated: Mapping[str, float]) -> str:
    """One plain sentence stating exactly what ``e`` holds."""
    if e.kind == "similar_to":
        return f"It is close in subject and style to {_titles(books, e.book_ids, rated)}, which you rated highly."
    if e.kind == "shared_tags":
        tags = ", ".join(e.tags)
        return f"It shares {tags} with books you liked, such as {_titles(books, e.book_ids, rated)}."
    if e.kind == "same_author":
        return f"It is by {', '.join(e.authors)}, who also wrote {_titles(books, e.book_ids, rated, 1)}."
    if e.kind == "co_readers":
        pct = f"{round((e.share or 0) * 100)}%"
        return (f"{e.count} readers who liked {_title(books, e.book_ids[0])} rated it "
                f"{e.value:.1f}★ on average ({pct} gave 4★ or more).")
    if e.kind == "readers_like_you":
        of = f" of the {e.neighbours}" if e.neighbours else ""
        return (f"{e.count}{of} readers whose taste is closest to yours rated it {e.value:.1f}★ on average "
                f"({round((e.share or 0) * 100)}% gave 4★ or more).")
    if e.kind == "popular":
        return f"It is widely read here: {e.count} ratings averaging {e.value:.1f}★."
    if e.kind == "series_next":
        vol = f"#{e.value:g} " if e.value is not None else ""
        prev = f", after {_titles(books, e.book_ids, rated, 1)}" if e.book_ids else ""
        return f"It is the next book ({vol}in {e.series}) for you{prev}."
    if e.kind == "query_match":
        return f"It matches what you asked for (“{e.text}”)."
    if e.kind == "to_read":
        return "It is on your to-read shelf."
    return ""


# Most persuasive and specific evidence first.
_ORDER = {"series_next": 0, "to_read": 1, "query_match": 2, "same_author": 3, "similar_to": 4,
          "co_readers": 5, "readers_like_you": 3.5, "shared_tags": 6, "popular": 7}


def template_explanation(evidence: Sequence[Evidence], books: Mapping[str, Book], rated: Mapping[str, float],
                         max_sentences: int = 2) -> str:
    """The top evidence, rendered; an honest fallback when there is none."""
    ev = sorted(evidence, key=lambda e: _ORDER.get(e.kind, 9))
    sents = [s for s in (render_evidence(e, books, rated) for e in ev[:max_sentences]) if s]
    if not sents:
        return "Recommended by the model's overall ranking; we hold no specific evidence linking it to your history."
    return " ".join(sents)
