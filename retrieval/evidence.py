"""Evidence: the facts behind a recommendation, computed from data the system holds.

Every explanation (template or LLM) is built from these records, and eval re-checks each one
against the ratings, so a claim without evidence cannot reach a reader.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .library import LIKED, Library
from .types import Evidence, Rating

SIMILAR_MIN = 0.35  # below this cosine, "close to a book you liked" is not a fair claim
CO_READERS_MIN = 3  # fewer raters than this is anecdote, not evidence (also for "popular")

# Co-reader evidence is a *reason* only when it is favourable: "45% of them gave it 4★" is true
# but argues against the book. A record is kept only with at least this many co-readers, a mean
# at or above FAVOURABLE_MEAN and a share of >= 4★ ratings at or above FAVOURABLE_SHARE.
CO_READERS_FAVOURABLE_MIN = 5
FAVOURABLE_MEAN = 3.8
FAVOURABLE_SHARE = 0.6
CO_READERS_PER_BOOK = 3  # favourable records kept per pick (different books of yours), best first


def liked_items(lib: Library, history: Sequence[Rating]) -> list[tuple[int, float]]:
    """(item index, rating) of history books rated at or above LIKED, newest first."""
    return [
        (lib.index[r.book_id], r.rating)
        for r in reversed(history)
        if r.rating >= LIKED and r.book_id in lib.index
    ]


def similar_to(
    lib: Library, item: int, liked: list[tuple[int, float]], top: int = 2
) -> Evidence | None:
    if not liked:
        return None
    idx = np.array([i for i, _ in liked])
    sims = lib.vectors[idx] @ lib.vectors[item]
    order = np.argsort(-sims, kind="stable")[:top]
    keep = [o for o in order if sims[o] >= SIMILAR_MIN]
    if not keep:
        return None
    return Evidence(
        "similar_to",
        book_ids=tuple(lib.books[idx[o]].book_id for o in keep),
        value=round(float(sims[keep[0]]), 3),
    )


def shared_tags(
    lib: Library, item: int, liked: list[tuple[int, float]], max_tags: int = 4
) -> Evidence | None:
    tags = lib.tag_sets[item]
    if not tags or not liked:
        return None
    counts: dict[str, list[int]] = {}
    for i, _ in liked:
        for t in tags & lib.tag_sets[i]:
            counts.setdefault(t, []).append(i)
    if not counts:
        return None
    # Prefer tags shared with many liked books; keep the book's own tag order for ties.
    order = {t.lower(): k for k, t in enumerate(lib.books[item].tags)}
    best = sorted(counts, key=lambda t: (-len(counts[t]), order.get(t, 99)))[:max_tags]
    books: list[int] = []
    for t in best:
        for i in counts[t]:
            if i not in books:
                books.append(i)
    return Evidence(
        "shared_tags",
        tags=tuple(best),
        book_ids=tuple(lib.books[i].book_id for i in books[:3]),
        count=len(books),
    )


def same_author(lib: Library, item: int, liked: list[tuple[int, float]]) -> Evidence | None:
    authors = lib.author_sets[item]
    if not authors:
        return None
    hits = [i for i, _ in liked if authors & lib.author_sets[i]]
    if not hits:
        return None
    shared = authors & lib.author_sets[hits[0]]
    names = tuple(a for a in lib.books[item].authors if a.lower() in shared)
    return Evidence(
        "same_author", authors=names, book_ids=tuple(lib.books[i].book_id for i in hits[:3])
    )


def favourable(count: int, mean: float, share: float) -> bool:
    """Whether co-reader numbers argue *for* a book (see ``CO_READERS_FAVOURABLE_MIN`` etc.)."""
    return (
        count >= CO_READERS_FAVOURABLE_MIN and mean >= FAVOURABLE_MEAN and share >= FAVOURABLE_SHARE
    )


def _wilson_lower(share: float, n: int, z: float = 1.64) -> float:
    """Lower bound of a proportion's confidence interval: 9/10 outranks 1/1 and 40/80."""
    if n <= 0:
        return 0.0
    d = 1 + z * z / n
    centre = share + z * z / (2 * n)
    margin = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return float((centre - margin) / d)


