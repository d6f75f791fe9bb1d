"""The models under evaluation, each a :class:`~retrieval.sources.CandidateSource` over a training Library.

Names (exactly these, they key ``metrics.json``): ``popularity``, ``itemknn``, ``als``, ``bpr``,
``ease``, ``content`` (single-source models), ``hybrid`` (our fusion) and ``hybrid+llm`` (the
hybrid reranked by the LLM; built by :mod:`eval.runner`, not here).

Every model has a small documented hyper-parameter grid (:data:`GRIDS`, :data:`QUICK_GRIDS`)
searched on a validation split by :mod:`eval.tuning`. The hybrid is built from the tuned
single-source settings plus its own fusion parameters (:func:`build_hybrid`).

Three sources here are not (yet) in :mod:`retrieval.sources` and are candidates to move there:

* :class:`SequenceSource` - "readers who rated A soon rated B next" (sequential rules over the
  training order), scored from the reader's last few books;
* :class:`RecencyCFSource` - a CF model whose fold-in row weights each history event by recency
  and rating, i.e. a better user vector for the same fitted model;
* :class:`ScoreFusionSource` - weighted sum of per-reader z-normalised scores, an alternative to
  the reciprocal-rank fusion of :class:`~retrieval.sources.HybridSource`.

:class:`FastSeriesSource` is :class:`~retrieval.sources.SeriesSource` with its series index built
once instead of once per reader (same scores, ~100x faster over 40k readers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from retrieval.config import ProfileConfig
from retrieval.library import Library
from retrieval.series import SeriesIndex
from retrieval.sources import (
    NEG,
    CandidateSource,
    CFSource,
    ContentSource,
    HybridSource,
    PopularitySource,
    SeriesSource,
    top_k,
)
from retrieval.types import Evidence, UserContext

__all__ = [
    "ALL_MODELS",
    "CF_MODELS",
    "GRIDS",
    "HYBRID_SOURCES",
    "QUICK_GRIDS",
    "SINGLE_MODELS",
    "FastSeriesSource",
    "RecencyCFSource",
    "ScoreFusionSource",
    "SequenceSource",
    "build_hybrid",
    "build_model",
    "combine",
    "fuse_matrices",
    "hybrid_evidence",
    "source_contribution",
    "top_k_matrix",
]

SINGLE_MODELS = ("popularity", "itemknn", "als", "bpr", "ease", "content")
CF_MODELS = ("itemknn", "als", "bpr", "ease")
ALL_MODELS = (*SINGLE_MODELS, "hybrid", "hybrid+llm")
HYBRID_SOURCES = ("cf", "content", "popularity", "series", "sequence")

# Hyper-parameter grids, searched exhaustively on the validation split (best ndcg@10).
# Ranges follow each model's usual good region; EASE's l2 and ALS's ridge scale with the number
# of readers, hence the wide spans. Each grid was widened until the goodbooks optimum was not
# on its edge (a peer tuned at the edge of its grid is not fairly tuned).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{"damping": d} for d in (5.0, 20.0, 100.0)],
    "itemknn": [{"k": k, "shrink": s} for k in (20, 50, 200) for s in (0.0, 10.0)],
    "ease": [{"l2": l2} for l2 in (10.0, 30.0, 100.0, 300.0, 1000.0)],
    "als": [{"factors": f, "regularization": r, "alpha": 10.0, "iterations": 15}
            for f in (64, 128) for r in (50.0, 200.0, 800.0)],
    "bpr": [{"factors": f, "learning_rate": lr, "regularization": 0.01, "iterations": 100}
            for f in (128, 256, 512) for lr in (0.1, 0.2)],
    "content": [{"half_life_events": h, "pivot": p} for h in (1.0, 2.0, 5.0, 20.0) for p in (2.5, 3.5)],
}
# --quick: two or three points per model, so the whole study runs in a couple of minutes.
QUICK_GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{"damping": 20.0}],
    "itemknn": [{"k": 100, "shrink": s} for s in (0.0, 10.0)],
    "ease": [{"l2": l2} for l2 in (30.0, 300.0)],
    "als": [{"factors": 32, "regularization": r, "alpha": 10.0, "iterations": 8} for r in (10.0, 50.0)],
    "bpr": [{"factors": 32, "learning_rate": 0.05, "regularization": 0.01, "iterations": 30}],
    "content": [{"half_life_events": h, "pivot": 2.5} for h in (5.0, 40.0)],
}


# --------------------------------------------------------------------------- single sources


class FastSeriesSource(SeriesSource):
    """:class:`SeriesSource` with the catalog's series index built once (identical scores)."""

    def __init__(self, lib: Library, liked_threshold: float = 3.5) -> None:
        super().__init__(lib, liked_threshold)
        self.index = SeriesIndex.build(lib.by_id)
        # series name of each indexed book, so score() need not scan the catalog
        self._series_of = {b: lib.by_id[b].series for b in self.index.info}

    def _next(self, ctx: UserContext):
        rated = {r.book_id: r.rating for r in ctx.history}
        return self.index.next_volumes(rated, self.lib.by_id, self.liked_threshold)

    def score(self, ctx: UserContext) -> np.ndarray:
        s = np.full(self.lib.n_items, NEG)
        rated = {r.book_id: r.rating for r in ctx.history}
        for series, book in self._next(ctx).items():
            vols = [r for b, r in rated.items() if self._series_of.get(b) == series]
            s[self.lib.index[book.book_id]] = float(np.mean(vols)) if vols else 0.0
        return s


