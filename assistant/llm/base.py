"""The one interface every LLM backend implements, plus the "none" backend and the factory.

A backend turns chat messages (``[{"role": ..., "content": ...}]``) into text (greedy, so
repeatable) and, where the model exposes its next-token distribution, into Yes/No scores for
pointwise reranking. A trailing ``assistant`` message is a *prefill*: backends that set
``supports_prefill`` continue it instead of starting a new reply (the caller prepends it).
"""

from __future__ import annotations

import json
import math
import time
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
    """A backend could not answer (unreachable server, unsupported call, bad output).

    ``kind`` says what really happened, for honest notes: ``"error"`` (anything else),
    ``"timeout"``, ``"unreachable"``, ``"bad_output"`` or ``"skipped"`` (circuit open / budget
    spent).
    """

    kind: str = "error"


class LLMTimeout(LLMError):
    """The call ran past its deadline (no answer in time)."""

    kind = "timeout"


class LLMUnreachable(LLMError):
    """The server could not be reached (connection refused, DNS, TLS)."""

    kind = "unreachable"


class LLMBadOutput(LLMError):
    """The model answered, but not with what was asked (e.g. JSON that does not fit the schema)."""

    kind = "bad_output"


class LLMSkipped(LLMError):
    """The call was not made: the circuit breaker is open or the turn's LLM budget is spent."""

    kind = "skipped"


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value); ``None`` means no
    deadline."""
    return None if deadline is None else deadline - time.monotonic()


def check_deadline(deadline: float | None, what: str = "LLM call") -> None:
    """Raise :class:`LLMTimeout` when ``deadline`` has passed."""
    if deadline is not None and time.monotonic() >= deadline:
        raise LLMTimeout(f"{what} ran past its deadline")


def validate_json(obj: Any, schema: dict[str, Any]) -> None:
    """Raise :class:`LLMBadOutput` (one line) unless ``obj`` is valid under the JSON ``schema``."""
    import jsonschema

    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise LLMBadOutput(
            f"JSON reply does not fit the schema at {where}: {e.message[:160]}"
        ) from None


def parse_json_reply(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The first JSON object in ``text``, validated against ``schema``; :class:`LLMBadOutput`
    otherwise."""
    start = text.find("{")
    if start < 0:
        raise LLMBadOutput(f"reply holds no JSON object: {text[:80]!r}")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        raise LLMBadOutput(
            f"reply is not valid JSON ({e.msg} at char {e.pos}): {text[start : start + 80]!r}"
        ) from None
    validate_json(obj, schema)
    return obj


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
    # Whether generate/stream/yes_no_scores/generate_json accept ``deadline=`` (a time.monotonic()
    # value) and stop by it themselves; the resilience wrapper only passes it to backends that do.
    supports_deadline: bool = False
    # Whether generate_json is *constrained* (grammar / server-side schema) rather than
    # validate-and-retry.
    constrained_json: bool = False
    # Whether ``stream_grammar(messages, gbnf, prefix, max_new_tokens, deadline)`` exists
    # (llama.cpp): decoding under a GBNF grammar with a batch-evaluated fixed prefix.
    supports_grammar: bool = False

    @abstractmethod
    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        """Return ``log P("Yes") - log P("No")`` of the next token for each prompt (batched,
        deterministic)."""

    @abstractmethod
    def generate(
        self, messages: list[Message], max_new_tokens: int = 160, stop: list[str] | None = None
    ) -> str:
        """Greedy-decode a reply to ``messages``; the text is cut before the first ``stop``
        string."""

    @abstractmethod
    def stream(
        self, messages: list[Message], max_new_tokens: int = 160, stop: list[str] | None = None
    ) -> Iterator[str]:
        """Like :meth:`generate` but yields text chunks as they are produced (their concatenation
        equals ``generate``'s text)."""

    def next_token_logprobs(
        self, prompts: list[list[Message]], k: int = 20
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (token text, log-probability) pairs of the next token per prompt, best first.

        Optional: used by the OpenAI-compatible server to answer ``logprobs`` requests.
        """
        raise LLMError(f"backend {self.name!r} does not expose next-token log-probabilities")

    def generate_json(
        self,
        messages: list[Message],
        schema: dict[str, Any],
        max_new_tokens: int = 256,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """A JSON object valid under ``schema`` (a JSON Schema dict), as a parsed ``dict``.

        Stable API used by the explainer, blurbs and the chat intent parser. Backends with a
        grammar (llama.cpp) or server-side ``response_format`` constrain decoding so the reply
        always parses; the rest (this default: transformers, plain endpoints) generate, validate
        and retry once with the validation error appended. The result is always validated.

        Args:
            messages: chat messages; describe the fields in the prompt too (small models follow
                the prompt, the schema only forbids what does not fit).
            schema: JSON Schema of an object (``type``, ``properties``, ``required``,
                ``enum``, ``maxLength``, ``items``, ``additionalProperties`` are honoured).
            max_new_tokens: token limit for the whole object (a cut-off object is a failure).
            deadline: ``time.monotonic()`` value after which the call gives up (``None``: none).

        Returns:
            The parsed object.

        Raises:
            LLMBadOutput: no valid object within the limits.
            LLMTimeout: the deadline passed. LLMError: any other backend failure.
        """
        kw: dict[str, Any] = {"deadline": deadline} if self.supports_deadline else {}
        msgs = list(messages)
        hint = "Reply with one JSON object only, matching this JSON schema: " + json.dumps(
            schema, separators=(",", ":")
        )
        msgs = (
            [*msgs[:-1], {**msgs[-1], "content": msgs[-1]["content"] + "\n\n" + hint}]
            if msgs and msgs[-1]["role"] == "user"
            else [*msgs, {"role": "user", "content": hint}]
        )
        last: LLMBadOutput | None = None
        for _attempt in range(2):
            check_deadline(deadline, "JSON generation")
            text = self.generate(msgs, max_new_tokens=max_new_tokens, **kw)
            try:
                return parse_json_reply(text, schema)
            except LLMBadOutput as e:
                last = e
                msgs = [
                    *msgs,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"That was not valid: {e}. {hint}"},
                ]
        assert last is not None
        raise last

    def warm_up(self) -> float:
        """Load weights and run one tiny generation so the first real request is fast; seconds
        taken."""
        t0 = time.perf_counter()
        self.generate([{"role": "user", "content": "Say OK."}], max_new_tokens=2)
        return time.perf_counter() - t0

    def describe(self) -> str:
        """One line naming the backend and model, for logs and the UI."""
        return f"{self.name}:{self.model_id}" if self.model_id else self.name


class NoLLM(LLMBackend):
    """The "none" backend: no model at all. Callers check ``backend.name == "none"`` and skip LLM
    steps."""

    name = "none"
    model_id = ""
    supports_logprobs = False
    supports_prefill = False

    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        raise LLMError(
            "LLM is disabled (--llm none): yes/no scoring is unavailable; use retrieval order"
        )

    def generate(
        self, messages: list[Message], max_new_tokens: int = 160, stop: list[str] | None = None
    ) -> str:
        raise LLMError(
            "LLM is disabled (--llm none): text generation is unavailable; use the template text"
        )

    def stream(
        self, messages: list[Message], max_new_tokens: int = 160, stop: list[str] | None = None
    ) -> Iterator[str]:
        raise LLMError(
            "LLM is disabled (--llm none): text generation is unavailable; use the template text"
        )

    def generate_json(
        self,
        messages: list[Message],
        schema: dict[str, Any],
        max_new_tokens: int = 256,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        raise LLMError(
            "LLM is disabled (--llm none): JSON generation is unavailable; use the rules/templates"
        )

    def warm_up(self) -> float:
        return 0.0


def validate_messages(messages: Any) -> list[Message]:
    """Check the chat-message shape and return it; raise ``ValueError`` with a one-line reason."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with a string 'content'")
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(
                f"messages[{i}] has role {m.get('role')!r}; expected system, user or assistant"
            )
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
    """Yield from ``chunks`` but stop before any stop string, holding back text that may start
    one."""
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


