"""Candidate sources: content, collaborative filtering, popularity, series, and their hybrid.

Every source has the same two methods, so the pipeline and eval swap them freely:

- ``score(ctx) -> np.ndarray``: a score for every catalog item (``-inf`` = no opinion);
  used for full-catalog ranking in eval and for fusion.
- ``candidates(ctx, k) -> list[Candidate]``: the top ``k`` unread books with their evidence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from . import evidence as ev
from .config import (CFConfig, FusionConfig, PopularityConfig, ProfileConfig, RequestConfig,
                     SequenceConfig)
from .fusion import FUSION_METHODS, fuse_matrices, top_k_matrix
from .library import Library
from .profiles import profile_from_history
from .series import next_in_series, series_filter, series_key
from .types import Candidate, Evidence, UserContext

NEG = -np.inf


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` best finite scores, best first; ties go to the lower index (also at the cut-off)."""
    mask = None
    if exclude is not None and len(exclude):
        mask = np.zeros((1, len(scores)), dtype=bool)
        mask[0, exclude] = True
    idx, valid = top_k_matrix(np.asarray(scores)[None, :], mask, k)
    return idx[0][valid[0]].astype(np.int64)


class CandidateSource(ABC):
    """One way of finding books for a reader."""

    name: str = "source"

    def __init__(self, lib: Library) -> None:
        self.lib = lib

    @abstractmethod
    def score(self, ctx: UserContext) -> np.ndarray:
        """Scores for every item in ``self.lib.books`` (``-inf``: this source has no opinion)."""

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        """Scores for many readers (rows); sources with a vectorised path override this."""
        return np.vstack([self.score(c) for c in ctxs]) if ctxs else np.zeros((0, self.lib.n_items))

    def exclude_idx(self, ctx: UserContext) -> np.ndarray:
        ids = {r.book_id for r in ctx.history} | set(ctx.exclude)
        return np.array([self.lib.index[b] for b in ids if b in self.lib.index], dtype=np.int64)

    def candidates(self, ctx: UserContext, k: int) -> list[Candidate]:
        """Top ``k`` unread books with the evidence this source holds for them."""
        scores = self.score(ctx)
        idx = top_k(scores, k, self.exclude_idx(ctx))
        liked = ev.liked_items(self.lib, ctx.history)
        return [Candidate(self.lib.books[i].book_id, float(scores[i]), self.name,
                          self.evidence(ctx, int(i), liked)) for i in idx]

    def evidence(self, ctx: UserContext, item: int, liked) -> list[Evidence]:
        return ev.collect(self.lib, item, ctx.history, ctx.query, None, ctx.to_read, liked)


class PopularitySource(CandidateSource):
    """Most-rated books, with a small bonus for a high mean rating (damped toward the global mean)."""

    name = "popularity"

    def __init__(self, lib: Library, damping: float = 20.0) -> None:
        super().__init__(lib)
        n = lib.pop_count.astype(np.float64)
        mean = np.nan_to_num(lib.pop_mean, nan=0.0)
        glob = float(np.nansum(mean * n) / max(n.sum(), 1))
        bayes = (mean * n + glob * damping) / (n + damping)
        # log-count dominates; the damped mean only reorders books of similar popularity
        self._scores = np.where(n > 0, np.log1p(n) + 0.5 * (bayes - glob), NEG)

    def score(self, ctx: UserContext) -> np.ndarray:
        return self._scores.copy()

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        return np.tile(self._scores, (len(ctxs), 1))

    def evidence(self, ctx, item, liked):
        e = ev.popular(self.lib, item)
        return [e] if e else []


