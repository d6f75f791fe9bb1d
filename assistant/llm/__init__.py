"""LLM backends behind one interface: llama.cpp (the offline default), transformers,
OpenAI-compatible HTTP, or none; plus deadlines and a circuit breaker around any of them.

Use :func:`load_backend` (``None``/"local", "tiny", "none", an ``http(s)://`` URL, a ``.gguf``
path, or a Hugging Face model id/path) and wrap it in :class:`ResilientBackend`.
"""

from assistant.llm.base import (
    LLMBackend,
    LLMBadOutput,
    LLMError,
    LLMSkipped,
    LLMTimeout,
    LLMUnreachable,
    NoLLM,
    load_backend,
)
from assistant.llm.resilience import CircuitBreaker, ResilientBackend

__all__ = [
    "LLMBackend",
    "LLMError",
    "LLMTimeout",
    "LLMUnreachable",
    "LLMBadOutput",
    "LLMSkipped",
    "NoLLM",
    "load_backend",
    "ResilientBackend",
    "CircuitBreaker",
]
