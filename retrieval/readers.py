"""Readers like you: user-based collaborative filtering, two ways.

* :class:`ReadersSource` finds the reader's nearest neighbours by *taste vector* (the
  sentence-transformer profile that ingest writes to the Chroma ``users`` collection, see
  :mod:`retrieval.profiles`) and scores books by what those neighbours rated. The live path asks
  Chroma (``store``); batch work (eval) uses the exact numpy equivalent over the same vectors.
* :class:`UserKNNSource` is the textbook method on the ratings alone: adjusted cosine over
  mean-centred rating rows, shrunk by the number of co-rated books (Herlocker et al. 1999;
  Sarwar et al. 2001), the peer ``userknn`` in ``readnext eval``.

Both turn a neighbourhood into book scores the same way (:func:`neighbourhood_scores`):
``support + centred_weight * centred``, where ``support`` is the share of the neighbourhood's
similarity mass that rated the book and ``centred`` is the similarity-weighted mean of those
neighbours' ratings minus each neighbour's own mean, shrunk toward 0 by ``shrinkage``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from .config import ProfileConfig, ReadersConfig
from .library import LIKED, Library
from .profiles import build_profiles, profile_from_history
from .sources import CandidateSource
from .types import Evidence, UserContext

NEG = -np.inf
EVIDENCE_MIN = 3  # fewer neighbours than this rating a book is anecdote, not evidence
_CACHE_K = 200  # neighbours kept per reader in the batch cache (the largest tuned neighbourhood)
# candidates beyond k that both neighbour paths rank by the exact float64 cosine before keeping k
# (float32 scores of the batch matmul and Chroma's distances differ by ~1e-7)
SLACK = 10

__all__ = [
    "ReaderIndex",
    "ReadersSource",
    "UserKNNSource",
    "cosines",
    "neighbourhood_scores",
    "reader_index",
]


def _ctx_key(ctx: UserContext) -> tuple | None:
    if ctx.user_id is None:
        return None
    return (ctx.user_id, len(ctx.history), tuple((r.book_id, r.rating) for r in ctx.history[-3:]))


class _Ratings:
    """The Library's ratings as binary and mean-centred sparse matrices (shared by both sources)."""

    def __init__(self, lib: Library) -> None:
        R = lib.R.tocsr()
        self.B = R.copy()
        self.B.data = np.ones_like(self.B.data)
        counts = np.maximum(np.diff(R.indptr), 1)
        self.mean = np.asarray(R.sum(axis=1)).ravel() / counts
        self.C = R.copy()
        self.C.data = self.C.data - np.repeat(self.mean, np.diff(R.indptr))
        self.C.data[self.C.data == 0] = (
            1e-9  # keep the pattern: a rating equal to the mean is still a rating
        )


def cosines(V: np.ndarray, N: np.ndarray, block: int = 64) -> np.ndarray:
    """Cosines of query rows ``V`` (n, d) with their neighbours' vectors ``N`` (n, k, d), in
    float64.

    The one similarity both neighbour paths report. A product of two float32 values is exact in
    float64 and each (query, neighbour) pair is summed by the same contiguous reduction whatever
    the batch, so the live path (Chroma's neighbours with their stored vectors) and the batch path
    (the exact numpy index) get bit-identical similarities for the same neighbour, where float32
    BLAS and Chroma's SIMD distances differ by ~1e-7 (enough to tip the 4-decimal rounding of
    :func:`neighbourhood_scores`, and so a ranking).

    Args:
        V: unit query vectors, one row each.
        N: per query, its neighbours' unit vectors.
        block: queries per block (bounds the float64 temporary).

    Returns:
        (n, k) cosines.
    """
    V = np.asarray(V, dtype=np.float32)
    N = np.asarray(N, dtype=np.float32)
    out = np.zeros(N.shape[:2])
    for s in range(0, len(V), block):
        prod = N[s : s + block].astype(np.float64) * V[s : s + block, None, :].astype(np.float64)
        out[s : s + block] = prod.sum(axis=2)
    return out


def _best_first(rows: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's neighbours by similarity, then lower ``lib.R`` row (``-1`` slots last)."""
    key = np.where(rows >= 0, -sims, np.inf)
    order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), key), axis=1)
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(sims, order, axis=1)


def _ratings(lib: Library) -> _Ratings:
    cache = lib.__dict__.setdefault("_readers_ratings", [])
    if not cache:
        cache.append(_Ratings(lib))
    return cache[0]


