"""``readnext serve`` (the REST API) and ``readnext keys`` (its API keys)."""

from __future__ import annotations

import time

from retrieval.errors import ReadnextError

from .cli import _print, _settings


def cmd_serve(args) -> int:
    from .rest import serve

    s = _settings(args)
    serve(
        s,
        host=args.host or s.rest.host,
        port=args.port or s.rest.port,
        json_out=args.json,
        workers=args.workers if args.workers is not None else s.rest.workers,
    )
    return 0


def cmd_keys(args) -> int:
    from .api_keys import KeyStore

    store = KeyStore.for_home(_settings(args).home)
    if args.action == "create":
        key = store.create(args.reader, admin=args.admin, label=args.label or "")
        kid = key.split("_")[1]
        who = "admin (any reader)" if args.admin else f"reader {args.reader}"
        _print(
            args,
            {
                "key": key,
                "key_id": kid,
                "role": "admin" if args.admin else "reader",
                "reader": args.reader,
                "file": str(store.path),
            },
            f"{key}\n(API key {kid} for {who}; shown only now, only its hash is kept in "
            f"{store.path})",
        )
    elif args.action == "revoke":
        if not args.key_id:
            raise ReadnextError("keys revoke needs a KEY_ID (see `readnext keys list`)")
        if not store.revoke(args.key_id):
            raise ReadnextError(f"no API key {args.key_id[:20]!r}: see `readnext keys list`")
        _print(args, {"key_id": args.key_id, "revoked": True}, f"revoked {args.key_id}")
    else:
        rows = [k.public() for k in store.all()]
        _print(
            args,
            rows,
            "\n".join(
                f"{r['key_id']}\t{r['role']}\t{r['reader'] or '*'}\t"
                f"{time.strftime('%Y-%m-%d', time.localtime(r['created']))}\t{r['label']}"
                for r in rows
            )
            or f"no API keys in {store.path}",
        )
    return 0


def add_rest_commands(sub, common) -> None:
    """Register ``serve`` and ``keys`` on the ``readnext`` sub-parsers."""
    a = sub.add_parser("serve", parents=[common], help="start the REST API (FastAPI, /v1, /docs)")
    a.add_argument("--host", default=None, help="bind address (default rest.host: 127.0.0.1)")
    a.add_argument("--port", type=int, default=None, help="port (default rest.port: 8080)")
    a.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes sharing the port (default rest.workers: 1; more than 1 needs "
        '[chroma] mode = "http")',
    )
    a.add_argument("--llm", help="LLM backend: none | local | HF model id or path | URL")
    a.add_argument("--llm-model")
    a.set_defaults(func=cmd_serve)

    a = sub.add_parser("keys", parents=[common], help="manage the REST API's keys")
    a.add_argument("action", choices=["create", "list", "revoke"])
    a.add_argument("key_id", nargs="?", help="revoke: the key id (or the whole key)")
    a.add_argument("--reader", help="create: the reader this key acts as (and only it)")
    a.add_argument("--admin", action="store_true", help="create: a key that may act for anyone")
    a.add_argument("--label", help="create: a note, e.g. which program uses the key")
    a.set_defaults(func=cmd_keys)
