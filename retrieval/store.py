"""Chroma collections for book vectors and reader-history vectors.

We always hand Chroma our own vectors (and register our own embedding function for text
queries), because Chroma's default embedding function downloads a model.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .embed import Embedder, offline_env

if TYPE_CHECKING:
    from .config import ChromaConfig

BOOKS = "books"
USERS = "users"
USERS_EF_SEARCH = 400

# Chroma keeps one "system" per path in a process-wide cache that is not safe to create or tear
# down from several threads at once (that race gave `KeyError .../chroma` and `Could not connect
# to tenant default_tenant`): opening and closing go through this lock.
_OPEN_LOCK = threading.Lock()


def _chroma():
    offline_env()
    import chromadb
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
    from chromadb.utils.embedding_functions import register_embedding_function

    return chromadb, Documents, EmbeddingFunction, Embeddings, register_embedding_function


def make_embedding_function(embedder: Embedder):
    """A Chroma embedding function backed by our (offline) sentence-transformer."""
    chromadb, Documents, EmbeddingFunction, Embeddings, register = _chroma()

    class ReadnextEmbeddingFunction(EmbeddingFunction[Documents]):
        def __init__(self, model: str = embedder.model_name) -> None:
            self._embedder = embedder if model == embedder.model_name else Embedder(model)

        def __call__(self, input: Documents) -> Embeddings:
            return list(self._embedder.encode(list(input)))

        @staticmethod
        def name() -> str:
            return "readnext-sentence-transformer"

        def get_config(self) -> dict[str, Any]:
            return {"model": self._embedder.model_name}

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> ReadnextEmbeddingFunction:
            return ReadnextEmbeddingFunction(config.get("model", embedder.model_name))

        def default_space(self):
            return "cosine"

    try:
        register(ReadnextEmbeddingFunction)
    except ValueError:
        pass  # already registered in this process
    return ReadnextEmbeddingFunction()


def chroma_client(path: str | Path, chroma: ChromaConfig | None = None):
    """The one place a Chroma client is made: embedded in ``path``, or a Chroma server.

    Args:
        path: the index's ``chroma`` folder (used by the embedded mode only).
        chroma: ``[chroma]`` settings; None or ``mode = "embedded"``: a ``PersistentClient``.

    Returns:
        A ``chromadb`` client with telemetry off.
    """
    chromadb, *_ = _chroma()
    from chromadb.config import Settings as ChromaSettings

    cs = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if chroma is None or chroma.mode == "embedded":
        return chromadb.PersistentClient(path=str(path), settings=cs)
    try:
        return chromadb.HttpClient(host=chroma.host, port=chroma.port, ssl=chroma.ssl, settings=cs)
    except Exception as e:  # chromadb raises ValueError/ConnectError/... when unreachable
        from .errors import ReadnextError

        raise ReadnextError(
            f"cannot reach the Chroma server at {chroma.host}:{chroma.port} "
            f"({type(e).__name__}): start it with `chroma run --path DIR --host {chroma.host} "
            f'--port {chroma.port}` or set chroma.mode = "embedded"'
        ) from None


def collection_names(path: str | Path, chroma: ChromaConfig | None = None) -> dict[str, str]:
    """Collection names of one index: ``books``/``users`` embedded (one Chroma per index folder);
    on a server, which holds every index version side by side, prefixed with the index folder's
    name (unique per ingest), so a new ingest never overwrites the collections being served."""
    if chroma is None or chroma.mode == "embedded":
        return {BOOKS: BOOKS, USERS: USERS}
    p = Path(path)
    folder = p.parent.name if p.name == "chroma" else p.name
    # Chroma names: 3-512 of [a-zA-Z0-9._-], starting and ending with a letter or digit
    key = re.sub(r"[^A-Za-z0-9._-]", "-", f"{chroma.collection_prefix}-{folder}")[:400]
    return {BOOKS: f"{key}-{BOOKS}", USERS: f"{key}-{USERS}"}


@contextlib.contextmanager
def chroma_write_lock(path: str | Path, exclusive: bool = False) -> Iterator[None]:
    """A file lock on one embedded Chroma folder: writers share it, a copy holds it alone.

    A warm ingest copies the live index's folder (``retrieval.chroma_reuse``) while servers may
    write feedback profiles into it: the copy waits for writes in flight and blocks new ones.
    """
    lock = Path(path).parent / "chroma.write.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # the folder is gone (collected): nothing to guard
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


class VectorStore:
    """The two Chroma collections of one index: ``books`` and ``users`` (cosine space).

    Args:
        path: the index's ``chroma`` folder.
        embedder: for text queries (None: vector queries only).
        chroma: ``[chroma]`` settings (None: embedded in ``path``).
    """

    def __init__(
        self,
        path: str | Path,
        embedder: Embedder | None = None,
        chroma: ChromaConfig | None = None,
    ) -> None:
        self.path = Path(path)
        self.names = collection_names(self.path, chroma)
        self._write_lock = threading.Lock()  # one writer at a time per store; reads run freely
        with _OPEN_LOCK:
            self.client = chroma_client(self.path, chroma)
            ef = make_embedding_function(embedder) if embedder is not None else None
            kw: dict[str, Any] = {
                "configuration": {"hnsw": {"space": "cosine"}},
                "embedding_function": ef,
            }
            self.books = self.client.get_or_create_collection(self.names[BOOKS], **kw)
            # Readers-like-you asks `users` for ~100 neighbours: a wider HNSW search (ef_search)
            # keeps Chroma's answer equal to the exact one (bench/bench_readers.py measures recall).
            ukw = {
                **kw,
                "configuration": {
                    "hnsw": {
                        "space": "cosine",
                        "ef_search": USERS_EF_SEARCH,
                        "ef_construction": USERS_EF_SEARCH,
                    }
                },
            }
            self.users = self.client.get_or_create_collection(self.names[USERS], **ukw)
            # how each collection is (re)created: a rebuild (privacy.purge_from_collection)
            # must keep the HNSW settings, or `users` loses its wider search after a forget
            self.create_kwargs: dict[str, dict[str, Any]] = {BOOKS: kw, USERS: ukw}

    def _batches(self, n: int) -> Iterable[slice]:
        size = min(4000, self.client.get_max_batch_size())
        for s in range(0, n, size):
            yield slice(s, min(n, s + size))

    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadatas: Sequence[dict] | None = None,
        documents: Sequence[str] | None = None,
        progress: bool = False,
    ) -> None:
        col = self.books if collection == BOOKS else self.users
        rng = list(self._batches(len(ids)))
        if progress and len(rng) > 1:
            from tqdm.auto import tqdm

            rng = tqdm(rng, desc=f"chroma {collection}", unit="batch")
        for sl in rng:
            with self._write_lock, chroma_write_lock(self.path):
                col.upsert(
                    ids=list(ids[sl]),
                    embeddings=vectors[sl].astype(np.float32),
                    metadatas=list(metadatas[sl]) if metadatas is not None else None,
                    documents=list(documents[sl]) if documents is not None else None,
                )

    def query(
        self, collection: str, vector: np.ndarray, n: int, where: dict | None = None
    ) -> list[tuple[str, float]]:
        """Nearest neighbours of ``vector``: ``[(id, cosine similarity)]``, best first."""
        col = self.books if collection == BOOKS else self.users
        n = max(1, min(n, col.count()))
        res = col.query(
            query_embeddings=[vector.astype(np.float32)],
            n_results=n,
            where=where,
            include=["distances"],
        )
        return [(i, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0])]

    def query_vectors(
        self, collection: str, vector: np.ndarray, n: int
    ) -> list[tuple[str, np.ndarray]]:
        """Nearest neighbours of ``vector`` with their stored vectors: ``[(id, vector)]``, best
        first (the readers source computes the similarity itself, as its exact path does).

        Args:
            collection: ``"books"`` or ``"users"``.
            vector: the query vector.
            n: how many neighbours.

        Returns:
            ``(id, float32 vector)`` pairs, nearest first.
        """
        col = self.books if collection == BOOKS else self.users
        n = max(1, min(n, col.count()))
        res = col.query(
            query_embeddings=[vector.astype(np.float32)], n_results=n, include=["embeddings"]
        )
        return [
            (i, np.asarray(e, dtype=np.float32))
            for i, e in zip(res["ids"][0], res["embeddings"][0])
        ]

    def get_vectors(self, collection: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        col = self.books if collection == BOOKS else self.users
        res = col.get(ids=list(ids), include=["embeddings"])
        return {i: np.asarray(e, dtype=np.float32) for i, e in zip(res["ids"], res["embeddings"])}

    def get_metadata(self, collection: str, ids: Sequence[str]) -> dict[str, dict]:
        col = self.books if collection == BOOKS else self.users
        res = col.get(ids=list(ids), include=["metadatas"])
        return dict(zip(res["ids"], res["metadatas"]))

    def count(self, collection: str) -> int:
        return (self.books if collection == BOOKS else self.users).count()

    def close(self) -> None:
        """Release this path's Chroma system (other open stores in the process keep theirs)."""
        with _OPEN_LOCK:
            try:
                self.client.close()
            except Exception:  # pragma: no cover - best effort on shutdown
                pass