def _history_rows(lib: Library, ctxs: Sequence[UserContext], weight) -> sp.csr_matrix:
    """Readers x catalog matrix with ``weight(ratings, ages) -> weights`` per reader's history.

    ``ages`` counts events back from the newest (0 = the last book rated); unknown books are skipped.
    """
    rows, cols, vals = [], [], []
    for i, c in enumerate(ctxs):
        idx = [lib.index[r.book_id] for r in c.history if r.book_id in lib.index]
        if not idx:
            continue
        ratings = np.array([r.rating for r in c.history if r.book_id in lib.index], dtype=np.float64)
        ages = np.arange(len(idx) - 1, -1, -1, dtype=np.float64)  # history is oldest first
        rows.append(np.full(len(idx), i))
        cols.append(np.asarray(idx))
        vals.append(weight(ratings, ages))
    if not rows:
        return sp.csr_matrix((len(ctxs), lib.n_items))
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(ctxs), lib.n_items))
    m.sum_duplicates()
    return m


class SequenceSource(CandidateSource):
    """Sequential rules: books that readers rated soon *after* the reader's latest books.

    From the training order, ``T[a, b] = sum_{d <= window} 1/d`` over readers who rated ``b``
    ``d`` events after ``a``; each row is divided by its total ``** norm`` (``norm=1`` makes a row
    a transition distribution, ``0`` keeps raw counts). A reader's scores are ``sum_j 0.5 ** (age_j / half_life) T[j, :]``
    over their ``last`` books (age 0 = the newest). Readers whose recent books have no
    successor get no opinion (``-inf``). Ordered data only: with a random split the training
    order carries no time, and the source says nothing useful.
    """

    name = "sequence"

    def __init__(self, lib: Library, window: int = 3, norm: float = 1.0, last: int = 5,
                 half_life: float = 1.0) -> None:
        super().__init__(lib)
        if window < 1 or last < 1 or not half_life > 0:
            raise ValueError(f"SequenceSource: need window >= 1, last >= 1, half_life > 0; got "
                             f"{window}, {last}, {half_life}")
        self.window, self.norm, self.last, self.half_life = int(window), float(norm), int(last), float(half_life)
        r = lib.ratings
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
        n = lib.n_items
        T = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        T.sum_duplicates()
        out_mass = np.asarray(T.sum(axis=1)).ravel()
        T = sp.diags(1.0 / np.maximum(out_mass, 1.0) ** self.norm) @ T
        self.T = T.tocsr().astype(np.float32)

    def _rows(self, ctxs: Sequence[UserContext]) -> sp.csr_matrix:
        def weight(ratings: np.ndarray, ages: np.ndarray) -> np.ndarray:
            return np.where(ages < self.last, 0.5 ** (ages / self.half_life), 0.0)

        m = _history_rows(self.lib, ctxs, weight)
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


