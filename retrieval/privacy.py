"""Privacy primitives on the data directory: pseudonyms, and erasing one reader's bytes.

Everything here works on files under ``$READNEXT_HOME`` and knows nothing about the chat or
accounts (``assistant.privacy`` orchestrates ``readnext forget`` / ``export`` with these).

Why each step exists (see docs/privacy.md):

- SQLite keeps deleted rows in free pages and in its ``-wal`` file until they are overwritten,
  so erasing uses ``secure_delete``, a ``VACUUM`` and a ``wal_checkpoint(TRUNCATE)``.
- Chroma keeps one full vector per upsert in its write-ahead log (``embeddings_queue``) until
  the HNSW segment is flushed, and HNSW only *marks* deleted vectors. The only way to drop a
  reader's old vectors is to rebuild the collection without them, remove the orphaned segment
  folders and vacuum ``chroma.sqlite3``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import ReadnextError

SECRET_FILE = "secret.key"
LOG_DIR = "logs"
# Reader ids that requests may name: letters, digits and . _ @ - ; no path separators, no spaces.
READER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_READER_ID = 64


def reader_id_from_name(name: str, what: str = "reader name") -> str:
    """A reader id from a name a person typed in a form: spaces become '-' ("Iris Murdoch" ->
    "Iris-Murdoch"); anything else an id may not hold is refused by :func:`check_reader_id`.

    Args:
        name: the typed name (stripped here).
        what: how an error names the value.

    Returns:
        The reader id.
    """
    return check_reader_id(re.sub(r"\s+", "-", (name or "").strip()), what)


def check_reader_id(user_id: object, what: str = "reader id") -> str:
    """Return ``user_id`` if it is a well-formed reader id, else raise a one-line error.

    Args:
        user_id: the id as received (any type: it comes from a request).
        what: how the error names the value.

    Returns:
        The id, unchanged.
    """
    if not isinstance(user_id, str) or not READER_ID_RE.fullmatch(user_id):
        shown = repr(user_id)[:40] + ("…" if len(repr(user_id)) > 40 else "")
        raise ReadnextError(
            f"invalid {what} {shown}: use 1-{MAX_READER_ID} letters, digits, '.', '_', '@' "
            "or '-', starting with a letter or digit"
        )
    return user_id


def home_secret(home: str | Path) -> bytes:
    """The per-home key for pseudonyms (32 random bytes in ``home/secret.key``, mode 0600).

    Created on first use with ``O_EXCL``, so concurrent first calls agree on one key.
    """
    path = Path(home) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
        f.flush()
        os.fsync(f.fileno())
    return key


def pseudonym(secret: bytes, user_id: str) -> str:
    """Keyed hash of a reader id for logs: stable per home, not reversible without the key."""
    return "r-" + hmac.new(secret, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


# -- SQLite -------------------------------------------------------------------------------------


def vacuum_sqlite(path: str | Path) -> None:
    """Rewrite a SQLite file so deleted rows leave no bytes behind (file and ``-wal``)."""
    path = Path(path)
    if not path.is_file():
        return
    c = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        mode = c.execute("PRAGMA journal_mode").fetchone()[0]
        c.execute("VACUUM")
        if str(mode).lower() == "wal":
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        c.close()


# -- index files --------------------------------------------------------------------------------


def _rewrite_npz(path: Path, user_id: str) -> int:
    """Drop the rows of ``user_id`` from an ``.npz`` with a ``user_id`` column; atomic."""
    if not path.is_file():
        return 0
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "user_id" not in arrays:
        return 0
    keep = arrays["user_id"].astype(str) != user_id
    dropped = int((~keep).sum())
    if not dropped:
        return 0
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **{k: v[keep] if v.shape[:1] == keep.shape else v for k, v in arrays.items()})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return dropped


def forget_in_index(index_dir: str | Path, user_id: str) -> dict[str, int]:
    """Remove a reader's rows from one index folder's ratings and to-read files.

    Returns:
        ``{"ratings": n, "to_read": m}`` rows removed.
    """
    d = Path(index_dir)
    _drop_from_digest(d, user_id)
    return {
        "ratings": _rewrite_npz(d / "ratings.npz", user_id),
        "to_read": _rewrite_npz(d / "to_read.npz", user_id),
    }


def _drop_from_digest(index_dir: Path, user_id: str) -> None:
    """Remove the reader's record digest from ``chroma_digest.json`` (see retrieval.chroma_reuse):
    the file then names only readers still held, and matches the purged ``users`` collection."""
    f = index_dir / "chroma_digest.json"
    if not f.is_file():
        return
    try:
        data = json.loads(f.read_text())
    except ValueError:
        f.unlink()  # unreadable: a warm ingest then builds afresh
        return
    if data.get("collections", {}).get("users", {}).pop(user_id, None) is None:
        return
    tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, f)


# -- Chroma -------------------------------------------------------------------------------------


def purge_from_collection(store, collection: str, ids: Sequence[str], batch: int = 2000) -> int:
    """Rebuild a Chroma collection of ``store`` without ``ids``; no copy of their vectors stays.

    A plain delete leaves the vectors in Chroma's log and in the HNSW files (deletes are marks),
    so the other rows are read out, the collection is dropped and recreated, the old segment
    folders are removed and the SQLite file is vacuumed.

    Args:
        store: a ``retrieval.store.VectorStore``.
        collection: "users" (or "books").
        ids: the ids to drop.
        batch: rows per read/write batch.

    Returns:
        How many of ``ids`` were present.
    """
    gone = set(ids)
    col = getattr(store, collection)
    total = col.count()
    keep_ids: list[str] = []
    keep_vecs: list[np.ndarray] = []
    keep_meta: list[dict] = []
    keep_docs: list[str | None] = []
    present = 0
    for off in range(0, total, batch):
        got = col.get(limit=batch, offset=off, include=["embeddings", "metadatas", "documents"])
        for i, e, m, doc in zip(got["ids"], got["embeddings"], got["metadatas"], got["documents"]):
            if i in gone:
                present += 1
                continue
            keep_ids.append(i)
            keep_vecs.append(np.asarray(e, dtype=np.float32))
            keep_meta.append(m)
            keep_docs.append(doc)
    if not present:
        return 0
    client = store.client
    # the collection's own settings (the users' wider HNSW search included), else the default
    kw = getattr(store, "create_kwargs", {}).get(collection) or {
        "configuration": {"hnsw": {"space": "cosine"}},
        "embedding_function": col._embedding_function,
    }
    name = getattr(store, "names", {}).get(collection, collection)
    client.delete_collection(name)
    new = client.create_collection(name, **kw)
    setattr(store, collection, new)
    has_docs = any(d is not None for d in keep_docs)
    for s in range(0, len(keep_ids), batch):
        new.upsert(
            ids=keep_ids[s : s + batch],
            embeddings=np.vstack(keep_vecs[s : s + batch]),
            metadatas=keep_meta[s : s + batch] if any(keep_meta[s : s + batch]) else None,
            documents=keep_docs[s : s + batch] if has_docs else None,
        )
    remove_orphan_segments(store.path)
    vacuum_sqlite(Path(store.path) / "chroma.sqlite3")
    return present


def remove_orphan_segments(chroma_dir: str | Path) -> list[str]:
    """Delete segment folders that no live Chroma segment references (Chroma leaves them)."""
    d = Path(chroma_dir)
    db = d / "chroma.sqlite3"
    if not db.is_file():
        return []
    c = sqlite3.connect(db, timeout=60)
    try:
        live = {str(r[0]) for r in c.execute("SELECT id FROM segments")}
    finally:
        c.close()
    removed = []
    uuid_re = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    for sub in d.iterdir():
        if sub.is_dir() and uuid_re.match(sub.name) and sub.name not in live:
            shutil.rmtree(sub, ignore_errors=True)
            removed.append(sub.name)
    return removed


# -- embedding cache ----------------------------------------------------------------------------


def prune_embedding_cache(cache_dir: str | Path, keep_texts: Iterable[str]) -> int:
    """Delete cached embeddings of every text but ``keep_texts`` (the catalogs' book texts).

    Reader messages are no longer cached on disk; this removes rows older versions wrote.

    Returns:
        Rows deleted over all cache files.
    """
    d = Path(cache_dir)
    if not d.is_dir():
        return 0
    keep = {hashlib.sha1(t.encode("utf-8")).hexdigest() for t in keep_texts}
    deleted = 0
    for f in sorted(d.glob("embeddings-*.sqlite")):
        c = sqlite3.connect(f, timeout=60, isolation_level=None)
        try:
            c.execute("PRAGMA secure_delete=ON")
            drop = [(h,) for (h,) in c.execute("SELECT h FROM emb") if h not in keep]
            if drop:
                c.execute("BEGIN IMMEDIATE")
                c.executemany("DELETE FROM emb WHERE h = ?", drop)
                c.execute("COMMIT")
                deleted += len(drop)
        finally:
            c.close()
        if drop:
            vacuum_sqlite(f)
    return deleted


# -- logs ---------------------------------------------------------------------------------------


def scrub_logs(home: str | Path, tokens: Iterable[str]) -> int:
    """Remove every log line under ``home/logs`` that contains one of ``tokens``.

    Returns:
        Lines removed.
    """
    d = Path(home) / LOG_DIR
    toks = [t for t in tokens if t]
    if not d.is_dir() or not toks:
        return 0
    removed = 0
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        try:
            lines = f.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        except OSError:
            continue
        kept = [ln for ln in lines if not any(t in ln for t in toks)]
        if len(kept) != len(lines):
            removed += len(lines) - len(kept)
            tmp = f.with_name(f".{f.name}.tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, f)
    return removed


# -- erased readers stay erased ----------------------------------------------------------------

FORGOTTEN = "forgotten.json"


def forgotten_pseudonyms(home: str | Path) -> set[str]:
    """Pseudonyms of readers erased with ``readnext forget`` in this data dir."""
    try:
        return set(json.loads((Path(home) / FORGOTTEN).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return set()


def remember_forgotten(home: str | Path, pseudo: str) -> None:
    """Record an erased reader's pseudonym (never the id) so later ingests leave them out."""
    path = Path(home) / FORGOTTEN
    known = forgotten_pseudonyms(home) | {pseudo}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(sorted(known)))
    os.replace(tmp, path)


def drop_forgotten(ds, home: str | Path) -> int:
    """Remove erased readers' rows from a dataset about to be ingested; returns rows dropped."""
    gone = forgotten_pseudonyms(home)
    if not gone or not len(ds.ratings) and not len(ds.to_read):
        return 0
    secret = home_secret(home)
    users = set(ds.ratings["user_id"].astype(str)) | set(ds.to_read["user_id"].astype(str))
    erased = {u for u in users if pseudonym(secret, u) in gone}
    if not erased:
        return 0
    n = int(ds.ratings["user_id"].astype(str).isin(erased).sum())
    ds.ratings = ds.ratings[~ds.ratings["user_id"].astype(str).isin(erased)].reset_index(drop=True)
    ds.to_read = ds.to_read[~ds.to_read["user_id"].astype(str).isin(erased)].reset_index(drop=True)
    ds.notes.append(f"left out {len(erased)} reader(s) erased with `readnext forget` ({n} ratings)")
    return n
