"""A minimal OpenAI-compatible server around any backend (FastAPI + uvicorn).

Routes: ``GET /v1/models`` and ``POST /v1/chat/completions`` (plain JSON, or server-sent events
with ``stream: true``). Decoding is always greedy (``temperature``/``top_p`` are accepted and
ignored). ``logprobs: true`` (+ ``top_logprobs`` ≤ 20) is answered only for ``max_tokens: 1``
requests, from the backend's next-token distribution — exactly what Yes/No reranking needs. A
trailing assistant message is continued (prefill) by backends that support it.

Run: ``python -m assistant.llm.server --llm local --port 8000`` (binds 127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from assistant.llm.base import LLMBackend, LLMError, load_backend, validate_messages

MAX_TOKENS_DEFAULT = 256
MAX_TOKENS_LIMIT = 4096


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400."""


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status}}, status_code=status
    )


def _parse(body: Any) -> dict[str, Any]:
    """Validate a chat-completions body; raise :class:`BadRequest` with a one-line reason."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        messages = validate_messages(body.get("messages"))
    except ValueError as e:
        raise BadRequest(str(e)) from e
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or MAX_TOKENS_DEFAULT
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise BadRequest(f"max_tokens must be an integer in 1..{MAX_TOKENS_LIMIT}")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop must be a string or a list of strings")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported")
    logprobs = bool(body.get("logprobs"))
    top = body.get("top_logprobs") or 0
    if not isinstance(top, int) or not 0 <= top <= 20:
        raise BadRequest("top_logprobs must be an integer in 0..20")
    if logprobs and max_tokens != 1:
        raise BadRequest("logprobs are only supported with max_tokens=1 (next-token scoring)")
    return {
        "messages": messages,
        "max_tokens": max_tokens,
        "stop": stop or None,
        "logprobs": logprobs,
        "top_logprobs": top,
        "stream": bool(body.get("stream")),
    }


def _lp(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def create_app(backend: LLMBackend) -> FastAPI:
    """Build the FastAPI app serving ``backend``."""
    app = FastAPI(title="readnext LLM server", docs_url=None, redoc_url=None)
    model_name = backend.model_id or backend.name

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "readnext"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            req = _parse(await request.json())
        except json.JSONDecodeError:
            return _error(400, "request body is not valid JSON", "invalid_request_error")
        except BadRequest as e:
            return _error(400, str(e), "invalid_request_error")
        if req["logprobs"] and not backend.supports_logprobs:
            return _error(
                400, f"backend {backend.name!r} does not provide logprobs", "invalid_request_error"
            )
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": cid, "created": created, "model": model_name}
        if req["stream"]:
            return StreamingResponse(_events(backend, req, head), media_type="text/event-stream")
        from starlette.concurrency import run_in_threadpool

        try:
            choice = await run_in_threadpool(_complete, backend, req)
        except LLMError as e:
            return _error(503, str(e), "backend_error")
        except ValueError as e:
            return _error(400, str(e), "invalid_request_error")
        return {**head, "object": "chat.completion", "choices": [choice]}

    return app


def _complete(backend: LLMBackend, req: dict[str, Any]) -> dict[str, Any]:
    if req["logprobs"]:
        top = backend.next_token_logprobs([req["messages"]], max(1, req["top_logprobs"]))[0]
        token, logprob = top[0]
        logprobs = {
            "content": [
                {
                    **_lp(token, logprob),
                    "top_logprobs": [_lp(t, v) for t, v in top[: req["top_logprobs"]]],
                }
            ]
        }
        return {
            "index": 0,
            "message": {"role": "assistant", "content": token},
            "logprobs": logprobs,
            "finish_reason": "length",
        }
    text = backend.generate(req["messages"], req["max_tokens"], req["stop"])
    return {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": "stop",
    }


def _events(backend: LLMBackend, req: dict[str, Any], head: dict[str, Any]) -> Iterator[str]:
    """SSE stream: a role delta, content deltas, a finish chunk, then ``[DONE]``."""

    def event(delta: dict[str, Any], finish: str | None = None) -> str:
        chunk = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    try:
        if req["logprobs"]:
            choice = _complete(backend, req)
            yield event({"content": choice["message"]["content"]})
        else:
            for piece in backend.stream(req["messages"], req["max_tokens"], req["stop"]):
                yield event({"content": piece})
        yield event({}, "stop")
    except (LLMError, ValueError) as e:
        yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'backend_error'}})}\n\n"
    yield "data: [DONE]\n\n"


def serve(backend: LLMBackend, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``backend`` until interrupted (loopback only unless ``host`` says otherwise)."""
    import uvicorn

    uvicorn.run(create_app(backend), host=host, port=port, log_level="info")


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m assistant.llm.server [--llm SPEC] [--host H] [--port P]``."""
    ap = argparse.ArgumentParser(description="OpenAI-compatible server for a readnext LLM backend")
    ap.add_argument(
        "--llm",
        default="local",
        help="local (default offline model), a HF id/path, or an http(s) URL",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    serve(load_backend(args.llm), args.host, args.port)


if __name__ == "__main__":
    main()
