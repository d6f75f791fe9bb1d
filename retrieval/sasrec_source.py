"""The SASRec candidate source: next-book scores of a trained
:class:`~retrieval.sasrec.SASRecModel`, with each reader's final hidden state kept.

A reader's next-book scores are ``h @ E.T``: ``h`` is the transformer's output at the newest
position of the reader's (last ``max_len``) books, ``E`` the item embeddings. The forward pass
that makes ``h`` was ~60% of a hybrid ``recommend`` (issue #14), and it depends only on the
model and that sequence. :class:`ReaderStates` therefore keeps ``h`` keyed by a digest of the
sequence the model sees: computed once (for every reader at ingest, :func:`save_reader_states`;
else on first use), and a history that changes through feedback or an import is a different
key, so nothing is ever stale and nothing needs invalidating. A recommend is then one
``(hidden,) x (hidden, items)`` matmul.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .library import Library
from .sasrec import NEG, SASRecModel, _pad_left, _threads, score_contexts, training_sequences
from .sources import CandidateSource
from .types import UserContext

__all__ = [
    "FittedSASRec",
    "ReaderStates",
    "SASRecSource",
    "load_reader_states",
    "save_reader_states",
]

STATES_FILE = "sasrec_states.npz"
# Readers beyond the precomputed ones (feedback changed their history, imports, ad-hoc requests)
# kept per process; each entry is hidden * 8 bytes plus its key.
LRU_SIZE = 20_000


def _tail(model: SASRecModel, seqs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What the model reads of each sequence: its last ``max_len`` ids, as int32."""
    L = model.cfg.max_len
    return [np.ascontiguousarray(np.asarray(s)[-L:], dtype=np.int32) for s in seqs]


def _keys(tails: Sequence[np.ndarray]) -> list[bytes]:
    """One 16-byte digest per sequence tail (the exact input of the forward pass)."""
    return [hashlib.blake2b(t.tobytes(), digest_size=16).digest() for t in tails]


def _forward(model: SASRecModel, tails: Sequence[np.ndarray], batch: int = 512) -> np.ndarray:
    """(readers, hidden) float64 final states of non-empty sequence tails.

    Padded to ``max_len`` as ``SASRecModel.next_scores`` pads (a reader's state must not
    depend on the batch it was computed in); batched by length, so a batch of short readers
    and one of long readers are each one pass.
    """
    import torch

    out = np.empty((len(tails), model.cfg.hidden), dtype=np.float64)
    order = np.argsort([len(t) for t in tails], kind="stable")
    with _threads(model.cfg.threads), torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            part = [tails[i].astype(np.int64) for i in idx]
            X = torch.from_numpy(_pad_left(part, model.cfg.max_len))
            out[idx] = model.net(X)[:, -1].numpy()
    return out


class ReaderStates:
    """SASRec final hidden states by sequence digest: precomputed rows plus a bounded LRU.

    Args:
        model: the trained model the states belong to.
        keys: digests of the precomputed sequences (``_keys`` of the padded input).
        states: (len(keys), hidden) float64 states, row i for ``keys[i]``.
        lru_size: how many states computed while serving are kept.
    """

    def __init__(
        self,
        model: SASRecModel,
        keys: Sequence[bytes] = (),
        states: np.ndarray | None = None,
        lru_size: int = LRU_SIZE,
    ) -> None:
        self.model = model
        self._row = {k: i for i, k in enumerate(keys)}
        hidden = model.cfg.hidden
        self._base = states if states is not None else np.empty((0, hidden))
        self._lru: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lru_size = lru_size
        self._lock = threading.Lock()
        # item embeddings of the output columns, as the plain path's ``logits`` uses them
        self._Et = np.ascontiguousarray(
            model.net.item.weight[1:].detach().cpu().numpy().astype(np.float64).T
        )
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._row) + len(self._lru)

    def states(self, seqs: Sequence[np.ndarray]) -> np.ndarray:
        """(len(seqs), hidden) states of 1-based id sequences; computes (and keeps) the missing.

        Args:
            seqs: each reader's known books as model ids, oldest first.

        Returns:
            The states, row for row (a row for an empty sequence is meaningless; callers mask it).
        """
        tails = _tail(self.model, seqs)
        keys = _keys(tails)
        out = np.empty((len(seqs), self.model.cfg.hidden), dtype=np.float64)
        missing = []
        with self._lock:
            for i, k in enumerate(keys):
                j = self._row.get(k)
                if j is not None:
                    out[i] = self._base[j]
                    continue
                h = self._lru.get(k)
                if h is not None:
                    self._lru.move_to_end(k)
                    out[i] = h
                else:
                    missing.append(i)
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
        if missing:
            H = _forward(self.model, [tails[i] for i in missing])
            out[missing] = H
            with self._lock:
                for i, h in zip(missing, H):
                    self._lru[keys[i]] = h
                    while len(self._lru) > self._lru_size:
                        self._lru.popitem(last=False)
        return out

    def next_scores(self, seqs: Sequence[np.ndarray]) -> np.ndarray:
        """Like :meth:`SASRecModel.next_scores`: (readers, n_items) logits, ``-inf`` rows for
        readers without a known book.

        Args:
            seqs: each reader's known books as model ids, oldest first.

        Returns:
            The logits.
        """
        out = np.full((len(seqs), len(self.model.item_ids)), NEG, dtype=np.float64)
        has = np.array([len(s) > 0 for s in seqs], dtype=bool)
        if has.any():
            idx = np.flatnonzero(has)
            out[idx] = self.states([seqs[i] for i in idx]) @ self._Et
        return out


