"""The REST API for programs: ``readnext serve`` (FastAPI on uvicorn, 127.0.0.1:8080 by default).

Every route goes through :class:`assistant.service.ReaderService`, the layer the chat uses, so
the identity rules, limits and one-line errors are the chat's. Routes (OpenAPI at ``/docs``):

- ``POST /v1/recommend`` ``{"reader", "query", "k"}`` - picks with grounded explanations;
- ``POST /v1/explain`` ``{"reader", "book_id"}`` - why a book for a reader;
- ``POST /v1/feedback`` ``{"reader", "book_id", "signal"}`` - a 1-5 rating or a signal;
- ``GET /v1/readers``, ``GET /v1/readers/{id}/history``, ``GET /v1/readers/{id}/export``,
  ``DELETE /v1/readers/{id}?confirm=true`` (forget);
- ``GET /v1/healthz`` (no key needed: says only whether the index is loaded).

Identity: ``Authorization: Bearer rn_...`` (or ``X-API-Key``). A reader's key acts only as that
reader (naming another one: 403); an admin key names the reader. No or an unknown key: 401.
Errors are ``{"error": "<one line>"}`` with 401/403/404/413/422.
"""

from __future__ import annotations

import json
import os
import time
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

from retrieval.config import Settings
from retrieval.errors import NotFoundError, ReadnextError, one_line

from .api_keys import ApiKey, KeyStore
from .recommender import check_query_length
from .service import ADMIN, READER, AccessDenied, Caller, ReaderService

# Hard caps of the API itself (the service's [limits] apply on top: k, list sizes, texts)
MAX_BODY_BYTES = 64 * 1024
MAX_ID = 100
MAX_QUERY = 100_000  # the configured chat.max_message_chars is checked by the service as well

# the key, as `Authorization: Bearer rn_...` or `X-API-Key: rn_...`
Auth = Annotated[str | None, Header()]
ReaderId = Annotated[str | None, Field(default=None, max_length=MAX_ID)]


class RecommendIn(BaseModel):
    """A recommend request: whose taste, what they ask for, how many picks."""

    reader: ReaderId = Field(None, description="reader id (a reader key: empty or your own)")
    query: str = Field("what should I read next?", max_length=MAX_QUERY)
    k: int = Field(5, ge=1, description="number of picks (at most limits.max_k)")


class ExplainIn(BaseModel):
    """Why one book for one reader."""

    reader: ReaderId = None
    book_id: str = Field(min_length=1, max_length=MAX_ID)


class FeedbackIn(BaseModel):
    """A rating 1-5 or one of like | dislike | read | not_interested | to_read."""

    reader: ReaderId = None
    book_id: str = Field(min_length=1, max_length=MAX_ID)
    signal: str | float = Field(description="1-5, or like|dislike|read|not_interested|to_read")


class ErrorOut(BaseModel):
    """Every error: one line saying what is wrong and what to do."""

    error: str


def status_for(e: ReadnextError) -> int:
    """HTTP status of a service error: who you are (401), may you (403), exists (404), else 422."""
    if isinstance(e, AuthError):
        return 401
    if isinstance(e, AccessDenied):
        return 403
    if isinstance(e, NotFoundError):
        return 404
    return 422


class AuthError(ReadnextError):
    """No key, or a key this server does not know."""


def _json(status: int, obj: Any, service_ms: float | None = None) -> Response:
    body = json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))
    # Server-Timing tells a client (and bench/bench_rest.py) how much of its wait was the work
    headers = {"Server-Timing": f"service;dur={service_ms:.1f}"} if service_ms is not None else None
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes (413), declared or streamed."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                return await self._too_big(scope, receive, send)
        # Read the (small) body here, counting, then replay it: a streamed body without a
        # length is refused as soon as it passes the limit, before any route sees it.
        msgs, seen = [], 0
        while True:
            msg = await receive()
            msgs.append(msg)
            if msg["type"] != "http.request":
                break
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                return await self._too_big(scope, receive, send)
            if not msg.get("more_body"):
                break

        async def replay():
            return msgs.pop(0) if msgs else await receive()

        return await self.app(scope, replay, send)

    async def _too_big(self, scope, receive, send):
        msg = f"the request body is over {self.limit:,} bytes: send less"
        await _json(413, {"error": msg})(scope, receive, send)


