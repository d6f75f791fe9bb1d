"""The pipeline: retrieve (hybrid sources) -> rerank (optional LLM) -> explain (evidence).

>>> from assistant import Recommender
>>> rec = Recommender.open()              # the default data dir (~/.readnext or READNEXT_HOME)
>>> for r in rec.recommend(user_id="u0001", k=5):
...     print(r.title, "-", r.explanation)
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import Settings
from retrieval.constraints import LIGHT_TAGS, Constraints
from retrieval.embed import Embedder
from retrieval.errors import NotFoundError, ReadnextError
from retrieval.feedback import FeedbackStore, normalize_signal
from retrieval.index import Index
from retrieval.leases import collect_garbage, current_name, reader_lock
from retrieval.profiles import Profile, profile_from_history
from retrieval.ranking import rank, rank_one
from retrieval.registry import build_sources
from retrieval.serving import ServingLock
from retrieval.sources import CandidateSource
from retrieval.types import Book, Candidate, Evidence, Rating, UserContext

from .explain import list_explanations, template_explanation

log = logging.getLogger(__name__)


@dataclass
class Recommendation:
    """One recommended book with everything needed to show and justify it."""

    book_id: str
    title: str
    authors: list[str]
    year: int | None
    tags: list[str]
    score: float
    sources: list[str]
    evidence: list[Evidence]
    explanation: str
    explanation_source: str = "template"  # "template" | "llm"
    blurb: str | None = None
    llm_score: float | None = None
    retrieval_score: float | None = None
    rank: int = 0
    image_url: str | None = None
    description: str = ""
    series: str | None = None
    series_index: float | None = None
    prompt_version: str | None = None
    rejected_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            k: getattr(self, k)
            for k in (
                "book_id",
                "title",
                "authors",
                "year",
                "tags",
                "score",
                "sources",
                "explanation",
                "explanation_source",
                "blurb",
                "llm_score",
                "retrieval_score",
                "rank",
                "image_url",
                "series",
                "series_index",
            )
        }
        d["evidence"] = [e.to_dict() for e in self.evidence]
        if self.prompt_version:
            d["prompt_version"] = self.prompt_version
        if self.rejected_reason:
            d["llm_rejected"] = self.rejected_reason
        return d


@dataclass
class RecommendResult:
    """Recommendations plus notes on how they were produced (fallbacks, cold start...)."""

    items: list[Recommendation]
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


def _request(fn):
    """Run a public method as one request on one index (see ``ServingLock``).

    The outermost call of a thread also looks, at most every ``ingest.reload_check_s``, for a
    newly ingested index; a background thread loads it and swaps it in between requests.
    """

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with self._serving.shared() as outermost:
            if outermost:
                self._maybe_reload()
            return fn(self, *args, **kwargs)

    return wrapper


class Recommender:
    """The one entry point to readnext: open an index, recommend, explain, learn from feedback.

    Safe to share between threads (the chat serves every session from one instance): the stores
    are opened once, a reader's profile is updated under a per-reader lock, and a newly ingested
    index replaces the served one atomically, after the requests in flight finish on the old one.

    Args:
        index: the opened live index (:meth:`retrieval.index.Index.open`); usually via :meth:`open`.
        settings: the typed settings (home, sources, fusion, LLM, chat...).
        llm: the LLM to use: ``None`` (``settings.llm.backend``), ``"none"``, ``"local"``, a HF
            model id/path, an endpoint URL, or an ``LLMBackend`` instance. Loaded on first use.
    """

    def __init__(self, index: Index, settings: Settings, llm: Any = None) -> None:
        self.settings = settings
        self._serving = ServingLock()
        self._open_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._next_check = time.monotonic() + settings.ingest.reload_check_s
        self._failed_reload: str | None = None
        self.last_reload_error: str | None = None
        self.feedback = FeedbackStore(settings.home / "feedback.sqlite")
        self._embedder: Embedder | None = None
        self._store = None
        self._apply_state(self._build_state(index))
        self._llm_spec = llm if llm is not None else settings.llm.backend
        self._llm = None
        self._llm_lock = threading.Lock()
        self.llm_error: str | None = None  # why the configured LLM could not be loaded
        self.last_notes: list[str] = []
        # Readers erased while this process runs (`readnext forget`): hidden at once, even though
        # the in-memory index still holds their rows until the next start.
        self.hidden: set[str] = set()
        self._profile_writer: _ProfileWriter | None = None  # servers: see defer_profile_writes

    def _build_state(self, index: Index) -> dict[str, Any]:
        """Everything that depends on the index, built off to the side (no lock held)."""
        s = self.settings
        lib = index.library()
        # The content and readers sources get a store handle now (opened on first use, and
        # always the store of the index being served), never patched in afterwards.
        sources: dict[str, CandidateSource] = build_sources(
            lib,
            s,
            embed_query=self._embed_query,
            store=_LazyStore(self),
            fitted={"cf": index.cf_model(), "sasrec": index.sasrec_model()},
            seed=s.seed,
        )
        return {
            "index": index,
            "meta": index.meta,
            "dataset": index.meta["dataset"],
            "lib": lib,
            "books": lib.by_id,
            "sources": sources,
        }

    def _apply_state(self, state: dict[str, Any], store=None) -> None:
        self.index: Index = state["index"]
        self.meta = state["meta"]
        self.dataset = state["dataset"]
        self.lib = state["lib"]
        self.books: dict[str, Book] = state["books"]
        self.sources = state["sources"]
        self._store = store

    # -- live re-ingest ---------------------------------------------------------------------------

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.settings.ingest.reload_check_s
        name = current_name(self.settings.home)
        if name is None or name == self.index.path.name or name == self._failed_reload:
            return
        if self._reload_lock.locked():
            return  # a switch is already being prepared
        threading.Thread(target=self.reload, name="readnext-reload", daemon=True).start()

    def reload(self) -> bool:
        """Switch to the index ``CURRENT`` names, if it is a new one; returns whether it switched.

        The new index (and its Chroma store) is loaded while requests keep being served from the
        old one; the swap waits for the requests in flight, then the old store is closed and its
        folder is released (and deleted once no process serves it). Called by the serving
        process itself when it notices a new ``CURRENT``; a failed load keeps the old index.
        """
        from retrieval.store import VectorStore

        with self._reload_lock:
            name = current_name(self.settings.home)
            if name is None or name == self.index.path.name:
                return False
            try:
                index = Index.open(self.settings.home)
                state = self._build_state(index)
                store = VectorStore(index.path / "chroma", self.embedder, self.settings.chroma)
            except Exception as e:  # keep serving the old index, say why once
                self._failed_reload, self.last_reload_error = name, f"{type(e).__name__}: {e}"
                return False
            with self._serving.exclusive():
                old_index, old_store = self.index, self._store
                self._apply_state(state, store)
                if hasattr(self, "_explainer"):
                    del self._explainer
            if old_store is not None:
                old_store.close()
            old_index.release()
            collect_garbage(self.settings.home)
            self._failed_reload = self.last_reload_error = None
            self._refresh_feedback_profiles()
            return True

    def _refresh_feedback_profiles(self) -> None:
        """Fold feedback into the new index's stored profiles (ingest builds them from files)."""
        rated = sorted(
            {e.user_id for e in self.feedback.events(self.dataset) if e.rating is not None}
        )
        for u in rated:
            with self._serving.shared(), reader_lock(self.settings.home, u):
                if self.has_user(u):
                    self._update_profile(u)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | Path | None = None,
        settings: Settings | None = None,
        llm: Any = None,
        config_file: str | Path | None = None,
    ) -> Recommender:
        """Open the live index in ``data_dir`` (None: ``READNEXT_HOME`` or ``~/.readnext``).

        Args:
            data_dir: the data dir holding the ingested index (wins over the settings' ``home``).
            settings: settings to use instead of loading them (defaults, TOML, env).
            llm: ``None`` (from config), ``"none"``, ``"local"``, a HF model id/path, an endpoint
                URL, or an ``LLMBackend`` instance.
            config_file: a TOML file to load the settings from (when ``settings`` is not given).

        Returns:
            The recommender over the live index.

        Raises:
            ReadnextError: no index in the data dir (run ``readnext ingest``), or bad settings.
        """
        settings = settings or Settings.load(config_file=config_file, home=data_dir)
        if data_dir is not None:
            settings.home = Path(data_dir).expanduser()
        return cls(Index.open(settings.home), settings, llm)  # Index.open collects unused folders

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            with self._open_lock:
                if self._embedder is None:
                    e = self.settings.embedder
                    self._embedder = Embedder(
                        e.model, e.device, e.batch_size, cache_dir=self.settings.home / "cache"
                    )
        return self._embedder

    def _embed_query(self, text: str) -> np.ndarray:
        # Reader messages are personal: never written to the on-disk embedding cache.
        return self.embedder.encode([text], cache=False)[0]

    @property
    def store(self):
        """The Chroma collections of this index (opened once, on first use, by one thread)."""
        store = self._store
        if store is None:
            embedder = self.embedder
            with self._open_lock:
                if self._store is None:
                    from retrieval.store import VectorStore

                    self._store = VectorStore(
                        self.index.path / "chroma", embedder, self.settings.chroma
                    )
                store = self._store
        return store

    def warm(self) -> None:
        """Open the stores and load the embedder now, so a server's first requests are fast.

        A server calls this before it listens: otherwise its first requests pay for importing
        Chroma and torch (seconds to tens of seconds on a busy CPU).
        """
        v = self._embed_query("warm-up")
        self.store.query("books", v, 1)  # loads the vector index into memory
        # Full requests through every source, so lazily built parts (the readers' sorted
        # histories, the BM25 index, the series masks, the `users` HNSW index, SASRec's first
        # forward pass, evidence caches) are ready: a warm server's first reader gets the
        # steady-state latency. Only reads: an ad-hoc history (the most-rated book) and one
        # dataset reader, so nothing is written anywhere.
        if self.books and len(self.lib.pop_count) and self.lib.pop_count.max() > 0:
            top = self.lib.books[int(np.argmax(self.lib.pop_count))].book_id
            try:
                self.recommend(history=[(top, 5.0)], query="a good book", k=10)
                if self.lib.user_ids:
                    self.recommend(user_id=self.lib.user_ids[0], k=10)
            except ReadnextError as e:  # a warm-up must never stop a server from starting
                log.warning("warm-up request failed: %s", e)

    @property
    def llm(self):
        """The LLM backend (loaded on first use), wrapped with deadlines and a circuit breaker.

        It is a :class:`assistant.llm.resilience.ResilientBackend`; ``None`` when the backend is
        "none".
        """
        if self._llm is None and self._llm_spec not in (None, "none"):
            with self._llm_lock:  # concurrent first requests: one model, one breaker
                if self._llm is None and self._llm_spec not in (None, "none"):
                    self._load_llm()
        return self._llm

    def _load_llm(self) -> None:
        """Build the backend from the spec and wrap it (caller holds ``_llm_lock``)."""
        from .llm.resilience import CircuitBreaker, ResilientBackend

        c = self.settings.llm
        if isinstance(self._llm_spec, str):
            from .llm import LLMError, load_backend

            spec = self._llm_spec
            opts = {k: v for k, v in (("model", c.model), ("api_key", c.api_key)) if v}
            if spec.lower().startswith(("http://", "https://")):
                opts["timeout"] = c.timeout_s
            else:
                opts = {"num_threads": c.threads} if c.threads > 0 else {}
                opts["n_ctx"] = c.n_ctx
            try:
                inner = load_backend(spec, **opts)
            except LLMError as e:
                # Say it once and serve template text: a missing model must not break recommending.
                self.llm_error = str(e)
                self._llm_spec = "none"
                log.warning("LLM %r unavailable: %s", spec, e)
                return
        else:
            inner = self._llm_spec
        breaker = CircuitBreaker(c.breaker_failures, c.breaker_cooldown_s)
        self._llm = ResilientBackend(inner, c.timeout_s, breaker, c.turn_budget_s)

    def warm_up_llm(self) -> float | None:
        """Load the LLM and run one tiny generation now (chat start), so no reader waits for it.

        Returns:
            Seconds taken, or ``None`` when no LLM is configured.
        """
        llm = self.llm
        if llm is None or llm.name == "none":
            return None
        t0 = time.perf_counter()
        llm.warm_up()
        # the explainer's system texts, evaluated once and kept: every reader's first pick
        # starts past them
        self.explainer().prime()
        return time.perf_counter() - t0

    def close(self) -> None:
        """Close the store and release the index folder (it may then be collected)."""
        if self._profile_writer is not None:
            self._profile_writer.flush(None)
            self._profile_writer.stop()
        with self._reload_lock, self._serving.exclusive():
            if self._store is not None:
                self._store.close()
                self._store = None
            self.index.release()

    # -- readers ----------------------------------------------------------------------------------

    @_request
    def users(self) -> list[dict]:
        """Every reader: ``[{"user_id", "n_ratings"}]`` (index readers plus readers created
        here)."""
        counts = self.lib.R.getnnz(axis=1)
        out = {u: int(c) for u, c in zip(self.lib.user_ids, counts)}
        extra: dict[str, set[str]] = {}  # distinct books: re-rating a book is not a new rating
        for e in self.feedback.events(self.dataset):
            if e.rating is not None:
                extra.setdefault(e.user_id, set()).add(e.book_id)
        for u in self.feedback.readers(self.dataset):
            out.setdefault(u, 0)
        for u, books in extra.items():
            if u in self.lib.user_index:
                books = books - {r.book_id for r in self.lib.history(u)}
            out[u] = out.get(u, 0) + len(books)
        return [
            {"user_id": u, "n_ratings": n}
            for u, n in sorted(out.items(), key=lambda x: _natural(x[0]))
            if u not in self.hidden
        ]

    @_request
    def has_user(self, user_id: str) -> bool:
        """Whether ``user_id`` is a reader here (a dataset reader or one created by feedback).

        Args:
            user_id: the reader id.

        Returns:
            False for unknown and erased (``readnext forget``) readers.
        """
        if user_id in self.hidden:
            return False
        return user_id in self.lib.user_index or user_id in set(self.feedback.readers(self.dataset))

    def _require_user(self, user_id: str) -> None:
        if not self.has_user(user_id):
            raise NotFoundError(f"unknown user {user_id!r}: see `readnext users` for valid ids")

    def book(self, book_id: str) -> Book:
        """The catalog record of ``book_id``.

        Args:
            book_id: the book id.

        Returns:
            The book.

        Raises:
            NotFoundError: the book is not in the catalog.
        """
        b = self.books.get(str(book_id))
        if b is None:
            raise NotFoundError(f"unknown book {book_id!r}: not in the {self.dataset} catalog")
        return b

    @_request
    def history(self, user_id: str) -> list[Rating]:
        """Index ratings plus feedback ratings, oldest first (a later rating of a book wins).

        Args:
            user_id: the reader id.

        Returns:
            The reader's ratings.

        Raises:
            NotFoundError: unknown reader.
        """
        self._require_user(user_id)
        return self._history(user_id)[0]

    def _history(self, user_id: str) -> tuple[list[Rating], set[str], set[str]]:
        """(history, excluded ids, to-read ids) for a reader, feedback included."""
        base = self.lib.history(user_id)
        events = self.feedback.events(self.dataset, user_id)
        to_read = self.lib.to_read_of(user_id)
        exclude: set[str] = set()
        if not events:
            return base, exclude, to_read
        has_ts = self.lib.has_timestamps
        t_next = (max((r.ts for r in base), default=0.0) + 1) if not has_ts else None
        by_book = {r.book_id: r for r in base}
        order = [r.book_id for r in base]
        for i, e in enumerate(events):
            if e.signal == "to_read":
                to_read.add(e.book_id)
                continue
            exclude.add(e.book_id)
            if e.rating is None:
                continue
            ts = e.ts if has_ts else t_next + i  # type: ignore[operator]
            if e.book_id in by_book:
                order.remove(e.book_id)
            by_book[e.book_id] = Rating(user_id, e.book_id, e.rating, ts)
            order.append(e.book_id)
        return [by_book[b] for b in order], exclude, to_read

    @_request
    def context(
        self,
        user_id: str | None = None,
        history: Sequence[Rating] | None = None,
        query: str | None = None,
        exclude: Iterable[str] = (),
        anchors: Sequence[str] = (),
        query_tags: Sequence[str] = (),
    ) -> UserContext:
        """Build the request context every candidate source reads.

        Args:
            user_id: a known reader whose history (with feedback) and exclusions are used.
            history: extra ratings: :class:`Rating` or ``(book_id, rating[, ts])`` tuples, added
                after the reader's own.
            query: the request text (``None``/empty: none).
            exclude: book ids never to offer (added to the reader's rated and dismissed books).
            anchors: books the request asked for "something like" (unknown ids are dropped).
            query_tags: catalog tags the request named.

        Returns:
            The :class:`~retrieval.types.UserContext`.

        Raises:
            NotFoundError: ``user_id`` is given and unknown.
        """
        hist: list[Rating] = []
        excl: set[str] = set(exclude)
        to_read: set[str] = set()
        if user_id is not None:
            self._require_user(user_id)
            hist, ex, to_read = self._history(user_id)
            excl |= ex
        if history is not None:
            hist = list(hist) + [
                r
                if isinstance(r, Rating)
                else Rating(
                    user_id or "anonymous",
                    str(r[0]),
                    float(r[1]),
                    float(r[2]) if len(r) > 2 else float(i),
                )
                for i, r in enumerate(history)
            ]
        return UserContext(
            user_id=user_id,
            history=hist,
            query=query or None,
            exclude=excl,
            to_read=to_read,
            query_tags=tuple(query_tags),
            anchors=tuple(a for a in anchors if a in self.books),
        )

    # -- recommend --------------------------------------------------------------------------------

    def recommend(
        self,
        user_id: str | None = None,
        history: Sequence[Rating] | None = None,
        query: str | None = None,
        k: int = 10,
        source: str = "hybrid",
        rerank: str | None = None,
        explain_llm: bool | int | None = None,
        constraints: Constraints | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Recommendation]:
        """Top ``k`` books for a reader (by id, by an explicit history, by a query, or a mix).

        Notes about fallbacks are left in ``self.last_notes``.

        Args:
            user_id: a known reader (``None``: anonymous, from ``history`` and/or ``query``).
            history: ratings to use besides (or instead of) the reader's own (see :meth:`context`).
            query: a free-text request ("a cosy mystery").
            k: how many books.
            source: a source name: ``hybrid`` (default), ``content``, ``cf``, ``popularity``,
                ``series``... (see :func:`retrieval.registry.source_names`).
            rerank: ``"llm"`` reranks the top ``settings.llm.top_n`` with the LLM; ``None``: no
                rerank.
            explain_llm: True or a count: ask the LLM for explanation text and a blurb for the top
                picks (checked against the evidence; templates otherwise).
            constraints: chat constraints (filters and boosts) applied while ranking.
            exclude: book ids never to offer in this request.

        Returns:
            Up to ``k`` recommendations, best first.

        Raises:
            ReadnextError: ``k`` is not positive, the catalog is empty, an unknown source, a request
                over ``chat.max_message_chars``; ``NotFoundError`` for an unknown reader.
        """
        return self.recommend_full(
            user_id, history, query, k, source, rerank, explain_llm, constraints, exclude
        ).items

    @_request
    def recommend_full(
        self,
        user_id: str | None = None,
        history: Sequence[Rating] | None = None,
        query: str | None = None,
        k: int = 10,
        source: str = "hybrid",
        rerank: str | None = None,
        explain_llm: bool | int | None = None,
        constraints: Constraints | None = None,
        exclude: Iterable[str] = (),
        anchors: Sequence[str] = (),
        query_tags: Sequence[str] = (),
    ) -> RecommendResult:
        """Like :meth:`recommend`, returning notes and stage timings too.

        Args:
            user_id: a known reader (``None``: anonymous).
            history: extra ratings (see :meth:`context`).
            query: a free-text request.
            k: how many books.
            source: a source name (``hybrid`` by default).
            rerank: ``"llm"`` to rerank the top with the LLM.
            explain_llm: True or a count: LLM explanations for the top picks.
            constraints: chat constraints applied while ranking.
            exclude: book ids never to offer.
            anchors: books the request is "like" (from a parsed request, :mod:`assistant.intent`).
            query_tags: catalog tags the request named (likewise).

        Returns:
            The recommendations, the notes (fallbacks, cold start...) and per-stage timings in ms.

        Raises:
            ReadnextError: as :meth:`recommend`.
        """
        if k <= 0:
            raise ReadnextError(f"k must be positive, got {k}")
        if not self.books:
            raise ReadnextError(
                f"the {self.dataset} catalog is empty: nothing to recommend; "
                "run `readnext ingest` with a books file that has rows"
            )
        if source not in self.sources:
            raise ReadnextError(f"unknown source {source!r}: use one of {', '.join(self.sources)}")
        check_query_length(query, self.settings.chat.max_message_chars)
        t0 = time.perf_counter()
        ctx = self.context(user_id, history, query, exclude, anchors, query_tags)
        notes = self._notes(ctx)
        n_cand = max(k, self.settings.llm.top_n if rerank == "llm" else k)
        src = self.sources[source]
        if constraints is not None and not constraints.is_empty():
            notes.append(f"constraints applied: {constraints.describe()}")
        # the one rank path (exclusions, series order, constraints, top k), then evidence
        cands = rank_one(src, ctx, n_cand, constraints).candidates(src, ctx)
        t1 = time.perf_counter()
        llm_scores: dict[str, float] = {}
        retrieval = {c.book_id: c.score for c in cands}
        if rerank == "llm":
            cands, llm_scores = self._rerank(ctx, cands, notes)
        t2 = time.perf_counter()
        recs = [self._to_rec(c, ctx, rank=i + 1) for i, c in enumerate(cands[:k])]
        if constraints is not None:
            notes.extend(_unmet_wishes(constraints, recs))
        # One pass over the list, so picks do not all cite the same book of yours.
        rated = {r.book_id: r.rating for r in ctx.history}
        for r, text in zip(recs, list_explanations([r.evidence for r in recs], self.books, rated)):
            r.explanation = text
        for r in recs:
            r.retrieval_score = round(float(retrieval[r.book_id]), 6)
            if r.book_id in llm_scores:
                r.llm_score = llm_scores[r.book_id]
        n_llm = self.settings.llm.explain_top if explain_llm is True else int(explain_llm or 0)
        if n_llm:
            self._explain_llm(recs[:n_llm], ctx, notes)
        t3 = time.perf_counter()
        self.last_notes = notes
        return RecommendResult(
            recs,
            notes,
            {
                "retrieve": round((t1 - t0) * 1e3, 2),
                "rerank": round((t2 - t1) * 1e3, 2),
                "explain": round((t3 - t2) * 1e3, 2),
            },
        )

    def _notes(self, ctx: UserContext) -> list[str]:
        notes = []
        if not ctx.history:
            notes.append(
                "cold start: no reading history yet, so results come from "
                + ("your request and " if ctx.query else "")
                + "what is popular here"
            )
        elif not any(
            r.book_id in self.lib.index and self.lib.pop_count[self.lib.index[r.book_id]] > 0
            for r in ctx.history
        ):
            notes.append(
                "collaborative filtering has no co-readers for your books: using content similarity"
            )
        return notes

    def _to_rec(self, c: Candidate, ctx: UserContext, rank: int) -> Recommendation:
        b = self.books[c.book_id]
        rated = {r.book_id: r.rating for r in ctx.history}
        return Recommendation(
            book_id=b.book_id,
            title=b.title,
            authors=list(b.authors),
            year=b.year,
            tags=list(b.tags),
            score=round(float(c.score), 6),
            sources=[s for s in c.source.split("+") if s],
            evidence=list(c.evidence),
            explanation=template_explanation(c.evidence, self.books, rated),
            rank=rank,
            retrieval_score=round(float(c.score), 6),
            image_url=b.image_url,
            description=b.description,
            series=b.series,
            series_index=b.series_index,
        )

    @_request
    def recommend_batch(
        self, user_ids: Sequence[str], k: int = 10, source: str = "hybrid"
    ) -> dict[str, list[str]]:
        """Top-``k`` book ids for many readers at once: the same rank path, batched (no evidence).

        Args:
            user_ids: known readers.
            k: how many books each.
            source: a source name.

        Returns:
            User id -> book ids, best first.

        Raises:
            ReadnextError: an unknown source; ``NotFoundError`` for an unknown reader.
        """
        if source not in self.sources:
            raise ReadnextError(f"unknown source {source!r}: use one of {', '.join(self.sources)}")
        ctxs = [self.context(u) for u in user_ids]
        return {
            u: r.book_ids(self.lib) for u, r in zip(user_ids, rank(self.sources[source], ctxs, k))
        }

    # -- explain ----------------------------------------------------------------------------------

    @_request
    def explain(self, user_id: str, book_id: str, llm: bool = False) -> Recommendation:
        """Why ``book_id`` for ``user_id``: all evidence the system holds, rendered.

        "Found by" and the evidence come from the hybrid's own :meth:`found_by` and
        :meth:`evidence_for`, the steps ``recommend`` runs after ranking, so a recommended book
        is explained with the sources and evidence its card showed. ``score`` is the hybrid's.

        For a book the reader already rated or dismissed, the explanation says so plainly, and
        the evidence is computed against the reader's *other* books (a book is never its own
        reason: "by the author of itself").

        Args:
            user_id: the reader.
            book_id: the book to explain.
            llm: ask the LLM for the explanation text (checked; the template otherwise).

        Returns:
            The book as a :class:`Recommendation`, with its sources, evidence and explanation.

        Raises:
            NotFoundError: unknown reader or book.
        """
        self.book(book_id)
        ctx = self.context(user_id)
        i = self.lib.index[book_id]
        own = self._own_verdict(user_id, book_id, ctx)
        hybrid = self.sources["hybrid"]
        if (
            own is not None
        ):  # a book is never its own reason: judge it against the reader's other books
            ctx = UserContext(
                ctx.user_id,
                [r for r in ctx.history if r.book_id != book_id],
                ctx.query,
                ctx.exclude,
                ctx.to_read,
            )
        per = {n: s.score(ctx) for n, s in hybrid.sources.items()}
        found = hybrid.found_by(ctx, [i], per)
        ev_ctx, ev_found = ctx, found
        if own is not None:  # never its own reason, and no "next in the series" for a judged book
            ev_ctx = replace(ctx, history=[r for r in ctx.history if r.book_id != book_id])
            ev_found = [[n for n in found[0] if n != "series"]]
        evidence = hybrid.evidence_for(ev_ctx, [i], found=ev_found)[0]
        fused = hybrid.fuse({n: m[None, :] for n, m in per.items()}, [ctx])[0]
        score = float(fused[i]) if np.isfinite(fused[i]) else 0.0
        rec = self._to_rec(
            Candidate(book_id, score, "+".join(found[0]) or "none", evidence), ctx, rank=0
        )
        if own is not None:
            rec.explanation = own
            return rec  # no LLM praise for a book the reader already judged
        if llm:
            self._explain_llm([rec], ctx, [])
        return rec

    def _own_verdict(self, user_id: str, book_id: str, ctx: UserContext) -> str | None:
        """A plain sentence when the reader already rated or dismissed ``book_id``, else None."""
        last = None
        for e in self.feedback.events(self.dataset, user_id):
            if e.book_id == book_id and e.signal != "to_read":
                last = e
        off, out = "so it stays off your lists.", "so it is not among your recommendations."
        said = {
            "like": f"You gave this book a 👍, {out}",
            "dislike": f"You gave this book a 👎, {off}",
            "read": f"You have already read this book, {out}",
            "not_interested": f"You said you are not interested in this book, {off}",
            "currently_reading": f"You are reading this book now, {out}",
        }
        if last is not None and last.signal in said:
            return said[last.signal]
        rated = next((r for r in reversed(ctx.history) if r.book_id == book_id), None)
        if rated is not None:
            return (
                f"You have already read this book (you rated it {rated.rating:g}★), "
                "so it is not among your recommendations."
            )
        return None

    # -- feedback ---------------------------------------------------------------------------------

    @_request
    def add_feedback(
        self,
        user_id: str,
        book_id: str,
        rating_or_signal: float | int | str,
        create_user: bool = False,
    ) -> Profile | None:
        """Record a rating (1-5) or a signal (like, dislike, read, not_interested, to_read).

        The event is durable before this returns. The reader's profile vector in Chroma is then
        recomputed from their whole history under a per-reader lock (threads and processes), so
        concurrent ratings never lose an update and the stored profile always equals a rebuild;
        a crash between the two steps is healed by the reader's next rating.

        Args:
            user_id: the reader.
            book_id: the book.
            rating_or_signal: a rating 1-5, or one of the signal names above.
            create_user: create the reader when unknown (else it is refused).

        Returns:
            The reader's rebuilt profile (``None`` for a signal that carries no rating).

        Raises:
            NotFoundError: unknown book, or unknown reader without ``create_user``.
            ReadnextError: a bad rating or signal.
        """
        self.book(book_id)
        signal, rating = normalize_signal(rating_or_signal)
        if not self.has_user(user_id):
            if not create_user:
                raise NotFoundError(
                    f"unknown user {user_id!r}: see `readnext users` (or create the reader first)"
                )
            self.feedback.add_reader(self.dataset, user_id, "feedback")
        with reader_lock(self.settings.home, user_id):
            self.feedback.add(self.dataset, user_id, book_id, signal, rating)
            if rating is None:
                return None
            if self._profile_writer is not None:
                # the next recommendation reads the committed event (its sources rebuild the
                # taste vector from the history), so only Chroma's copy is written behind
                self._profile_writer.submit(user_id)
                return self._rebuilt_profile(user_id)
            return self._update_profile(user_id)

    def defer_profile_writes(self) -> None:
        """Write feedback's rebuilt profile vectors to Chroma ``users`` in a background thread.

        For servers (the service layer turns it on): ``add_feedback`` returns once the event is
        durable, and the HNSW update (the slow part, tens of ms) no longer delays the reply or
        the reader's next recommendation, which never reads its own stored vector. Each write
        rebuilds the profile from the whole history under the reader lock, as the synchronous
        path does, so whichever runs last is right. :meth:`profile`, :meth:`similar_readers`,
        ``forget`` and :meth:`close` wait for pending writes first (:meth:`flush_profile_writes`).
        """
        if self._profile_writer is None:
            self._profile_writer = _ProfileWriter(self)

    def flush_profile_writes(self, timeout: float | None = 60.0) -> None:
        """Wait until deferred profile writes are in Chroma (no-op when writes are synchronous).

        Args:
            timeout: the longest wait in seconds (None: no limit).
        """
        if self._profile_writer is not None:
            self._profile_writer.flush(timeout)

    def _rebuilt_profile(self, user_id: str) -> Profile | None:
        return profile_from_history(
            self._history(user_id)[0],
            None,
            self.settings.profile,
            self.lib.has_timestamps,
            matrix=self.lib.vectors,
            index=self.lib.index,
        )

    def _update_profile(self, user_id: str) -> Profile | None:
        """Store the profile rebuilt from the full history (the caller holds the reader lock).

        A rebuild costs O(n·d) for n rated books (about a millisecond for 1,000 on a CPU) and,
        unlike the O(d) ``update_profile`` fold-in, it is idempotent: whichever update runs last
        has read every committed event.
        """
        p = self._rebuilt_profile(user_id)
        if p is not None:
            self.store.upsert("users", [user_id], p.vector[None, :], [p.to_metadata()])
        return p

    def profile(self, user_id: str) -> Profile | None:
        """The stored (incrementally updated) taste vector of a reader.

        Args:
            user_id: the reader.

        Returns:
            The profile, or ``None`` when none is stored.
        """
        self.flush_profile_writes()  # outside the request lock: the writer thread takes it too
        return self._stored_profile(user_id)

    @_request
    def _stored_profile(self, user_id: str) -> Profile | None:
        meta = self.store.get_metadata("users", [user_id]).get(user_id)
        if not meta:
            return None
        vec = self.store.get_vectors("users", [user_id])[user_id]
        return Profile(vec, float(meta["norm"]), float(meta["t_ref"]), int(meta["n_ratings"]))

    def similar_readers(self, user_id: str, n: int = 10) -> list[tuple[str, float]]:
        """Readers whose stored taste vectors are nearest (Chroma ``users`` collection).

        Args:
            user_id: the reader.
            n: how many readers.

        Returns:
            ``[(user_id, cosine)]``, nearest first, the reader left out.
        """
        self.flush_profile_writes()
        return self._similar_readers(user_id, n)

    @_request
    def _similar_readers(self, user_id: str, n: int) -> list[tuple[str, float]]:
        p = self._stored_profile(user_id)
        if p is None:
            ctx = self.context(user_id)
            p = profile_from_history(
                ctx.history,
                None,
                self.settings.profile,
                self.lib.has_timestamps,
                matrix=self.lib.vectors,
                index=self.lib.index,
            )
        if p is None:
            return []
        return [(u, s) for u, s in self.store.query("users", p.vector, n + 1) if u != user_id][:n]

    @_request
    def create_reader(
        self,
        user_id: str,
        ratings: Sequence[tuple[str, float]] = (),
        origin: str = "app",
        to_read: Iterable[str] = (),
        timestamps: Sequence[float | None] | None = None,
    ) -> None:
        """Create (or extend) a reader from a list of (book_id, rating); e.g. onboarding, imports.

        All or nothing: every book and rating is checked first, then the reader and all events
        are written in one transaction, and the profile is built once.

        Args:
            user_id: the new reader's id (a dataset reader's id is refused).
            ratings: ``(book_id, rating or signal)`` pairs.
            origin: where the reader came from (``"app"``, ``"import"``...).
            to_read: books for the to-read shelf.
            timestamps: per rating, when it happened (``None``: now).

        Raises:
            ReadnextError: the id belongs to a dataset reader, or a bad rating.
            NotFoundError: a book is not in the catalog.
        """
        from retrieval.feedback import FeedbackEvent

        if user_id in self.lib.user_index:
            raise ReadnextError(
                f"reader {user_id!r} already exists in the dataset; choose another name"
            )
        now = time.time()
        events = []
        for i, (b, r) in enumerate(ratings):
            self.book(b)
            signal, rating = normalize_signal(r)
            ts = timestamps[i] if timestamps is not None else None
            events.append(FeedbackEvent(user_id, b, signal, rating, now if ts is None else ts))
        for b in to_read:
            self.book(b)
            events.append(FeedbackEvent(user_id, b, "to_read", None, now))
        with reader_lock(self.settings.home, user_id):
            self.feedback.add_reader_with_events(self.dataset, user_id, origin, events)
            if any(e.rating is not None for e in events):
                self._update_profile(user_id)

    @_request
    def sync_reader(
        self,
        user_id: str,
        ratings: Sequence[Rating],
        to_read: Iterable[str] = (),
        reading: Iterable[str] = (),
        origin: str = "import",
    ) -> dict[str, int]:
        """Bring a reader up to date with an imported history; importing the same data twice
        changes nothing, and a newer export wins (same book -> its latest rating or shelf).

        Args:
            user_id: the reader (created when new; a dataset reader is refused).
            ratings: imported ratings (``ts`` = when read), oldest first.
            to_read: books on the to-read shelf.
            reading: books being read now: excluded from recommendations, not learned from.
            origin: where the reader came from (kept for new readers).

        Returns:
            Counts: ``added`` (new rated books), ``updated`` (rating changed), ``unchanged``,
            ``to_read_added``, ``reading_added``.
        """
        if user_id in self.lib.user_index:
            raise ReadnextError(
                f"reader {user_id!r} already exists in the dataset; choose another name"
            )
        self.feedback.add_reader(self.dataset, user_id, origin)
        rating_of: dict[str, float | None] = {}
        shelf: dict[str, str] = {}  # the latest non-rating signal per book
        for e in self.feedback.events(self.dataset, user_id):
            if e.rating is not None:
                rating_of[e.book_id] = e.rating
            if e.signal in ("to_read", "currently_reading"):
                shelf[e.book_id] = e.signal
            elif e.signal != "rating":
                shelf.pop(e.book_id, None)
        out = {"added": 0, "updated": 0, "unchanged": 0, "to_read_added": 0, "reading_added": 0}
        changed = False
        for r in ratings:
            self.book(r.book_id)
            old = rating_of.get(r.book_id)
            if old is not None and abs(old - r.rating) < 1e-9:
                out["unchanged"] += 1
                continue
            self.feedback.add(self.dataset, user_id, r.book_id, "rating", float(r.rating), r.ts)
            changed = True  # one rebuild at the end covers new and changed ratings alike
            if old is None:
                out["added"] += 1
            else:
                out["updated"] += 1
            rating_of[r.book_id] = float(r.rating)
        for signal, books, key in (
            ("currently_reading", reading, "reading_added"),
            ("to_read", to_read, "to_read_added"),
        ):
            for b in books:
                self.book(b)
                if shelf.get(b) == signal or b in rating_of:
                    continue
                self.feedback.add(self.dataset, user_id, b, signal, None)
                shelf[b] = signal
                out[key] += 1
        if changed:
            with reader_lock(self.settings.home, user_id):
                self._update_profile(user_id)
        return out

    def _rebuild_profile(self, user_id: str) -> None:
        """The reader's stored vector recomputed from the whole history, under the reader lock."""
        with reader_lock(self.settings.home, user_id):
            self._update_profile(user_id)

    # -- LLM stages -------------------------------------------------------------------------------

    def _history_books(self, ctx: UserContext, n: int = 8) -> list[tuple[Book, float]]:
        """The reader's best and most recent books, for prompts (see :func:`prompt_history`)."""
        return prompt_history(ctx.history, self.books, n)

    def _rerank(self, ctx: UserContext, cands: list[Candidate], notes: list[str]):
        llm = self.llm
        if llm is None:
            notes.append(
                "LLM rerank asked for, but no LLM is configured (--llm): kept the retrieval order"
            )
            return cands, {}
        from .rerank import LLMReranker

        c = self.settings.llm
        rr = LLMReranker(llm, weight=c.rerank_weight, top_n=c.top_n)  # llm: deadline per call
        res = rr.rerank(self._history_books(ctx), [(self.books[x.book_id], x.score) for x in cands])
        by_id = {x.book_id: x for x in cands}
        out = []
        scores = {}
        if getattr(rr, "last_error", None):
            notes.append(f"LLM rerank skipped ({rr.last_error}): kept the retrieval order")
        for r in res:
            cand = by_id[r.book_id]
            # after a rerank, `score` is the fused z-score for the reranked head, else retrieval's
            score = r.fused_score if r.fused_score is not None else cand.score
            out.append(
                Candidate(
                    cand.book_id,
                    float(score),
                    cand.source + ("+llm" if r.llm_score is not None else ""),
                    cand.evidence,
                )
            )
            if r.llm_score is not None:
                scores[r.book_id] = round(float(r.llm_score), 4)
        return out, scores

    def explainer(self):
        """The reader-facing explainer over this recommender's LLM (built once).

        Returns:
            The :class:`~assistant.explainer.Explainer`.
        """
        if not hasattr(self, "_explainer"):
            from .explainer import Explainer

            self._explainer = Explainer(
                self.llm, max_new_tokens=min(self.settings.llm.max_new_tokens, 80)
            )
        return self._explainer

    def _explain_llm(self, recs: list[Recommendation], ctx: UserContext, notes: list[str]) -> None:
        from .llm.resilience import count_guard_rejections, honest_notes

        llm = self.llm
        if llm is None:
            notes.append(
                f"LLM unavailable ({self.llm_error}): explanations are templates"
                if self.llm_error
                else "no LLM configured: explanations are templates built from the evidence"
            )
            return
        hist = self._history_books(ctx)  # with ratings: "you loved X" is checked against them
        ex, turn = self.explainer_for_turn()
        reasons, shown = [], []
        for r in recs:
            res = ex.explain(
                self.books[r.book_id],
                r.evidence,
                hist,
                self.books,
                r.explanation,
                query=ctx.query,
                shown=shown,
            )
            self.apply_explanation(r, res)
            if res.source != "llm":
                reasons.append(res.rejected_reason)
            else:
                shown += [res.why, res.blurb or ""]  # later picks must not repeat it
        notes.extend(honest_notes(turn, count_guard_rejections(reasons), "LLM explanation(s)"))

    def explainer_for_turn(self, turn=None):
        """(explainer, backend view) for one request.

        The view carries the turn's LLM time budget (``[llm] turn_budget_s``) and records what
        happened, for :func:`honest_notes`.

        Args:
            turn: a view already made for this turn (e.g. by the chat), else a new one.

        Returns:
            ``(explainer, turn)``: a copy of :meth:`explainer` on the turn's backend view, and the
            view.
        """
        import copy

        llm = self.llm
        if turn is None:
            turn = llm.for_turn() if hasattr(llm, "for_turn") else llm
        ex = copy.copy(self.explainer())  # shares the grounding index; only the backend differs
        ex.backend = turn
        return ex, turn

    @staticmethod
    def apply_explanation(r: Recommendation, res) -> None:
        """Put a checked result on a card: the model's text only when it passed every check.

        Args:
            r: the card to update.
            res: the explainer's result (``source``, ``why``, ``blurb``, ``rejected_reason``...).
        """
        r.prompt_version = res.prompt_version
        if res.source == "llm":
            r.explanation, r.blurb, r.explanation_source = res.why, res.blurb, "llm"
        else:
            r.explanation_source, r.blurb = "template", None
            r.rejected_reason = res.rejected_reason


