"""Candidate sources: content, collaborative filtering, popularity, series, sequence, their hybrid.

Every source scores the whole catalog for a reader, so the one rank path
(:mod:`retrieval.ranking`) and eval treat them alike:

- ``score(ctx)`` / ``score_batch(ctxs)``: a score for every catalog item (``-inf`` = no opinion);
- ``evidence_for(ctx, items)``: the facts behind recommending ``items`` (a separate step,
  run after ranking on the final list only);
- ``found_by(ctx, items)``: which sources "found" each item (one definition, used by
  ``recommend`` and ``explain`` alike).

Each source owns a config dataclass (``retrieval.config``: defaults in code, validated on
construction, overridable in the TOML); :mod:`retrieval.registry` lists the sources and builds
them for the product and for eval.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import evidence as ev
from .config import (
    CFConfig,
    FusionConfig,
    PopularityConfig,
    ProfileConfig,
    SequenceConfig,
    SeriesConfig,
)
from .fusion import fuse_matrices, top_k_matrix
from .library import Library
from .profiles import profile_from_history
from .series import next_in_series, series_key
from .types import Candidate, Evidence, UserContext

NEG = -np.inf


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` best finite scores, best first; ties go to the lower index.

    Ties are broken the same way at the cut-off, so two runs rank alike.

    Args:
        scores: one score per item (``-inf``/``nan`` are never returned).
        k: how many indices to return at most.
        exclude: item indices that must not be returned (rated, dismissed...).

    Returns:
        Up to ``k`` item indices (``int64``), best first.
    """
    mask = None
    if exclude is not None and len(exclude):
        mask = np.zeros((1, len(scores)), dtype=bool)
        mask[0, exclude] = True
    idx, valid = top_k_matrix(np.asarray(scores)[None, :], mask, k)
    return idx[0][valid[0]].astype(np.int64)


def exclude_idx(lib: Library, ctx: UserContext) -> np.ndarray:
    """Item indices a reader must never be offered: rated books and ``ctx.exclude`` (dismissed...).

    Args:
        lib: the catalog the indices refer to.
        ctx: the reader (history and explicit exclusions).

    Returns:
        The sorted item indices (``int64``); ids missing from ``lib`` are skipped.
    """
    ids = {r.book_id for r in ctx.history} | set(ctx.exclude)
    return np.array(sorted(lib.index[b] for b in ids if b in lib.index), dtype=np.int64)


def exclude_mask(lib: Library, ctxs: Sequence[UserContext]) -> np.ndarray:
    """Readers x items: True where the book is rated or excluded and must not be ranked.

    Args:
        lib: the catalog (columns).
        ctxs: the readers (rows).

    Returns:
        A boolean matrix of shape ``(len(ctxs), lib.n_items)``.
    """
    mask = np.zeros((len(ctxs), lib.n_items), dtype=bool)
    for i, c in enumerate(ctxs):
        mask[i, exclude_idx(lib, c)] = True
    return mask


def rank_within(
    scores: np.ndarray, excluded: np.ndarray, items: Sequence[int], depth: int
) -> np.ndarray:
    """Whether each of ``items`` is in the top ``depth`` of ``scores`` among non-excluded items.

    The order is :func:`top_k`'s (higher score first, then lower index); an item itself never
    counts as excluded, so the answer for a rated book (``explain``) is where it would rank.
    ``-inf``/``nan`` scores are never found.

    Args:
        scores: one score per catalog item.
        excluded: a boolean mask of items that do not count (rated, dismissed).
        items: the item indices to test.
        depth: the rank cut-off (``depth=200``: in the top 200).

    Returns:
        One boolean per entry of ``items``.
    """
    s = np.where(np.isnan(scores), NEG, np.asarray(scores, dtype=np.float64))
    ok = ~excluded & np.isfinite(s)
    out = np.zeros(len(items), dtype=bool)
    pos = np.arange(len(s))
    for n, i in enumerate(items):
        if not np.isfinite(s[i]):
            continue
        better = ok & ((s > s[i]) | ((s == s[i]) & (pos < i)))
        better[i] = False
        out[n] = int(better.sum()) < depth
    return out