def build_app(svc: ReaderService, keys: KeyStore, max_body: int = MAX_BODY_BYTES):
    """The FastAPI app over one service and one key store.

    Args:
        svc: the service (one Recommender per process, shared by all requests).
        keys: the API keys this server accepts.
        max_body: largest request body in bytes.

    Returns:
        The ASGI app (FastAPI, wrapped in the body-size limit).
    """
    rec = svc.rec
    started = time.time()
    app = FastAPI(
        title="readnext",
        version="1",
        description="Book recommendations with grounded explanations. Send your API key as "
        "`Authorization: Bearer rn_...` (create one with `readnext keys create`).",
        responses={
            401: {"model": ErrorOut},
            403: {"model": ErrorOut},
            404: {"model": ErrorOut},
            422: {"model": ErrorOut},
        },
    )

    @app.exception_handler(ReadnextError)
    async def _readnext_error(request: Request, e: ReadnextError):
        return _json(status_for(e), {"error": one_line(str(e))})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        msg = f"{where}: {first.get('msg', 'invalid request')}"
        if len(errs) > 1:
            msg += f" (and {len(errs) - 1} more problem(s))"
        return _json(422, {"error": one_line(msg, 300)})

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        return _json(e.status_code, {"error": one_line(str(e.detail))})

    def caller(authorization: str | None, x_api_key: str | None) -> Caller:
        key = x_api_key
        if authorization:
            scheme, _, token = authorization.partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        if not key:
            raise AuthError(
                "no API key: send `Authorization: Bearer rn_...` (create one with "
                "`readnext keys create --reader ID`)"
            )
        rec_key: ApiKey | None = keys.verify(key)
        if rec_key is None:
            raise AuthError("unknown or revoked API key: see `readnext keys list`")
        if rec_key.role == "admin":
            return Caller(None, ADMIN)
        return Caller(rec_key.reader, READER)

    def reader_of(c: Caller, reader: str | None) -> str | None:
        # An admin key belongs to no reader: it must say whom a request is for.
        if c.role == ADMIN and not (reader or "").strip():
            raise ReadnextError('an admin key acts for any reader: name it ("reader": "ID")')
        return reader

    @app.get("/v1/healthz", tags=["service"])
    def healthz() -> dict:
        """Liveness and readiness: the index is loaded and warm (no key needed)."""
        return {
            "ok": True,
            "dataset": rec.meta.get("label", rec.dataset),
            "books": len(rec.books),
            "uptime_s": round(time.time() - started, 1),
            "worker": os.getpid(),  # which process answered (``serve --workers N``)
        }

    @app.post("/v1/recommend", tags=["recommend"])
    def recommend(body: RecommendIn, authorization: Auth = None, x_api_key: Auth = None):
        """Picks for a reader and a request, each with its grounded explanation."""
        c = caller(authorization, x_api_key)
        # a program gets a 422 for an over-long request (the chat answers it with a polite turn)
        check_query_length(body.query, rec.settings.chat.max_message_chars)
        t0 = time.perf_counter()
        out = svc.recommend(c, reader_of(c, body.reader), body.query, body.k)
        return _json(200, out, (time.perf_counter() - t0) * 1e3)

    @app.post("/v1/explain", tags=["recommend"])
    def explain(body: ExplainIn, authorization: Auth = None, x_api_key: Auth = None):
        """Why this book for this reader: the evidence readnext holds, rendered."""
        c = caller(authorization, x_api_key)
        return _json(200, svc.explain(c, reader_of(c, body.reader), body.book_id))

    @app.post("/v1/feedback", tags=["feedback"])
    def feedback(body: FeedbackIn, authorization: Auth = None, x_api_key: Auth = None):
        """Record a rating or signal; durable before this returns, used by the next recommend."""
        c = caller(authorization, x_api_key)
        signal = body.signal
        if isinstance(signal, float) and signal.is_integer():
            signal = int(signal)
        return _json(200, svc.feedback(c, reader_of(c, body.reader), body.book_id, signal))

    @app.get("/v1/readers", tags=["readers"])
    def readers(limit: int = Query(50, ge=1), authorization: Auth = None, x_api_key: Auth = None):
        """Readers this key may see (a reader key: only itself)."""
        c = caller(authorization, x_api_key)
        return _json(200, {"readers": svc.readers(c, limit)})

    @app.get("/v1/readers/{reader}/history", tags=["readers"])
    def history(
        reader: str,
        limit: int | None = Query(None, ge=1),
        authorization: Auth = None,
        x_api_key: Auth = None,
    ):
        """The reader's rated books, newest last."""
        c = caller(authorization, x_api_key)
        return _json(200, {"user_id": reader, "items": svc.history(c, reader[:MAX_ID], limit)})

    @app.get("/v1/readers/{reader}/export", tags=["readers"])
    def export(reader: str, authorization: Auth = None, x_api_key: Auth = None):
        """Everything held about the reader (``readnext export``)."""
        c = caller(authorization, x_api_key)
        return _json(200, svc.export(c, reader[:MAX_ID]))

    @app.delete("/v1/readers/{reader}", tags=["readers"])
    def forget(
        reader: str,
        confirm: bool = Query(False, description="must be true: this erases the reader"),
        authorization: Auth = None,
        x_api_key: Auth = None,
    ):
        """Erase the reader everywhere (``readnext forget``), their API keys included."""
        c = caller(authorization, x_api_key)
        rid = svc.reader_for(c, reader[:MAX_ID])  # 403/404 before asking for confirmation
        if not confirm:
            raise ReadnextError("forget erases the reader for good: call again with ?confirm=true")
        return _json(200, svc.forget(c, rid))

    return BodyLimit(app, max_body)


