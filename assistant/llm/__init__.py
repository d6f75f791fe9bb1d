"""LLM backends behind one interface: in-process transformers, OpenAI-compatible HTTP, or none.

Use :func:`load_backend` (``None``/"local", "none", an ``http(s)://`` URL, or a model id/path).
"""

from assistant.llm.base import LLMBackend, LLMError, NoLLM, load_backend

__all__ = ["LLMBackend", "LLMError", "NoLLM", "load_backend"]