def _states_key(model: SASRecModel, keys: Sequence[bytes]) -> str:
    h = hashlib.sha256(b"states-v1")
    for k, v in sorted(model.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    for k in keys:
        h.update(k)
    return h.hexdigest()[:24]


def save_reader_states(
    model: SASRecModel, lib: Library, path: Path, cache_dir: Path | None = None
) -> dict:
    """Compute every reader's final SASRec state and write them to ``path`` (an ``.npz``).

    Args:
        model: the model ingest trained on ``lib``.
        lib: the Library being ingested (its readers' sequences, oldest first).
        path: where to write (the index folder's ``sasrec_states.npz``).
        cache_dir: if given, the same model and sequences reuse the states computed before
            (a warm re-ingest), keyed by a digest of both.

    Returns:
        ``{"readers", "from_cache"}``.
    """
    import shutil

    _, seqs = training_sequences(lib)
    # what serving encodes: the history as model ids (a book the model lacks is skipped)
    seqs = [s for s in seqs if len(s)]
    tails = _tail(model, seqs)
    keys = _keys(tails)
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"sasrec-states-{_states_key(model, keys)}.npz"
        if cached.is_file():
            shutil.copyfile(cached, path)
            return {"readers": len(seqs), "from_cache": True}
    H = _forward(model, tails)
    tmp = path.with_suffix(".tmp.npz")
    # keys as raw bytes (uint8, not "S16": numpy strips a digest's trailing NUL bytes)
    np.savez(tmp, keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 16), states=H)
    tmp.replace(path)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, cached)
    return {"readers": len(seqs), "from_cache": False}


def load_reader_states(model: SASRecModel, path: Path) -> ReaderStates:
    """The states ``save_reader_states`` wrote (none when the file is missing: all lazy).

    Args:
        model: the model they belong to (loaded from the same index folder).
        path: the ``.npz`` file.

    Returns:
        The states cache.
    """
    if not Path(path).is_file():
        return ReaderStates(model)
    with np.load(path) as d:
        keys, states = d["keys"], d["states"]
    if states.shape[1:] != (model.cfg.hidden,):
        return ReaderStates(model)  # another model's file: compute lazily instead
    return ReaderStates(model, [k.tobytes() for k in keys], states)


@dataclass
class FittedSASRec:
    """An index's SASRec: the model and its readers' kept states (``Index.sasrec_model``).

    Attributes:
        model: the trained model.
        states: the readers' final states (precomputed at ingest, filled lazily after).
    """

    model: SASRecModel
    states: ReaderStates


class SASRecSource(CandidateSource):
    """Scores every rated book by how likely SASRec finds it as the reader's next one.

    Args:
        lib: the Library the model was trained on (or any with the same books).
        model: a trained model (``train_sasrec`` at ingest, ``SASRecModel.load`` when serving).
        states: the kept reader states (``load_reader_states``; ``None``: an empty cache, filled
            as readers are scored).
        cache_states: keep final states at all (``False``: the plain forward pass every call).

    Books the model never saw and readers without a known book get ``-inf`` (no opinion).
    """

    name = "sasrec"

    def __init__(
        self,
        lib: Library,
        model: SASRecModel,
        states: ReaderStates | None = None,
        cache_states: bool = True,
    ) -> None:
        super().__init__(lib)
        self.model = model
        self.states = (states or ReaderStates(model)) if cache_states else None
        self._cols = np.array([lib.index.get(b, -1) for b in model.item_ids])
        self._ok = self._cols >= 0

    def score_batch(self, ctxs: Sequence[UserContext]) -> np.ndarray:
        if self.states is None:
            return score_contexts(self.model, self.lib, ctxs)
        out = np.full((len(ctxs), self.lib.n_items), NEG)
        if not ctxs:
            return out
        seqs = [self.model.encode([r.book_id for r in c.history]) for c in ctxs]
        S = self.states.next_scores(seqs)
        out[:, self._cols[self._ok]] = S[:, self._ok]
        return out

    def score(self, ctx: UserContext) -> np.ndarray:
        return self.score_batch([ctx])[0]
