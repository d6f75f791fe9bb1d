"""``readnext accounts`` / ``forget`` / ``export``: the identity and privacy commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from retrieval.errors import ReadnextError

from .cli import _open, _print, _settings


def _accounts(args):
    from .accounts import AccountStore

    s = _settings(args)
    return AccountStore.for_home(s.home, s.chat.accounts_file)


def _read_password(args) -> str:
    import getpass

    if args.password_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            raise ReadnextError("the two passwords differ; nothing was changed")
    else:
        raise ReadnextError("no terminal to ask for the password: pipe it in with --password-stdin")
    return pw


def cmd_accounts(args) -> int:
    if args.action in ("add", "remove") and not args.name:
        raise ReadnextError(f"accounts {args.action} needs a NAME")
    store = _accounts(args)
    if args.action == "add":
        a = store.add(
            args.name,
            _read_password(args),
            "admin" if args.admin else "reader",
            replace=args.replace,
        )
        _print(
            args,
            {"name": a.name, "role": a.role, "file": str(store.path)},
            f"account {a.name} ({a.role}) saved in {store.path} (password stored as a scrypt hash)",
        )
    elif args.action == "remove":
        if not store.remove(args.name):
            raise ReadnextError(
                f"no account {args.name!r} in {store.path}: see `readnext accounts list`"
            )
        _print(
            args,
            {"name": args.name, "removed": True},
            f"account {args.name} removed (their reading data "
            f"stays: erase it with `readnext forget --user {args.name}`)",
        )
    else:
        rows = [{"name": a.name, "role": a.role, "created": a.created} for a in store.all()]
        _print(
            args,
            rows,
            "\n".join(f"{r['name']}\t{r['role']}" for r in rows) or f"no accounts in {store.path}",
        )
    return 0


def _service(args):
    from .service import ReaderService

    rec = _open(args)
    return ReaderService(rec, None), rec


def cmd_forget(args) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise ReadnextError("forget erases the reader for good: add --yes")
        if (
            input(f"erase every trace of reader {args.user!r}? type the id to confirm: ").strip()
            != args.user
        ):
            raise ReadnextError("not confirmed; nothing was erased")
    svc, rec = _service(args)
    from retrieval.privacy import check_reader_id

    check_reader_id(args.user)
    out = svc.forget(svc.caller(None), args.user) if rec.has_user(args.user) else None
    if out is None:  # not a reader any more: still sweep files (a half-finished earlier forget)
        from .privacy import forget_reader

        out = forget_reader(rec, args.user)
    rec.close()
    _print(
        args,
        out,
        f"forgot {args.user}: {out['feedback']['events']} feedback events, "
        f"{out['index_rows']['ratings']} ingested ratings, "
        f"{out['profile_vectors']} profile vector(s), "
        f"{out['log_lines']} log lines" + (", the account" if out["account_removed"] else ""),
    )
    return 0


def cmd_export(args) -> int:
    svc, rec = _service(args)
    data = svc.export(svc.caller(None), args.user)
    rec.close()
    text = json.dumps(data, ensure_ascii=False, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote everything held about {args.user} to {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


def add_privacy_commands(sub, common) -> None:
    """Register the commands on the ``readnext`` sub-parsers."""
    a = sub.add_parser(
        "accounts", parents=[common], help="manage chat accounts (each account is a reader)"
    )
    a.add_argument("action", choices=["add", "list", "remove"])
    a.add_argument("name", nargs="?", help="account name (= reader id)")
    a.add_argument("--admin", action="store_true", help="add: the account may act for any reader")
    a.add_argument("--replace", action="store_true", help="add: change an existing account")
    a.add_argument(
        "--password-stdin", action="store_true", help="add: read the password from stdin"
    )
    a.set_defaults(func=cmd_accounts)

    a = sub.add_parser(
        "forget",
        parents=[common],
        help="erase a reader everywhere (events, imports, profile vectors, account, logs)",
    )
    a.add_argument("--user", required=True)
    a.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    a.set_defaults(func=cmd_forget)

    a = sub.add_parser(
        "export", parents=[common], help="write everything held about a reader as JSON"
    )
    a.add_argument("--user", required=True)
    a.add_argument("--out", help="write to this file instead of stdout")
    a.set_defaults(func=cmd_export)