def prompt_history(
    history: Sequence[Rating], books: dict[str, Book], n: int = 8
) -> list[tuple[Book, float]]:
    """The reader's best and most recent books (at most ``n``), as the LLM prompts see them.

    Used by the live reranker and explainer and by eval's LLM stage, so both prompt alike.

    Args:
        history: the reader's ratings, oldest first.
        books: the catalog by id (books not in it are skipped).
        n: the most books to return.

    Returns:
        ``[(book, rating)]``: half best-rated, then the most recent, without repeats.
    """
    hist = [r for r in history if r.book_id in books]
    recent = hist[-n:]
    best = sorted(hist, key=lambda r: -r.rating)[:n]
    seen, out = set(), []
    for r in best[: n // 2] + list(reversed(recent)):
        if r.book_id not in seen and len(out) < n:
            seen.add(r.book_id)
            out.append((books[r.book_id], r.rating))
    return out


class _ProfileWriter:
    """One background thread writing readers' rebuilt profiles to Chroma (see
    :meth:`Recommender.defer_profile_writes`); a reader queued twice is written once."""

    def __init__(self, rec: Recommender) -> None:
        self._rec = rec
        self._cond = threading.Condition()
        self._queue: list[str] = []
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="readnext-profiles", daemon=True)
        self._thread.start()
        import atexit

        atexit.register(self.flush, 30.0)  # a process that exits keeps what it was told

    def submit(self, user_id: str) -> None:
        with self._cond:
            if user_id not in self._queue:
                self._queue.append(user_id)
            self._cond.notify_all()

    def flush(self, timeout: float | None = 60.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        rec = self._rec
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopped)
                if self._stopped and not self._queue:
                    return
                user_id = self._queue.pop(0)
                self._busy = True
            try:
                with rec._serving.shared(), reader_lock(rec.settings.home, user_id):
                    if user_id not in rec.hidden:  # forgotten meanwhile: nothing is written
                        rec._update_profile(user_id)
            except Exception as e:  # the event is durable; the next rating heals the vector
                log.warning("deferred profile write for a reader failed: %s", e)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


