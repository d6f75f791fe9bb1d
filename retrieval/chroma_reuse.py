"""Warm re-ingest: start the new index's Chroma from the live one and write only what changed.

Building the ``users`` collection (50k goodbooks readers, HNSW ``ef_construction`` 400) is most
of a warm ingest. When the live index was built with the same embedder and the same Chroma
version, its ``chroma/`` folder is copied (under the store's write lock, so no feedback write
lands half-way) and compared record by record with what this ingest would write, through a
digest of each record (id, vector bytes, metadata, document) saved beside every index
(``chroma_digest.json``). Only new or changed records are upserted, plus every reader with rated
feedback (a server updated their stored vector after the live index was built; a fresh build
writes the ingest's one). The result holds exactly the records a fresh build holds; only the
HNSW graph's insertion history differs (its answers are approximate in both cases).

A fresh build is used instead when anything does not fit: no digest, another embedder or Chroma
version, a collection whose count differs from its digest, records to *remove* (a plain Chroma
delete keeps the vectors in its log: removals get a clean build, see ``retrieval.privacy``), or
more than ``MAX_CHANGED`` of the records changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DIGEST_FILE = "chroma_digest.json"
MAX_CHANGED = 0.3  # above this share of changed records, a fresh build is as fast and cleaner

__all__ = ["DIGEST_FILE", "digests", "reusable_chroma", "save_digest", "sync_collection"]


def _chroma_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("chromadb")
    except metadata.PackageNotFoundError:  # pragma: no cover - chromadb is a dependency
        return "?"


def digests(
    ids: Sequence[str],
    vectors: np.ndarray,
    metadatas: Sequence[dict] | None = None,
    documents: Sequence[str] | None = None,
) -> dict[str, str]:
    """``{id: digest}`` of the records exactly as :meth:`VectorStore.upsert` writes them."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    out = {}
    for i, rid in enumerate(ids):
        h = hashlib.blake2b(v[i].tobytes(), digest_size=12)
        if metadatas is not None:
            h.update(json.dumps(metadatas[i], sort_keys=True).encode())
        if documents is not None:
            h.update(b"\0" + documents[i].encode())
        out[str(rid)] = h.hexdigest()
    return out


def save_digest(index_dir: Path, embedder: str, collections: dict[str, dict[str, str]]) -> None:
    """Write ``chroma_digest.json`` for a finished index (read by the next warm ingest)."""
    data = {"chromadb": _chroma_version(), "embedder": embedder, "collections": collections}
    (Path(index_dir) / DIGEST_FILE).write_text(json.dumps(data))


def reusable_chroma(live: Path | None, embedder: str, settings) -> dict | None:
    """The live index's digest when its Chroma folder may seed a new index, else None."""
    chroma = getattr(settings, "chroma", None)
    if chroma is not None and getattr(chroma, "mode", "embedded") != "embedded":
        return None  # a Chroma server holds the collections: nothing to copy
    if live is None or not (live / "chroma").is_dir() or not (live / DIGEST_FILE).is_file():
        return None
    try:
        data = json.loads((live / DIGEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if data.get("embedder") != embedder or data.get("chromadb") != _chroma_version():
        return None
    return data


def copy_chroma(live: Path, out: Path) -> None:
    """Copy the live index's Chroma folder while no writer (feedback) can change it."""
    from .store import chroma_write_lock

    with chroma_write_lock(live / "chroma", exclusive=True):
        shutil.copytree(live / "chroma", out / "chroma")


def sync_collection(
    store,
    name: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    metadatas: Sequence[dict] | None,
    documents: Sequence[str] | None,
    new: dict[str, str],
    old: dict[str, str] | None,
    force: set[str] = frozenset(),  # type: ignore[assignment]
    progress: bool = False,
) -> dict:
    """Bring a copied collection to ``ids``/``vectors``/...: upsert what differs from ``old``.

    Returns:
        ``{"reused": True, "upserted": n}``, or ``{"reused": False, "why": ...}`` when the
        caller must build the collection afresh (nothing was written then).
    """
    from .store import USERS_EF_SEARCH

    col = store.books if name == "books" else store.users
    if old is None:
        return {"reused": False, "why": "no digest of the live collection"}
    want = {"space": "cosine"}
    if name == "users":
        want.update(ef_search=USERS_EF_SEARCH, ef_construction=USERS_EF_SEARCH)
    hnsw = (getattr(col, "configuration", None) or {}).get("hnsw") or {}
    if any(hnsw.get(k) != v for k, v in want.items()):
        return {"reused": False, "why": "the live collection has another HNSW configuration"}
    if col.count() != len(old):
        return {"reused": False, "why": "the live collection does not match its digest"}
    removed = old.keys() - new.keys()
    if removed:
        return {"reused": False, "why": f"{len(removed)} record(s) to remove"}
    pos = [i for i, rid in enumerate(ids) if old.get(rid) != new[rid] or rid in force]
    if len(pos) > MAX_CHANGED * max(len(ids), 1):
        return {"reused": False, "why": f"{len(pos)} of {len(ids)} records changed"}
    if pos:
        sel = np.asarray(pos)
        store.upsert(
            name,
            [ids[i] for i in pos],
            vectors[sel],
            [metadatas[i] for i in pos] if metadatas is not None else None,
            [documents[i] for i in pos] if documents is not None else None,
            progress=progress,
        )
    return {"reused": True, "upserted": len(pos)}
