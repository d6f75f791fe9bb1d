"""``readnext forget`` and ``readnext export``: erase or hand over everything held about a reader.

Where a reader's data lives (docs/privacy.md has the full table):

- ``feedback.sqlite`` (+ ``-wal``): their events and the ``readers`` row (imports, onboarding);
- ``indexes/*/ratings.npz``, ``to_read.npz``: their rows from the ingested dataset;
- ``indexes/*/chroma``: their profile vector in ``users`` (plus Chroma's log and HNSW copies);
- ``accounts.json``: their account (name = reader id, scrypt hash);
- ``logs/``: request lines under their pseudonym;
- ``cache/``: embeddings of chat messages written by older versions (now never cached).

Models fitted at ingest (CF item-item weights, popularity counts) are aggregates with no row per
reader; they stop reflecting an erased reader at the next ``readnext ingest``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval import privacy as pv
from retrieval.types import Book

from .recommender import Recommender


def _index_dirs(home: Path) -> tuple[list[Path], list[Path]]:
    """(complete index folders, partial ones without meta.json) under ``home/indexes``."""
    d = home / "indexes"
    if not d.is_dir():
        return [], []
    dirs = sorted(x for x in d.iterdir() if x.is_dir())
    return [x for x in dirs if (x / "meta.json").is_file()], [
        x for x in dirs if not (x / "meta.json").is_file()
    ]


def _book_texts(index_dir: Path) -> list[str]:
    out = []
    with open(index_dir / "books.jsonl", encoding="utf-8") as f:
        for line in f:
            x = json.loads(line)
            x["authors"], x["tags"] = tuple(x["authors"]), tuple(x["tags"])
            out.append(Book(**x).embedding_text())
    return out


def forget_reader(
    rec: Recommender, user_id: str, accounts=None, pseudonym: str | None = None
) -> dict[str, Any]:
    """Erase ``user_id`` from every file under the data dir (see the module docstring).

    The reader is hidden from ``rec`` at once; the ingested rows in this process's memory go
    at its next start (the files are rewritten now).

    Args:
        rec: the open Recommender of the data dir.
        user_id: the reader to erase (must be a valid id; need not exist any more).
        accounts: the AccountStore whose file account of that name is removed too.
        pseudonym: the reader's log pseudonym (computed from the home's secret if None).

    Returns:
        What was removed, counted per place.
    """
    pv.check_reader_id(user_id)
    home = Path(rec.settings.home)
    if pseudonym is None:
        pseudonym = pv.pseudonym(pv.home_secret(home), user_id)
    rec.hidden.add(user_id)
    rec.flush_profile_writes()  # a deferred write of this reader lands before the purge, or never
    out: dict[str, Any] = {"user_id": user_id, "feedback": rec.feedback.forget(user_id)}
    complete, partial = _index_dirs(home)
    rows = {"ratings": 0, "to_read": 0}
    vectors = 0
    for d in complete:
        for k, v in pv.forget_in_index(d, user_id).items():
            rows[k] += v
        if d.resolve() == Path(rec.index.path).resolve():
            vectors += pv.purge_from_collection(rec.store, "users", [user_id])
        elif (d / "chroma").is_dir() or rec.settings.chroma.mode != "embedded":
            from retrieval.store import VectorStore

            vs = VectorStore(d / "chroma", chroma=rec.settings.chroma)
            try:
                vectors += pv.purge_from_collection(vs, "users", [user_id])
            finally:
                vs.close()
    out["index_rows"] = rows
    out["profile_vectors"] = vectors
    out["partial_index_dirs_skipped"] = [p.name for p in partial]
    keep: list[str] = []
    for d in complete:
        keep += _book_texts(d)
    out["cache_rows"] = pv.prune_embedding_cache(home / "cache", keep)
    if accounts is None:
        from .accounts import AccountStore

        accounts = AccountStore.for_home(home, rec.settings.chat.accounts_file)
    out["account_removed"] = accounts.remove(user_id)
    from .api_keys import KeyStore

    out["api_keys_revoked"] = KeyStore.for_home(home).revoke_reader(user_id)
    out["log_lines"] = pv.scrub_logs(home, [pseudonym])
    pv.remember_forgotten(home, pseudonym)
    return out


def export_reader(rec: Recommender, user_id: str, accounts=None) -> dict[str, Any]:
    """Everything held about ``user_id``, as JSON-ready data.

    Returns:
        account (without the hash), merged history with titles, the raw index rows, feedback
        rows, the stored profile vector, and the request-log lines under their pseudonym.
    """
    pv.check_reader_id(user_id)
    home = Path(rec.settings.home)
    secret = pv.home_secret(home)
    pseud = pv.pseudonym(secret, user_id)
    out: dict[str, Any] = {
        "user_id": user_id,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": rec.dataset,
        "pseudonym_in_logs": pseud,
    }
    if accounts is None:
        from .accounts import AccountStore

        accounts = AccountStore.for_home(home, rec.settings.chat.accounts_file)
    a = accounts.get(user_id)
    out["account"] = {"name": a.name, "role": a.role, "created": a.created} if a else None
    out["history"] = (
        [
            {
                "book_id": r.book_id,
                "title": rec.books[r.book_id].title,
                "rating": r.rating,
                "ts": r.ts,
            }
            for r in rec.history(user_id)
        ]
        if rec.has_user(user_id)
        else []
    )
    ix = rec.index
    mask = ix.ratings["user_id"].astype(str).to_numpy() == user_id
    out["index_ratings"] = [
        {"book_id": b, "rating": float(r), "ts": float(t)}
        for b, r, t in zip(
            ix.ratings["book_id"][mask], ix.ratings["rating"][mask], ix.ratings["ts"][mask]
        )
    ]
    tmask = ix.to_read["user_id"].astype(str).to_numpy() == user_id
    out["index_to_read"] = [str(b) for b in ix.to_read["book_id"][tmask]]
    out["feedback"] = rec.feedback.export(user_id)
    p = rec.profile(user_id)
    out["profile"] = (
        {
            "vector": [float(x) for x in np.asarray(p.vector, dtype=np.float32)],
            "norm": p.norm,
            "t_ref": p.t_ref,
            "n_ratings": p.n,
        }
        if p is not None
        else None
    )
    lines = []
    d = home / pv.LOG_DIR
    if d.is_dir():
        for f in sorted(x for x in d.rglob("*") if x.is_file()):
            lines += [
                ln.rstrip("\n")
                for ln in f.read_text(encoding="utf-8", errors="replace").splitlines()
                if pseud in ln
            ]
    out["log_lines"] = lines
    return out