class _LazyStore:
    """The index's Chroma store, opened on first use (importing Chroma costs seconds)."""

    def __init__(self, rec: Recommender) -> None:
        self._rec = rec

    def __getattr__(self, name: str):
        return getattr(self._rec.store, name)


def check_query_length(query: str | None, limit: int) -> None:
    """Refuse a request longer than ``limit`` characters, without quoting it back.

    Args:
        query: the request text (``None``: nothing to check).
        limit: the most characters allowed (``chat.max_message_chars``).

    Raises:
        ReadnextError: one line naming the length, the limit and the setting.
    """
    if query is not None and len(query) > limit:
        raise ReadnextError(
            f"the request is {len(query):,} characters long and the limit is "
            f"{limit:,}: describe what you want to read in a sentence or two "
            "(setting chat.max_message_chars, env "
            "READNEXT_CHAT_MAX_MESSAGE_CHARS)"
        )


def _natural(s: str):
    """Sort 'u2' before 'u10' and '2' before '10'."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _unmet_wishes(c: Constraints, recs: Sequence[Recommendation]) -> list[str]:
    """Say so when a soft wish could not change the list: length and mood are known only from
    the catalog's tags, and a reader who asked "shorter" should not think the list ignored it."""
    tags = [{t.lower() for t in r.tags} for r in recs]
    out = []
    if c.shorter and recs and not any("short" in t for t in tags):
        out.append(
            "none of these picks is tagged short in the catalog (length is known only from its "
            "short/long tags): books tagged long were moved down"
        )
    if c.lighter and recs and not any(t & LIGHT_TAGS for t in tags):
        out.append(
            "none of these picks carries a light-hearted tag in the catalog: darker ones were "
            "moved down"
        )
    return out
