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
from .config import CFConfig, FusionConfig, ProfileConfig
from .library import Library
from .profiles import profile_from_history
from .series import next_in_series, series_filter, series_key
from .types import Candidate, Evidence, UserContext

NEG = -np.inf


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` best finite scores, best first; ties go to the lower index."""
    s = scores.astype(np.float64, copy=True)
    if exclude is not None and len(exclude):
        s[exclude] = NEG
    s[~np.isfinite(s)] = NEG
    valid = int(np.isfinite(s).sum())
    k = min(k, valid)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
    # lexsort: primary = -score, secondary = index (deterministic tie-break)
    order = np.lexsort((part, -s[part]))
    return part[order][:k]


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
    """

    name = "cf"

    def __init__(self, lib: Library, model: str = "auto", params: Mapping | None = None,
                 max_ease_items: int = 15000, confidence: str = "liked", fitted=None, name: str | None = None) -> None:
        super().__init__(lib)
        from .cf import confidence_from_ratings, make_model

        if name:
            self.name = name
        self._conf = lambda r: confidence_from_ratings(r, mode=confidence)
        self.active = np.flatnonzero(lib.pop_count > 0)
        n_active = len(self.active)
        if model == "auto":
            model = "ease" if n_active <= max_ease_items else "als"
        self.model_name = model
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

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        out = np.full((len(ctxs), self.lib.n_items), NEG)
        if not len(self.active) or not ctxs:
            return out
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
        s = np.full(self.lib.n_items, NEG)
        rated = {r.book_id: r.rating for r in ctx.history}
        for _series, book in self._next(ctx).items():
            key = series_key(book.series or "")
            vols = [r for b, r in rated.items() if self.lib.by_id.get(b) and
                    series_key(self.lib.by_id[b].series or "") == key]
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


class HybridSource(CandidateSource):
    """Weighted reciprocal-rank fusion of other sources: ``sum_s w_s / (rrf_k + rank_s)``.

    Reads each source's top ``depth``; a source with no opinion on a reader (a cold reader for CF,
    no profile for content) simply contributes nothing, which makes every source the fallback of
    the others. Candidates carry the names of all sources that found them and all their evidence.
    """

    name = "hybrid"

    def __init__(self, lib: Library, sources: Mapping[str, CandidateSource], weights: Mapping[str, float],
                 rrf_k: float = 60.0, depth: int = 200) -> None:
        super().__init__(lib)
        self.sources = {n: s for n, s in sources.items() if weights.get(n, 0) > 0}
        self.weights = dict(weights)
        self.rrf_k = rrf_k
        self.depth = depth

    def _fuse(self, per_source: Mapping[str, np.ndarray], exclude: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        fused = np.zeros(self.lib.n_items)
        found = np.zeros(self.lib.n_items, dtype=bool)
        ranks: dict[str, np.ndarray] = {}
        for name, s in per_source.items():
            idx = top_k(s, self.depth, exclude)
            ranks[name] = idx
            fused[idx] += self.weights[name] / (self.rrf_k + 1 + np.arange(len(idx)))
            found[idx] = True
        return np.where(found, fused, NEG), ranks

    def score(self, ctx: UserContext) -> np.ndarray:
        per = {n: s.score(ctx) for n, s in self.sources.items()}
        return self._fuse(per, self.exclude_idx(ctx))[0]

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        per = {n: s.score_batch(ctxs) for n, s in self.sources.items()}
        return np.vstack([self._fuse({n: m[i] for n, m in per.items()}, self.exclude_idx(c))[0]
                          for i, c in enumerate(ctxs)]) if ctxs else np.zeros((0, self.lib.n_items))

    def candidates(self, ctx: UserContext, k: int, allow: Callable | None = None,
                   boost: Callable | None = None) -> list[Candidate]:
        """Fused top ``k``; ``allow(book) -> bool`` filters and ``boost(book) -> float`` reweights
        (chat constraints), applied before the cut so evidence is computed for the final list only."""
        excl = self.exclude_idx(ctx)
        per = {n: s.score(ctx) for n, s in self.sources.items()}
        fused, ranks = self._fuse(per, excl)
        finite = np.flatnonzero(np.isfinite(fused))
        # series order: never volume n+2 while n+1 is unread
        read = {r.book_id for r in ctx.history}
        drop = series_filter([self.lib.books[i].book_id for i in finite], read, self.lib.by_id,
                             index=self.lib.series_index)
        for b in drop:
            fused[self.lib.index[b]] = NEG
        if allow is not None or boost is not None:
            for i in finite:
                book = self.lib.books[i]
                if allow is not None and not allow(book):
                    fused[i] = NEG
                elif boost is not None and np.isfinite(fused[i]):
                    fused[i] *= boost(book)
        idx = top_k(fused, k, excl)
        liked = ev.liked_items(self.lib, ctx.history)
        rank_sets = {n: set(r.tolist()) for n, r in ranks.items()}
        content = self.sources.get("content")
        qvec = content.query_vector(ctx.query) if isinstance(content, ContentSource) else None
        out = []
        for i in idx:
            srcs = [n for n in ranks if int(i) in rank_sets[n]]
            # evidence is computed once per book (not once per source that found it)
            evidence = ev.collect(self.lib, int(i), ctx.history, ctx.query, qvec, ctx.to_read, liked)
            series = self.sources.get("series")
            if "series" in srcs and isinstance(series, SeriesSource):
                evidence = series.series_evidence(ctx, int(i)) + evidence
            out.append(Candidate(self.lib.books[i].book_id, float(fused[i]), "+".join(srcs), evidence))
        return out


def build_sources(lib: Library, fusion: FusionConfig | None = None, cf: CFConfig | None = None,
                  profile: ProfileConfig | None = None, embed_query=None, store=None,
                  cf_model=None) -> dict[str, CandidateSource]:
    """The standard set: content, cf, popularity, series and the hybrid fusing them."""
    fusion = fusion or FusionConfig()
    cf = cf or CFConfig()
    srcs: dict[str, CandidateSource] = {
        "content": ContentSource(lib, profile, embed_query, store),
        "cf": CFSource(lib, cf.model, cf.params, cf.max_ease_items, fitted=cf_model),
        "popularity": PopularitySource(lib),
        "series": SeriesSource(lib),
    }
    srcs["hybrid"] = HybridSource(lib, {n: s for n, s in srcs.items()}, fusion.weights, fusion.rrf_k, fusion.depth)
    return srcs