class CandidateSource(ABC):
    """One way of finding books for a reader.

    Subclasses set ``name``; ``indicator = True`` says the source's finite scores are a short
    list (the hybrid counts them 1/0) rather than a scale.

    Args:
        lib: the catalog (books, ratings, vectors) the source scores.
    """

    name: str = "source"
    indicator: ClassVar[bool] = False
    config: Any = None

    def __init__(self, lib: Library) -> None:
        self.lib = lib

    @abstractmethod
    def score(self, ctx: UserContext) -> np.ndarray:
        """Scores for every item in ``self.lib.books`` (``-inf``: this source has no opinion).

        Args:
            ctx: the reader (history, request, exclusions).

        Returns:
            A float array of length ``lib.n_items``.
        """

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        """Scores for many readers (rows); sources with a vectorised path override this.

        Args:
            ctxs: the readers, one row each.

        Returns:
            A float matrix of shape ``(len(ctxs), lib.n_items)``.
        """
        return np.vstack([self.score(c) for c in ctxs]) if ctxs else np.zeros((0, self.lib.n_items))

    def exclude_idx(self, ctx: UserContext) -> np.ndarray:
        """The items this reader must never be offered (see :func:`exclude_idx`).

        Args:
            ctx: the reader.

        Returns:
            Sorted item indices.
        """
        return exclude_idx(self.lib, ctx)

    def exclude_mask(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        """Readers x items mask of what must not be ranked (see :func:`exclude_mask`).

        Args:
            ctxs: the readers (rows).

        Returns:
            A boolean matrix of shape ``(len(ctxs), lib.n_items)``.
        """
        return exclude_mask(self.lib, ctxs)

    def found_by(
        self,
        ctx: UserContext,
        items: Sequence[int],
        per_source: Mapping[str, np.ndarray] | None = None,
    ) -> list[list[str]]:
        """The sources that found each of ``items``: a single source found what it ranked.

        Args:
            ctx: the reader.
            items: item indices of the final list.
            per_source: score vectors per source name already computed for ``ctx`` (the hybrid
                reuses them instead of scoring again); ignored by a single source.

        Returns:
            One list of source names per item.
        """
        return [[self.name] for _ in items]

    def evidence_for(
        self,
        ctx: UserContext,
        items: Sequence[int],
        liked=None,
        found: Sequence[Sequence[str]] | None = None,
    ) -> list[list[Evidence]]:
        """Evidence for each of ``items`` (computed after ranking, for the final list only).

        Args:
            ctx: the reader.
            items: item indices of the final list.
            liked: the reader's liked items (:func:`retrieval.evidence.liked_items`); computed
                when ``None``.
            found: per item, the sources that found it (:meth:`found_by`); unused by a single
                source.

        Returns:
            One list of :class:`~retrieval.types.Evidence` per item.
        """
        liked = liked if liked is not None else ev.liked_items(self.lib, ctx.history)
        return [self.evidence(ctx, int(i), liked) for i in items]

    def evidence(self, ctx: UserContext, item: int, liked) -> list[Evidence]:
        """Evidence for one item: what the data says about the book and this reader.

        Args:
            ctx: the reader.
            item: the item index.
            liked: the reader's liked items (:func:`retrieval.evidence.liked_items`).

        Returns:
            The facts behind recommending the item (possibly empty).
        """
        return ev.collect(self.lib, item, ctx.history, ctx.query, None, ctx.to_read, liked)

    def candidates(self, ctx: UserContext, k: int, constraints=None) -> list[Candidate]:
        """Top ``k`` books for one reader through the one rank path, with evidence and sources.

        Args:
            ctx: the reader.
            k: how many books.
            constraints: a :class:`~retrieval.constraints.Constraints` filter/boost (``None``:
                none).

        Returns:
            Up to ``k`` candidates, best first.
        """
        from .ranking import rank_one

        return rank_one(self, ctx, k, constraints).candidates(self, ctx)


class PopularitySource(CandidateSource):
    """Most-rated books, with a small bonus for a high mean rating (damped toward the global mean).

    Args:
        lib: the catalog.
        damping: shorthand for ``PopularityConfig(damping=...)``: how many pseudo-ratings at the
            global mean pull a book's mean rating (ignored when ``config`` is given).
        config: the full config (``[popularity]``); wins over ``damping``.

    Raises:
        ValueError: the config is invalid.
    """

    name = "popularity"

    def __init__(
        self, lib: Library, damping: float | None = None, config: PopularityConfig | None = None
    ) -> None:
        super().__init__(lib)
        self.config = config or PopularityConfig(
            **({} if damping is None else {"damping": float(damping)})
        )
        self.config.validate("popularity")
        damping = self.config.damping
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

    Scores are exact over the whole catalog (numpy, the vectors are in memory), on the live path
    and in eval alike, so both rank the same. The Chroma ``store`` (given at construction; the
    live index's, ``None`` in eval) answers nearest-neighbour queries (:meth:`nearest`).

    Args:
        lib: the catalog, with book vectors.
        profile_cfg: how a history becomes a taste vector (``[profile]``; defaults when ``None``).
        embed_query: text -> unit vector, for chat requests; without it requests are ignored.
        store: the Chroma store for :meth:`nearest` (``None``: exact numpy).
        query_weight: the request's share when mixed with the profile (default:
            ``profile_cfg.query_weight``).

    Raises:
        ValueError: ``profile_cfg`` is invalid.
    """

    name = "content"

    def __init__(
        self,
        lib: Library,
        profile_cfg: ProfileConfig | None = None,
        embed_query: Callable[[str], np.ndarray] | None = None,
        store=None,
        query_weight: float | None = None,
    ) -> None:
        super().__init__(lib)
        self.profile_cfg = profile_cfg or ProfileConfig()
        self.profile_cfg.validate("profile")
        self.config = self.profile_cfg
        self.embed_query = embed_query
        self.store = store
        self.query_weight = (
            self.profile_cfg.query_weight if query_weight is None else float(query_weight)
        )
        self._qcache: dict[str, np.ndarray] = {}

    def query_vector(self, query: str | None) -> np.ndarray | None:
        """The embedded request, cached per text.

        Args:
            query: the reader's request text (``None``/empty: no request).

        Returns:
            The request's unit vector, or ``None`` without a request or an embedder.
        """
        if not query or self.embed_query is None:
            return None
        if query not in self._qcache:
            self._qcache[query] = self.embed_query(query)
        return self._qcache[query]

    def user_vector(self, ctx: UserContext) -> np.ndarray | None:
        """The reader's taste vector: their profile, mixed with the request when there is one.

        Args:
            ctx: the reader.

        Returns:
            A unit vector, or ``None`` when the reader has neither a profile nor a request.
        """
        prof = profile_from_history(
            ctx.history,
            None,
            self.profile_cfg,
            self.lib.has_timestamps,
            matrix=self.lib.vectors,
            index=self.lib.index,
        )
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
        M = (
            np.vstack([v if v is not None else np.zeros(dim, np.float32) for v in V])
            if V
            else np.zeros((0, dim))
        )
        S = M @ self.lib.vectors.T
        for i, v in enumerate(V):
            if v is None:
                S[i] = NEG
        return S

    def nearest(self, ctx: UserContext, n: int) -> list[tuple[str, float]]:
        """The ``n`` unread books nearest the reader's vector, asked of the Chroma store.

        Exact numpy when no store was given.

        Args:
            ctx: the reader.
            n: how many books.

        Returns:
            ``[(book_id, cosine)]``, best first (empty when the reader has no vector).
        """
        v = self.user_vector(ctx)
        if v is None:
            return []
        excl = {r.book_id for r in ctx.history} | set(ctx.exclude)
        if self.store is None:
            s = self.lib.vectors @ v
            return [
                (self.lib.books[i].book_id, float(s[i])) for i in top_k(s, n, self.exclude_idx(ctx))
            ]
        hits = self.store.query("books", v, n + len(excl))
        return [(b, sim) for b, sim in hits if b not in excl and b in self.lib.index][:n]

    def evidence(self, ctx, item, liked):
        return ev.collect(
            self.lib, item, ctx.history, ctx.query, self.query_vector(ctx.query), ctx.to_read, liked
        )


class CFSource(CandidateSource):
    """A collaborative-filtering model (EASE, ALS, item-kNN, BPR) over the rated part of the
    catalog.

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

    Args:
        lib: the catalog with its ratings matrix.
        model: ``"ease"``, ``"als"``, ``"itemknn"``, ``"bpr"``, ``"popularity"`` or ``"auto"``
            (EASE up to ``max_ease_items`` rated books and while it fits in memory, item-kNN
            up to ``max_itemknn_items``, ALS beyond: :func:`retrieval.cf.choose_cf_model`).
        params: the model's hyper-parameters (passed to :func:`retrieval.cf.make_model`).
        max_ease_items: the largest number of rated books ``"auto"`` gives to EASE.
        max_itemknn_items: the largest number of rated books ``"auto"`` gives to item-kNN.
        confidence: how ratings become confidences (see
            :func:`retrieval.cf.confidence_from_ratings`).
        fitted: an already fitted model (saved at ingest) to use instead of fitting one.
        name: the source's name (default ``"cf"``; eval names one source per model).
        half_life_events: the recency half-life of the fold-in row, in events (``None``: off).
        liked_boost: the extra weight per star above 3 in the fold-in row (EASE, item-kNN).
        config: the full config (``[cf]``); when given it replaces ``model``, ``params``,
            ``max_ease_items``, ``confidence``, ``half_life_events`` and ``liked_boost``.

    Raises:
        ValueError: the config is invalid (``"CFSource: ..."``).
    """

    name = "cf"

    def __init__(
        self,
        lib: Library,
        model: str = "auto",
        params: Mapping | None = None,
        max_ease_items: int = 15000,
        confidence: str = "liked",
        max_itemknn_items: int = 200_000,
        fitted=None,
        name: str | None = None,
        half_life_events: float | None = None,
        liked_boost: float = 0.0,
        config: CFConfig | None = None,
    ) -> None:
        super().__init__(lib)
        from .cf import confidence_from_ratings, make_model

        if name:
            self.name = name
        if config is None:
            config = CFConfig(
                model=model,
                max_ease_items=max_ease_items,
                max_itemknn_items=max_itemknn_items,
                params=dict(params or {}),
                half_life_events=half_life_events,
                liked_boost=float(liked_boost),
                confidence=confidence,
            )
        try:
            config.validate("cf")
        except ValueError as e:
            raise ValueError(f"CFSource: {e}") from None
        self.config = config
        model, params, max_ease_items = config.model, config.params, config.max_ease_items
        half_life_events = config.half_life_events or None  # 0 = off
        liked_boost, confidence = config.liked_boost, config.confidence
        self._conf = lambda r: confidence_from_ratings(r, mode=confidence)
        self.active = np.flatnonzero(lib.pop_count > 0)
        n_active = len(self.active)
        if model == "auto" and fitted is not None:
            model = fitted.name  # the choice made at ingest travels with the fitted model
            self.choice = f"{model}: fitted at ingest"
        elif model == "auto":
            # beyond EASE's dense inverse, item-kNN (on Book-Crossing, 36k books, it beat ALS
            # untuned and tuned); beyond item-kNN's quadratic fit, ALS. See choose_cf_model.
            from .cf import choose_cf_model

            model, self.choice = choose_cf_model(
                n_active,
                max_ease_items,
                config.max_itemknn_items,
                config.ease_memory_fraction,
            )
        else:
            self.choice = f"{model}: cf.model = {model!r} in the config"
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
        # the item-item matrix of linear models (x_u @ W), which the weighted row multiplies
        # directly
        W = getattr(self.model, "weights", None) if model == "ease" else None
        self._W = (
            W
            if W is not None
            else (getattr(self.model, "similarity", None) if model == "itemknn" else None)
        )
        if self._W is not None:
            # The weighted row is float64: held as float32, W was upcast (copied whole) on every
            # request (~0.5 s of CPU per reader at 7.4k books). A float64 copy made once gives
            # the same products bit for bit.
            self._W = self._W.astype(np.float64)

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
        """Save the fitted model; a catalog without ratings has none to save.

        Args:
            path: where the model goes (see :meth:`retrieval.cf.ItemScorer.save`).
        """
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

    Args:
        lib: the catalog with ordered ratings.
        window: how many events after ``a`` count as "after ``a``".
        norm: the row normalisation exponent (1: a distribution, 0: raw counts).
        last: how many of the reader's newest books vote.
        half_life: the age (in events) at which a book's vote halves.
        config: the full config (``[sequence]``); replaces the four values above.

    Raises:
        ValueError: the config is invalid (``"SequenceSource: ..."``).
    """

    name = "sequence"

    def __init__(
        self,
        lib: Library,
        window: int = 3,
        norm: float = 1.0,
        last: int = 5,
        half_life: float = 1.0,
        config: SequenceConfig | None = None,
    ) -> None:
        import scipy.sparse as sp

        super().__init__(lib)
        self.config = config or SequenceConfig(
            window=int(window), norm=float(norm), last=int(last), half_life=float(half_life)
        )
        try:
            self.config.validate("sequence")
        except ValueError as e:
            raise ValueError(f"SequenceSource: {e}") from None
        window, norm, last, half_life = (
            self.config.window,
            self.config.norm,
            self.config.last,
            self.config.half_life,
        )
        self.window, self.norm, self.last, self.half_life = (
            int(window),
            float(norm),
            int(last),
            float(half_life),
        )
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
        T = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        )
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
    """The next unread volume of each series the reader liked (an indicator: a short list).

    Args:
        lib: the catalog with series fields.
        liked_threshold: the lowest rating that counts as liking a volume (ignored when
            ``config`` is given).
        config: the full config (``[series]``).

    Raises:
        ValueError: the config is invalid.
    """

    name = "series"
    indicator = True

    def __init__(
        self, lib: Library, liked_threshold: float | None = None, config: SeriesConfig | None = None
    ) -> None:
        super().__init__(lib)
        self.config = config or SeriesConfig(
            **({} if liked_threshold is None else {"liked_threshold": float(liked_threshold)})
        )
        self.config.validate("series")
        self.liked_threshold = self.config.liked_threshold

    def _next(self, ctx: UserContext):
        rated = {r.book_id: r.rating for r in ctx.history}
        return next_in_series(
            rated, self.lib.by_id, self.liked_threshold, index=self.lib.series_index
        )

    def score(self, ctx: UserContext) -> np.ndarray:
        """The next volumes get the reader's mean rating of their series; everything else ``-inf``.

        Args:
            ctx: the reader.

        Returns:
            A float array of length ``lib.n_items``.
        """
        s = np.full(self.lib.n_items, NEG)
        rated = {r.book_id: r.rating for r in ctx.history}
        keys = self.lib.series_index.keys
        for _series, book in self._next(ctx).items():
            key = keys[book.book_id]
            vols = [r for b, r in rated.items() if keys.get(b) == key]
            s[self.lib.index[book.book_id]] = float(np.mean(vols)) if vols else 0.0
        return s

    def evidence(self, ctx, item, liked):
        return self.series_evidence(ctx, item) + ev.collect(
            self.lib, item, ctx.history, None, None, ctx.to_read, liked
        )

    def series_evidence(self, ctx: UserContext, item: int) -> list[Evidence]:
        """ "Next in a series you read": the volume and the previous one the reader rated.

        Args:
            ctx: the reader.
            item: the item index of the next volume.

        Returns:
            One ``series_next`` evidence.
        """
        book = self.lib.books[item]
        rated = {r.book_id: r.rating for r in ctx.history}
        key = series_key(book.series or "")
        prev = [
            b
            for b in rated
            if self.lib.by_id.get(b)
            and series_key(self.lib.by_id[b].series or "") == key
            and (self.lib.by_id[b].series_index or 0) < (book.series_index or 0)
        ]
        prev.sort(key=lambda b: self.lib.by_id[b].series_index or 0)
        return [
            Evidence(
                "series_next",
                series=book.series,
                value=book.series_index,
                book_ids=(prev[-1],) if prev else (),
            )
        ]


