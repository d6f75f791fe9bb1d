"""Template explanations: one sentence per piece of evidence, nothing else.

These are the ground truth the LLM text is checked against, and what a reader sees whenever
there is no LLM or its text fails the grounding guard.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from retrieval.evidence import strength
from retrieval.types import Book, Evidence

QUERY_EXCERPT = 80  # characters of the reader's own request quoted back in a reason


def _title(books: Mapping[str, Book], book_id: str) -> str:
    b = books.get(book_id)
    return f"“{b.title}”" if b else book_id


def _stars(r: float | None) -> str:
    if r is None:
        return ""
    return f"{r:g}★"


def _titles(
    books: Mapping[str, Book], ids: Sequence[str], rated: Mapping[str, float], n: int = 2
) -> str:
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
        return (
            f"It is close in subject and style to {_titles(books, e.book_ids, rated)}, which "
            "you rated highly."
        )
    if e.kind == "shared_tags":
        tags = ", ".join(e.tags[:3])  # the three most shared; more reads as a list, not a reason
        return (
            f"It shares {tags} with books you liked, such as {_titles(books, e.book_ids, rated)}."
        )
    if e.kind == "same_author":
        return (
            f"It is by {', '.join(e.authors)}, who also wrote "
            f"{_titles(books, e.book_ids, rated, 1)}."
        )
    if e.kind == "co_readers":
        pct = f"{round((e.share or 0) * 100)}%"
        return (
            f"{pct} of the {e.count} readers who liked {_title(books, e.book_ids[0])} "
            f"gave it 4★ or more ({e.value:.1f}★ on average)."
        )
    if e.kind == "readers_like_you":
        of = f" of the {e.neighbours}" if e.neighbours else ""
        return (
            f"{e.count}{of} readers whose taste is closest to yours rated it {e.value:.1f}★ on "
            f"average ({round((e.share or 0) * 100)}% gave 4★ or more)."
        )
    if e.kind == "popular":
        return f"It is widely read here: {e.count} ratings averaging {e.value:.1f}★."
    if e.kind == "series_next":
        vol = f"#{e.value:g} " if e.value is not None else ""
        prev = f", after {_titles(books, e.book_ids, rated, 1)}" if e.book_ids else ""
        return f"It is the next book ({vol}in {e.series}) for you{prev}."
    if e.kind == "anchor":
        like = f"Like {_title(books, e.book_ids[0])}, which you asked about"
        bits = []
        if e.tags:
            bits.append(f"it shares {', '.join(e.tags)}")
        elif (e.value or 0) >= 0.35:
            bits.append("it is close in subject and style")
        if e.count:
            pct = round((e.share or 0) * 100)
            bits.append(
                f"{e.count} readers who liked it also rated this one, {pct}% of them 4★ or more"
            )
        return like + (": " + "; ".join(bits) if bits else "") + "."
    if e.kind == "query_match":
        asked = f"“{excerpt(e.text or '', QUERY_EXCERPT)}”"
        bits = []
        if e.tags:
            bits.append(f"it is tagged {_and(list(e.tags))}")
        if e.terms:
            bits.append(f"its description mentions {_and(list(e.terms))}")
        if bits:
            return f"You asked for {asked}: {', and '.join(bits)}."
        # embedding similarity alone: close in subject, not a claim that it "matches"
        return f"It is close in subject to what you asked for ({asked})."
    if e.kind == "to_read":
        return "It is on your to-read shelf."
    return ""


def excerpt(text: str, n: int) -> str:
    """``text`` on one line, cut to at most ``n`` characters (with an ellipsis when cut)."""
    t = " ".join(text.split())
    return t if len(t) <= n else t[: max(0, n - 1)].rstrip() + "…"


SECOND_MIN = 0.35  # a second reason is shown only when it is at least this strong (after penalties)
REPEAT_BOOK = 0.3  # penalty per earlier pick that already cited the same book of yours
REPEAT_KIND = 0.04  # penalty per earlier pick that already used the same kind of reason


def _cited(e: Evidence) -> tuple[str, ...]:
    """The reader's books a rendered sentence names (see :func:`render_evidence`)."""
    n = {
        "similar_to": 2,
        "shared_tags": 2,
        "same_author": 1,
        "co_readers": 1,
        "series_next": 1,
    }.get(e.kind, 0)
    return tuple(e.book_ids[:n])


class ReasonMemory:
    """What earlier picks of one list already said, so later picks say something else."""

    def __init__(self) -> None:
        self.books: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()

    def penalty(self, e: Evidence) -> float:
        if e.kind in ("series_next", "to_read"):
            return 0.0  # these are about the pick itself, never stale
        books = _cited(e)
        repeats = max((self.books[b] for b in books), default=0)
        return REPEAT_BOOK * repeats + REPEAT_KIND * self.kinds[e.kind]

    def remember(self, chosen: Sequence[Evidence]) -> None:
        for e in chosen:
            self.books.update(_cited(e))
            self.kinds[e.kind] += 1


def choose_reasons(
    evidence: Sequence[Evidence], memory: ReasonMemory | None = None, max_reasons: int = 2
) -> list[Evidence]:
    """The strongest one or two records, preferring ones earlier picks did not already use.

    Args:
        evidence: every record held for one pick.
        memory: what earlier picks of the same list said (updated with the choice), or None.
        max_reasons: at most this many records.

    Returns:
        The records to render, strongest first. The second one must clear :data:`SECOND_MIN`
        and must not name the same book of yours as the first.
    """
    memory = memory or ReasonMemory()
    scored = sorted(
        ((strength(e) - memory.penalty(e), k, e) for k, e in enumerate(evidence)),
        key=lambda x: (-x[0], x[1]),
    )
    chosen: list[Evidence] = []
    for score, _, e in scored:
        if len(chosen) >= max_reasons:
            break
        if chosen and (
            score < SECOND_MIN
            or set(_cited(e)) & set(_cited(chosen[0]))
            or e.kind == chosen[0].kind
        ):
            continue
        chosen.append(e)
    memory.remember(chosen)
    return chosen


_FALLBACK = (
    "Recommended by the model's overall ranking; we hold no specific evidence linking it "
    "to your history."
)


def template_explanation(
    evidence: Sequence[Evidence],
    books: Mapping[str, Book],
    rated: Mapping[str, float],
    max_sentences: int = 2,
    memory: ReasonMemory | None = None,
) -> str:
    """The strongest evidence, rendered; an honest fallback when there is none.

    Args:
        evidence: the records held for one pick.
        books: the catalog by id (for titles).
        rated: the reader's ratings by book id (shown next to cited titles).
        max_sentences: at most this many reasons.
        memory: pass one :class:`ReasonMemory` for a whole list to vary reasons across picks.

    Returns:
        One or two plain sentences.
    """
    chosen = choose_reasons(evidence, memory, max_sentences)
    sents = [s for s in (render_evidence(e, books, rated) for e in chosen) if s]
    return " ".join(sents) if sents else _FALLBACK


def list_explanations(
    evidences: Sequence[Sequence[Evidence]],
    books: Mapping[str, Book],
    rated: Mapping[str, float],
    max_sentences: int = 2,
) -> list[str]:
    """Template text for a ranked list, top pick first: each pick gets its strongest reasons, and
    a book of yours already cited by an earlier pick counts against citing it again."""
    memory = ReasonMemory()
    return [template_explanation(ev, books, rated, max_sentences, memory) for ev in evidences]


def _and(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