def open_service(settings: Settings) -> ReaderService:
    """Open and warm the index, and one request through the whole path, before serving.

    A server's first request then answers as fast as any other (no lazy imports or loads).
    """
    from .accounts import AccountStore
    from .recommender import Recommender
    from .service import OWNER, setup_request_log

    rec = Recommender.open(settings=settings)
    if settings.llm.warm_up and settings.llm.backend != "none":
        from .llm import LLMError

        try:
            rec.warm_up_llm()
        except (LLMError, ValueError) as e:
            print(f"warning: LLM not available ({e}); answers use template text", flush=True)
    rec.warm()
    accounts = AccountStore.for_home(settings.home, settings.chat.accounts_file)
    svc = ReaderService(rec, accounts)
    setup_request_log(settings.home, settings.privacy.log_days)
    # One guest and one reader request (read-only): the intent parser, the engine, and what a
    # reader's first request loads lazily (the `users` collection's HNSW index, CF rows).
    owner = Caller(None, OWNER)
    svc.recommend(owner, None, "a good book", 1)
    some_reader = next(iter(rec.lib.user_index), None)
    if some_reader is not None:
        svc.recommend(owner, some_reader, "what should I read next?", 10)
        svc.recommend(owner, some_reader, "something funny", 10)
    return svc


def _uvicorn_config(app, host: str, port: int):
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=os.environ.get("READNEXT_REST_LOG_LEVEL", "warning"),
        access_log=False,  # the service writes its own request log (pseudonymous ids)
        # one event loop, sync routes in its thread pool: requests share the one Recommender
        limit_concurrency=256,
        timeout_keep_alive=30,
    )


def _check_workers(settings: Settings, workers: int) -> None:
    if not isinstance(workers, int) or workers < 1:
        raise ReadnextError(f"--workers must be a whole number >= 1, got {workers!r}")
    if workers > 1 and settings.chroma.mode == "embedded":
        # Chroma's embedded client is not process-safe for writers: each process keeps its own
        # HNSW index in memory and flushes it, so two workers writing feedback profiles would
        # overwrite each other's. A Chroma server is the one writer all workers share.
        raise ReadnextError(
            f"--workers {workers} needs Chroma as a server (feedback writes from several "
            'processes): set [chroma] mode = "http" and start `chroma run` (docs/serving.md), '
            "or serve with --workers 1"
        )


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8080,
    block: bool = True,
    json_out: bool = False,
    workers: int = 1,
) -> Any:
    """Start ``readnext serve``: load and warm everything, then listen on ``host:port``.

    Args:
        settings: the configuration (``settings.home`` is the data dir).
        host: bind address (loopback by default; every route but healthz needs a key anyway).
        port: TCP port.
        block: run until interrupted (False: return the started ``uvicorn.Server``, for tests;
            with ``workers > 1``: the started :class:`Workers`).
        json_out: print the start-up line as JSON (``readnext serve --json``).
        workers: server processes sharing the port (each loads and warms its own index copy
            before it accepts; more than 1 needs ``[chroma] mode = "http"``).

    Returns:
        The uvicorn server, or the :class:`Workers` (after they stopped, when ``block``).

    Raises:
        ReadnextError: a bad worker count, or several workers over an embedded Chroma.
    """
    _check_workers(settings, workers)
    if workers > 1:
        w = Workers(settings, host, port, workers, json_out)
        w.start()
        if block:
            w.wait()
        return w

    import threading

    import uvicorn

    keys = KeyStore.for_home(settings.home)
    t0 = time.perf_counter()
    svc = open_service(settings)
    app = build_app(svc, keys)
    _ready_line(svc, host, port, len(keys), round(time.perf_counter() - t0, 1), json_out)
    server = uvicorn.Server(_uvicorn_config(app, host, port))
    if block:
        server.run()
        return server
    th = threading.Thread(target=server.run, name="readnext-rest", daemon=True)
    th.start()
    return server


