"""SASRec: a causal self-attention model of the reading order, as a candidate source.

Kang & McAuley (ICDM 2018) with the full cross-entropy loss over the catalog of Klenitskiy &
Vasilev (RecSys 2023, "gSASRec"/"SASRec+" line of work): at every position of a reader's
sequence the model predicts the next book with a softmax over every rated book, instead of one
sampled negative. Item embeddings are tied between input and output.

Only meaningful when events carry an order (timestamps or a documented chronological file,
``Library.ordered``); :func:`train_sasrec` refuses unordered data. Training is CPU friendly:
sequences are bucketed by length (most readers have a dozen books, not ``max_len``), threads are
capped (``SASRecConfig.threads``), and an early stop watches next-book ndcg@10 on a seeded set
of readers whose last event is held out from training.

Libraries checked first (Dec 2026): RecBole 1.2.1 would pull ray 2.6.3 and tensorboard;
replay-rec 0.22 would downgrade pandas and add polars/pyarrow (its SASRec also wants
lightning); ezsasrec is unmaintained since 2022. None fit the pinned stack cleanly, hence this
~250-line implementation.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import SASRecConfig
from .library import Library
from .types import UserContext

NEG = -np.inf

__all__ = ["SASRecModel", "TrainReport", "train_sasrec", "training_sequences"]


def _torch():
    import torch

    return torch


def training_sequences(
    lib: Library, shuffle_seed: int | None = None
) -> tuple[list[str], list[np.ndarray]]:
    """Every reader's rated books as 1-based ids of the rated part of the catalog, oldest first.

    ``shuffle_seed`` permutes each reader's sequence (the shuffled-order control experiment).
    """
    active = np.flatnonzero(lib.pop_count > 0)
    col = np.zeros(lib.n_items, dtype=np.int64)
    col[active] = np.arange(1, len(active) + 1)
    users, seqs = [], []
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    for u, hist in lib.histories().items():
        s = np.array(
            [col[lib.index[r.book_id]] for r in hist if r.book_id in lib.index], dtype=np.int64
        )
        s = s[s > 0]
        if len(s):
            if rng is not None:
                s = rng.permutation(s)
            users.append(u)
            seqs.append(s)
    return users, seqs


@dataclass
class TrainReport:
    """What training did: epochs run, the best one, its validation ndcg@10 and the time taken."""

    epochs: int = 0
    best_epoch: int = 0
    best_val_ndcg: float = 0.0
    seconds: float = 0.0
    seconds_per_epoch: float = 0.0
    sequences: int = 0
    validation_readers: int = 0
    history: list[float] = field(default_factory=list)
    shuffled: bool = False
    warm_start: bool = False
    from_cache: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _build_net(n_items: int, cfg: SASRecConfig):
    torch = _torch()
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(cfg.hidden)
            self.attn = nn.MultiheadAttention(
                cfg.hidden, cfg.heads, dropout=cfg.dropout, batch_first=True
            )
            self.ln2 = nn.LayerNorm(cfg.hidden)
            self.ff = nn.Sequential(
                nn.Linear(cfg.hidden, cfg.hidden),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.hidden, cfg.hidden),
                nn.Dropout(cfg.dropout),
            )
            self.drop = nn.Dropout(cfg.dropout)

        def forward(self, x, mask, keep):
            q = self.ln1(x)
            a, _ = self.attn(q, q, q, attn_mask=mask, need_weights=False)
            x = x + self.drop(a)
            x = x + self.ff(self.ln2(x))
            return x * keep

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.item = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
            self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
            # N(0, 1/hidden), not torch's N(0, 1): the input is scaled by sqrt(hidden) and the
            # output logits are dot products with these same (tied) rows, so N(0, 1) starts with
            # logits of std ~sqrt(hidden) and the first ~10 epochs sat at popularity level
            # (goodbooks validation ndcg@10 0.07 until epoch 10); with this scale they start ~1
            nn.init.normal_(self.item.weight, std=cfg.hidden**-0.5)
            nn.init.normal_(self.pos.weight, std=cfg.hidden**-0.5)
            with torch.no_grad():
                self.item.weight[0].zero_()
            self.drop = nn.Dropout(cfg.dropout)
            self.blocks = nn.ModuleList([Block() for _ in range(cfg.blocks)])
            self.ln = nn.LayerNorm(cfg.hidden)

        def forward(self, seq):
            """``seq``: (B, L) left-padded 1-based ids -> (B, L, hidden) states."""
            B, L = seq.shape
            keep = (seq > 0).unsqueeze(-1).to(self.item.weight.dtype)
            # positions count back from the newest book (0 = last), so a batch padded to its own
            # longest sequence and a reader padded to max_len see the same position embeddings
            pos = torch.arange(L - 1, -1, -1, device=seq.device)
            x = self.item(seq) * math.sqrt(cfg.hidden) + self.pos(pos)[None]
            x = self.drop(x) * keep
            # causal, and padded keys hidden; a position may always see itself (no empty rows)
            causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).triu(1)
            pad = (seq == 0)[:, None, :] & ~torch.eye(L, dtype=torch.bool, device=seq.device)[None]
            mask = (causal[None] | pad).repeat_interleave(cfg.heads, dim=0)
            for b in self.blocks:
                x = b(x, mask, keep)
            return self.ln(x)

        def logits(self, h):
            return h @ self.item.weight[1:].T  # (.., n_items): item 1 is column 0

    return Net()


def _pad_left(seqs: Sequence[np.ndarray], L: int) -> np.ndarray:
    out = np.zeros((len(seqs), L), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-L:]
        if len(s):
            out[i, L - len(s) :] = s
    return out


# Bumped when training changes what it computes: cached models of an older version are retrained.
# 2: exactly ``cfg.threads`` threads (was "at most"), so the thread count is part of the key.
# 3: embeddings start at N(0, 1/hidden); no fill of uninitialized memory while training.
TRAIN_VERSION = 3


def _data_key(seqs: Sequence[np.ndarray], cfg: SASRecConfig, n_items: int, shuffled: bool) -> str:
    """The cache key: the sequences, the config, and the effective thread count (the last bits
    of a float sum depend on how it is split over threads: 1 and 2 threads train different
    models from the same data)."""
    threads = cfg.threads if cfg.threads > 0 else _torch().get_num_threads()
    h = hashlib.sha256()
    h.update(repr((sorted(asdict(cfg).items()), n_items, shuffled)).encode())
    h.update(f"|threads={threads}|v={TRAIN_VERSION}".encode())
    for s in seqs:
        h.update(s.astype(np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()[:24]


class SASRecModel:
    """A trained SASRec over the rated part of a Library's catalog.

    ``item_ids[j]`` is the book of output column ``j`` (1-based input id ``j + 1``).
    """

    def __init__(
        self, net, cfg: SASRecConfig, item_ids: list[str], report: TrainReport | None = None
    ) -> None:
        # scored in float64: a reader's scores alone and in a batch agree to ~1e-12 (float32
        # batched matmuls differ from single ones by ~1e-6, enough to swap near-ties)
        self.net = net.eval().double()
        self.cfg = cfg
        self.item_ids = list(item_ids)
        self.report = report or TrainReport()
        self._id = {b: j + 1 for j, b in enumerate(self.item_ids)}

    def encode(self, history_ids: Sequence[str]) -> np.ndarray:
        """A history (book ids, oldest first) as 1-based model ids; unknown books are skipped."""
        return np.array([self._id[b] for b in history_ids if b in self._id], dtype=np.int64)

    def next_scores(self, seqs: Sequence[np.ndarray], batch: int = 512) -> np.ndarray:
        """(readers, n_items) next-book logits; a reader without known books gets a row of
        ``-inf``."""
        torch = _torch()
        n = len(self.item_ids)
        out = np.full((len(seqs), n), NEG, dtype=np.float64)
        L = self.cfg.max_len
        with _threads(self.cfg.threads), torch.inference_mode():
            for s in range(0, len(seqs), batch):
                part = seqs[s : s + batch]
                # always padded to max_len: a reader scores the same alone and in a batch
                X = torch.from_numpy(_pad_left(part, L))
                h = self.net(X)[:, -1]
                S = self.net.logits(h).numpy()
                has = np.array([len(p) > 0 for p in part])
                out[s : s + len(part)][has] = S[has]
        return out

    def save(self, path: Path) -> None:
        torch = _torch()
        torch.save(
            {
                "config": asdict(self.cfg),
                "item_ids": self.item_ids,
                "state": self.net.state_dict(),
                "report": self.report.to_dict(),
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> SASRecModel:
        torch = _torch()
        d = torch.load(path, map_location="cpu", weights_only=True)
        cfg = SASRecConfig(**d["config"])
        net = _build_net(len(d["item_ids"]), cfg)
        net.load_state_dict(d["state"])
        rep = TrainReport(**d.get("report", {}))
        return cls(net, cfg, d["item_ids"], rep)


class _threads:
    """Run a block with exactly ``n`` torch intra-op threads (and, for training, deterministic
    algorithms).

    Exactly ``n``, not "at most ``n``": how a sum is split over threads can change its last
    bits, so ``readnext ingest`` and ``readnext eval`` (other processes, other thread defaults)
    only train the same model from the same data with the same thread count
    (``SASRecConfig.threads``). ``0`` keeps the process's count. Both settings are restored.
    Scoring leaves the deterministic-algorithms switch alone: it is process-wide, and a server
    may run a GPU LLM in another thread whose kernels have no deterministic variant.
    """

    def __init__(self, n: int, deterministic: bool = False) -> None:
        self.n = int(n)
        self.deterministic = deterministic

    def __enter__(self):
        torch = _torch()
        self.old = torch.get_num_threads()
        self.old_det = torch.are_deterministic_algorithms_enabled()
        if self.n > 0:
            torch.set_num_threads(self.n)
        if self.deterministic:
            torch.use_deterministic_algorithms(True)
            # deterministic mode also fills every new tensor with NaN (a guard for kernels that
            # read uninitialized memory, which no CPU kernel here does): ~30% of an epoch on CPU
            self.old_fill = torch.utils.deterministic.fill_uninitialized_memory
            torch.utils.deterministic.fill_uninitialized_memory = False
        return self

    def __exit__(self, *exc):
        torch = _torch()
        torch.set_num_threads(self.old)
        if self.deterministic:
            torch.use_deterministic_algorithms(self.old_det)
            torch.utils.deterministic.fill_uninitialized_memory = self.old_fill


def _val_ndcg(net, prefixes: list[np.ndarray], targets: np.ndarray, L: int, k: int = 10) -> float:
    torch = _torch()
    net.eval()
    total = 0.0
    with torch.inference_mode():
        for s in range(0, len(prefixes), 512):
            part = prefixes[s : s + 512]
            h = net(torch.from_numpy(_pad_left(part, L)))[:, -1]
            S = net.logits(h)
            for i, p in enumerate(part):
                S[i, torch.from_numpy(p - 1)] = -torch.inf  # seen books are never ranked
            tgt = torch.from_numpy(targets[s : s + len(part)] - 1)
            t_score = S.gather(1, tgt[:, None])
            rank = (t_score < S).sum(1)
            total += float(torch.where(rank < k, 1.0 / torch.log2(rank.double() + 2), 0.0).sum())
    net.train()
    return total / max(len(prefixes), 1)


def train_sasrec(
    lib: Library,
    cfg: SASRecConfig | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
    shuffle_seed: int | None = None,
    desc: str = "train sasrec",
    init: SASRecModel | None = None,
    max_epochs: int | None = None,
) -> SASRecModel:
    """Train SASRec on every reader's sequence in ``lib`` (full softmax cross-entropy).

    Args:
        lib: the training Library; it must be ordered (``lib.ordered``).
        cfg: hyper-parameters (defaults: the issue's 2 blocks, hidden 64, 1 head, dropout 0.2).
        progress: show a tqdm bar over epochs.
        cache_dir: if given, a model trained on exactly these sequences with this config is
            loaded from there instead of retrained (and a new one is saved there).
        shuffle_seed: train on per-reader shuffled sequences (the order-matters control).
        desc: the progress bar's label.
        init: warm start from this model's weights (same items and architecture): refitting on a
            longer history (the validation-split model refit on the whole training split, a
            re-ingest) then takes a few epochs instead of dozens.
        max_epochs: overrides ``cfg.max_epochs`` (e.g. a shorter budget for a warm start).

    Returns:
        The model at its best validation epoch.
    """
    cfg = cfg or SASRecConfig()
    if not lib.ordered:
        raise ValueError(
            "SASRec needs events with an order (timestamps or a documented chronological file); "
            "this library has none"
        )
    users, seqs = training_sequences(lib)
    active = np.flatnonzero(lib.pop_count > 0)
    item_ids = [lib.books[i].book_id for i in active]
    n = len(item_ids)
    if init is not None and asdict(init.cfg) != asdict(cfg):
        raise ValueError("train_sasrec: init must be a model of the same configuration")
    key = _data_key(seqs, cfg, n, shuffle_seed is not None)
    if shuffle_seed is not None:
        key = hashlib.sha256(f"{key}|shuffle={shuffle_seed}".encode()).hexdigest()[:24]
    if init is not None or max_epochs is not None:
        extra = (
            f"{key}|init={_state_digest(init) if init is not None else None}|epochs={max_epochs}"
        )
        key = hashlib.sha256(extra.encode()).hexdigest()[:24]
    cached = Path(cache_dir) / f"sasrec-{key}.pt" if cache_dir is not None else None
    lock = cached.with_suffix(".lock") if cached is not None else None
    if lock is not None and lock.exists() and not cached.is_file():  # type: ignore[union-attr]
        _wait_for(lock, cached, progress)  # another process is training this very model: reuse it
    if cached is not None and cached.is_file():
        m = SASRecModel.load(cached)
        m.report.from_cache = True
        return m
    if lock is not None:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(str(os.getpid()))
    try:
        return _train(
            seqs,
            item_ids,
            cfg,
            progress,
            cached,
            shuffle_seed,
            desc,
            init,
            max_epochs or cfg.max_epochs,
        )
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


def _wait_for(lock: Path, cached: Path | None, progress: bool) -> None:
    """Wait while the process named in ``lock`` is alive and has not written ``cached``."""
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return
    if progress:
        print(f"sasrec: process {pid} is training this model; waiting for {cached}", flush=True)
    while pid and not (cached is not None and cached.is_file()):
        try:
            os.kill(pid, 0)
        except OSError:
            return  # that process is gone: train here
        time.sleep(5)


def _warm_start(net, init: SASRecModel, item_ids: list[str]) -> None:
    """Copy ``init``'s weights; books it did not know keep their fresh random embedding."""
    torch = _torch()
    state = {k: v for k, v in init.net.state_dict().items() if k != "item.weight"}
    net.load_state_dict(state, strict=False)
    old = init.net.state_dict()["item.weight"]
    pos = {b: j + 1 for j, b in enumerate(init.item_ids)}
    with torch.no_grad():
        for j, b in enumerate(item_ids):
            if b in pos:
                net.item.weight[j + 1] = old[pos[b]]


def _state_digest(model: SASRecModel) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _train(
    seqs: list[np.ndarray],
    item_ids: list[str],
    cfg: SASRecConfig,
    progress: bool,
    cached: Path | None,
    shuffle_seed: int | None,
    desc: str,
    init: SASRecModel | None,
    max_epochs: int,
) -> SASRecModel:
    from tqdm.auto import tqdm

    torch = _torch()
    n = len(item_ids)
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    # validation: the last event of a seeded set of readers with >= 3 events, kept out of training
    eligible = np.flatnonzero([len(s) >= 3 for s in seqs])
    n_val = min(cfg.val_readers, len(eligible) // 5)
    val = set(rng.choice(eligible, size=n_val, replace=False).tolist()) if n_val else set()
    train, prefixes, targets = [], [], []
    for i, s in enumerate(seqs):
        if i in val:
            prefixes.append(s[:-1][-cfg.max_len :])
            targets.append(s[-1])
            s = s[:-1]
        if len(s) >= 2:
            train.append(s[-(cfg.max_len + 1) :])
    if shuffle_seed is not None:
        # the control: training sequences lose their order; validation keeps the true last event
        # (and its true prefix), so the early stop and the curves compare with the ordered model
        srng = np.random.default_rng(shuffle_seed)
        train = [srng.permutation(s) for s in train]
    targets_a = np.asarray(targets, dtype=np.int64)
    with _threads(cfg.threads, deterministic=True):
        torch.manual_seed(cfg.seed)
        net = _build_net(n, cfg)
        if init is not None:
            _warm_start(net, init, item_ids)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
        lengths = np.array([len(s) for s in train])
        order = np.argsort(lengths, kind="stable")
        batches = [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
        rep = TrainReport(
            sequences=len(train),
            validation_readers=len(prefixes),
            shuffled=shuffle_seed is not None,
            warm_start=init is not None,
        )
        if init is not None:  # the starting point must be beaten, else it is kept
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            best = _val_ndcg(net, prefixes, targets_a, cfg.max_len) if prefixes else 0.0
            rep.history.append(round(best, 5))
        else:
            best_state, best = None, -1.0
        bad = 0
        bar = tqdm(
            range(1, max_epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False
        )
        net.train()
        for epoch in bar:
            for bi in rng.permutation(len(batches)):
                b = batches[bi]
                L = int(lengths[b].max())  # length-bucketed batches: pad to this batch's longest
                X = torch.from_numpy(_pad_left([train[j] for j in b], L))
                inp, tgt = X[:, :-1], X[:, 1:]
                if inp.shape[1] > cfg.max_len:
                    inp, tgt = inp[:, -cfg.max_len :], tgt[:, -cfg.max_len :]
                h = net(inp)
                keep = tgt > 0
                loss = torch.nn.functional.cross_entropy(net.logits(h[keep]), tgt[keep] - 1)
                opt.zero_grad()
                loss.backward()
                opt.step()
            score = _val_ndcg(net, prefixes, targets_a, cfg.max_len) if prefixes else 0.0
            rep.history.append(round(score, 5))
            rep.epochs = epoch
            bar.set_postfix(val_ndcg=f"{score:.4f}", best=f"{max(best, score):.4f}")
            if score > best + 1e-5:
                best, bad, rep.best_epoch = score, 0, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience and epoch >= cfg.min_epochs:
                    break
        bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
    rep.best_val_ndcg = round(max(best, 0.0), 6)
    rep.seconds = round(time.perf_counter() - t0, 2)
    rep.seconds_per_epoch = round(rep.seconds / max(rep.epochs, 1), 2)
    model = SASRecModel(net, cfg, item_ids, rep)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        model.save(tmp)
        tmp.replace(cached)
    return model


def score_contexts(model: SASRecModel, lib: Library, ctxs: Sequence[UserContext]) -> np.ndarray:
    """Readers x ``lib`` items: next-book logits where the model knows the book, else ``-inf``."""
    out = np.full((len(ctxs), lib.n_items), NEG)
    if not ctxs:
        return out
    cols = np.array([lib.index.get(b, -1) for b in model.item_ids])
    ok = cols >= 0
    seqs = [model.encode([r.book_id for r in c.history]) for c in ctxs]
    S = model.next_scores(seqs)
    out[:, cols[ok]] = S[:, ok]
    return out