def neighbourhood_scores(
    lib: Library, rows: np.ndarray, sims: np.ndarray, cfg: ReadersConfig
) -> np.ndarray:
    """Book scores for each reader from their neighbours.

    Args:
        lib: the Library whose rating rows the neighbours index (``lib.R`` rows).
        rows: (readers, K) neighbour rows (``-1`` = none).
        sims: (readers, K) their similarities.
        cfg: neighbourhood size, shrinkage and the weight of the mean-centred term.

    Returns:
        (readers, items) scores; ``-inf`` where no neighbour rated the book.
    """
    rt = _ratings(lib)
    n = rows.shape[0]
    k = min(cfg.neighbours, rows.shape[1]) if rows.ndim == 2 else 0
    out = np.full((n, lib.n_items), NEG)
    if n == 0 or k == 0:
        return out
    # Chroma and numpy compute the same cosine to ~1e-6 (float32, different summation order);
    # rounding makes the live (Chroma) and batch (exact) paths score, and so rank, identically
    sims = np.round(np.asarray(sims, dtype=np.float64), 4)
    r, s = rows[:, :k], np.where(sims[:, :k] >= cfg.min_similarity, sims[:, :k], 0.0)
    s = np.where(r >= 0, np.maximum(s, 0.0), 0.0)
    i = np.repeat(np.arange(n), k)
    W = sp.csr_matrix((s.ravel(), (i, np.maximum(r, 0).ravel())), shape=(n, lib.R.shape[0]))
    W.eliminate_zeros()
    mass = (W @ rt.B).toarray()
    centred = (W @ rt.C).toarray()
    total = s.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        support = mass / np.where(total > 0, total, 1.0)
        avg = (
            centred / (mass + cfg.shrinkage)
            if cfg.shrinkage > 0
            else np.where(mass > 0, centred / mass, 0.0)
        )
    score = support + cfg.centred_weight * avg
    return np.where(mass > 0, score, NEG)