class ContentSource(CandidateSource):
    """Embedding similarity between the reader's profile (and/or query) and each book.

    ``score`` is exact over the whole catalog (numpy); ``candidates`` asks the Chroma index when
    one is attached (the live path), else uses ``score``.
    """

    name = "content"

    def __init__(self, lib: Library, profile_cfg: ProfileConfig | None = None,
                 embed_query: Callable[[str], np.ndarray] | None = None, store=None,
                 query_weight: float = 0.6) -> None:
        super().__init__(lib)
        self.profile_cfg = profile_cfg or ProfileConfig()
        self.embed_query = embed_query
        self.store = store
        self.query_weight = query_weight
        self._qcache: dict[str, np.ndarray] = {}

    def query_vector(self, query: str | None) -> np.ndarray | None:
        if not query or self.embed_query is None:
            return None
        if query not in self._qcache:
            self._qcache[query] = self.embed_query(query)
        return self._qcache[query]

    def user_vector(self, ctx: UserContext) -> np.ndarray | None:
        prof = profile_from_history(ctx.history, None, self.profile_cfg, self.lib.has_timestamps,
                                    matrix=self.lib.vectors, index=self.lib.index)
        u = prof.vector if prof is not None and prof.norm > 0 else None
        q = self.query_vector(ctx.query)
        if u is not None and q is not None:
            v = (1 - self.query_weight) * u + self.query_weight * q
            return v / max(np.linalg.norm(v), 1e-9)
        return u if u is not None else q

    def score(self, ctx: UserContext) -> np.ndarray:
        v = self.user_vector(ctx)
        if v is None:
            return np.full(self.lib.n_items, NEG)
        return self.lib.vectors @ v

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        V = [self.user_vector(c) for c in ctxs]
        dim = self.lib.vectors.shape[1]
        M = np.vstack([v if v is not None else np.zeros(dim, np.float32) for v in V]) if V else np.zeros((0, dim))
        S = M @ self.lib.vectors.T
        for i, v in enumerate(V):
            if v is None:
                S[i] = NEG
        return S

    def candidates(self, ctx: UserContext, k: int) -> list[Candidate]:
        if self.store is None:
            return super().candidates(ctx, k)
        v = self.user_vector(ctx)
        if v is None:
            return []
        excl = {r.book_id for r in ctx.history} | set(ctx.exclude)
        hits = self.store.query("books", v, k + len(excl))
        liked = ev.liked_items(self.lib, ctx.history)
        out = []
        for bid, sim in hits:
            if bid in excl or bid not in self.lib.index:
                continue
            out.append(Candidate(bid, sim, self.name, self.evidence(ctx, self.lib.index[bid], liked)))
            if len(out) == k:
                break
        return out

    def evidence(self, ctx, item, liked):
        return ev.collect(self.lib, item, ctx.history, ctx.query, self.query_vector(ctx.query), ctx.to_read, liked)