class LexicalSource(CandidateSource):
    """BM25 over tags, authors, titles and descriptions for the request's words and named tags
    (see :mod:`retrieval.lexical`); no opinion without a request.

    Args:
        lib: the catalog; the BM25 index is built from its books on first use.
    """

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
    co-readers and tags (see :mod:`retrieval.anchor`); no opinion without an anchor.

    Args:
        lib: the catalog (vectors, ratings, tags).
    """

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
    fallback of the others. Sources declare themselves indicators (``indicator = True``: their
    finite scores count 1/0). A book is "found" by the sources that rank it in their top
    ``depth`` (:meth:`found_by`); its evidence adds "next in a series" when the series source
    found it.

    Args:
        lib: the catalog.
        sources: the component sources by name; those without a positive weight are dropped.
        weights: the fusion weight of each source name (ignored when ``config`` is given).
        rrf_k: the RRF constant (``method="rrf"``).
        depth: the rank cut-off for RRF and for "found by".
        method: ``"score"`` (weighted z-scores) or ``"rrf"``.
        config: the full config (``[fusion]``); replaces ``method``, ``weights``, ``rrf_k``
            and ``depth``.

    Raises:
        ValueError: the config is invalid, or no source has a positive weight.
    """

    name = "hybrid"

    def __init__(
        self,
        lib: Library,
        sources: Mapping[str, CandidateSource],
        weights: Mapping[str, float],
        rrf_k: float = 60.0,
        depth: int = 200,
        method: str = "score",
        config: FusionConfig | None = None,
    ) -> None:
        super().__init__(lib)
        self.config = config or FusionConfig(
            method=method,
            weights={n: float(w) for n, w in weights.items()},
            rrf_k=float(rrf_k),
            depth=int(depth),
        )
        try:
            self.config.validate("fusion")
        except ValueError as e:
            raise ValueError(f"hybrid: {e}") from None
        weights = self.config.weights
        cold = self.config.slice_weights(True)
        # a source weighted in either slice is kept; each reader is fused with their slice's
        self.sources = {
            n: s for n, s in sources.items() if weights.get(n, 0) > 0 or cold.get(n, 0) > 0
        }
        if not self.sources or not any(weights.get(n, 0) > 0 for n in self.sources):
            raise ValueError(
                "hybrid: no source has a positive fusion weight; give at least one a weight > 0"
            )
        self.weights = {n: float(w) for n, w in weights.items()}
        self.cold_weights = (
            {n: float(w) for n, w in cold.items()} if self.config.cold_weights else None
        )
        self.rrf_k, self.depth, self.method = (
            self.config.rrf_k,
            self.config.depth,
            self.config.method,
        )
        self.indicators = tuple(n for n, s in self.sources.items() if s.indicator)

    def is_cold(self, ctx: UserContext) -> bool:
        """Whether ``ctx`` is fused with the cold slice's weights (``FusionConfig.is_cold``).

        The one rule, by history length, for the live path and eval alike.

        Args:
            ctx: the reader.

        Returns:
            True for a reader with fewer than ``cold_below`` history books when cold weights
            are set.
        """
        return self.cold_weights is not None and self.config.is_cold(len(ctx.history))

    def weights_for(self, ctx: UserContext) -> dict[str, float]:
        """The fusion weights of the reader's slice.

        Args:
            ctx: the reader.

        Returns:
            Source name -> weight.
        """
        cold = self.cold_weights if self.is_cold(ctx) else None
        return dict(cold if cold is not None else self.weights)

    def source_scores(self, ctxs: Sequence[UserContext]) -> dict[str, np.ndarray]:
        """The score matrix of each source weighted for some reader of ``ctxs``.

        A source weighted only in the other slice is not asked (a warm reader's request never
        pays for a cold-only source).

        Args:
            ctxs: the readers (rows).

        Returns:
            Source name -> ``(len(ctxs), n_items)`` score matrix.
        """
        slices = {self.is_cold(c) for c in ctxs}
        sets = [self.cold_weights if c and self.cold_weights else self.weights for c in slices]
        return {
            n: s.score_batch(ctxs)
            for n, s in self.sources.items()
            if any(w.get(n, 0) > 0 for w in sets)
        }

    def fuse(
        self,
        per_source: Mapping[str, np.ndarray],
        ctxs: Sequence[UserContext],
        weights: Mapping[str, float] | None = None,
        cold_weights: Mapping[str, float] | None = None,
    ) -> np.ndarray:
        """Fused scores from :meth:`source_scores` output, each reader with their slice's weights.

        Split out so eval can reuse the matrices for ablations with other ``weights``. Fusion is
        per reader (per-row z-scores or ranks), so fusing the cold rows apart is the same
        arithmetic as fusing one reader alone (live = eval).

        Args:
            per_source: source name -> score matrix, as :meth:`source_scores` returns.
            ctxs: the readers of the rows (for the exclusion mask and the slice).
            weights: fusion weights to use instead of the configured ones; for every reader
                unless ``cold_weights`` is given too.
            cold_weights: the cold slice's weights to use instead (with ``weights``; ``None``
                and no ``weights``: the configured ones).

        Returns:
            The fused ``(len(ctxs), n_items)`` score matrix.
        """
        if weights is None:
            warm, cold = self.weights, self.cold_weights
        else:
            warm, cold = weights, cold_weights
        exclude = self.exclude_mask(ctxs)

        def fused(rows, w):
            return fuse_matrices(
                {n: np.asarray(S)[rows] for n, S in per_source.items()},
                w,
                exclude[rows],
                self.method,
                self.rrf_k,
                self.depth,
                indicator=self.indicators,
            )

        is_cold = np.array([cold is not None and self.is_cold(c) for c in ctxs], dtype=bool)
        if not is_cold.any():
            return fused(slice(None), warm)
        out = np.full(exclude.shape, -np.inf)
        out[is_cold] = fused(is_cold, cold)
        if (~is_cold).any():
            out[~is_cold] = fused(~is_cold, warm)
        return out

    # A topical request is answered from the books most relevant to it (RequestConfig.pool;
    # applied by the rank path, retrieval.ranking, step 5).
    request_pool: int = 0
    # Within that pool, a book carrying a word of the request that is not a named tag
    # ("dragons" in "a fantasy with dragons") gets this rank-score factor per word
    # (the square root of RequestConfig.tag_boost: a described word counts less than a named
    # tag). 1 = off.
    request_word_boost: float = 1.0

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        if not ctxs:
            return np.zeros((0, self.lib.n_items))
        return self.fuse(self.source_scores(ctxs), ctxs)

    def request_relevance(self, ctx: UserContext) -> np.ndarray | None:
        """How relevant each book is to the request alone (no history).

        Args:
            ctx: the reader's context; only its ``query`` (and ``query_tags``) count.

        Returns:
            Reciprocal-rank fusion of the request's embedding cosine and its BM25 words, per
            catalog book; None without a topical query.
        """
        if not ctx.query:
            return None
        rows = []
        content = self.sources.get("content")
        if isinstance(content, ContentSource):
            q = content.query_vector(ctx.query)
            if q is not None:
                rows.append(self.lib.vectors @ q)
        lexical = self.sources.get("lexical")
        if isinstance(lexical, LexicalSource):
            rows.append(lexical.score(ctx))
        rows = [r for r in rows if np.isfinite(r).any()]
        if not rows:
            return None
        rel = np.zeros(self.lib.n_items)
        for row in rows:
            order = np.argsort(-np.where(np.isfinite(row), row, NEG), kind="stable")
            ranks = np.empty(len(order))
            ranks[order] = np.arange(len(order))
            rel += np.where(np.isfinite(row), 1.0 / (60.0 + ranks), 0.0)
        return rel

    def request_words(self, ctx: UserContext) -> np.ndarray | None:
        """How many of the request's own words (not the tags it named) each book carries.

        Args:
            ctx: the reader's context; its ``query`` minus the words of its ``query_tags``.

        Returns:
            Per catalog book, the number of those words in its tags, authors, title or
            description (BM25 index tokens, so "dragons" matches "dragon"); None when the
            request has no such word or the hybrid has no lexical source.
        """
        lexical = self.sources.get("lexical")
        if not ctx.query or not isinstance(lexical, LexicalSource):
            return None
        from .lexical import tokenize

        named = {t for tag in ctx.query_tags for t in tokenize(tag.replace("-", " "))}
        words = [w for w in dict.fromkeys(tokenize(ctx.query)) if w not in named]
        index = lexical.index
        cols = [index.vocab[w] for w in words if w in index.vocab]
        if not cols:
            return None
        return np.asarray((index.weights[:, cols] > 0).sum(axis=1)).ravel().astype(np.float64)

    def score(self, ctx: UserContext) -> np.ndarray:
        return self.score_batch([ctx])[0]

    def found_by(
        self,
        ctx: UserContext,
        items: Sequence[int],
        per_source: Mapping[str, np.ndarray] | None = None,
    ) -> list[list[str]]:
        """Per item, the component sources that rank it within their top ``depth`` for this reader.

        Among books not excluded (see :func:`rank_within`). The one definition of "found by".

        Args:
            ctx: the reader.
            items: item indices of the final list.
            per_source: each source's score vector for ``ctx`` if already computed (else scored
                here).

        Returns:
            One list of source names per item, in the hybrid's source order.
        """
        excl = np.zeros(self.lib.n_items, dtype=bool)
        excl[self.exclude_idx(ctx)] = True
        # only the sources weighted for this reader's slice can have found a book for them
        weights = self.weights_for(ctx)
        names = [n for n in self.sources if weights.get(n, 0) > 0]
        per = (
            per_source if per_source is not None else {n: self.sources[n].score(ctx) for n in names}
        )
        hit = {n: rank_within(np.asarray(per[n]).ravel(), excl, items, self.depth) for n in names}
        return [[n for n in names if hit[n][j]] for j in range(len(items))]

    def evidence_for(
        self,
        ctx: UserContext,
        items: Sequence[int],
        liked=None,
        found: Sequence[Sequence[str]] | None = None,
    ) -> list[list[Evidence]]:
        """Evidence for each of ``items``: what the data says about the book and this reader.

        Computed once per book, plus "next in a series you read" when the series source found it,
        anchor similarity when the request names anchors, and each found source's own facts.

        Args:
            ctx: the reader.
            items: item indices of the final list.
            liked: the reader's liked items; computed when ``None``.
            found: per item, the sources that found it; computed with :meth:`found_by` when
                ``None``.

        Returns:
            One list of :class:`~retrieval.types.Evidence` per item.
        """
        found = found if found is not None else self.found_by(ctx, items)
        liked = liked if liked is not None else ev.liked_items(self.lib, ctx.history)
        content = self.sources.get("content")
        qvec = content.query_vector(ctx.query) if isinstance(content, ContentSource) else None
        series = self.sources.get("series")
        out = []
        for i, f in zip(items, found):
            evidence = ev.collect(
                self.lib, int(i), ctx.history, ctx.query, qvec, ctx.to_read, liked
            )
            if isinstance(series, SeriesSource) and "series" in f:
                evidence = series.series_evidence(ctx, int(i)) + evidence
            if ctx.anchors:
                from .anchor import anchor_evidence

                like = [anchor_evidence(self.lib, int(i), a) for a in ctx.anchors]
                evidence = [e for e in like if e is not None] + evidence
            for n, src in self.sources.items():  # source-specific facts (readers like you, ...)
                own = getattr(src, "source_evidence", None)
                if own is not None and n != "series" and n in f:
                    evidence = own(ctx, int(i)) + evidence
            out.append(evidence)
        return out


def top_mask(scores: np.ndarray, n: int) -> np.ndarray:
    """True for the ``n`` highest finite scores (all finite ones when there are fewer)."""
    finite = np.isfinite(scores)
    mask = np.zeros(len(scores), dtype=bool)
    if finite.sum() <= n:
        return finite
    idx = np.argpartition(-np.where(finite, scores, NEG), n - 1)[:n]
    mask[idx] = True
    return mask & finite


def build_sources(lib: Library, settings=None, **kwargs) -> dict[str, CandidateSource]:
    """The standard set of sources and the hybrid: see :func:`retrieval.registry.build_sources`.

    Args:
        lib: the catalog.
        settings: the :class:`~retrieval.config.Settings` (defaults when ``None``).
        **kwargs: passed on (``embed_query``, ``store``, ``fitted``, ``seed``...).

    Returns:
        Source name -> source, including ``"hybrid"``.
    """
    from .registry import build_sources as build

    return build(lib, settings, **kwargs)
