"""The one interface every LLM backend implements, plus the "none" backend and the factory.

A backend turns chat messages (``[{"role": ..., "content": ...}]``) into text (greedy, so
repeatable) and, where the model exposes its next-token distribution, into Yes/No scores for
pointwise reranking. A trailing ``assistant`` message is a *prefill*: backends that set
``supports_prefill`` continue it instead of starting a new reply (the caller prepends it).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

Message = dict[str, str]

# Single-token spellings whose probabilities are pooled (logsumexp) into P("Yes") / P("No").
# Pooling the case and leading-space variants makes the score robust to how a model prefers
# to start its answer; variants that do not encode to exactly one token are skipped.
YES_VARIANTS: tuple[str, ...] = ("Yes", " Yes", "yes", " yes")
NO_VARIANTS: tuple[str, ...] = ("No", " No", "no", " no")


class LLMError(RuntimeError):
    """A backend could not answer (unreachable server, unsupported call, bad output)."""


class LLMBackend(ABC):
    """Abstract LLM backend.

    Attributes:
        name: short kind name: ``"local"``, ``"endpoint"`` or ``"none"``.
        model_id: the model identifier (HF id, path, or remote model name).
        supports_logprobs: whether :meth:`yes_no_scores` works.
        supports_prefill: whether a trailing assistant message is continued.
    """

    name: str = "abstract"
    model_id: str = ""
    supports_logprobs: bool = False
    supports_prefill: bool = False

    @abstractmethod
    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        """Return ``log P("Yes") - log P("No")`` of the next token for each prompt (batched, deterministic)."""

    @abstractmethod
    def generate(self, messages: list[Message], max_new_tokens: int = 160, stop: list[str] | None = None) -> str:
        """Greedy-decode a reply to ``messages``; the text is cut before the first ``stop`` string."""

    @abstractmethod
    def stream(
        self, messages: list[Message], max_new_tokens: int = 160, stop: list[str] | None = None
    ) -> Iterator[str]:
        """Like :meth:`generate` but yields text chunks as they are produced (their concatenation equals ``generate``'s text)."""

    def next_token_logprobs(self, prompts: list[list[Message]], k: int = 20) -> list[list[tuple[str, float]]]:
        """Top-``k`` (token text, log-probability) pairs of the next token per prompt, best first.

        Optional: used by the OpenAI-compatible server to answer ``logprobs`` requests.
        """
        raise LLMError(f"backend {self.name!r} does not expose next-token log-probabilities")

    def describe(self) -> str:
        """One line naming the backend and model, for logs and the UI."""
        return f"{self.name}:{self.model_id}" if self.model_id else self.name


class NoLLM(LLMBackend):
    """The "none" backend: no model at all. Callers check ``backend.name == "none"`` and skip LLM steps."""

    name = "none"
    model_id = ""
    supports_logprobs = False
    supports_prefill = False

    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        raise LLMError("LLM is disabled (--llm none): yes/no scoring is unavailable; use retrieval order")

    def generate(self, messages: list[Message], max_new_tokens: int = 160, stop: list[str] | None = None) -> str:
        raise LLMError("LLM is disabled (--llm none): text generation is unavailable; use the template text")

    def stream(
        self, messages: list[Message], max_new_tokens: int = 160, stop: list[str] | None = None
    ) -> Iterator[str]:
        raise LLMError("LLM is disabled (--llm none): text generation is unavailable; use the template text")


def validate_messages(messages: Any) -> list[Message]:
    """Check the chat-message shape and return it; raise ``ValueError`` with a one-line reason."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with a string 'content'")
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}] has role {m.get('role')!r}; expected system, user or assistant")
    return messages


def split_prefill(messages: list[Message]) -> tuple[list[Message], str]:
    """Split a trailing assistant message off as the prefill text (``""`` when there is none)."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, ""


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; return (text, whether a stop was found)."""
    if not stop:
        return text, False
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def stream_with_stops(chunks: Iterable[str], stop: Sequence[str] | None) -> Iterator[str]:
    """Yield from ``chunks`` but stop before any stop string, holding back text that may start one."""
    stops = [s for s in (stop or []) if s]
    if not stops:
        yield from chunks
        return
    hold = max(len(s) for s in stops) - 1
    buf = ""
    for chunk in chunks:
        buf += chunk
        text, found = cut_at_stop(buf, stops)
        if found:
            if text:
                yield text
            return
        if len(buf) > hold:
            emit, buf = buf[: len(buf) - hold], buf[len(buf) - hold :]
            if emit:
                yield emit
    if buf:
        yield buf


def logsumexp(values: Iterable[float]) -> float:
    """Numerically stable log(sum(exp(v))); ``-inf`` for an empty input."""
    vals = [v for v in values if v != -math.inf]
    if not vals:
        return -math.inf
    top = max(vals)
    return top + math.log(sum(math.exp(v - top) for v in vals))


def is_yes_no_token(token: str) -> str | None:
    """Return ``"yes"``/``"no"`` when ``token`` is one of the pooled variants, else ``None``."""
    if token in YES_VARIANTS:
        return "yes"
    if token in NO_VARIANTS:
        return "no"
    return None


def load_backend(spec: str | None, **opts: Any) -> LLMBackend:
    """Build a backend from a spec string.

    ``None``/``"local"`` → the offline default (SmolLM2-135M-Instruct GGUF); ``"none"`` → :class:`NoLLM`;
    ``"http(s)://..."`` → OpenAI-compatible endpoint (opts: ``model``, ``api_key``, ``timeout``,
    ``supports_logprobs``); anything else → a Hugging Face model id or local path for the local
    backend (opts: ``device``, ``dtype``).
    """
    if spec is not None and not isinstance(spec, str):
        raise ValueError(f"LLM spec must be a string or None, got {type(spec).__name__}")
    s = (spec or "local").strip()
    if not s:
        raise ValueError("empty LLM spec: use 'local', 'none', an http(s):// URL or a model id/path")
    if s.lower() == "none":
        return NoLLM()
    if s.lower().startswith(("http://", "https://")):
        from assistant.llm.endpoint import EndpointBackend

        return EndpointBackend(s, **opts)
    from assistant.llm.local import LocalBackend

    return LocalBackend(None if s.lower() == "local" else s, **opts)