class CFSource(CandidateSource):
    """A collaborative-filtering model (EASE, ALS, item-kNN, BPR) over the rated part of the catalog.

    Only books with ratings enter the model (goodbooks: 1,188 of 10,000), which keeps EASE's dense
    inverse small; books without ratings get ``-inf`` (content still reaches them).

    The reader's fold-in row (their "user vector" for the fitted model) can weigh recent and
    liked books more: an event of age ``a`` (books back from the newest, 0 = the last one) and
    rating ``r`` (1-5) weighs ``0.5 ** (a / half_life_events)`` times

    * EASE and item-kNN (score ``x_u @ W``): ``1 + liked_boost * (r - 3)`` for ``r >= 3``, else 1;
    * ALS (exact least-squares fold-in): the model's own rating confidence;
    * BPR: nothing (its fold-in averages item factors of a binarised row).

    ``half_life_events=None`` and ``liked_boost=0`` score the plain confidence row. On goodbooks
    the weighted row lifts EASE's ndcg@10 by 13.6% for the same fitted model (see
    ``eval/results/goodbooks-partial``): what a reader read last says most about what comes next.
    """

    name = "cf"

    def __init__(self, lib: Library, model: str = "auto", params: Mapping | None = None,
                 max_ease_items: int = 15000, confidence: str = "liked", fitted=None, name: str | None = None,
                 half_life_events: float | None = None, liked_boost: float = 0.0) -> None:
        super().__init__(lib)
        from .cf import confidence_from_ratings, make_model

        if name:
            self.name = name
        if half_life_events is not None and not half_life_events > 0:
            raise ValueError(f"CFSource: half_life_events must be > 0 or None, got {half_life_events}")
        self._conf = lambda r: confidence_from_ratings(r, mode=confidence)
        self.active = np.flatnonzero(lib.pop_count > 0)
        n_active = len(self.active)
        if model == "auto":
            # beyond EASE's dense inverse, item-kNN: on Book-Crossing (36k books) it beat ALS untuned and tuned
            model = "ease" if n_active <= max_ease_items else "itemknn"
        self.model_name = model
        self.half_life_events = half_life_events
        self.liked_boost = float(liked_boost)
        self._col = np.full(lib.n_items, -1, dtype=np.int64)
        self._col[self.active] = np.arange(n_active)
        if fitted is not None:
            self.model = fitted
        else:
            self.model = make_model(model, **dict(params or {}))
            if n_active and lib.R.shape[0]:
                X = lib.R[:, self.active].tocsr()
                X.data = self._conf(X.data).astype(np.float32)
                X.eliminate_zeros()
                self.model.fit(X)
        # the item-item matrix of linear models (x_u @ W), which the weighted row multiplies directly
        W = getattr(self.model, "weights", None) if model == "ease" else None
        self._W = W if W is not None else (getattr(self.model, "similarity", None) if model == "itemknn" else None)

    @property
    def weighted(self) -> bool:
        """Whether scoring uses the recency/rating-weighted row (else the plain confidence row)."""
        if self._W is not None:
            return self.half_life_events is not None or self.liked_boost != 0.0
        return self.model_name == "als" and self.half_life_events is not None

    def _rows(self, ctxs: Sequence[UserContext]):
        import scipy.sparse as sp

        rows, cols, vals = [], [], []
        for i, c in enumerate(ctxs):
            for r in c.history:
                j = self.lib.index.get(r.book_id, -1)
                if j >= 0 and self._col[j] >= 0:
                    rows.append(i)
                    cols.append(self._col[j])
                    vals.append(r.rating)
        w = self._conf(np.asarray(vals, dtype=np.float32)) if vals else np.zeros(0, np.float32)
        X = sp.csr_matrix((w, (rows, cols)), shape=(len(ctxs), len(self.active)), dtype=np.float32)
        X.sum_duplicates()
        X.eliminate_zeros()
        return X

    def _weighted_rows(self, ctxs: Sequence[UserContext]):
        hl, boost, linear = self.half_life_events, self.liked_boost, self._W is not None

        def weight(ratings: np.ndarray, ages: np.ndarray) -> np.ndarray:
            rec = 0.5 ** (ages / hl) if hl else np.ones_like(ages)
            if linear:
                return rec * np.where(ratings >= 3.0, 1.0 + boost * (ratings - 3.0), 1.0)
            return rec * self._conf(ratings.astype(np.float32)).astype(np.float64)

        X = self.lib.history_matrix([c.history for c in ctxs], weight)[:, self.active].tocsr()
        X.eliminate_zeros()
        return X

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        import scipy.sparse as sp

        out = np.full((len(ctxs), self.lib.n_items), NEG)
        if not len(self.active) or not ctxs:
            return out
        if self.weighted:
            X = self._weighted_rows(ctxs)
            S = X @ self._W if self._W is not None else self.model.score(X.astype(np.float32))
            S = np.asarray(S.todense() if sp.issparse(S) else S, dtype=np.float64)
        else:
            X = self._rows(ctxs)
            S = np.asarray(self.model.score(X), dtype=np.float64)
        has = np.diff(X.indptr) > 0
        out[np.ix_(has, self.active)] = S[has]
        return out

    def score(self, ctx: UserContext) -> np.ndarray:
        return self.score_batch([ctx])[0]

    @property
    def fitted(self) -> bool:
        return bool(len(self.active)) and self.lib.R.shape[0] > 0

    def save(self, path: Path) -> None:
        """Save the fitted model; a catalog without ratings has none to save."""
        if self.fitted:
            self.model.save(path)