class RecencyCFSource(CFSource):
    """A CF model scored from a recency- and rating-weighted history row (a better user vector).

    The model is fitted exactly as :class:`CFSource` fits it; only the reader's fold-in row
    changes. A history event of age ``a`` (events back from the newest, 0 = the last book)
    and rating ``r`` (1-5 scale) weighs ``0.5 ** (a / half_life)`` times:

    * EASE and item-kNN (score ``x_u @ W``, fitted on binary rows): ``1 + liked_boost * (r - 3)``
      for ``r >= 3``, else 1;
    * ALS (exact least-squares fold-in): the model's own rating confidence (``liked`` mode);
      ``liked_boost`` is not used;
    * BPR: nothing (its fold-in averages item factors of a binarised row), so it scores as
      :class:`CFSource`.

    ``half_life=None`` and ``liked_boost=0`` give exactly :class:`CFSource`'s scores.
    """

    def __init__(self, lib: Library, model: str, params: Mapping | None = None,
                 half_life: float | None = None, liked_boost: float = 0.0, **kw: Any) -> None:
        super().__init__(lib, model, params, **kw)
        self.half_life = half_life
        self.liked_boost = float(liked_boost)
        weights = getattr(self.model, "weights", None) if model == "ease" else None
        sim = getattr(self.model, "similarity", None) if model == "itemknn" else None
        self._W = weights if weights is not None else sim

    @property
    def weighted(self) -> bool:
        """Whether scoring uses the weighted row (else it is plain CFSource scoring)."""
        if self._W is not None:
            return self.half_life is not None or self.liked_boost != 0.0
        return self.model_name == "als" and self.half_life is not None

    def _weighted_rows(self, ctxs: Sequence[UserContext]) -> sp.csr_matrix:
        hl, boost, linear = self.half_life, self.liked_boost, self._W is not None

        def weight(ratings: np.ndarray, ages: np.ndarray) -> np.ndarray:
            rec = 0.5 ** (ages / hl) if hl else np.ones_like(ages)
            if linear:
                return rec * np.where(ratings >= 3.0, 1.0 + boost * (ratings - 3.0), 1.0)
            return rec * self._conf(ratings.astype(np.float32)).astype(np.float64)

        m = _history_rows(self.lib, ctxs, weight)
        return m[:, self.active].tocsr()

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        if not self.weighted:
            return super().score_batch(ctxs)
        out = np.full((len(ctxs), self.lib.n_items), NEG)
        if not len(self.active) or not ctxs:
            return out
        X = self._weighted_rows(ctxs)
        X.eliminate_zeros()
        S = X @ self._W if self._W is not None else self.model.score(X.astype(np.float32))
        S = np.asarray(S.todense() if sp.issparse(S) else S, dtype=np.float64)
        has = np.diff(X.indptr) > 0
        out[np.ix_(has, self.active)] = S[has]
        return out


# --------------------------------------------------------------------------- fusion


def _normalise(S: np.ndarray, exclude: np.ndarray, indicator: bool) -> np.ndarray:
    """Per-row z-scores over rankable items; unrankable items get the row's minimum, empty rows 0.

    ``exclude`` is a boolean mask (readers x items) of books never to rank (already read).
    With ``indicator`` the source's finite scores become 1 and the rest 0 (the series source
    names a handful of next volumes; its raw value is not a scale).
    """
    finite = np.isfinite(S) & ~exclude
    if indicator:
        return finite.astype(np.float64)
    n = finite.sum(axis=1, keepdims=True)
    X = np.where(finite, S, 0.0)
    mean = X.sum(axis=1, keepdims=True) / np.maximum(n, 1)
    var = (np.where(finite, (X - mean) ** 2, 0.0)).sum(axis=1, keepdims=True) / np.maximum(n, 1)
    sd = np.sqrt(var)
    Z = np.where(finite, (X - mean) / np.where(sd > 0, sd, 1.0), np.inf)
    low = Z.min(axis=1, keepdims=True)
    Z = np.where(finite, Z, np.where(np.isfinite(low), low, 0.0))
    Z[n[:, 0] == 0] = 0.0  # no opinion on this reader at all: contributes nothing
    return Z


