"""Client for any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, ours, ...).

Generation calls ``POST {base}/chat/completions`` with ``temperature: 0`` (streaming through
server-sent events with ``stream: true``). Yes/No scoring asks for the single next token with
``logprobs: true, top_logprobs: 20, max_tokens: 1`` and pools the Yes/No variants found in the
top list; a variant missing from the list is given the smallest listed log-probability (an upper
bound on its true value). Whether the server returns logprobs is probed once unless configured.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from assistant.llm.base import (
    LLMBackend,
    LLMBadOutput,
    LLMError,
    LLMTimeout,
    LLMUnreachable,
    Message,
    check_deadline,
    cut_at_stop,
    is_yes_no_token,
    logsumexp,
    parse_json_reply,
    stream_with_stops,
    validate_messages,
)

TOP_LOGPROBS = 20  # the OpenAI API maximum


def normalize_base_url(url: str) -> str:
    """``http://h:8000`` / ``.../v1/`` / ``.../v1/chat/completions`` → ``http://h:8000/v1``."""
    u = url.strip().rstrip("/")
    if u.endswith("/chat/completions"):
        u = u[: -len("/chat/completions")]
    return u if u.endswith("/v1") else u + "/v1"


class EndpointBackend(LLMBackend):
    """An OpenAI-compatible HTTP endpoint."""

    name = "endpoint"
    supports_deadline = True

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        supports_logprobs: bool | None = None,
        supports_prefill: bool = False,
        max_concurrency: int = 4,
    ) -> None:
        """``model=None`` takes the first id from ``GET /v1/models``; ``supports_logprobs=None``
        probes once.

        ``supports_prefill``: set True only for servers that continue a trailing assistant message
        (ours does; vLLM needs ``continue_final_message``, which we do not send).
        """
        if not base_url.lower().startswith(("http://", "https://")):
            raise ValueError(f"endpoint URL must start with http:// or https://, got {base_url!r}")
        self.base_url = normalize_base_url(base_url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = float(timeout)
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0))
        )
        self._model = model
        self._json_mode: str | None = (
            None  # "json_schema" | "json_object" | "prompt", found on first use
        )
        self._logprobs = supports_logprobs
        self.supports_prefill = supports_prefill
        self.max_concurrency = max(1, max_concurrency)

    # -- plumbing --------------------------------------------------------------------------
    def _fail(self, e: Exception, path: str) -> LLMError:
        """One-line error naming the URL and what went wrong, typed by what happened."""
        cls = LLMError
        if isinstance(e, httpx.TimeoutException):
            cls = LLMTimeout
        elif isinstance(e, (httpx.ConnectError, httpx.UnsupportedProtocol)):
            cls = LLMUnreachable
        return cls(" ".join(self._describe(e, f"{self.base_url}{path}").split()))

    def _timeout(self, deadline: float | None) -> httpx.Timeout:
        """The request's timeouts: the configured ones, cut to what is left before ``deadline``."""
        t = self.timeout
        if deadline is not None:
            check_deadline(deadline, f"request to {self.base_url}")
            t = max(0.01, min(t, deadline - time.monotonic()))
        return httpx.Timeout(t, connect=min(t, 5.0))

    @staticmethod
    def _describe(e: Exception, url: str) -> str:
        if isinstance(e, httpx.ConnectError):
            return f"cannot connect to LLM endpoint {url}: {e} (is the server running?)"
        if isinstance(e, httpx.TimeoutException):
            return f"LLM endpoint {url} timed out ({type(e).__name__})"
        if isinstance(e, httpx.HTTPStatusError):
            return (
                f"LLM endpoint {url} returned HTTP {e.response.status_code}: "
                f"{e.response.text[:300]}"
            )
        return f"LLM endpoint {url} failed: {type(e).__name__}: {e}"

    def _post(self, payload: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        try:
            r = self._client.post(
                f"{self.base_url}/chat/completions", json=payload, timeout=self._timeout(deadline)
            )
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            raise self._fail(e, "/chat/completions") from e

    @property
    def model_id(self) -> str:  # type: ignore[override]
        """The remote model name (asked from ``/v1/models`` once when not given)."""
        if self._model is None:
            try:
                r = self._client.get(f"{self.base_url}/models", timeout=self._timeout(None))
                r.raise_for_status()
                data = r.json().get("data") or []
            except (httpx.HTTPError, json.JSONDecodeError) as e:
                raise self._fail(e, "/models") from e
            if not data:
                raise LLMError(
                    f"LLM endpoint {self.base_url}/models lists no model; pass model=..."
                )
            self._model = str(data[0]["id"])
        return self._model

    def _payload(
        self, messages: list[Message], max_new_tokens: int, **extra: Any
    ) -> dict[str, Any]:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        return {
            "model": self.model_id,
            "messages": validate_messages(messages),
            "max_tokens": max_new_tokens,
            "temperature": 0,
            **extra,
        }

    # -- generation ------------------------------------------------------------------------
    def generate(
        self,
        messages: list[Message],
        max_new_tokens: int = 160,
        stop: list[str] | None = None,
        deadline: float | None = None,
    ) -> str:
        """Greedy (``temperature: 0``) completion; stop strings are also applied client-side."""
        extra = {"stop": stop[:4]} if stop else {}  # the OpenAI API accepts at most 4
        data = self._post(self._payload(messages, max_new_tokens, **extra), deadline)
        return cut_at_stop(self._content(data), stop)[0]

    def _content(self, data: dict[str, Any]) -> str:
        try:
            return data["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise LLMError(
                f"LLM endpoint {self.base_url} sent an unexpected reply: {str(data)[:200]}"
            ) from e

    def generate_json(
        self,
        messages: list[Message],
        schema: dict[str, Any],
        max_new_tokens: int = 256,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Ask with ``response_format`` (``json_schema``, else ``json_object``, else the prompt) and
        validate.

        Which form the server accepts is found on the first call (an HTTP 4xx means "not
        supported") and remembered. The reply is always validated against ``schema``.
        """
        modes = [self._json_mode] if self._json_mode else ["json_schema", "json_object", "prompt"]
        for mode in modes:
            if mode == "prompt":
                self._json_mode = mode
                return super().generate_json(messages, schema, max_new_tokens, deadline)
            fmt: dict[str, Any] = {"type": mode}
            if mode == "json_schema":
                fmt["json_schema"] = {"name": "reply", "schema": schema, "strict": True}
            try:
                data = self._post(
                    self._payload(messages, max_new_tokens, response_format=fmt), deadline
                )
            except LLMError as e:
                if "HTTP 4" in str(e) and len(modes) > 1:
                    continue  # this server does not take that response_format: try the next form
                raise
            self._json_mode = mode
            try:
                return parse_json_reply(self._content(data), schema)
            except LLMBadOutput:
                if mode == "json_schema":
                    raise  # the server constrained it and it still does not fit: a real failure
                return super().generate_json(messages, schema, max_new_tokens, deadline)
        raise LLMBadOutput(f"LLM endpoint {self.base_url} produced no JSON reply")

    def _sse(self, payload: dict[str, Any], deadline: float | None = None) -> Iterator[str]:
        path = "/chat/completions"
        try:
            with self._client.stream(
                "POST", f"{self.base_url}{path}", json=payload, timeout=self._timeout(deadline)
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    body = line[5:].strip()
                    if body == "[DONE]":
                        return
                    try:
                        event = json.loads(body)
                    except json.JSONDecodeError as e:
                        raise LLMError(
                            f"LLM endpoint {self.base_url}{path} sent a bad stream event: "
                            f"{body[:120]}"
                        ) from e
                    if event.get("error"):
                        raise LLMError(
                            f"LLM endpoint {self.base_url}{path} error: {event['error']}"
                        )
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
                    check_deadline(deadline, f"stream from {self.base_url}")
        except httpx.HTTPError as e:
            raise self._fail(e, path) from e

    def stream(
        self,
        messages: list[Message],
        max_new_tokens: int = 160,
        stop: list[str] | None = None,
        deadline: float | None = None,
    ) -> Iterator[str]:
        """Stream text chunks from server-sent events."""
        extra: dict[str, Any] = {"stream": True}
        if stop:
            extra["stop"] = stop[:4]
        yield from stream_with_stops(
            self._sse(self._payload(messages, max_new_tokens, **extra), deadline), stop
        )

    # -- scoring ---------------------------------------------------------------------------
    def _top_logprobs(
        self, messages: list[Message], deadline: float | None = None
    ) -> list[tuple[str, float]] | None:
        data = self._post(
            self._payload(messages, 1, logprobs=True, top_logprobs=TOP_LOGPROBS), deadline
        )
        try:
            content = data["choices"][0]["logprobs"]["content"]
            return [(str(t["token"]), float(t["logprob"])) for t in content[0]["top_logprobs"]]
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    @property
    def supports_logprobs(self) -> bool:  # type: ignore[override]
        """Configured value, or probed once with a one-token request."""
        if self._logprobs is None:
            try:
                top = self._top_logprobs(
                    [{"role": "user", "content": "Answer Yes or No: is 2 > 1?"}]
                )
            except LLMError as e:
                if "HTTP 4" not in str(
                    e
                ):  # a 4xx means "not supported"; anything else is a real failure
                    raise
                top = None
            self._logprobs = bool(top)
        return self._logprobs

    @staticmethod
    def score_top(top: list[tuple[str, float]]) -> float:
        """Yes/No score from a top-k list (missing side: the smallest listed log-probability)."""
        if not top:
            return 0.0
        floor = min(lp for _, lp in top)
        yes = logsumexp(lp for t, lp in top if is_yes_no_token(t) == "yes")
        no = logsumexp(lp for t, lp in top if is_yes_no_token(t) == "no")
        yes = floor if yes == -math.inf else yes
        no = floor if no == -math.inf else no
        return yes - no

    def yes_no_scores(
        self, prompts: list[list[Message]], deadline: float | None = None
    ) -> list[float]:
        """One ``max_tokens: 1`` request per prompt, ``max_concurrency`` at a time (servers batch
        them)."""
        if not prompts:
            return []
        if not self.supports_logprobs:
            raise LLMError(
                f"LLM endpoint {self.base_url} returns no logprobs; use listwise reranking"
            )
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            tops = list(pool.map(lambda p: self._top_logprobs(p, deadline), prompts))
        if any(t is None for t in tops):
            raise LLMError(f"LLM endpoint {self.base_url} stopped returning logprobs")
        return [self.score_top(t or []) for t in tops]

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