class SequenceSource(CandidateSource):
    """Sequential rules: books that readers rated soon *after* the reader's latest books.

    From the library's reading order, ``T[a, b] = sum_{d <= window} 1/d`` over readers who rated
    ``b`` ``d`` events after ``a``; each row is divided by its total ``** norm`` (``norm=1``
    makes a row a transition distribution, ``0`` keeps raw counts). A reader's scores are
    ``sum_j 0.5 ** (age_j / half_life) T[j, :]`` over their ``last`` books (age 0 = the
    newest). Readers whose recent books have no successor get no opinion (``-inf``).

    Only meaningful when the ratings carry an order (timestamps or a chronological file);
    :func:`build_sources` leaves it out otherwise.
    """

    name = "sequence"

    def __init__(self, lib: Library, window: int = 3, norm: float = 1.0, last: int = 5,
                 half_life: float = 1.0) -> None:
        import scipy.sparse as sp

        super().__init__(lib)
        if window < 1 or last < 1 or not half_life > 0:
            raise ValueError(f"SequenceSource: need window >= 1, last >= 1, half_life > 0; got "
                             f"{window}, {last}, {half_life}")
        self.window, self.norm, self.last, self.half_life = int(window), float(norm), int(last), float(half_life)
        r = lib.ratings
        n = lib.n_items
        if not len(r):
            self.T = sp.csr_matrix((n, n), dtype=np.float32)
            return
        items = r["book_id"].map(lib.index).to_numpy(dtype=np.int64)
        users = r["user_id"].to_numpy()
        order = np.lexsort((np.arange(len(r)), r["ts"].to_numpy(dtype=np.float64), users))
        items, users = items[order], users[order]
        rows, cols, vals = [], [], []
        for d in range(1, self.window + 1):
            same = users[d:] == users[:-d]
            rows.append(items[:-d][same])
            cols.append(items[d:][same])
            vals.append(np.full(int(same.sum()), 1.0 / d))
        T = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        T.sum_duplicates()
        out_mass = np.asarray(T.sum(axis=1)).ravel()
        T = sp.diags(1.0 / np.maximum(out_mass, 1.0) ** self.norm) @ T
        self.T = T.tocsr().astype(np.float32)

    def _rows(self, ctxs: Sequence[UserContext]):
        def weight(ratings: np.ndarray, ages: np.ndarray) -> np.ndarray:
            return np.where(ages < self.last, 0.5 ** (ages / self.half_life), 0.0)

        m = self.lib.history_matrix([c.history for c in ctxs], weight)
        m.eliminate_zeros()
        return m

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        if not ctxs:
            return np.zeros((0, self.lib.n_items))
        S = np.asarray((self._rows(ctxs) @ self.T).todense(), dtype=np.float64)
        S[~(S > 0).any(axis=1)] = NEG  # no successor for any recent book: no opinion
        return S

    def score(self, ctx: UserContext) -> np.ndarray:
        return self.score_batch([ctx])[0]


class SeriesSource(CandidateSource):
    """The next unread volume of each series the reader liked."""

    name = "series"

    def __init__(self, lib: Library, liked_threshold: float = 3.5) -> None:
        super().__init__(lib)
        self.liked_threshold = liked_threshold

    def _next(self, ctx: UserContext):
        rated = {r.book_id: r.rating for r in ctx.history}
        return next_in_series(rated, self.lib.by_id, self.liked_threshold, index=self.lib.series_index)

    def score(self, ctx: UserContext) -> np.ndarray:
        """The next volumes get the reader's mean rating of their series; everything else ``-inf``."""
        s = np.full(self.lib.n_items, NEG)
        rated = {r.book_id: r.rating for r in ctx.history}
        keys = self.lib.series_index.keys
        for _series, book in self._next(ctx).items():
            key = keys[book.book_id]
            vols = [r for b, r in rated.items() if keys.get(b) == key]
            s[self.lib.index[book.book_id]] = float(np.mean(vols)) if vols else 0.0
        return s

    def evidence(self, ctx, item, liked):
        return self.series_evidence(ctx, item) + ev.collect(self.lib, item, ctx.history, None, None, ctx.to_read, liked)

    def series_evidence(self, ctx: UserContext, item: int) -> list[Evidence]:
        """"Next in a series you read": the volume and the previous one the reader rated."""
        book = self.lib.books[item]
        rated = {r.book_id: r.rating for r in ctx.history}
        key = series_key(book.series or "")
        prev = [b for b in rated if self.lib.by_id.get(b) and series_key(self.lib.by_id[b].series or "") == key
                and (self.lib.by_id[b].series_index or 0) < (book.series_index or 0)]
        prev.sort(key=lambda b: self.lib.by_id[b].series_index or 0)
        return [Evidence("series_next", series=book.series, value=book.series_index,
                         book_ids=(prev[-1],) if prev else ())]


class LexicalSource(CandidateSource):
    """BM25 over tags, authors, titles and descriptions for the request's words and named tags
    (see :mod:`retrieval.lexical`); no opinion without a request."""

    name = "lexical"

    def __init__(self, lib: Library) -> None:
        super().__init__(lib)
        self._index = None

    @property
    def index(self):
        if self._index is None:  # built on first use: most readers never send a request
            from .lexical import BM25Index

            self._index = BM25Index(self.lib.books)
        return self._index

    def score(self, ctx: UserContext) -> np.ndarray:
        if not ctx.query and not ctx.query_tags:
            return np.full(self.lib.n_items, NEG)
        from .lexical import lexical_scores

        return lexical_scores(self.index, self.lib, ctx)


