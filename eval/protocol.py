"""The evaluation protocol: what a run is (:class:`EvalConfig`), the data, the split, the readers.

Load -> (Book-Crossing: rescale + k-core) -> per-reader holdout -> embed the catalog -> test
readers (main and cold-start slices) -> validation readers carved from training only. Each
choice is recorded in ``metrics.json["protocol"]`` (:func:`protocol_dict`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import Settings
from retrieval.data import Dataset, detect_format, load_dataset, load_demo
from retrieval.errors import DataError, ReadnextError
from retrieval.library import Library
from retrieval.types import Book, UserContext

from .models import ALL_MODELS
from .splits import Split, cold_start_users, relevant_items, temporal_holdout, validation_split
from .tuning import TuningSet

__all__ = [
    "EvalConfig",
    "KRICHENE_RENDLE",
    "Prepared",
    "SAMPLED_WARNING",
    "chunk_size",
    "clean",
    "load_eval_dataset",
    "prepare",
    "protocol_dict",
    "subset",
    "tuning_set",
]

SAMPLED_WARNING = (
    "Sampled-negative metrics are NOT full-catalog metrics. Krichene & Rendle (KDD 2020, 'On "
    "Sampled Metrics for Item Recommendation') show they are inconsistent with the exact metrics "
    "and can even reverse the order of two models. They are reported only for comparison with "
    "older work; conclusions rest on the full-catalog tables."
)
KRICHENE_RENDLE = "Krichene & Rendle, On Sampled Metrics for Item Recommendation, KDD 2020"


@dataclass
class EvalConfig:
    """Everything that defines a run; with the same config and seed a run is reproducible.

    ``dataset`` (a folder, format auto-detected) or ``data_dir`` (an ingested index) selects the
    data; neither means the shipped demo. ``users`` evaluates a seeded subset of test readers.

    Attributes:
        dataset: a dataset folder (format auto-detected); ``None`` with no ``data_dir``: the demo.
        data_dir: an ingested index to evaluate instead (its stored book vectors are reused).
        config: a TOML settings file (sources, fusion, embedder).
        models: the models to run (``None``: every model; ``hybrid+llm`` only with ``llm`` or not
            ``quick``); see :meth:`chosen_models`.
        users: evaluate a seeded subset of this many test readers (``None``: all).
        seed: the seed for the split, subsets, tuning, seeded models and the bootstrap.
        ks: the cut-offs K of every metric.
        out: the output folder (metrics.json, report.md, plots, rankings).
        dump_rankings: also write every model's rankings.
        quick: a smaller, faster study (fewer tuning trials and validation readers).
        llm: the LLM for the ``hybrid+llm`` rerank and explanations (``None``: none).
        llm_users: readers the LLM stage reranks for.
        llm_explain: LLM explanations written (top pick of this many LLM readers).
        sampled: add the sampled protocol with this many random negatives (``None``: off).
        relevant: the lowest held-out rating that counts as relevant.
        holdout: the share of each reader's ratings held out (min 1).
        cold_threshold: readers with fewer training ratings form the cold-start slice.
        explain_users: readers whose explanations are audited for faithfulness.
        sasrec_shuffled: also train SASRec on shuffled sequences (the order-matters control).
        val_users: cap on validation readers (default 3000, quick 600).
        n_boot: bootstrap resamples for confidence intervals and paired tests.
        catalog: ``"rated"`` (books with >= 1 rating in the data) or ``"all"`` (every book).
        min_item_ratings: k-core filter on books (default 5 for Book-Crossing, else none).
        min_user_ratings: k-core filter on readers.
        cache_dir: where book embeddings are cached between runs.
        progress: show progress bars.
        verbose: one line per stage on stderr.
        command: the command line that started the run (recorded in metrics.json).
    """

    dataset: str | None = None
    data_dir: str | None = None
    config: str | None = None
    models: tuple[str, ...] | None = (
        None  # None: every model (hybrid+llm only with llm or not quick)
    )
    users: int | None = None
    seed: int = 42
    ks: tuple[int, ...] = (10, 20)
    out: str = "eval-results"
    dump_rankings: bool = False
    quick: bool = False
    llm: str | None = None
    llm_users: int = 30
    llm_explain: int = 10  # LLM explanations written (top pick of this many LLM readers)
    sampled: int | None = None
    relevant: float = 4.0
    holdout: float = 0.2
    cold_threshold: int = 5
    explain_users: int = 200
    sasrec_shuffled: bool = (
        True  # also train SASRec on shuffled sequences (the order-matters control)
    )
    val_users: int | None = None  # cap on validation readers (default 3000, quick 600)
    n_boot: int = 1000
    catalog: str = "rated"  # rated: books with >= 1 rating in the data; all: every catalog book
    min_item_ratings: int | None = None  # k-core filter (default 5 for Book-Crossing, else none)
    min_user_ratings: int | None = None
    cache_dir: str | None = None
    progress: bool = True
    verbose: bool = True  # one line per stage on stderr
    command: str = ""

    def chosen_models(self) -> list[str]:
        """The models to run, in the canonical order."""
        if self.models is None:
            names = [m for m in ALL_MODELS if m != "hybrid+llm" or (self.llm or not self.quick)]
        else:
            names = list(dict.fromkeys(self.models))
            bad = [m for m in names if m not in ALL_MODELS]
            if bad:
                raise ReadnextError(
                    f"--models: unknown model(s) {', '.join(bad)}; choose from "
                    f"{', '.join(ALL_MODELS)}"
                )
        if "hybrid+llm" in names and "hybrid" not in names:
            raise ReadnextError("--models: hybrid+llm reranks the hybrid, so list hybrid too")
        return [m for m in ALL_MODELS if m in names]


@dataclass
class Prepared:
    """A split dataset ready to score: training Library over the catalog plus the test readers."""

    dataset: Dataset
    split: Split
    lib: Library
    main: list[UserContext]
    main_rel: dict[str, set[str]]
    cold: list[UserContext]
    cold_rel: dict[str, set[str]]
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def _bookcrossing_core(ds: Dataset, min_item: int, min_user: int) -> tuple[Dataset, list[str]]:
    """Put Book-Crossing on the 1-5 scale and keep its ``min_item``/``min_user`` k-core.

    Explicit 1-10 ratings become ``r / 2`` (so 8/10 -> 4 = liked/relevant); an implicit 0 (the
    reader has the book, no score) becomes 3, a mild positive that is never relevant.
    """
    r = ds.ratings.copy()
    raw = r["rating"].to_numpy(dtype=np.float64)
    r["rating"] = np.where(raw == 0, 3.0, raw / 2.0)
    n0 = len(r)
    while True:
        before = len(r)
        ic = r["book_id"].value_counts()
        r = r[r["book_id"].isin(ic.index[ic >= min_item])]
        uc = r["user_id"].value_counts()
        r = r[r["user_id"].isin(uc.index[uc >= min_user])]
        if len(r) == before:
            break
    keep = set(r["book_id"].unique())
    books = [b for b in ds.books if b.book_id in keep]
    notes = [
        "Book-Crossing ratings rescaled to 1-5: explicit r/10 -> r/2 (so relevant >= 4 means >= "
        "8/10); implicit 0 -> 3 (a weak positive, never relevant)",
        f"iterative {min_item}-core: books with >= {min_item} and readers with >= {min_user} "
        f"ratings, repeated until stable: {n0:,} -> {len(r):,} ratings, {len(books):,} books, "
        f"{r['user_id'].nunique():,} readers",
    ]
    label = f"Book-Crossing ({min_item}-core: {len(r):,} ratings, {len(books):,} books)"
    out = replace(
        ds, books=books, ratings=r.reset_index(drop=True), label=label, notes=ds.notes + notes
    )
    return out, notes


def load_eval_dataset(
    cfg: EvalConfig, settings: Settings
) -> tuple[Dataset, dict[str, np.ndarray] | None]:
    """The dataset to evaluate and, for an ingested index, its stored book vectors (by book id).

    Args:
        cfg: the run's config (``dataset`` or ``data_dir``; neither: the demo).
        settings: the settings (the demo's location, the ingest's options).

    Returns:
        ``(dataset, vectors)``: ``vectors`` is ``None`` unless ``cfg.data_dir`` was given.

    Raises:
        ReadnextError: both ``dataset`` and ``data_dir`` given, or data that cannot be read (one
            line naming the file).
    """
    if cfg.dataset and cfg.data_dir:
        raise ReadnextError("give either --dataset DIR or --data-dir D, not both")
    vectors = None
    if cfg.dataset:
        fmt = detect_format(cfg.dataset)
        ds = load_dataset(fmt, directory=cfg.dataset)
    elif cfg.data_dir:
        from retrieval.index import Index

        idx = Index.open(Path(cfg.data_dir).expanduser())
        meta = idx.meta
        ds = Dataset(
            name=meta.get("dataset", "index"),
            books=idx.books,
            ratings=idx.ratings,
            to_read=idx.to_read,
            has_timestamps=bool(meta.get("has_timestamps")),
            ordered=bool(meta.get("ordered", True)),
            label=meta.get("label") or meta.get("dataset", "index"),
            notes=list(meta.get("notes", [])),
        )
        vectors = {b.book_id: idx.vectors[i] for i, b in enumerate(idx.books)}
    else:
        ds = load_demo()
    if not len(ds.ratings):
        raise DataError(
            f"dataset {ds.label or ds.name} has no ratings; evaluation needs a ratings file"
        )
    if ds.name == "bookcrossing":
        ds, _ = _bookcrossing_core(ds, cfg.min_item_ratings or 5, cfg.min_user_ratings or 5)
    elif cfg.min_item_ratings or cfg.min_user_ratings:
        r = ds.ratings
        ic = r["book_id"].value_counts()
        r = r[r["book_id"].isin(ic.index[ic >= (cfg.min_item_ratings or 1)])]
        uc = r["user_id"].value_counts()
        r = r[r["user_id"].isin(uc.index[uc >= (cfg.min_user_ratings or 1)])]
        ds = replace(
            ds,
            ratings=r.reset_index(drop=True),
            notes=ds.notes
            + [
                f"filtered to books with >= {cfg.min_item_ratings or 1} and readers with "
                f">= {cfg.min_user_ratings or 1} ratings (one pass)"
            ],
        )
    top = float(ds.ratings["rating"].max())
    if top > 5.0:
        raise DataError(
            f"{ds.label or ds.name}: ratings go up to {top:g}, but readnext's models and the "
            "relevance threshold use a 1-5 scale; rescale the ratings to 1-5 first"
        )
    return ds, vectors


def _embed(
    books: Sequence[Book],
    settings: Settings,
    cache_dir: Path,
    given: Mapping[str, np.ndarray] | None,
    progress: bool,
) -> np.ndarray:
    """Unit vectors of ``books`` (stored index vectors when given, else the cached embedder)."""
    if given is not None and all(b.book_id in given for b in books):
        return np.vstack([given[b.book_id] for b in books]).astype(np.float32)
    from retrieval.embed import Embedder

    e = settings.embedder
    emb = Embedder(e.model, e.device, e.batch_size, cache_dir=cache_dir)
    return emb.encode(
        [b.embedding_text() for b in books], show_progress=progress, desc="embed catalog"
    )


def _contexts(lib: Library, users: Sequence[str]) -> list[UserContext]:
    hist = lib.histories()
    return [UserContext(user_id=u, history=hist.get(u, [])) for u in users]


def subset(items: Sequence[str], n: int | None, seed: int, salt: int) -> list[str]:
    """A seeded subset of ``n`` of ``items`` (sorted first, so it depends only on the set).

    Args:
        items: the pool (e.g. reader ids).
        n: the subset size (``None`` or ``>= len(items)``: all of them).
        seed: the run's seed.
        salt: a per-purpose number, so two subsets of one pool differ.

    Returns:
        The chosen items, sorted.
    """
    pool = sorted(items)
    if n is None or n >= len(pool):
        return pool
    rng = np.random.default_rng([seed, salt])
    return sorted(pool[i] for i in rng.choice(len(pool), size=n, replace=False))


def prepare(cfg: EvalConfig, settings: Settings) -> Prepared:
    """Load, split, embed and pick the test readers (main and cold-start slices).

    Args:
        cfg: the run's config.
        settings: the settings (embedder, profile).

    Returns:
        The :class:`Prepared` split: training Library, test readers and their relevant books.

    Raises:
        ReadnextError: a bad ``catalog`` value or unreadable data.
    """
    t = time.perf_counter()
    ds, given = load_eval_dataset(cfg, settings)
    notes = list(ds.notes)
    split = temporal_holdout(
        ds.ratings, frac=cfg.holdout, min_test=1, ordered=ds.ordered, seed=cfg.seed
    )
    if cfg.catalog not in ("rated", "all"):
        raise ReadnextError(f"--catalog must be 'rated' or 'all', got {cfg.catalog!r}")
    if cfg.catalog == "rated":
        rated = set(ds.ratings["book_id"].unique())
        catalog = [b for b in ds.books if b.book_id in rated]
    else:
        catalog = list(ds.books)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else settings.home / "cache"
    vectors = _embed(catalog, settings, cache_dir, given, cfg.progress)
    train = split.train.reset_index(drop=True)
    # ordered: the training rows carry an event order (what the live index records in its meta)
    lib = Library(
        catalog, vectors, train, ds.has_timestamps, None, ds.name, split.method == "temporal"
    )

    rel = relevant_items(split.test, cfg.relevant)
    test_users = subset(list(rel), cfg.users, cfg.seed, 1)
    cold = cold_start_users(split, cfg.cold_threshold)
    skipped = [u for u in test_users if not rel[u]]
    main_u = [u for u in test_users if rel[u] and u not in cold]
    cold_u = [u for u in test_users if rel[u] and u in cold]
    hist = lib.histories()
    info = {
        "dataset": {
            **ds.stats(),
            "catalog_books": len(catalog),
            "catalog": cfg.catalog,
            "split": split.describe(),
        },
        "users": {
            "test_users": len(rel),
            "evaluated_pool": len(test_users),
            "main": len(main_u),
            "cold_start": len(cold_u),
            "skipped_no_relevant": len(skipped),
        },
        "prepare_s": time.perf_counter() - t,
    }
    return Prepared(
        ds,
        split,
        lib,
        [UserContext(u, hist.get(u, [])) for u in main_u],
        {u: rel[u] for u in main_u},
        [UserContext(u, hist.get(u, [])) for u in cold_u],
        {u: rel[u] for u in cold_u},
        info,
        notes,
    )


def tuning_set(prep: Prepared, cfg: EvalConfig) -> tuple[TuningSet, dict[str, Any]]:
    """Validation readers: the last share of each training history, carved from training only.

    Args:
        prep: the prepared split (its training part is split again).
        cfg: the run's config (``holdout``, ``relevant``, ``val_users``, ``seed``...).

    Returns:
        ``(tuning set, description)``: the cached validation readers and what metrics.json
        records about them.
    """
    val = validation_split(prep.split, frac=cfg.holdout, min_test=1, seed=cfg.seed)
    lib = Library(
        prep.lib.books,
        prep.lib.vectors,
        val.train.reset_index(drop=True),
        prep.lib.has_timestamps,
        None,
        prep.lib.name,
        prep.lib.ordered,
    )
    rel = relevant_items(val.test, cfg.relevant)
    counts = val.train["user_id"].value_counts()
    warm = [u for u, r in rel.items() if r and counts.get(u, 0) >= cfg.cold_threshold]
    cap = cfg.val_users or (600 if cfg.quick else 3000)
    cap = max(200, min(cap, int(4e7 // max(lib.n_items, 1))))  # bounds the cached score matrices
    users = subset(warm, cap, cfg.seed, 2)
    ctxs = _contexts(lib, users)
    ts = TuningSet.build(lib, ctxs, [rel[u] for u in users], chunk=chunk_size(lib.n_items))
    # the cold slice's fusion weights are tuned on cold validation readers only
    # (eval.tuning.tune_cold_weights), drawn from the same validation split
    cold = [u for u, r in rel.items() if r and counts.get(u, 0) < cfg.cold_threshold]
    cold_users = subset(cold, cap, cfg.seed, 3)
    if cold_users:
        ts.cold = TuningSet.build(
            lib,
            _contexts(lib, cold_users),
            [rel[u] for u in cold_users],
            chunk=chunk_size(lib.n_items),
        )
        ts.cold_below = cfg.cold_threshold
    desc = {
        "method": val.method,
        "frac": cfg.holdout,
        "validation_readers": len(users),
        "eligible_readers": len(warm),
        "cold_validation_readers": len(cold_users),
        "cold_eligible_readers": len(cold),
        "train_events": len(val.train),
        "validation_events": len(val.test),
    }
    return ts, desc


def chunk_size(n_items: int) -> int:
    """Readers per scoring batch: 1,000, fewer for large catalogs (bounds dense score blocks)."""
    return int(max(50, min(1000, 2e7 // max(n_items, 1))))


def protocol_dict(
    cfg: EvalConfig,
    prep: Prepared,
    ks: Sequence[int],
    val_desc: Mapping[str, Any],
    models: Sequence[str],
    skipped: Mapping[str, str],
    llm_info: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``protocol`` section of metrics.json: how the run split, scored and tested.

    Args:
        cfg: the run's config.
        prep: the prepared split.
        ks: the metric cut-offs.
        val_desc: the validation set's description (:func:`tuning_set`).
        models: the models evaluated.
        skipped: model -> why it was not run.
        llm_info: what the LLM stage used (``None``: no LLM stage).

    Returns:
        JSON-safe data (:func:`clean`).
    """
    ds = prep.dataset
    split = prep.split
    if split.method == "temporal":
        order = (
            "timestamps"
            if ds.has_timestamps
            else "row order (documented as chronological; approximate, see the dataset README)"
        )
        split_text = (
            f"per-reader temporal holdout of the last {cfg.holdout:.0%} of ratings (min "
            f"1) by {order}"
        )
    else:
        split_text = (
            f"per-reader seeded random holdout of {cfg.holdout:.0%} of ratings (min 1): the data "
            "has no timestamps and no meaningful order"
        )
    return clean(
        {
            "split": split.method,
            "split_text": split_text,
            "holdout": cfg.holdout,
            "seed": cfg.seed,
            "relevant_threshold": cfg.relevant,
            "ks": list(ks),
            "ranking": "full catalog",
            "catalog": (
                "books with at least one rating in the data"
                if cfg.catalog == "rated"
                else "every catalog book"
            ),
            "exclude": "the reader's training books",
            "series_order": (
                "readnext's own models (hybrid, its ablations, hybrid+llm) rank through the "
                "product's rank path (retrieval.ranking), which never offers volume n > 1 of a "
                "series whose volume n-1 the reader has not read; the peers rank as published "
                "(exclusions and top-k only)"
            ),
            "cold_start_threshold": cfg.cold_threshold,
            "main_slice": f"test readers with >= {cfg.cold_threshold} training ratings and >= 1 "
            "relevant held-out book",
            "users_subset": cfg.users,
            "models": list(models),
            "skipped_models": dict(skipped),
            "validation": dict(val_desc) | {"selection": "ndcg@10"},
            "quick": cfg.quick,
            "bootstrap": {"n_boot": cfg.n_boot, "level": 0.95, "kind": "percentile"},
            "significance_test": "paired sign-flip permutation test (two-sided), bootstrap CI of "
            "the mean difference",
            "sampled_negatives": cfg.sampled,
            "llm": (
                dict(readers=llm_info["readers"], backend=llm_info["backend"]) if llm_info else None
            ),
            "to_read": "not used (to-read shelves carry no time, so they may reflect the held-out "
            "period)",
        }
    )


def clean(x: Any) -> Any:
    """JSON-safe numbers: nan/inf -> None, numpy scalars -> float, rounded to 6 decimals."""
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else round(float(x), 6)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x