def source_contribution(S: np.ndarray, exclude: np.ndarray, method: str = "score", rrf_k: float = 60.0,
                        depth: int = 200, indicator: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One source's unweighted share of the fused score, and where it has an opinion.

    ``method="score"``: per-reader z-scores (:func:`_normalise`). ``method="rrf"``:
    ``1 / (rrf_k + rank)`` over the source's top ``depth`` rankable items, 0 elsewhere (what
    :class:`~retrieval.sources.HybridSource` adds up). Returns ``(contribution, found)``.
    """
    ok = np.isfinite(S) & ~exclude
    if method == "score":
        return _normalise(S, exclude, indicator), ok
    if method != "rrf":
        raise ValueError(f"unknown fusion method {method!r}; use 'score' or 'rrf'")
    n_rows, n_items = S.shape
    contrib = np.zeros(S.shape)
    found = np.zeros(S.shape, dtype=bool)
    d = min(int(depth), n_items)
    if d == 0 or n_rows == 0:
        return contrib, found
    idx, valid = top_k_matrix(S, exclude, d)
    rows = np.repeat(np.arange(n_rows), idx.shape[1]).reshape(idx.shape)
    share = (1.0 / (rrf_k + 1.0 + np.arange(idx.shape[1])))[None, :] * valid
    contrib[rows[valid], idx[valid]] = share[valid]
    found[rows[valid], idx[valid]] = True
    return contrib, found


def combine(contributions: Mapping[str, tuple[np.ndarray, np.ndarray]], weights: Mapping[str, float],
            exclude: np.ndarray) -> np.ndarray:
    """Weighted sum of :func:`source_contribution` outputs; ``-inf`` where no weighted source has an opinion."""
    names = [n for n in contributions if weights.get(n, 0) > 0]
    if not names:
        raise ValueError("fusion: every fusion weight is 0; give at least one source a positive weight")
    fused = np.zeros(exclude.shape)
    found = np.zeros(exclude.shape, dtype=bool)
    for n in names:
        c, f = contributions[n]
        fused += weights[n] * c
        found |= f
    return np.where(found & ~exclude, fused, NEG)


def fuse_matrices(per_source: Mapping[str, np.ndarray], weights: Mapping[str, float], exclude: np.ndarray,
                  method: str = "score", rrf_k: float = 60.0, depth: int = 200,
                  indicator: Sequence[str] = ("series",)) -> np.ndarray:
    """Fuse per-source score matrices (readers x items) into one; ``-inf`` where no source has an opinion.

    ``method="score"``: ``sum_s w_s * z_s`` of per-reader z-normalised scores (see
    :func:`_normalise`). ``method="rrf"``: ``sum_s w_s / (rrf_k + rank_s)`` over each source's
    top ``depth`` (what :class:`~retrieval.sources.HybridSource` computes). Excluded items and
    items no weighted source can rank get ``-inf``.
    """
    contribs = {n: source_contribution(S, exclude, method, rrf_k, depth, n in indicator)
                for n, S in per_source.items() if weights.get(n, 0) > 0}
    return combine(contribs, weights, exclude)


def top_k_matrix(S: np.ndarray, exclude: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``k`` item indices, best first, with :func:`eval.metrics.rank_scores`' tie-break.

    Higher score first, then lower item index; ``nan``/``-inf`` and excluded items are not
    rankable. Returns ``(idx, valid)``, both ``(rows, min(k, items))``: ``valid`` is False in
    the tail of rows with fewer than ``k`` rankable items (their ``idx`` there is meaningless).
    """
    S = np.asarray(S, dtype=np.float64)
    X = np.where(np.isnan(S), -np.inf, S)
    if exclude is not None:
        X = np.where(exclude, -np.inf, X)
    n_rows, n_items = X.shape
    k = min(int(k), n_items)
    if k <= 0 or n_rows == 0:
        return np.zeros((n_rows, 0), np.int64), np.zeros((n_rows, 0), bool)
    kth = -np.partition(-X, k - 1, axis=1)[:, k - 1 : k]  # the k-th largest per row
    above = X > kth
    tied = X == kth
    need = k - above.sum(axis=1, keepdims=True)
    take = above | (tied & (np.cumsum(tied, axis=1) <= need))  # boundary ties: lowest indices
    idx = np.nonzero(take)[1].reshape(n_rows, k)
    vals = np.take_along_axis(X, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    valid = np.take_along_axis(vals, order, axis=1) > -np.inf
    return idx, valid


def _exclude_mask(lib: Library, ctxs: Sequence[UserContext]) -> np.ndarray:
    mask = np.zeros((len(ctxs), lib.n_items), dtype=bool)
    for i, c in enumerate(ctxs):
        ids = [lib.index[r.book_id] for r in c.history if r.book_id in lib.index]
        ids += [lib.index[b] for b in c.exclude if b in lib.index]
        mask[i, ids] = True
    return mask


class ScoreFusionSource(CandidateSource):
    """The hybrid: fused scores of several sources (z-score sum or weighted RRF, see :func:`fuse_matrices`).

    ``depth`` also decides which sources "found" a book (it is in their top ``depth``): their
    evidence is what explains it (:func:`hybrid_evidence`), as in HybridSource.candidates.
    """

    name = "hybrid"

    def __init__(self, lib: Library, sources: Mapping[str, CandidateSource], weights: Mapping[str, float],
                 method: str = "score", rrf_k: float = 60.0, depth: int = 200) -> None:
        super().__init__(lib)
        self.sources = {n: s for n, s in sources.items() if weights.get(n, 0) > 0}
        self.weights = {n: float(w) for n, w in weights.items()}
        self.method, self.rrf_k, self.depth = method, float(rrf_k), int(depth)

    def source_scores(self, ctxs: Sequence[UserContext]) -> dict[str, np.ndarray]:
        """Each weighted source's score matrix for ``ctxs``."""
        return {n: s.score_batch(ctxs) for n, s in self.sources.items()}

    def fuse(self, per_source: Mapping[str, np.ndarray], ctxs: Sequence[UserContext]) -> np.ndarray:
        return fuse_matrices(per_source, self.weights, _exclude_mask(self.lib, ctxs), self.method,
                             self.rrf_k, self.depth)

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        if not ctxs:
            return np.zeros((0, self.lib.n_items))
        return self.fuse(self.source_scores(ctxs), ctxs)

    def score(self, ctx: UserContext) -> np.ndarray:
        return self.score_batch([ctx])[0]

    def evidence(self, ctx: UserContext, item: int, liked) -> list[Evidence]:
        return hybrid_evidence(self, ctx, [item])[0]


def hybrid_evidence(hybrid: ScoreFusionSource | HybridSource, ctx: UserContext,
                    items: Sequence[int]) -> list[list[Evidence]]:
    """Evidence for each of ``items`` as the live hybrid builds it (HybridSource.candidates).

    A book's evidence is the deduplicated union of the evidence of every source that has it in
    its top ``depth`` for this reader.
    """
    from retrieval import evidence as ev

    lib = hybrid.lib
    excl = hybrid.exclude_idx(ctx)
    ranks = {n: set(top_k(s.score(ctx), hybrid.depth, excl).tolist()) for n, s in hybrid.sources.items()}
    liked = ev.liked_items(lib, ctx.history)
    out = []
    for i in items:
        found: list[Evidence] = []
        for n, s in hybrid.sources.items():
            if int(i) in ranks[n]:
                for e in s.evidence(ctx, int(i), liked):
                    if e not in found:
                        found.append(e)
        out.append(found)
    return out


# --------------------------------------------------------------------------- builders


def build_model(name: str, lib: Library, params: Mapping[str, Any], seed: int = 0) -> CandidateSource:
    """A single-source model ``name`` (one of :data:`SINGLE_MODELS`) fitted on ``lib``.

    ``params`` is one point of the model's grid; ALS and BPR also get ``seed``.
    """
    p = dict(params)
    if name == "popularity":
        src: CandidateSource = PopularitySource(lib, damping=float(p.get("damping", 20.0)))
    elif name == "content":
        cfg = ProfileConfig(half_life_events=float(p.get("half_life_events", 40.0)),
                            pivot=float(p.get("pivot", 2.5)))
        if "half_life_days" in p:
            cfg.half_life_days = float(p["half_life_days"])
        src = ContentSource(lib, cfg)
    elif name in CF_MODELS:
        if name in ("als", "bpr"):
            p.setdefault("seed", seed)
        src = CFSource(lib, name, p, max_ease_items=10**9, name=name)
    else:
        raise ValueError(f"build_model: unknown model {name!r}; choose one of {', '.join(SINGLE_MODELS)}")
    src.name = name
    return src


def hybrid_sources(lib: Library, params: Mapping[str, Any], tuned: Mapping[str, Mapping[str, Any]],
                   seed: int = 0, fitted: Mapping[str, CandidateSource] | None = None) -> dict[str, CandidateSource]:
    """The hybrid's component sources for hybrid ``params`` and the tuned single-model settings.

    ``params`` keys: ``cf_model`` (one of :data:`CF_MODELS`), ``cf_half_life``,
    ``cf_liked_boost`` (the CF user vector, see :class:`RecencyCFSource`), ``sequence``
    (kwargs of :class:`SequenceSource`, or None to leave it out). ``fitted`` may supply
    already-fitted single models (by model name) to reuse their CF fit.
    """
    cf_name = params["cf_model"]
    cf_params = dict(tuned.get(cf_name, {}))
    if cf_name in ("als", "bpr"):
        cf_params.setdefault("seed", seed)
    pre = (fitted or {}).get(cf_name)
    cf = RecencyCFSource(lib, cf_name, cf_params, half_life=params.get("cf_half_life"),
                         liked_boost=float(params.get("cf_liked_boost", 0.0)), max_ease_items=10**9,
                         fitted=getattr(pre, "model", None), name="cf")
    srcs: dict[str, CandidateSource] = {
        "cf": cf,
        "content": (fitted or {}).get("content") or build_model("content", lib, tuned.get("content", {}), seed),
        "popularity": (fitted or {}).get("popularity") or build_model("popularity", lib, tuned.get("popularity", {}), seed),
        "series": FastSeriesSource(lib),
    }
    if params.get("sequence"):
        srcs["sequence"] = SequenceSource(lib, **params["sequence"])
    for n, s in srcs.items():
        s.name = n
    return srcs


def build_hybrid(lib: Library, params: Mapping[str, Any], tuned: Mapping[str, Mapping[str, Any]],
                 seed: int = 0, fitted: Mapping[str, CandidateSource] | None = None) -> CandidateSource:
    """The hybrid for tuned ``params`` (see :func:`hybrid_sources` plus ``method``, ``rrf_k``, ``weights``).

    ``method="rrf"`` returns a plain :class:`~retrieval.sources.HybridSource` (the live
    fusion); ``"score"`` a :class:`ScoreFusionSource`.
    """
    srcs = hybrid_sources(lib, params, tuned, seed, fitted)
    weights = {n: float(w) for n, w in params["weights"].items() if n in srcs}
    if params.get("method", "score") == "rrf":
        h: CandidateSource = _RRFHybrid(lib, srcs, weights, float(params.get("rrf_k", 60.0)),
                                        int(params.get("depth", 200)))
    else:
        h = ScoreFusionSource(lib, srcs, weights, "score", float(params.get("rrf_k", 60.0)),
                              int(params.get("depth", 200)))
    h.name = "hybrid"
    return h


class _RRFHybrid(HybridSource):
    """HybridSource with a vectorised ``score_batch`` (same fused scores, one matrix per source)."""

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        if not ctxs:
            return np.zeros((0, self.lib.n_items))
        per = {n: s.score_batch(ctxs) for n, s in self.sources.items()}
        return fuse_matrices(per, self.weights, _exclude_mask(self.lib, ctxs), "rrf", self.rrf_k, self.depth)

    def source_scores(self, ctxs: Sequence[UserContext]) -> dict[str, np.ndarray]:
        return {n: s.score_batch(ctxs) for n, s in self.sources.items()}

    def fuse(self, per_source: Mapping[str, np.ndarray], ctxs: Sequence[UserContext]) -> np.ndarray:
        return fuse_matrices(per_source, self.weights, _exclude_mask(self.lib, ctxs), "rrf", self.rrf_k, self.depth)

