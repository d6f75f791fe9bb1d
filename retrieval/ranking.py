"""The one rank path: scores -> exclusions -> series reading order -> constraints -> top k.

Every ranking a reader sees or eval scores goes through :func:`rank_matrix`: the live
``Recommender.recommend`` and the chat (one reader, :func:`rank_one`), ``recommend_batch`` and
``readnext eval`` (thousands, :func:`rank`). The steps, in order:

1. **scores**: the source's scores for every catalog book (``-inf`` = no opinion);
2. **exclusions**: books the reader rated, and ``ctx.exclude`` (dismissed, "not this one");
3. **series order**: never volume n > 1 of a strictly ordered series to a reader who has not
   read volume n-1 -- volume 1 or the next unread one only (:meth:`SeriesIndex.blocked_for`);
   for every reader, cold readers and request results included; and no further volume of a
   series the reader rated badly (:func:`disliked_series`);
4. **constraints** (chat: "more fantasy", "not romance", "shorter"): the scores become a rank
   score ``1 / (depth + 1 + rank)``, disallowed books are dropped and soft preferences multiply
   it (z-scores can be negative, so a multiplicative boost needs a positive score: a 1.5x
   preference lifts a book about ``depth / 2`` places);
5. **request pool** (a topical request, hybrid only: "a funny fantasy with dragons"): the
   ``request_pool`` rankable, allowed books most relevant to the request alone
   (:meth:`HybridSource.request_relevance`) rank above every other book, in the order of step
   4: the reader's history orders the answer but cannot replace its topic, and a short pool is
   filled from the rest rather than left empty. Within the pool, a book carrying the request's
   own words (not the tags it named: "dragons" in "a fantasy with dragons") has its rank score
   multiplied by ``word_boost`` per word (:meth:`HybridSource.request_words`), so the words a
   reader describes weigh in the order, not only in who gets into the pool;
6. **top k**: higher score first, then the lower catalog index (deterministic ties).

Evidence is a separate step after ranking (:meth:`Ranked.candidates`), on the final list only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .constraints import BookFacets, Constraints
from .fusion import top_k_matrix
from .library import Library
from .sources import CandidateSource, exclude_mask, top_mask
from .types import Candidate, UserContext

__all__ = [
    "DEFAULT_DEPTH",
    "Ranked",
    "constraint_scores",
    "rank",
    "rank_matrix",
    "rank_one",
    "series_mask",
]

NEG = -np.inf
DEFAULT_DEPTH = 200  # a non-hybrid source's rank-score depth for constraints (FusionConfig.depth)


@dataclass
class Ranked:
    """One reader's ranking: catalog item indices best first, and their final scores.

    Attributes:
        ctx: the reader.
        items: catalog item indices, best first.
        scores: the scores they were ranked by (same order).
        per_source: the hybrid's component score rows for this reader, kept so the evidence
            step does not score twice (``None`` for a single source).
    """

    ctx: UserContext
    items: np.ndarray
    scores: np.ndarray
    per_source: Mapping[str, np.ndarray] | None = field(default=None, repr=False)

    def book_ids(self, lib: Library) -> list[str]:
        """The ranked book ids, best first.

        Args:
            lib: the catalog the item indices refer to.

        Returns:
            Book ids.
        """
        return [lib.books[i].book_id for i in self.items]

    def candidates(
        self, source: CandidateSource, ctx: UserContext | None = None
    ) -> list[Candidate]:
        """The evidence step: ``Candidate`` (book, score, found-by sources, evidence) per item.

        Args:
            source: the source that ranked (its ``found_by`` and ``evidence_for`` are used).
            ctx: the reader to explain for (default: the ranked one).

        Returns:
            One candidate per ranked item, best first.
        """
        ctx = ctx or self.ctx
        items = [int(i) for i in self.items]
        found = source.found_by(ctx, items, self.per_source)
        evidence = source.evidence_for(ctx, items, found=found)
        lib = source.lib
        return [
            Candidate(lib.books[i].book_id, float(s), "+".join(f), e)
            for i, s, f, e in zip(items, self.scores, found, evidence)
        ]


def series_mask(lib: Library, ctxs: Sequence[UserContext]) -> np.ndarray:
    """Readers x items: True where a book would skip ahead in a series for that reader."""
    sidx = lib.series_index
    mask = np.zeros((len(ctxs), lib.n_items), dtype=bool)
    if not sidx.info:
        return mask
    base, key_of, codes = _series_arrays(lib)
    for i, c in enumerate(ctxs):
        read = [r.book_id for r in c.history]
        touched = {sidx.keys[b] for b in read if b in sidx.keys}
        if not touched:
            mask[i] = base
            continue
        # blocked_for(read) = the default blocks of untouched series | blocked() over the
        # touched series' members: the same set, without rebuilding the untouched part per call
        row = base & ~np.isin(key_of, [codes[k] for k in touched])
        members = [b for k in touched for b in sidx.members[k]]
        row[[lib.index[b] for b in sidx.blocked(members, read) if b in lib.index]] = True
        for key in disliked_series(sidx, c.history):  # never the sequel of a series rated badly
            row[[lib.index[b] for b in sidx.members[key] if b in lib.index and b not in read]] = (
                True
            )
        mask[i] = row
    return mask


# A series whose volumes the reader rated this low on average (of 5) is not continued.
DISLIKED_SERIES_MEAN = 2.0


def disliked_series(sidx: Any, history: Sequence[Any]) -> set[str]:
    """Keys of the series whose read volumes the reader rated ``<= DISLIKED_SERIES_MEAN`` on
    average (step 3: "Twilight" rated 2 stars, so no "New Moon")."""
    by_key: dict[str, list[float]] = {}
    for r in history:
        key = sidx.keys.get(r.book_id)
        if key is not None and r.rating >= 1:  # 0 = an implicit read (Book-Crossing): no verdict
            by_key.setdefault(key, []).append(float(r.rating))
    return {k for k, rs in by_key.items() if sum(rs) / len(rs) <= DISLIKED_SERIES_MEAN}


def _series_arrays(lib: Library) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(default-blocked mask, series code per item (-1: none), code of each series key) of
    ``lib``, computed once per Library."""
    cached = lib.__dict__.get("_series_arrays")
    if cached is None:
        sidx = lib.series_index
        base = np.zeros(lib.n_items, dtype=bool)
        base[[lib.index[b] for b in sidx.default_blocked() if b in lib.index]] = True
        codes = {k: i for i, k in enumerate(sorted(set(sidx.keys.values())))}
        key_of = np.array([codes.get(sidx.keys.get(b.book_id), -1) for b in lib.books], np.int64)
        cached = lib.__dict__["_series_arrays"] = (base, key_of, codes)
    return cached