LOCAL_SPECS = (
    "local",
    "qwen",
    "default",
)  # the offline default: Qwen2.5-Coder-1.5B GGUF via llama.cpp
TINY_SPECS = ("tiny", "smollm2")  # SmolLM2-135M via transformers: fast tests, not for readers


def load_backend(spec: str | None, **opts: Any) -> LLMBackend:
    """Build a backend from a spec string.

    ``None``/``"local"``/``"qwen"`` → the offline default, Qwen2.5-Coder-1.5B-Instruct Q4_K_M
    run by llama.cpp (opts: ``num_threads``, ``n_ctx``, ``batch_size``); ``"tiny"``/``"smollm2"``
    → SmolLM2-135M-Instruct via transformers (fast tests); ``"none"`` → :class:`NoLLM`;
    ``"http(s)://..."`` → OpenAI-compatible endpoint (opts: ``model``, ``api_key``, ``timeout``,
    ``supports_logprobs``); a path to a ``.gguf`` file → llama.cpp; anything else → a Hugging
    Face model id or local path for transformers (opts: ``device``, ``dtype``, ``num_threads``;
    a GPU is used through accelerate ``device_map="auto"``).
    """
    if spec is not None and not isinstance(spec, str):
        raise ValueError(f"LLM spec must be a string or None, got {type(spec).__name__}")
    s = (spec or "local").strip()
    if not s:
        raise ValueError(
            "empty LLM spec: use 'local', 'tiny', 'none', an http(s):// URL or a model id/path"
        )
    low = s.lower()
    if low == "none":
        return NoLLM()
    if low.startswith(("http://", "https://")):
        from assistant.llm.endpoint import EndpointBackend

        return EndpointBackend(s, **opts)
    if low in LOCAL_SPECS or low.endswith(".gguf"):
        from assistant.llm.llamacpp import LlamaCppBackend

        keep = {k: v for k, v in opts.items() if k in ("num_threads", "n_ctx", "batch_size")}
        return LlamaCppBackend(None if low in LOCAL_SPECS else s, **keep)
    from assistant.llm.local import LocalBackend

    keep = {
        k: v
        for k, v in opts.items()
        if k in ("device", "batch_size", "repetition_penalty", "num_threads")
    }
    return LocalBackend(None if low in TINY_SPECS else s, **keep)