class ReaderIndex:
    """Every reader's taste vector in a Library, as ingest writes them to Chroma ``users``.

    Args:
        lib: the Library whose ratings give the histories.
        profile: how a history becomes a taste vector (the settings ingest used).
    """

    def __init__(self, lib: Library, profile: ProfileConfig) -> None:
        self.lib, self.profile = lib, profile
        users, vecs, _ = build_profiles(
            lib.ratings, lib.index, lib.vectors, profile, lib.has_timestamps
        )
        keep = [i for i, u in enumerate(users) if u in lib.user_index]
        self.user_ids = [users[i] for i in keep]
        self.vectors = vecs[keep].astype(np.float32)
        self.rows = np.array([lib.user_index[u] for u in self.user_ids], dtype=np.int64)
        self.pos = {u: i for i, u in enumerate(self.user_ids)}
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def taste_vector(self, ctx: UserContext) -> np.ndarray | None:
        """The reader's taste vector from their history (what Chroma holds for a stored reader).

        Args:
            ctx: the reader.

        Returns:
            A unit vector, or ``None`` for a reader without a usable history.
        """
        p = profile_from_history(
            ctx.history,
            None,
            self.profile,
            self.lib.has_timestamps,
            matrix=self.lib.vectors,
            index=self.lib.index,
        )
        return p.vector if p is not None and p.norm > 0 else None

    def exact(
        self, V: np.ndarray, self_ids: Sequence[str | None], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine top ``k`` (R rows, sims) for each row of ``V``, the reader themself left
        out.

        Ties go to the lower row, so the result is deterministic.

        Args:
            V: the query taste vectors, one row each.
            self_ids: per row, the reader's own id (left out of their neighbours) or ``None``.
            k: how many neighbours per row.

        Returns:
            ``(rows, sims)``, each ``(len(V), k)``: ``lib.R`` rows (``-1`` = none) and cosines.
        """
        S = V.astype(np.float32) @ self.vectors.T
        for i, u in enumerate(self_ids):
            if u is not None and u in self.pos:
                S[i, self.pos[u]] = -np.inf
        k = min(k, S.shape[1])
        if k <= 0:
            return np.full((len(V), 0), -1), np.zeros((len(V), 0))
        # a few more than k by float32, the k kept by the float64 cosine: near-ties at the k-th
        # neighbour then fall the same way here and in the live path (which over-asks Chroma
        # as much)
        kk = min(k + SLACK, S.shape[1])
        part = (
            np.argpartition(-S, kk - 1, axis=1)[:, :kk]
            if kk < S.shape[1]
            else np.tile(np.arange(S.shape[1]), (len(V), 1))
        )
        ok = np.isfinite(np.take_along_axis(S, part, axis=1))
        # the float32 matmul picks the k; their reported similarity is :func:`cosines`, the one
        # the live Chroma path computes too
        cos = np.vstack(
            [cosines(V[s : s + 64], self.vectors[part[s : s + 64]]) for s in range(0, len(V), 64)]
        )
        sims = np.where(ok, cos, 0.0)
        rows, sims = _best_first(np.where(ok, self.rows[part], -1), sims)
        return rows[:, :k], sims[:, :k]

    def neighbours(self, ctxs: Sequence[UserContext], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact neighbours of each reader, cached per reader for repeated calls.

        Args:
            ctxs: the readers.
            k: how many neighbours each.

        Returns:
            ``(rows, sims)``, each ``(len(ctxs), k)`` (row ``-1`` = none).
        """
        kk = max(k, _CACHE_K)
        rows = np.full((len(ctxs), kk), -1, dtype=np.int64)
        sims = np.zeros((len(ctxs), kk))
        todo, vecs = [], []
        for i, c in enumerate(ctxs):
            key = _ctx_key(c)
            if key is not None and key in self._cache and self._cache[key][0].shape[0] >= kk:
                rows[i], sims[i] = self._cache[key][0][:kk], self._cache[key][1][:kk]
                continue
            v = self.taste_vector(c)
            if v is not None:
                todo.append(i)
                vecs.append(v)
        if todo:
            r, s = self.exact(np.vstack(vecs), [ctxs[i].user_id for i in todo], kk)
            rows[todo, : r.shape[1]], sims[todo, : s.shape[1]] = r, s
            for j, i in enumerate(todo):
                key = _ctx_key(ctxs[i])
                if key is not None:
                    self._cache[key] = (rows[i].copy(), sims[i].copy())
        return rows[:, :k], sims[:, :k]


def reader_index(lib: Library, profile: ProfileConfig | None = None) -> ReaderIndex:
    """The Library's :class:`ReaderIndex` for ``profile`` (built once, then shared).

    Args:
        lib: the Library (the index is cached on it).
        profile: the profile settings (defaults when ``None``).

    Returns:
        The shared index.
    """
    profile = profile or ProfileConfig()
    cache = lib.__dict__.setdefault("_reader_index", {})
    key = (profile.half_life_days, profile.half_life_events, profile.pivot)
    if key not in cache:
        cache[key] = ReaderIndex(lib, profile)
    return cache[key]


class ReadersSource(CandidateSource):
    """Books that the readers whose taste vector is closest to yours rated (user-based CF on
    embeddings).

    Args:
        lib: the Library (its ratings are the neighbours' ratings).
        cfg: neighbourhood size, shrinkage, weight of the mean-centred term.
        profile: how histories become taste vectors (the settings ingest used for ``users``).
        store: a :class:`~retrieval.store.VectorStore`; when given, neighbours come from its
            ``users`` collection (Chroma's HNSW), else from the exact numpy index.

    A stored reader's Chroma vector is their taste vector as of their last feedback (the
    Recommender upserts it); the query uses the vector rebuilt from the history in ``ctx``,
    which equals the stored one, so a reader who just rated a book gets neighbours for it.
    """

    name = "readers"

    def __init__(
        self,
        lib: Library,
        cfg: ReadersConfig | None = None,
        profile: ProfileConfig | None = None,
        store=None,
    ) -> None:
        super().__init__(lib)
        self.cfg = cfg or ReadersConfig()
        self.profile = profile or ProfileConfig()
        self.store = store
        self._last: tuple | None = None

    @property
    def index(self) -> ReaderIndex:
        """The exact index of every reader's taste vector (built on first use, then shared)."""
        return reader_index(self.lib, self.profile)

    def taste_vector(self, ctx: UserContext) -> np.ndarray | None:
        """The reader's taste vector, rebuilt from ``ctx.history`` (equal to the stored one).

        Args:
            ctx: the reader.

        Returns:
            A unit vector, or ``None`` for a reader without a usable history.
        """
        p = profile_from_history(
            ctx.history,
            None,
            self.profile,
            self.lib.has_timestamps,
            matrix=self.lib.vectors,
            index=self.lib.index,
        )
        return p.vector if p is not None and p.norm > 0 else None

    def neighbours(self, ctxs: Sequence[UserContext]) -> tuple[np.ndarray, np.ndarray]:
        """(rows of ``lib.R``, cosine) of each reader's ``cfg.neighbours`` nearest readers.

        Args:
            ctxs: the readers.

        Returns:
            ``(rows, sims)``, each ``(len(ctxs), cfg.neighbours)`` (row ``-1`` = none).
        """
        k = self.cfg.neighbours
        if self.store is None:
            return self.index.neighbours(ctxs, k)
        if len(ctxs) == 1:  # one request asks for its neighbours once, not once per candidate
            key = (ctxs[0].user_id, tuple((r.book_id, r.rating) for r in ctxs[0].history))
            if self._last is not None and self._last[0] == key:
                return self._last[1]
            res = self._chroma_neighbours(ctxs, k)
            self._last = (key, res)
            return res
        return self._chroma_neighbours(ctxs, k)

    def _chroma_neighbours(
        self, ctxs: Sequence[UserContext], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = np.full((len(ctxs), k), -1, dtype=np.int64)
        sims = np.zeros((len(ctxs), k))
        for i, c in enumerate(ctxs):
            v = self.taste_vector(c)
            if v is None:
                continue
            hits = [
                (u, e)
                for u, e in self.store.query_vectors("users", v, k + 1 + SLACK)
                if u != c.user_id and u in self.lib.user_index
            ][: k + SLACK]
            if not hits:
                continue
            # the exact cosine, as the batch path computes it (:func:`cosines`), and the best k by
            # it (the batch path's rule). Chroma re-normalises what it stores (1 ulp off in ~30%
            # of vectors), so a neighbour whose stored vector is still the ingest-time one (to
            # 1e-6) is scored with the index's copy, bit for bit as eval; one who gave feedback
            # since, with Chroma's fresh vector.
            r = np.array([[self.lib.user_index[u] for u, _ in hits]], dtype=np.int64)
            cs = cosines(v[None, :], np.stack([self._vector(u, e) for u, e in hits])[None])
            r, cs = _best_first(r, cs)
            n = min(k, r.shape[1])
            rows[i, :n], sims[i, :n] = r[0, :n], cs[0, :n]
        return rows, sims

    def _vector(self, user_id: str, stored: np.ndarray) -> np.ndarray:
        """The index's vector of ``user_id`` when Chroma's ``stored`` one equals it to 1e-6."""
        idx = self.index
        i = idx.pos.get(user_id)
        if i is not None and np.abs(idx.vectors[i] - stored).max() <= 1e-6:
            return idx.vectors[i]
        return stored

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        if not ctxs:
            return np.zeros((0, self.lib.n_items))
        rows, sims = self.neighbours(ctxs)
        return neighbourhood_scores(self.lib, rows, sims, self.cfg)

    def score(self, ctx: UserContext) -> np.ndarray:
        return self.score_batch([ctx])[0]

    def source_evidence(self, ctx: UserContext, item: int) -> list[Evidence]:
        """ "N readers whose taste is closest to yours rated it X★ on average", when N >= 3.

        Args:
            ctx: the reader.
            item: the item index.

        Returns:
            One ``readers_like_you`` evidence, or none when too few neighbours rated the book.
        """
        rows, sims = self.neighbours([ctx])
        nb = rows[0][(rows[0] >= 0) & (sims[0] >= self.cfg.min_similarity)]
        if not len(nb):
            return []
        col = self.lib.R_csc[:, item]
        rated = dict(zip(col.indices.tolist(), col.data.tolist()))
        hit = [int(r) for r in nb if int(r) in rated]
        if len(hit) < EVIDENCE_MIN:
            return []
        vals = np.array([rated[r] for r in hit])
        return [
            Evidence(
                "readers_like_you",
                count=len(hit),
                value=round(float(vals.mean()), 2),
                share=round(float((vals >= LIKED).mean()), 2),
                neighbours=int(len(nb)),
                reader_ids=tuple(self.lib.user_ids[r] for r in hit),
            )
        ]

    def evidence(self, ctx, item, liked):
        return self.source_evidence(ctx, item) + super().evidence(ctx, item, liked)


class UserKNNSource(CandidateSource):
    """Classic user-kNN on ratings: adjusted cosine, shrunk by co-rated count ``n / (n + shrink)``.

    Args:
        lib: the training Library.
        neighbours: neighbourhood size K.
        shrink: similarity shrinkage by the number of co-rated books.
        centred_weight: weight of the neighbours' mean-centred ratings (see module docstring).
    """

    name = "userknn"

    def __init__(
        self, lib: Library, neighbours: int = 50, shrink: float = 10.0, centred_weight: float = 0.2
    ) -> None:
        super().__init__(lib)
        self.cfg = ReadersConfig(
            neighbours=int(neighbours), shrinkage=2.0, centred_weight=float(centred_weight)
        )
        self.shrink = float(shrink)
        rt = _ratings(lib)
        norms = np.sqrt(np.asarray(rt.C.multiply(rt.C).sum(axis=1)).ravel())
        self._Cn = sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ rt.C
        self._CnT = self._Cn.T.tocsr()
        self._BT = rt.B.T.tocsr()
        self._cache = lib.__dict__.setdefault(f"_userknn_cache_{self.shrink}", {})

    def _row(self, ctxs: Sequence[UserContext]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        X = self.lib.history_matrix([c.history for c in ctxs], lambda r, a: r).tocsr()
        cnt = np.maximum(np.diff(X.indptr), 1)
        mean = np.asarray(X.sum(axis=1)).ravel() / cnt
        Xc = X.copy()
        Xc.data = Xc.data - np.repeat(mean, np.diff(X.indptr))
        Xc.data[Xc.data == 0] = 1e-9
        n = np.sqrt(np.asarray(Xc.multiply(Xc).sum(axis=1)).ravel())
        Xc = sp.diags(1.0 / np.where(n > 0, n, 1.0)) @ Xc
        Xb = X.copy()
        Xb.data = np.ones_like(Xb.data)
        return Xc.tocsr(), Xb.tocsr()

    def neighbours(self, ctxs: Sequence[UserContext]) -> tuple[np.ndarray, np.ndarray]:
        """(rows of ``lib.R``, shrunk adjusted cosine) of each reader's ``neighbours`` nearest
        readers.

        Args:
            ctxs: the readers.

        Returns:
            ``(rows, sims)``, each ``(len(ctxs), neighbours)`` (row ``-1`` = none).
        """
        kk = max(self.cfg.neighbours, _CACHE_K)
        rows = np.full((len(ctxs), kk), -1, dtype=np.int64)
        sims = np.zeros((len(ctxs), kk))
        todo = [
            i for i, c in enumerate(ctxs) if _ctx_key(c) not in self._cache or _ctx_key(c) is None
        ]
        for i, c in enumerate(ctxs):
            if i not in todo:
                rows[i], sims[i] = self._cache[_ctx_key(c)]
        for s0 in range(0, len(todo), 250):  # 250 x readers dense blocks bound the memory
            part_ids = todo[s0 : s0 + 250]
            sub = [ctxs[i] for i in part_ids]
            Xc, Xb = self._row(sub)
            S = (Xc @ self._CnT).toarray()
            co = (Xb @ self._BT).toarray()
            S = S * co / (co + self.shrink) if self.shrink > 0 else S
            S[co == 0] = -np.inf
            for j, c in enumerate(sub):
                if c.user_id in self.lib.user_index:
                    S[j, self.lib.user_index[c.user_id]] = -np.inf
            k = min(kk, S.shape[1])
            part = (
                np.argpartition(-S, k - 1, axis=1)[:, :k]
                if k < S.shape[1]
                else np.tile(np.arange(S.shape[1]), (len(sub), 1))
            )
            ps = np.take_along_axis(S, part, axis=1)
            order = np.lexsort((part, -ps), axis=1)
            idx = np.take_along_axis(part, order, axis=1)
            val = np.take_along_axis(ps, order, axis=1)
            ok = np.isfinite(val) & (val > 0)
            for j, i in enumerate(part_ids):
                rows[i, :k] = np.where(ok[j], idx[j], -1)
                sims[i, :k] = np.where(ok[j], val[j], 0.0)
                key = _ctx_key(ctxs[i])
                if key is not None:
                    self._cache[key] = (rows[i].copy(), sims[i].copy())
        return rows[:, : self.cfg.neighbours], sims[:, : self.cfg.neighbours]

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        if not ctxs:
            return np.zeros((0, self.lib.n_items))
        rows, sims = self.neighbours(ctxs)
        return neighbourhood_scores(self.lib, rows, sims, self.cfg)

    def score(self, ctx: UserContext) -> np.ndarray:
        return self.score_batch([ctx])[0]
