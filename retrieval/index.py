"""The on-disk index: build it atomically (``ingest``) and open it (``Index.open``).

Layout of the data directory (``--data-dir`` / ``READNEXT_HOME``, default ``~/.readnext``)::

    CURRENT                 name of the live index folder (swapped atomically at the end of ingest)
    indexes/<name>/         meta.json, books.jsonl, ratings.npz, to_read.npz, vectors.npy,
                            chroma/ (collections "books" and "users"), cf.npz
    feedback.sqlite         reader feedback, survives re-ingests
    cache/                  embedding cache (content-addressed)

An interrupted or failed ingest leaves ``CURRENT`` pointing at the previous, complete index.
Old and partial folders are deleted only once no process uses them (see ``retrieval.leases``):
a server still answering from the previous index keeps it until it has switched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import chroma_reuse
from .config import Settings
from .data import Dataset
from .embed import Embedder
from .errors import NotFoundError, ReadnextError
from .leases import Lease, collect_garbage
from .library import Library
from .profiles import build_profiles
from .types import Book

SCHEMA = 1


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def current_index_dir(home: Path) -> Path:
    """The live index folder, or a clear error if there is none."""
    ptr = home / "CURRENT"
    if not home.is_dir():
        raise NotFoundError(
            f"data dir {home} does not exist: run `readnext ingest` first (or set --data-dir / "
            f"READNEXT_HOME)"
        )
    if not ptr.is_file():
        raise NotFoundError(f"no index in {home}: run `readnext ingest` first")
    d = home / "indexes" / ptr.read_text().strip()
    if not (d / "meta.json").is_file():
        raise NotFoundError(f"index {d} is incomplete or missing: run `readnext ingest` again")
    return d


def _write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_shrink(ds: Dataset, home: Path, min_fraction: float) -> None:
    """Refuse a dataset that would empty the catalog or shrink it (or its readers) drastically.

    Compared with the live index in ``home``; a dataset with no books is refused even without
    one. Raises a one-line :class:`ReadnextError` that names ``--force``.
    """
    n_books = len(ds.books)
    n_users = int(ds.ratings["user_id"].nunique()) if len(ds.ratings) else 0
    if n_books == 0:
        raise ReadnextError(
            f"{ds.label or ds.name}: the catalog has 0 books (is the books file "
            "only a header, or one long line?); nothing ingested. Fix the file, "
            "or --force"
        )
    try:
        live = json.loads((current_index_dir(home) / "meta.json").read_text())["stats"]
    except (ReadnextError, OSError, KeyError, ValueError):
        return  # no live index: nothing to protect
    for what, new, old in (
        ("books", n_books, int(live.get("books", 0))),
        ("readers", n_users, int(live.get("users", 0))),
    ):
        if old and new < min_fraction * old:
            raise ReadnextError(
                f"{ds.label or ds.name}: {new:,} {what} against {old:,} in the live index "
                f"({live.get('label', '?')}): below ingest.min_fraction={min_fraction:g}, so "
                "nothing was replaced. Check the input files, or pass --force to replace it anyway"
            )


def _hold(label: str) -> None:
    """Testing aid for the kill -9 tests: park the ingest after ``label`` until it is killed."""
    if os.environ.get("READNEXT_TEST_HOLD_AFTER") == label:
        print(f"readnext-test: holding after {label}", flush=True)
        while True:
            time.sleep(60)


def ingest(
    ds: Dataset,
    settings: Settings,
    progress: bool = True,
    quiet: bool = False,
    fail_after: str | None = None,
    force: bool = False,
    synthetic_vectors: bool = False,
) -> Path:
    """Build a complete index for ``ds`` beside the live one, then swap it in.

    Args:
        ds: the dataset to index.
        settings: where (``settings.home``) and how.
        progress: show tqdm bars.
        quiet: print nothing.
        fail_after: testing aid, raises after the named step to prove atomicity.
        force: skip the guard against an empty or much smaller catalog / reader set.
        synthetic_vectors: growth runs only: seeded stand-in vectors
            (``retrieval.synthetic.synthetic_vectors``) instead of embedding the catalog;
            said in the output and in ``meta.json`` (``vectors``). Never for real data.

    Returns:
        The new index folder (now ``CURRENT``).
    """
    from tqdm.auto import tqdm

    from .sources import CFSource
    from .store import VectorStore

    home = settings.home
    if not force:
        check_shrink(ds, home, settings.ingest.min_fraction)
    (home / "indexes").mkdir(parents=True, exist_ok=True)
    from .privacy import drop_forgotten

    drop_forgotten(ds, home)  # readers erased with `readnext forget` stay erased
    collect_garbage(home)  # partial folders of killed ingests, old indexes nobody serves
    name = f"{ds.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.time_ns() % 10**6:06d}"
    out = home / "indexes" / name
    building = Lease(out, exclusive=True)  # taken before the folder exists: no collector takes it
    out.mkdir()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    store = None
    try:
        steps = tqdm(total=7, desc="ingest", unit="step", disable=not progress)

        def step(label: str, t: float) -> None:
            timings[label] = round(time.perf_counter() - t, 3)
            steps.update(1)
            steps.set_postfix_str(label)
            if fail_after == label:
                raise ReadnextError(f"simulated failure after {label}")
            _hold(label)

        t = time.perf_counter()
        with open(out / "books.jsonl", "w") as f:
            for b in ds.books:
                f.write(json.dumps(asdict(b), ensure_ascii=False) + "\n")
        r = ds.ratings
        np.savez(
            out / "ratings.npz",
            user_id=r["user_id"].to_numpy(dtype=str),
            book_id=r["book_id"].to_numpy(dtype=str),
            rating=r["rating"].to_numpy(dtype=np.float32),
            ts=r["ts"].to_numpy(dtype=np.float64),
        )
        tr = ds.to_read
        np.savez(
            out / "to_read.npz",
            user_id=tr["user_id"].to_numpy(dtype=str),
            book_id=tr["book_id"].to_numpy(dtype=str),
        )
        step("catalog", t)

        t = time.perf_counter()
        emb = Embedder(
            settings.embedder.model,
            settings.embedder.device,
            settings.embedder.batch_size,
            cache_dir=home / "cache",
        )
        if synthetic_vectors:
            from .synthetic import synthetic_vectors as fake_vectors

            vectors = fake_vectors(ds.books, emb.dim, settings.seed, progress)
            embed_stats = {"embedded": 0, "cached": 0, "synthetic": len(ds.books)}
            _log(
                f"SYNTHETIC VECTORS: {len(ds.books):,} books got seeded stand-in vectors, "
                "not embeddings (--synthetic-vectors; a growth run, queries match nothing real)",
                quiet,
            )
        else:
            vectors = emb.encode(
                [b.embedding_text() for b in ds.books], show_progress=progress, desc="embed books"
            )
            embed_stats = dict(getattr(emb, "last_stats", {}))
            _log(
                f"embedded {embed_stats.get('embedded', 0):,} books "
                f"({embed_stats.get('cached', 0):,} from the cache)",
                quiet,
            )
        np.save(out / "vectors.npy", vectors)
        step("embed", t)

        t = time.perf_counter()
        index = {b.book_id: i for i, b in enumerate(ds.books)}
        users, uvecs, umeta = build_profiles(
            ds.ratings, index, vectors, settings.profile, ds.has_timestamps
        )
        t_profiles = time.perf_counter() - t

        t = time.perf_counter()
        book_ids = [b.book_id for b in ds.books]
        metas = [
            {
                "title": b.title,
                "authors": ", ".join(b.authors),
                "year": b.year if b.year is not None else -9999,
                "tags": "|".join(b.tags),
            }
            for b in ds.books
        ]
        docs = [b.embedding_text() for b in ds.books]
        digest = {
            "books": chroma_reuse.digests(book_ids, vectors, metas, docs),
            "users": chroma_reuse.digests(users, uvecs, umeta),
        }
        reuse = _seed_chroma(home, out, settings, digest, ds.name)
        store = VectorStore(out / "chroma", emb, settings.chroma)
        reuse_stats: dict = {}
        if reuse is not None:
            reuse_stats["books"] = chroma_reuse.sync_collection(
                store, "books", book_ids, vectors, metas, docs, digest["books"],
                reuse["collections"].get("books"), progress=progress,
            )  # fmt: skip
        if reuse is not None and not reuse_stats["books"].get("reused"):
            store.close()  # the copy cannot be reused: start from an empty folder
            shutil.rmtree(out / "chroma")
            store = VectorStore(out / "chroma", emb, settings.chroma)
            reuse = None
        if not reuse_stats.get("books", {}).get("reused"):
            store.upsert("books", book_ids, vectors, metas, documents=docs, progress=progress)
        step("chroma-books", t)

        t = time.perf_counter()
        if reuse is not None:
            reuse_stats["users"] = chroma_reuse.sync_collection(
                store, "users", users, uvecs, umeta, None, digest["users"],
                reuse["collections"].get("users"), force=reuse["feedback_raters"],
                progress=progress,
            )  # fmt: skip
        if not reuse_stats.get("users", {}).get("reused"):
            if reuse is not None:  # the copied collection cannot be reused: start it afresh
                store.close()
                shutil.rmtree(out / "chroma")
                store = VectorStore(out / "chroma", emb, settings.chroma)
                store.upsert("books", book_ids, vectors, metas, documents=docs)
            if users:
                store.upsert("users", users, uvecs, umeta, progress=progress)
        chroma_reuse.save_digest(out, settings.embedder.model, digest)
        step("profiles", t - t_profiles)

        t = time.perf_counter()
        lib = Library(ds.books, vectors, ds.ratings, ds.has_timestamps, ds.to_read, ds.name)
        # The fit uses the plain row (what this call always did); scoring weights come later.
        cf_fit = replace(settings.cf, half_life_events=None, liked_boost=0.0, confidence="liked")
        cf = CFSource(lib, config=cf_fit)
        _log(f"cf: {cf.choice}", quiet)
        cf.save(out / "cf.npz")
        step("cf", t)

        t = time.perf_counter()
        sasrec_info = _train_sasrec(lib, ds, settings, out, progress, quiet)
        step("sasrec", t)

        meta = {
            "schema": SCHEMA,
            "name": name,
            "dataset": ds.name,
            "label": ds.label or ds.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "has_timestamps": ds.has_timestamps,
            "ordered": ds.ordered,
            "embedder": settings.embedder.model,
            "dim": int(vectors.shape[1]),
            "cf_model": cf.model_name,
            "cf_params": getattr(cf.model, "params", {}),
            "cf_choice": cf.choice,
            "stats": ds.stats(),
            "notes": ds.notes,
            "timings_s": timings,
            "sasrec": sasrec_info,
            "embeddings": embed_stats,
            "vectors": "synthetic (seeded stand-ins, retrieval.synthetic)"
            if synthetic_vectors
            else "embedder",
            "chroma_reuse": reuse_stats or {"reused": False, "why": "no reusable live index"},
        }
        _write_atomic(out / "meta.json", json.dumps(meta, indent=2))
        step("meta", t)
        steps.close()
        store.close()
        store = None
        # The swap: one atomic rename of the pointer file.
        old = (home / "CURRENT").read_text().strip() if (home / "CURRENT").is_file() else None
        _write_atomic(home / "CURRENT", name)
        building.release()
        # Old folders go only when nobody serves them; a running server drops its lease once it
        # has switched to this index and collects them then (or the next start does).
        collect_garbage(home)
        _log(
            f"ingested {ds.label or ds.name}: {len(ds.books):,} books, {len(ds.ratings):,} "
            f"ratings, {len(users):,} readers in {time.perf_counter() - t0:.1f}s -> {out}"
            + (f" (replaced {old})" if old else ""),
            quiet,
        )
        return out
    except BaseException:
        if store is not None:
            store.close()
        shutil.rmtree(out, ignore_errors=True)
        building.release()
        raise


def _seed_chroma(home: Path, out: Path, settings: Settings, digest: dict, dataset: str):
    """Copy the live index's Chroma folder into ``out`` when a warm ingest can reuse it.

    Returns the live digest plus ``feedback_raters`` (readers whose stored vector a server may
    have changed since), or None for a fresh build (then nothing was copied).
    """
    try:
        live = current_index_dir(home)
    except ReadnextError:
        return None
    data = chroma_reuse.reusable_chroma(live, settings.embedder.model, settings)
    if data is None:
        return None
    if json.loads((live / "meta.json").read_text()).get("dataset") != dataset:
        return None
    old = data.get("collections", {})
    if set(old.get("books", {})) - set(digest["books"]):
        return None  # books to remove: a clean build (see chroma_reuse)
    try:
        chroma_reuse.copy_chroma(live, out)
    except OSError:
        shutil.rmtree(out / "chroma", ignore_errors=True)
        return None
    raters: set[str] = set()
    fb = home / "feedback.sqlite"
    try:
        if fb.is_file():
            import sqlite3

            with contextlib.closing(sqlite3.connect(fb, timeout=30)) as c:
                q = "SELECT DISTINCT user_id FROM events WHERE dataset = ? AND rating IS NOT NULL"
                raters = {str(r[0]) for r in c.execute(q, (dataset,))}
    except Exception:  # an optimisation only: when in doubt, build afresh
        shutil.rmtree(out / "chroma", ignore_errors=True)
        return None
    return {**data, "feedback_raters": raters}


def _train_sasrec(
    lib: Library, ds: Dataset, settings: Settings, out: Path, progress: bool, quiet: bool
) -> dict:
    """Train the SASRec source when the events are ordered; say why not otherwise."""
    cfg = settings.sasrec
    if not cfg.enabled:
        return {"trained": False, "reason": "sasrec.enabled is false"}
    if not ds.ordered:
        return {
            "trained": False,
            "reason": "the ratings carry no order (no timestamps, no documented "
            "chronological file), and SASRec models the order",
        }
    if lib.R.shape[0] < 2 or not (lib.pop_count > 0).any():
        return {"trained": False, "reason": "too few ratings to train on"}
    from .sasrec import train_sasrec
    from .sasrec_source import STATES_FILE, save_reader_states

    cache = settings.home / "cache" / "sasrec"
    model = train_sasrec(lib, cfg, progress=progress, cache_dir=cache)
    model.save(out / "sasrec.pt")
    # every reader's final state, so serving scores a reader with one matmul (sasrec_source)
    states = save_reader_states(model, lib, out / STATES_FILE, cache_dir=cache)
    r = model.report
    _log(
        f"sasrec: {r.epochs} epochs (best {r.best_epoch}, validation ndcg@10 "
        f"{r.best_val_ndcg:.4f}) in {r.seconds:.0f}s" + (" (cached)" if r.from_cache else ""),
        quiet,
    )
    return {"trained": True, **r.to_dict(), "reader_states": states}


@dataclass
class Index:
    """A loaded index (read-only parts); the Recommender adds feedback on top."""

    path: Path
    meta: dict
    books: list[Book]
    ratings: pd.DataFrame
    to_read: pd.DataFrame
    vectors: np.ndarray
    lease: Lease | None = None  # shared lock: this process serves the folder, keep it

    @classmethod
    def open(cls, home: Path) -> Index:
        """Load the live index and hold a shared lease on its folder until :meth:`release`.

        Every start also deletes folders nobody uses: partial ones of killed ingests, and old
        indexes whose last server has switched or exited.
        """
        collect_garbage(home)
        for _ in range(5):
            d = current_index_dir(home)
            try:
                lease = Lease(d)
            except FileNotFoundError:
                continue  # collected between reading CURRENT and locking: read CURRENT again
            if (d / "meta.json").is_file():
                break
            lease.release()
        else:
            raise NotFoundError(
                f"index in {home} keeps changing or is missing: run `readnext ingest` again"
            )
        try:
            return cls._load(d, lease)
        except BaseException:
            lease.release()
            raise

    @classmethod
    def _load(cls, d: Path, lease: Lease) -> Index:
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("schema") != SCHEMA:
            raise ReadnextError(
                f"index {d} has schema {meta.get('schema')}, this readnext needs {SCHEMA}: "
                "run `readnext ingest` again"
            )
        books = []
        with open(d / "books.jsonl") as f:
            for line in f:
                x = json.loads(line)
                x["authors"], x["tags"] = tuple(x["authors"]), tuple(x["tags"])
                books.append(Book(**x))
        z = np.load(d / "ratings.npz")
        ratings = pd.DataFrame(
            {
                "user_id": z["user_id"].astype(object),
                "book_id": z["book_id"].astype(object),
                "rating": z["rating"].astype(np.float64),
                "ts": z["ts"],
            }
        )
        t = np.load(d / "to_read.npz")
        to_read = pd.DataFrame(
            {"user_id": t["user_id"].astype(object), "book_id": t["book_id"].astype(object)}
        )
        vectors = np.load(d / "vectors.npy")
        return cls(d, meta, books, ratings, to_read, vectors, lease)

    def release(self) -> None:
        """Drop the lease: the folder may be collected once it is no longer ``CURRENT``."""
        if self.lease is not None:
            self.lease.release()

    def library(self) -> Library:
        return Library(
            self.books,
            self.vectors,
            self.ratings,
            bool(self.meta["has_timestamps"]),
            self.to_read,
            self.meta["dataset"],
            bool(self.meta.get("ordered", True)),
        )

    def cf_model(self):
        """The CF model fitted at ingest (over the rated books only, see CFSource)."""
        from .cf import ItemScorer

        p = self.path / "cf.npz"
        return ItemScorer.load(p) if p.exists() else None

    def sasrec_model(self):
        """The SASRec model trained at ingest with its readers' final states (a
        ``FittedSASRec``), or None (unordered data, disabled, older index)."""
        p = self.path / "sasrec.pt"
        if not p.exists():
            return None
        from .sasrec import SASRecModel
        from .sasrec_source import STATES_FILE, FittedSASRec, load_reader_states

        m = SASRecModel.load(p)
        return FittedSASRec(m, load_reader_states(m, self.path / STATES_FILE))
