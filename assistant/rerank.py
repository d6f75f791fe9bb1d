"""LLM reranking of the top retrieval candidates.

Pointwise mode (default, needs logprobs): each candidate gets ``llm_score = log P(Yes) - log P(No)``
from the ``rerank_yes_no`` prompt. Listwise mode (``rerank_listwise``, used automatically when the
backend has no logprobs): the model orders labels ``B1..Bn``; ``llm_score = -rank``.

Fusion over the ``top_n`` head: ``fused = z(retrieval_score) + weight * z(llm_score)``, where ``z``
is the z-score within the head (0 when all values are equal). The head is sorted by ``fused``
(ties keep retrieval order) and the tail is appended unchanged. ``weight == 0`` returns the input
order exactly, but still asks the model so that ``llm_score`` can be shown and studied (callers
that want no model cost simply do not rerank). Tiny CPU models are near chance at relevance, so
the expected default weight is ~0; eval tunes it on validation users.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from assistant.llm.base import LLMBackend, LLMError
from prompts import render_messages
from prompts.format import format_book, format_history
from retrieval.types import Book

log = logging.getLogger(__name__)
_LABEL = re.compile(r"\bB\s*0*(\d{1,4})\b", re.IGNORECASE)


@dataclass(frozen=True)
class RerankResult:
    """One reranked candidate. ``llm_score``/``fused_score`` are ``None`` where the model was not
    asked."""

    book_id: str
    retrieval_score: float
    llm_score: float | None
    fused_score: float | None


def zscores(values: Sequence[float]) -> list[float]:
    """Population z-scores; all zeros when the values have no spread."""
    n = len(values)
    if n == 0:
        return []
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return [0.0] * n if sd < 1e-12 else [(v - mean) / sd for v in values]


def fuse_head(
    retrieval: Sequence[float], llm: Sequence[float], weight: float
) -> tuple[list[int], list[float]]:
    """The reranker's fusion of a head: ``z(retrieval) + weight * z(llm)``, sorted (ties keep
    retrieval order); weight 0 keeps the given order exactly. Returns ``(order, fused)``.

    One function for the live reranker and eval's weight tuning, so both rank alike.
    """
    fused = [r + weight * x for r, x in zip(zscores(list(retrieval)), zscores(list(llm)))]
    # Weight 0 means "retrieval order": kept as given even if the scores are not sorted.
    order = (
        list(range(len(fused)))
        if weight == 0
        else sorted(range(len(fused)), key=lambda i: (-fused[i], i))
    )
    return order, fused


def parse_listwise(text: str, n: int) -> list[int]:
    """Candidate positions (0-based) in the order the reply names labels ``B1..Bn``.

    Unknown labels and repeats are dropped; labels never named are appended in retrieval order.
    """
    seen: list[int] = []
    for m in _LABEL.finditer(text or ""):
        i = int(m.group(1)) - 1
        if 0 <= i < n and i not in seen:
            seen.append(i)
    return seen + [i for i in range(n) if i not in seen]


class LLMReranker:
    """Fuses an LLM relevance signal with retrieval scores (see module docstring)."""

    def __init__(
        self,
        backend: LLMBackend,
        weight: float,
        top_n: int = 20,
        prompt: str = "rerank_yes_no",
        batch_size: int = 20,
        history_k: int = 5,
        desc_chars: int = 200,
    ) -> None:
        """``weight`` scales the z-scored LLM signal; ``top_n`` candidates are reranked, the rest
        kept."""
        if not math.isfinite(weight):
            raise ValueError(f"rerank weight must be a finite number, got {weight!r}")
        if top_n < 1 or batch_size < 1 or history_k < 1:
            raise ValueError("top_n, batch_size and history_k must all be >= 1")
        if prompt not in ("rerank_yes_no", "rerank_listwise"):
            raise ValueError(
                f"unknown rerank prompt {prompt!r}: use rerank_yes_no or rerank_listwise"
            )
        self.backend, self.weight, self.top_n = backend, float(weight), top_n
        self.batch_size, self.history_k, self.desc_chars = batch_size, history_k, desc_chars
        self.prompt = prompt
        self.last_error: str | None = None
        self.last_prompt_version: str | None = None

    @property
    def mode(self) -> str:
        """``"off"`` (no model: the "none" backend), ``"pointwise"`` or ``"listwise"``."""
        if self.backend.name == "none":
            return "off"
        if self.prompt == "rerank_yes_no" and self.backend.supports_logprobs:
            return "pointwise"
        return "listwise"

    def rerank(
        self, history_books: list[tuple[Book, float]], candidates: list[tuple[Book, float]]
    ) -> list[RerankResult]:
        """Rerank ``candidates`` (in retrieval order) for a reader with rated ``history_books``
        (oldest first).

        Returns a permutation of the candidates. On a backend error the retrieval order is
        returned and the message kept in ``last_error``.
        """
        ids = [b.book_id for b, _ in candidates]
        if len(set(ids)) != len(ids):
            raise ValueError(
                "rerank candidates contain duplicate book_ids; deduplicate before reranking"
            )
        self.last_error = None
        head, tail = candidates[: self.top_n], candidates[self.top_n :]
        keep = [RerankResult(b.book_id, float(s), None, None) for b, s in tail]
        mode = self.mode
        if mode == "off" or len(head) < 2:
            return [
                RerankResult(b.book_id, float(s), None, z)
                for (b, s), z in zip(head, zscores([s for _, s in head]))
            ] + keep
        history = format_history(history_books, self.history_k)
        try:
            llm = (
                self._pointwise(history, head)
                if mode == "pointwise"
                else self._listwise(history, head)
            )
        except LLMError as e:
            self.last_error = str(e)
            log.warning("LLM rerank skipped: %s", e)
            return [RerankResult(b.book_id, float(s), None, None) for b, s in head] + keep
        order, fused = fuse_head([s for _, s in head], llm, self.weight)
        return [
            RerankResult(head[i][0].book_id, float(head[i][1]), llm[i], fused[i]) for i in order
        ] + keep

    def _pointwise(self, history: str, head: list[tuple[Book, float]]) -> list[float]:
        prompts = []
        for book, _ in head:
            msgs, self.last_prompt_version = render_messages(
                "rerank_yes_no", history=history, candidate=format_book(book, self.desc_chars)
            )
            prompts.append(msgs)
        scores: list[float] = []
        for i in range(0, len(prompts), self.batch_size):
            scores.extend(self.backend.yes_no_scores(prompts[i : i + self.batch_size]))
        return scores

    def _listwise(self, history: str, head: list[tuple[Book, float]]) -> list[float]:
        lines = "\n".join(
            f"B{i + 1}: {format_book(b, self.desc_chars)}" for i, (b, _) in enumerate(head)
        )
        msgs, self.last_prompt_version = render_messages(
            "rerank_listwise", history=history, candidates=lines, n=str(len(head))
        )
        text = self.backend.generate(msgs, max_new_tokens=6 * len(head) + 8)
        order = parse_listwise(text, len(head))
        llm = [0.0] * len(head)
        for rank, i in enumerate(order):
            llm[i] = -float(rank)
        return llm