class AnchorSource(CandidateSource):
    """Books like the request's anchors ("something like X"): X's embedding neighbours,
    co-readers and tags (see :mod:`retrieval.anchor`); no opinion without an anchor."""

    name = "anchor"

    def score(self, ctx: UserContext) -> np.ndarray:
        from .anchor import anchor_scores

        return anchor_scores(self.lib, ctx.anchors)

    def evidence(self, ctx, item, liked):
        from .anchor import anchor_evidence

        out = [anchor_evidence(self.lib, item, a) for a in ctx.anchors]
        return [e for e in out if e is not None] + super().evidence(ctx, item, liked)


class HybridSource(CandidateSource):
    """Weighted fusion of other sources (see :mod:`retrieval.fusion`).

    ``method="score"`` sums weighted per-reader z-scores; ``"rrf"`` sums ``w_s / (rrf_k +
    rank_s)`` over each source's top ``depth``. A source with no opinion on a reader (a cold
    reader for CF, no profile for content) contributes nothing, which makes every source the
    fallback of the others. A book is "found" by the sources that have it in their top ``depth``;
    candidates carry those sources' names and the evidence for the book.
    """

    name = "hybrid"

    def __init__(self, lib: Library, sources: Mapping[str, CandidateSource], weights: Mapping[str, float],
                 rrf_k: float = 60.0, depth: int = 200, method: str = "score") -> None:
        super().__init__(lib)
        if method not in FUSION_METHODS:
            raise ValueError(f"unknown fusion method {method!r}; use one of {', '.join(FUSION_METHODS)}")
        self.sources = {n: s for n, s in sources.items() if weights.get(n, 0) > 0}
        if not self.sources:
            raise ValueError("hybrid: no source has a positive fusion weight; give at least one a weight > 0")
        self.weights = {n: float(w) for n, w in weights.items()}
        self.rrf_k, self.depth, self.method = float(rrf_k), int(depth), method

    def exclude_mask(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        """Readers x items: True where the book is read (or excluded) and must not be ranked."""
        mask = np.zeros((len(ctxs), self.lib.n_items), dtype=bool)
        for i, c in enumerate(ctxs):
            mask[i, self.exclude_idx(c)] = True
        return mask

    def source_scores(self, ctxs: Sequence[UserContext]) -> dict[str, np.ndarray]:
        """Each weighted source's score matrix for ``ctxs``."""
        return {n: s.score_batch(ctxs) for n, s in self.sources.items()}

    def fuse(self, per_source: Mapping[str, np.ndarray], ctxs: Sequence[UserContext]) -> np.ndarray:
        """Fused scores from :meth:`source_scores` output (split out so eval can reuse the matrices)."""
        return fuse_matrices(per_source, self.weights, self.exclude_mask(ctxs), self.method, self.rrf_k, self.depth)

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        if not ctxs:
            return np.zeros((0, self.lib.n_items))
        return self.fuse(self.source_scores(ctxs), ctxs)

    def score(self, ctx: UserContext) -> np.ndarray:
        return self.score_batch([ctx])[0]

    def found_by(self, ctx: UserContext, per_source: Mapping[str, np.ndarray] | None = None) -> dict[str, set[int]]:
        """Per source, the items in its top ``depth`` for this reader."""
        excl = self.exclude_idx(ctx)
        per = per_source if per_source is not None else {n: s.score(ctx) for n, s in self.sources.items()}
        return {n: set(top_k(per[n], self.depth, excl).tolist()) for n in self.sources}

    def evidence(self, ctx: UserContext, item: int, liked) -> list[Evidence]:
        return self.evidence_for(ctx, [item], liked)[0]

    def evidence_for(self, ctx: UserContext, items: Sequence[int], liked=None,
                     found: Mapping[str, set[int]] | None = None) -> list[list[Evidence]]:
        """Evidence for each of ``items``: what the data says about the book and this reader
        (computed once per book), plus "next in a series you read" when the series source found it."""
        found = found if found is not None else self.found_by(ctx)
        liked = liked if liked is not None else ev.liked_items(self.lib, ctx.history)
        content = self.sources.get("content")
        qvec = content.query_vector(ctx.query) if isinstance(content, ContentSource) else None
        series = self.sources.get("series")
        out = []
        for i in items:
            evidence = ev.collect(self.lib, int(i), ctx.history, ctx.query, qvec, ctx.to_read, liked)
            if isinstance(series, SeriesSource) and int(i) in found.get("series", ()):
                evidence = series.series_evidence(ctx, int(i)) + evidence
            if ctx.anchors:
                from .anchor import anchor_evidence

                like = [anchor_evidence(self.lib, int(i), a) for a in ctx.anchors]
                evidence = [e for e in like if e is not None] + evidence
            out.append(evidence)
        return out

    def candidates(self, ctx: UserContext, k: int, allow: Callable | None = None,
                   boost: Callable | None = None) -> list[Candidate]:
        """Fused top ``k``; ``allow(book) -> bool`` filters and ``boost(book) -> float`` reweights
        (chat constraints), applied before the cut so evidence is computed for the final list only."""
        excl = self.exclude_idx(ctx)
        per = {n: s.score(ctx) for n, s in self.sources.items()}
        fused = self.fuse({n: m[None, :] for n, m in per.items()}, [ctx])[0]
        finite = np.flatnonzero(np.isfinite(fused))
        # series order: never volume n+2 while n+1 is unread
        read = {r.book_id for r in ctx.history}
        drop = series_filter([self.lib.books[i].book_id for i in finite], read, self.lib.by_id,
                             index=self.lib.series_index)
        for b in drop:
            fused[self.lib.index[b]] = NEG
        if boost is not None:
            # Boosts are multiplicative preferences ("shorter", "more horror"); z-scores can be
            # negative, so they act on a positive rank score 1 / (depth + rank) instead: a 1.5x
            # preference lifts a book about depth / 2 places, so "more horror" reaches horror
            # books well below the reader's top few dozen while taste still orders them.
            order = top_k(fused, len(fused))
            fused = np.full(len(fused), NEG)
            fused[order] = 1.0 / (self.depth + 1.0 + np.arange(len(order)))
        if allow is not None or boost is not None:
            for i in np.flatnonzero(np.isfinite(fused)):
                book = self.lib.books[i]
                if allow is not None and not allow(book):
                    fused[i] = NEG
                elif boost is not None:
                    fused[i] *= boost(book)
        idx = top_k(fused, k, excl)
        found = self.found_by(ctx, per)
        evidence = self.evidence_for(ctx, idx, found=found)
        return [Candidate(self.lib.books[i].book_id, float(fused[i]),
                          "+".join(n for n in found if int(i) in found[n]), e) for i, e in zip(idx, evidence)]


def build_sources(lib: Library, fusion: FusionConfig | None = None, cf: CFConfig | None = None,
                  profile: ProfileConfig | None = None, embed_query=None, store=None,
                  cf_model=None, sequence: SequenceConfig | None = None,
                  popularity: PopularityConfig | None = None,
                  request: RequestConfig | None = None) -> dict[str, CandidateSource]:
    """The standard set: content, cf, popularity, series, sequence and the hybrid fusing them.

    The sequence source needs an order of events (timestamps or a chronological file): without
    one (``lib.ordered`` False) it is left out and its fusion weight has nothing to act on.
    """
    fusion = fusion or FusionConfig()
    cf = cf or CFConfig()
    sequence = sequence or SequenceConfig()
    srcs: dict[str, CandidateSource] = {
        "content": ContentSource(lib, profile, embed_query, store),
        "cf": CFSource(lib, cf.model, cf.params, cf.max_ease_items, fitted=cf_model,
                       half_life_events=(cf.half_life_events or None) if lib.ordered else None, liked_boost=cf.liked_boost),
        "popularity": PopularitySource(lib, (popularity or PopularityConfig()).damping),
        "series": SeriesSource(lib),
        "lexical": LexicalSource(lib),
        "anchor": AnchorSource(lib),
    }
    if lib.ordered and fusion.weights.get("sequence", 0) > 0:
        srcs["sequence"] = SequenceSource(lib, sequence.window, sequence.norm, sequence.last, sequence.half_life)
    request = request or RequestConfig()
    weights = dict(fusion.weights)
    weights.setdefault("lexical", request.lexical_weight)
    weights.setdefault("anchor", request.anchor_weight)
    srcs["hybrid"] = HybridSource(lib, {n: s for n, s in srcs.items()}, weights, fusion.rrf_k, fusion.depth,
                                  fusion.method)
    return srcs