def co_readers(
    lib: Library, item: int, liked: list[tuple[int, float]], top: int = 1
) -> list[Evidence]:
    """How readers who liked one of your books rated this one (from the ratings matrix).

    Your liked books are ranked by how *convincingly* their co-readers liked ``item`` (the
    lower confidence bound of the >= 4★ share); the best ``top`` of them are returned, and only
    :func:`favourable` records: no co-reader evidence at all when none is. More than one lets a
    list of picks cite different books of yours.
    """
    if not liked or lib.R.shape[0] == 0:
        return []
    raters, their = lib.raters(item)
    if len(raters) < CO_READERS_FAVOURABLE_MIN:
        return []
    found: list[tuple[float, int, int, float, float]] = []  # (bound, n, k, mean, share)
    # pos[u] = where reader row u sits among the item's raters (-1: did not rate it); both row
    # lists are sorted, so pos[likers] keeps the raters' order: the same ratings, in the same
    # order, as np.isin(raters, likers) selects, at O(len(likers)) per liked book
    pos = np.full(lib.R.shape[0], -1, dtype=np.int64)
    pos[raters] = np.arange(len(raters))
    for k, (h, _) in enumerate(liked):
        at = pos[lib.likers(h)]
        at = at[at >= 0]
        n = len(at)
        if n < CO_READERS_FAVOURABLE_MIN:
            continue
        r = their[at]
        mean, share = round(float(r.mean()), 2), round(float((r >= LIKED).mean()), 2)
        if favourable(n, mean, share):
            found.append((_wilson_lower(share, n), n, k, mean, share))
    found.sort(key=lambda x: (-x[0], -x[1], x[2]))
    return [
        Evidence(
            "co_readers",
            book_ids=(lib.books[liked[k][0]].book_id,),
            count=n,
            value=mean,
            share=share,
        )
        for _, n, k, mean, share in found[:top]
    ]


def popular(lib: Library, item: int) -> Evidence | None:
    n = int(lib.pop_count[item])
    if n < CO_READERS_MIN:
        return None
    return Evidence("popular", count=n, value=round(float(lib.pop_mean[item]), 2))


def query_match(
    lib: Library, item: int, query: str | None, qvec: np.ndarray | None, threshold: float = 0.25
) -> Evidence | None:
    if not query or qvec is None:
        return None
    sim = float(lib.vectors[item] @ qvec)
    tags, words = request_words_in_book(lib.books[item], query)
    if sim < threshold and not (tags or words):
        return None
    # The matched words make the claim concrete ("tagged funny", "mentions dragons"); a match by
    # embedding alone is only said to be close in subject, never that it "matches".
    return Evidence("query_match", text=query, value=round(sim, 3), tags=tags, terms=words)