def _ready_line(
    svc: ReaderService,
    host: str,
    port: int,
    n: int,
    ready: float,
    json_out: bool,
    worker: str = "",
) -> None:
    if json_out:
        info = {"url": f"http://{host}:{port}/v1", "docs": f"http://{host}:{port}/docs"}
        print(json.dumps({**info, "api_keys": n, "ready_s": ready, "worker": worker}), flush=True)
    else:
        print(
            f"readnext REST API on http://{host}:{port}/v1  (docs: /docs; data: "
            f"{svc.rec.meta.get('label')}; {n} API key(s); ready in {ready} s"
            + (f"; worker {worker}" if worker else "")
            + ")",
            flush=True,
        )
    if n == 0 and not json_out:
        print(
            "note: no API keys yet: create one with `readnext keys create --reader ID` "
            "(or --admin); every route but /v1/healthz needs one",
            flush=True,
        )


def _worker_main(settings: Settings, sock, host: str, port: int, no: int, json_out: bool) -> None:
    """One worker process: open and warm its own service, then accept on the shared socket."""
    import signal

    import uvicorn

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops workers with SIGTERM
    t0 = time.perf_counter()
    keys = KeyStore.for_home(settings.home)
    svc = open_service(settings)
    app = build_app(svc, keys)
    ready = round(time.perf_counter() - t0, 1)
    _ready_line(svc, host, port, len(keys), ready, json_out, f"{no} (pid {os.getpid()})")
    server = uvicorn.Server(_uvicorn_config(app, host, port))
    server.run(sockets=[sock])  # SIGTERM: uvicorn finishes the requests in flight, then exits


class Workers:
    """``readnext serve --workers N``: N server processes accepting on one listening socket.

    Each worker is a fresh (spawned) process that opens and warms its own Recommender and only
    then accepts connections, so no request waits for a cold worker. They share the data dir
    the way separate servers do: feedback goes to ``feedback.sqlite`` (every recommend reads a
    reader's events from it, so a rating taken by one worker is in the next list from any
    other), profile writes go to the Chroma server under the per-reader file lock, API keys are
    re-read when their file changes. A worker that dies is replaced.

    Args:
        settings: the configuration (pickled to each worker).
        host: bind address.
        port: TCP port (0: any free port, see :attr:`port`).
        n: number of workers.
        json_out: workers print their ready line as JSON.
    """

    def __init__(self, settings: Settings, host: str, port: int, n: int, json_out: bool) -> None:
        import socket

        self.settings, self.host, self.n, self.json_out = settings, host, n, json_out
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(2048)
        self.port = self.sock.getsockname()[1]
        self.procs: list = []
        self._stop = False

    def _spawn(self, no: int):
        import multiprocessing as mp

        args = (self.settings, self.sock, self.host, self.port, no, self.json_out)
        p = mp.get_context("spawn").Process(
            target=_worker_main, args=args, name=f"readnext-rest-{no}"
        )
        p.start()
        return p

    def start(self) -> None:
        """Spawn the workers (each starts accepting once warm)."""
        self.procs = [self._spawn(i) for i in range(self.n)]
        if not self.json_out:
            print(
                f"readnext REST API: {self.n} workers on http://{self.host}:{self.port}/v1 "
                f"(pids {', '.join(str(p.pid) for p in self.procs)})",
                flush=True,
            )

    def wait(self) -> None:
        """Supervise until SIGINT/SIGTERM: replace dead workers, then stop them all."""
        import signal

        def _stop(*_):
            self._stop = True

        old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._stop:
                time.sleep(0.5)
                for i, p in enumerate(self.procs):
                    if not p.is_alive() and not self._stop:
                        print(f"worker {i} (pid {p.pid}) exited ({p.exitcode}): restarting")
                        self.procs[i] = self._spawn(i)
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM every worker (requests in flight finish), wait, then close the socket.

        Args:
            timeout: seconds to wait for each worker before it is killed.
        """
        self._stop = True
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(5)
        self.sock.close()