def constraint_scores(
    lib: Library,
    S: np.ndarray,
    rankable: np.ndarray,
    constraints: Constraints,
    depth: int = DEFAULT_DEPTH,
) -> np.ndarray:
    """Rank scores under ``constraints`` (step 4 of the module docstring), readers x items."""
    facets = lib.__dict__.get("_book_facets")
    if facets is None:  # built once per library: tag sets, tag masks, years
        facets = lib.__dict__["_book_facets"] = BookFacets(lib.books)
    allow = constraints.allow_mask(facets)
    boost = constraints.boost_vector(facets)
    out = np.full(S.shape, NEG)
    if S.shape[1] == 0:
        return out
    idx, valid = top_k_matrix(S, ~rankable, S.shape[1])
    for r in range(S.shape[0]):
        order = idx[r][valid[r]]
        out[r, order] = 1.0 / (depth + 1.0 + np.arange(len(order)))
    out = np.where(allow[None, :], out * boost[None, :], NEG)
    return out


def rank_matrix(
    lib: Library,
    S: np.ndarray,
    ctxs: Sequence[UserContext],
    k: int,
    constraints: Constraints | None = None,
    series_order: bool = True,
    depth: int = DEFAULT_DEPTH,
    relevance: Sequence | None = None,
    pool: int = 0,
    words: Sequence | None = None,
    word_boost: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 2-6 of the module docstring on a score matrix (readers x items) for ``ctxs``.

    Args:
        lib: the catalog.
        S: the score matrix, readers x items (``nan`` counts as ``-inf``).
        ctxs: the readers of the rows.
        k: how many books per reader.
        constraints: chat constraints (``None``: none).
        series_order: never skip ahead in a series.
        depth: the rank-score depth for constraints (the hybrid's ``depth``).
        relevance: per reader, the request-only relevance of every book, or None (step 5).
        pool: how many of the most relevant books rank first (step 5; 0 = off).
        words: per reader, how many of the request's own words each book carries, or None.
        word_boost: rank-score factor per such word within the pool (1 = off).

    Returns:
        ``(idx, valid, final)``: the top ``k`` item indices per row, best first; which of them
        are real (rows with fewer rankable books end early); the scores they were ranked by.
    """
    S = np.where(np.isnan(S), NEG, np.asarray(S, dtype=np.float64))
    blocked = exclude_mask(lib, ctxs)
    if series_order:
        blocked |= series_mask(lib, ctxs)
    ranked = constraints is not None and not constraints.is_empty()
    if ranked:
        S = constraint_scores(lib, S, ~blocked & np.isfinite(S), constraints, depth)
    if relevance is not None and pool > 0:
        S = pool_first(S, relevance, blocked, pool, words, word_boost, depth, ranked)
    idx, valid = top_k_matrix(S, blocked, k)
    return idx, valid, S


def pool_first(
    S: np.ndarray,
    relevance: Sequence,
    blocked: np.ndarray,
    pool: int,
    words: Sequence | None = None,
    word_boost: float = 1.0,
    depth: int = DEFAULT_DEPTH,
    ranked: bool = False,
) -> np.ndarray:
    """Step 5: per row with a relevance vector, its ``pool`` most relevant rankable books
    first, every other finite score shifted below them (order kept).

    Without ``words`` the pool keeps the order of ``S``; with them, each pool book's rank score
    is multiplied by ``word_boost ** words``, the arithmetic of a named tag's boost in step 4.
    ``ranked``: ``S`` already holds step 4's rank scores (named tags' boosts included), which
    are kept and multiplied; else the rank score is ``1 / (depth + 1 + rank in S)``. Keeping
    them matters: ranking the pool by position alone let one described word outweigh two named
    tags ("a funny fantasy with dragons" showed no funny book, The Girl with the Dragon Tattoo
    at #4)."""
    S = S.copy()
    for r, rel in enumerate(relevance):
        if rel is None:
            continue
        fin = np.isfinite(S[r]) & ~blocked[r]
        if not fin.any():
            continue
        chosen = top_mask(np.where(fin, rel, NEG), pool)
        row = S[r]
        span = float(row[fin].max() - row[fin].min()) + 1.0
        w = words[r] if words is not None else None
        if w is not None and word_boost != 1.0 and np.any(w[chosen] > 0):
            top = float(row[fin].max())
            members = np.flatnonzero(chosen & np.isfinite(row))
            members = members[np.argsort(-row[members], kind="stable")]
            base = row[members] if ranked else 1.0 / (depth + 1.0 + np.arange(len(members)))
            score = base * word_boost ** w[members]
            row = row.copy()
            row[members] = top + 1.0 + score  # still above every shifted non-pool book
        S[r] = np.where(chosen | ~np.isfinite(row), row, S[r] - span)
    return S


def _scores(source: CandidateSource, ctxs: Sequence[UserContext]):
    """The source's score matrix and, for a hybrid, its per-source matrices (reused later)."""
    if hasattr(source, "source_scores") and hasattr(source, "fuse"):
        per = source.source_scores(ctxs)
        return source.fuse(per, ctxs), per
    return source.score_batch(ctxs), None


def rank(
    source: CandidateSource,
    ctxs: Sequence[UserContext],
    k: int,
    constraints: Constraints | None = None,
    series_order: bool = True,
    scores: np.ndarray | None = None,
) -> list[Ranked]:
    """Rank the catalog for many readers with ``source`` (batched; ``scores`` = precomputed).

    Args:
        source: any candidate source (the hybrid or a single one).
        ctxs: the readers.
        k: how many books per reader.
        constraints: chat constraints applied to every reader (None: none).
        series_order: apply the series reading order (the product always does).
        scores: the source's score matrix for ``ctxs`` when the caller already has it.

    Returns:
        One :class:`Ranked` per reader, in order.
    """
    if not ctxs:
        return []
    per = None
    S = scores if scores is not None else None
    if S is None:
        S, per = _scores(source, ctxs)
    depth = int(getattr(source, "depth", DEFAULT_DEPTH))
    pool = int(getattr(source, "request_pool", 0))
    relevance = words = None
    if pool > 0:  # a hybrid: a topical request's relevance per reader (None without one)
        relevance = [source.request_relevance(c) for c in ctxs]  # type: ignore[attr-defined]
        words = [source.request_words(c) for c in ctxs]  # type: ignore[attr-defined]
    idx, valid, final = rank_matrix(
        source.lib,
        S,
        ctxs,
        k,
        constraints,
        series_order,
        depth,
        relevance,
        pool,
        words,
        float(getattr(source, "request_word_boost", 1.0)),
    )
    out = []
    for r, c in enumerate(ctxs):
        items = idx[r][valid[r]].astype(np.int64)
        rows = {n: m[r] for n, m in per.items()} if per is not None else None
        out.append(Ranked(c, items, final[r, items], rows))
    return out


def rank_one(
    source: CandidateSource,
    ctx: UserContext,
    k: int,
    constraints: Constraints | None = None,
    series_order: bool = True,
) -> Ranked:
    """:func:`rank` for one reader (the live path): the same arithmetic, a batch of one.

    Args:
        source: any candidate source.
        ctx: the reader.
        k: how many books.
        constraints: chat constraints (``None``: none).
        series_order: apply the series reading order.

    Returns:
        The reader's :class:`Ranked`.
    """
    return rank(source, [ctx], k, constraints, series_order)[0]


def ranked_ids(lib: Library, ranked: Sequence[Ranked]) -> dict[Any, list[str]]:
    """``{user_id: [book ids]}`` of :func:`rank` output (eval's rankings format).

    Args:
        lib: the catalog.
        ranked: :func:`rank` output.

    Returns:
        User id -> ranked book ids.
    """
    return {r.ctx.user_id: r.book_ids(lib) for r in ranked}