def request_words_in_book(book, query: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The book's tags that a request names, and the request's other words that its description
    contains (folded, lightly singularised; see :func:`retrieval.lexical.tokenize`).

    Returns:
        ``(tags, words)``: tags as the catalog spells them; words in the request's own form.
    """
    from .lexical import tokenize

    q_tokens = set(tokenize(query))
    tags = tuple(
        t
        for t in book.tags
        if tokenize(t.replace("-", " ")) and set(tokenize(t.replace("-", " "))) <= q_tokens
    )
    tagged = {w for t in tags for w in tokenize(t.replace("-", " "))}
    own = set(tokenize(book.description or ""))
    words, seen = [], set()
    for raw in re.findall(r"[A-Za-z0-9']+", query):
        tok = tokenize(raw)
        if len(tok) == 1 and tok[0] in own and tok[0] not in tagged and tok[0] not in seen:
            seen.add(tok[0])
            words.append(raw.lower())
    return tags, tuple(words)


def collect(
    lib: Library,
    item: int,
    history: Sequence[Rating],
    query: str | None = None,
    qvec: np.ndarray | None = None,
    to_read: set[str] | None = None,
    liked: list[tuple[int, float]] | None = None,
) -> list[Evidence]:
    """All evidence the system holds for recommending ``item`` to a reader with ``history``."""
    liked = liked_items(lib, history) if liked is None else liked
    out = [
        similar_to(lib, item, liked),
        same_author(lib, item, liked),
        shared_tags(lib, item, liked),
        *co_readers(lib, item, liked, top=CO_READERS_PER_BOOK),
        query_match(lib, item, query, qvec),
    ]
    if to_read and lib.books[item].book_id in to_read:
        out.append(Evidence("to_read", book_ids=(lib.books[item].book_id,)))
    if not any(e is not None for e in out):
        out.append(popular(lib, item))
    return [e for e in out if e is not None]


# How much a record says about *this* reader and *this* book, in [0, 1]. The template shows the
# strongest one or two; the bands keep the kinds in a sensible order (the next volume of your
# series beats "popular here"), and within a band the numbers decide (a 0.7 cosine beats 0.4,
# 90% of 40 co-readers beats 61% of 6).
_BASE = {
    "series_next": 0.95,
    "anchor": 0.8,
    "to_read": 0.85,
    "same_author": 0.75,
    "query_match": 0.55,
    "similar_to": 0.45,
    "co_readers": 0.5,
    "readers_like_you": 0.5,
    "shared_tags": 0.3,
    "popular": 0.1,
}


def strength(ev: Evidence) -> float:
    """Strength of one evidence record in [0, 1]: higher is a more specific, better-supported one.

    Args:
        ev: an evidence record, as :func:`collect` (or a candidate source) produced it.

    Returns:
        The score used to rank a pick's reasons; unknown kinds get 0.
    """
    base = _BASE.get(ev.kind, 0.0)
    v = float(ev.value or 0.0)
    if ev.kind == "same_author":
        return min(0.9, base + 0.05 * (len(ev.book_ids) - 1))
    if ev.kind == "similar_to":  # cosine SIMILAR_MIN..0.75 -> 0.45..0.85
        return base + 0.4 * float(np.clip((v - SIMILAR_MIN) / (0.75 - SIMILAR_MIN), 0.0, 1.0))
    if ev.kind in ("co_readers", "readers_like_you"):  # share 0.6..1 and more readers -> 0.5..0.85
        bound = _wilson_lower(float(ev.share or 0.0), int(ev.count or 0))
        return base + 0.35 * float(np.clip((bound - 0.4) / 0.55, 0.0, 1.0))
    if ev.kind == "shared_tags":  # more shared tags, with more liked books -> 0.3..0.5
        return base + min(0.2, 0.04 * len(ev.tags) + 0.02 * int(ev.count or 0))
    if ev.kind == "query_match":  # cosine 0.25..0.6 -> 0.55..0.75, +0.05 per matched word
        words = 0.05 * (len(ev.tags) + len(ev.terms))
        return min(0.9, base + 0.2 * float(np.clip((v - 0.25) / 0.35, 0.0, 1.0)) + words)
    if ev.kind == "popular":
        return base + 0.1 * float(np.clip((v - 3.0) / 2.0, 0.0, 1.0))
    return base


def verify(
    lib: Library, book_id: str, ev: Evidence, history: Sequence[Rating], tol: float = 0.011
) -> bool:
    """Re-check one evidence record against the data (used by eval's faithfulness rate)."""
    if book_id not in lib.index:
        return False
    item = lib.index[book_id]
    rated = {r.book_id: r.rating for r in history}
    liked = {b for b, r in rated.items() if r >= LIKED}
    if ev.kind == "similar_to":
        return (
            bool(ev.book_ids)
            and all(b in liked for b in ev.book_ids)
            and abs(
                float(lib.vectors[lib.index[ev.book_ids[0]]] @ lib.vectors[item]) - (ev.value or 0)
            )
            < tol
        )
    if ev.kind == "shared_tags":
        tags = lib.tag_sets[item]
        return (
            bool(ev.tags)
            and all(t in tags for t in ev.tags)
            and all(b in liked for b in ev.book_ids)
            and all(any(t in lib.tag_sets[lib.index[b]] for t in ev.tags) for b in ev.book_ids)
        )
    if ev.kind == "same_author":
        return (
            bool(ev.authors)
            and all(b in liked for b in ev.book_ids)
            and all(
                a.lower() in lib.author_sets[item] and a.lower() in lib.author_sets[lib.index[b]]
                for a in ev.authors
                for b in ev.book_ids[:1]
            )
        )
    if ev.kind == "co_readers":
        h = ev.book_ids[0]
        if h not in liked or h not in lib.index:
            return False
        hcol = lib.R_csc[:, lib.index[h]]
        likers = set(hcol.indices[hcol.data >= LIKED])
        col = lib.R_csc[:, item]
        r = np.array([v for u, v in zip(col.indices, col.data) if u in likers])
        # The numbers must be right, and the record must be favourable: it is shown as a reason.
        return (
            len(r) == ev.count
            and abs(r.mean() - (ev.value or 0)) < tol
            and abs((r >= LIKED).mean() - (ev.share or 0)) < tol
            and favourable(ev.count or 0, ev.value or 0.0, ev.share or 0.0)
        )
    if ev.kind == "popular":
        return (
            int(lib.pop_count[item]) == ev.count
            and abs(float(lib.pop_mean[item]) - (ev.value or 0)) < tol
        )
    if ev.kind == "series_next":
        b = lib.books[item]
        prev = ev.book_ids[0] if ev.book_ids else None
        from .series import series_key

        return (
            b.series == ev.series
            and prev in rated
            and series_key(lib.book(prev).series or "") == series_key(b.series or "")
        )
    if ev.kind == "anchor":
        from .anchor import verify_anchor

        return verify_anchor(lib, book_id, ev, tol)
    if ev.kind == "readers_like_you":
        return _verify_readers(lib, item, ev, history, tol)
    if ev.kind == "query_match":  # the request is the reader's own input; its matched words
        tags, words = request_words_in_book(lib.books[item], ev.text or "")  # must be the book's
        return set(ev.tags) <= set(tags) and set(ev.terms) <= set(words)
    if ev.kind == "to_read":
        return True  # restates the reader's own shelf
    return False


def _verify_readers(
    lib: Library, item: int, ev: Evidence, history: Sequence[Rating], tol: float
) -> bool:
    """The named neighbours rated the book as claimed and are among the reader's nearest by taste.

    Nearness is re-checked against the exact taste vectors of the library's readers (the index
    the readers source built): each neighbour must rank within the claimed neighbourhood size
    (plus 10% slack for an approximate Chroma search), the reader themself not counted.
    """
    ids = ev.reader_ids
    if not ids or ev.count != len(ids) or any(u not in lib.user_index for u in ids):
        return False
    col = lib.R_csc[:, item]
    rated = dict(zip(col.indices.tolist(), col.data.tolist()))
    rows = [lib.user_index[u] for u in ids]
    if any(r not in rated for r in rows):
        return False
    vals = np.array([rated[r] for r in rows])
    if (
        abs(float(vals.mean()) - (ev.value or 0)) >= tol
        or abs(float((vals >= LIKED).mean()) - (ev.share or 0)) >= tol
    ):
        return False
    if not ev.neighbours:
        return False
    from .readers import reader_index

    indexes = list((lib.__dict__.get("_reader_index") or {}).values()) or [reader_index(lib)]
    return any(_near(idx, ids, ev.neighbours, history) for idx in indexes)


def _near(idx, ids: Sequence[str], neighbours: int, history: Sequence[Rating]) -> bool:
    """Each of ``ids`` is among the ``neighbours`` (+10% slack) readers nearest to the history."""
    from .types import UserContext

    v = idx.taste_vector(UserContext(history=list(history)))
    if v is None or not all(u in idx.pos for u in ids):
        return False
    sims = idx.vectors @ v
    sims = sims[sims < 1.0 - 1e-6]  # the reader's own stored vector is not a neighbour
    limit = int(neighbours * 1.1) + 1
    cut = np.sort(sims)[::-1][min(limit, len(sims)) - 1] if len(sims) else 1.0
    return all(float(idx.vectors[idx.pos[u]] @ v) >= cut - 1e-6 for u in ids)
