"""The ``readnext`` command line: ingest, users, history, recommend, explain, feedback, chat, eval.

Every command takes ``--data-dir`` (default ``READNEXT_HOME`` or ``~/.readnext``) and ``--json``.
User errors print one line (``readnext: error: ...``) and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from retrieval.errors import ReadnextError


def _settings(args):
    from retrieval.config import Settings

    s = Settings.load(
        config_file=getattr(args, "config", None), home=getattr(args, "data_dir", None)
    )
    if getattr(args, "llm", None):
        s.llm.backend = args.llm
    if getattr(args, "llm_model", None):
        s.llm.model = args.llm_model
    return s


def _open(args, llm: Any = None):
    from assistant import Recommender

    s = _settings(args)
    return Recommender(__import__("retrieval.index", fromlist=["Index"]).Index.open(s.home), s, llm)


def _print(args, obj: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, ensure_ascii=False, indent=2, default=str))
    else:
        print(text)


def cmd_ingest(args) -> int:
    from retrieval.data import detect_format, load_dataset
    from retrieval.index import ingest

    s = _settings(args)
    fmt = args.format
    if fmt is None:
        fmt = detect_format(args.dataset) if args.dataset else ("generic" if args.books else "demo")
    ds = load_dataset(
        fmt, args.books, args.ratings, args.tags, args.book_tags, args.to_read, args.dataset
    )
    for n in ds.notes:
        print(f"note: {n}", file=sys.stderr)
    out = ingest(
        ds,
        s,
        progress=not args.no_progress and not args.json,
        quiet=args.json,
        force=args.force,
        synthetic_vectors=args.synthetic_vectors,
    )
    meta = json.loads((out / "meta.json").read_text())
    _print(args, {"index": str(out), **meta}, "")
    return 0


def cmd_synth(args) -> int:
    from retrieval.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(books=args.books, ratings=args.ratings, users=args.users, seed=args.seed)
    try:
        spec.validate()
    except ValueError as e:
        raise ReadnextError(str(e)) from None
    summary = generate(spec, args.out, progress=not args.json and not args.no_progress)
    _print(
        args,
        {"out": str(args.out), **summary},
        f"wrote {summary['books']:,} books ({summary['series']:,} series), "
        f"{summary['ratings']:,} ratings by {summary['users']:,} readers to {args.out} "
        f"(synthetic, seed {args.seed}); ingest with `readnext ingest --dataset {args.out}`",
    )
    return 0


def cmd_users(args) -> int:
    rec = _open(args)
    users = rec.users()
    _print(
        args,
        users,
        "\n".join(f"{u['user_id']}\t{u['n_ratings']} ratings" for u in users[: args.limit or None])
        + (f"\n... {len(users)} readers in all" if args.limit and len(users) > args.limit else ""),
    )
    return 0


def cmd_history(args) -> int:
    rec = _open(args)
    hist = rec.history(args.user)
    if not hist:
        raise ReadnextError(
            f"reader {args.user!r} has no rated books yet: rate some with `readnext feedback` "
            "or import a Goodreads export"
        )
    items = [
        {
            "book_id": r.book_id,
            "title": rec.books[r.book_id].title,
            "authors": list(rec.books[r.book_id].authors),
            "rating": r.rating,
            "ts": r.ts,
        }
        for r in hist
    ]
    _print(
        args,
        {"user_id": args.user, "items": items},
        "\n".join(f"{i['rating']:g}★  {i['title']} — {', '.join(i['authors'])}" for i in items),
    )
    return 0


def _rec_text(items, notes) -> str:
    from retrieval.types import year_text

    lines = [f"note: {n}" for n in notes]
    for r in items:
        lines.append(
            f"{r.rank}. {r.title} — {', '.join(r.authors)}"
            + (f" ({year_text(r.year)})" if r.year is not None else "")
            + f"   [{' + '.join(r.sources)}]"
        )
        lines.append(f"   {r.explanation}")
        if r.blurb:
            lines.append(f"   {r.blurb}")
    return "\n".join(lines)


def _parse_history(text: str, rec) -> list[tuple[str, float, float]]:
    """``--history "id:5,id:4"`` -> [(book_id, rating, order)], with a clear error on a bad item."""
    out = []
    for i, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        book, sep, rating = part.rpartition(":")
        try:
            r = float(rating) if sep else 5.0
        except ValueError:
            raise ReadnextError(
                f"--history item {i + 1} ({part[:40]!r}): the rating after ':' must be a number "
                "1-5, e.g. 2767052:5"
            ) from None
        book = book if sep else part
        if not 1 <= r <= 5:
            raise ReadnextError(f"--history item {i + 1} ({part[:40]!r}): ratings go from 1 to 5")
        if book not in rec.books:
            raise ReadnextError(
                f"--history item {i + 1}: no book with id {book[:40]!r} in this index; "
                "book ids are in `readnext history --json` and the dataset's books file"
            )
        out.append((book, r, float(i)))
    if not out:
        raise ReadnextError("--history is empty: give BOOK_ID:RATING,... (e.g. 2767052:5,3:4)")
    return out


def cmd_recommend(args) -> int:
    if not args.user and not args.query and not getattr(args, "history", None):
        raise ReadnextError("give --user ID, --history BOOK_ID:RATING,... and/or --query TEXT")
    rec = _open(args)
    history = _parse_history(args.history, rec) if getattr(args, "history", None) else None
    explain = (
        args.explain_llm
        if args.explain_llm is not None
        else (rec.settings.llm.explain_top if args.rerank == "llm" or args.llm else 0)
    )
    understood = None
    if args.query and args.source == "hybrid" and history is None:
        # The same request understanding as the chat (assistant.intent): tags, authors,
        # years, "like X", negations -> constraints, lexical + dense retrieval, anchors.
        from .intent import describe_request, follow_up, intent_parser, recommend_request
        from .recommender import check_query_length

        check_query_length(args.query, rec.settings.chat.max_message_chars)  # before parsing it
        parser = intent_parser(rec)
        intent = parser.parse(args.query)
        kind = intent.kind if intent.kind in ("recommend", "more_like", "refine") else "recommend"
        intent.kind = kind
        anchor = None
        if intent.title_ref:
            hit = parser.matcher.title(intent.title_ref)
            anchor = hit.book_id if hit else None
        req = follow_up(
            None,
            intent,
            anchor if kind == "more_like" else None,
            rec.books,
            rec.settings.request.tag_boost,
        )
        res = recommend_request(
            rec, req, args.user, args.k, rerank=args.rerank, explain_llm=explain
        )
        understood = {
            "text": describe_request(req, rec.books),
            "parser": parser.last_source,
            "intent": intent.to_dict(),
            "anchor": req.anchor,
        }
        if understood["text"]:
            res.notes.insert(0, f"understood: {understood['text']} ({parser.last_source})")
    else:
        res = rec.recommend_full(
            user_id=args.user,
            history=history,
            query=args.query,
            k=args.k,
            source=args.source,
            rerank=args.rerank,
            explain_llm=explain,
        )
    obj = {
        "user_id": args.user,
        "query": args.query,
        "source": args.source,
        "rerank": args.rerank,
        "understood": understood,
        "history": [{"book_id": b, "rating": r} for b, r, _ in history] if history else None,
        "items": [r.to_dict() for r in res.items],
        "notes": res.notes,
        "timings_ms": res.timings_ms,
    }
    _print(args, obj, _rec_text(res.items, res.notes))
    return 0


def cmd_explain(args) -> int:
    rec = _open(args)
    r = rec.explain(args.user, args.book, llm=bool(args.llm))
    _print(
        args,
        {"user_id": args.user, **r.to_dict()},
        f"{r.title} — {', '.join(r.authors)}\n{r.explanation}"
        + (f"\n{r.blurb}" if r.blurb else ""),
    )
    return 0


def cmd_feedback(args) -> int:
    from retrieval.privacy import check_reader_id

    if args.create:
        check_reader_id(args.user)  # a new reader gets a well-formed id
    rec = _open(args)
    value = args.rating if args.rating is not None else args.signal
    if value is None:
        raise ReadnextError(
            "give --rating 1-5 or --signal like|dislike|read|not_interested|to_read"
        )
    rec.add_feedback(args.user, args.book, value, create_user=args.create)
    _print(
        args,
        {"user_id": args.user, "book_id": args.book, "feedback": value, "ok": True},
        f"recorded {value} for {rec.books[args.book].title}",
    )
    return 0


def cmd_import(args) -> int:
    from retrieval.privacy import check_reader_id

    from .importer import LISTED, excerpt, import_export

    check_reader_id(args.user)
    rec = _open(args)
    res = import_export(rec, args.file, args.user)
    # The message names the first few unmatched titles; a long list goes one per line.
    lines = [res.message()] + (
        [f"  not in the catalog: {excerpt(t, 100)}" for t in res.unmatched]
        if len(res.unmatched) > LISTED
        else []
    )
    _print(args, res.to_dict(), "\n".join(lines))
    return 0


def cmd_chat(args) -> int:
    from .chat import launch

    s = _settings(args)
    auth = list(args.auth or [])
    if not auth and os.environ.get("READNEXT_CHAT_AUTH"):
        auth = [os.environ["READNEXT_CHAT_AUTH"]]
    launch(
        s, host=args.host, port=args.port, auth=auth, admins=args.admin or [], open_browser=False
    )
    return 0


def cmd_serve_llm(args) -> int:
    from .llm import load_backend
    from .llm.server import serve

    s = _settings(args)
    serve(
        load_backend(
            args.llm or s.llm.backend if (args.llm or s.llm.backend) != "none" else "local"
        ),
        host=args.host,
        port=args.port,
    )
    return 0


def cmd_config(args) -> int:
    s = _settings(args)
    _print(args, s.to_dict(), json.dumps(s.to_dict(), indent=2))
    return 0


def cmd_doctor(args) -> int:
    from assistant.doctor import report, run_checks

    text, obj = report(run_checks(_settings(args)))
    _print(args, obj, text)
    return 0 if obj["healthy"] else 1


def cmd_eval(args) -> int:
    from eval.cli import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", help="index/data folder (default: READNEXT_HOME or ~/.readnext)"
    )
    common.add_argument(
        "--config", help="TOML config file (default: DATA_DIR/config.toml if present)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    p = argparse.ArgumentParser(
        prog="readnext", description="Book recommendations with grounded explanations."
    )
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser(
        "ingest", parents=[common], help="build the index from a dataset (default: the demo)"
    )
    a.add_argument("--format", choices=["demo", "generic", "goodbooks", "bookcrossing"])
    a.add_argument("--dataset", help="dataset folder (format auto-detected)")
    a.add_argument("--books")
    a.add_argument("--ratings")
    a.add_argument("--tags", help="goodbooks tags.csv (when books.csv has no tags column)")
    a.add_argument("--book-tags", help="goodbooks book_tags.csv")
    a.add_argument("--to-read")
    a.add_argument("--no-progress", action="store_true")
    a.add_argument(
        "--force",
        action="store_true",
        help="replace the live index even with an empty or much smaller catalog or reader set",
    )
    a.add_argument(
        "--synthetic-vectors",
        action="store_true",
        help="growth runs only: seeded stand-in book vectors instead of embeddings "
        "(recorded in meta.json; text queries then match nothing real)",
    )
    a.set_defaults(func=cmd_ingest)

    a = sub.add_parser(
        "synth", parents=[common], help="write a seeded synthetic catalog + readers (generic CSVs)"
    )
    a.add_argument("--books", type=int, default=10_000)
    a.add_argument("--ratings", type=int, default=100_000)
    a.add_argument("--users", type=int, default=0, help="readers (default: ratings / 20)")
    a.add_argument("--seed", type=int, default=7)
    a.add_argument("--out", required=True, help="dataset folder to write")
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=cmd_synth)

    a = sub.add_parser("users", parents=[common], help="list readers")
    a.add_argument("--limit", type=int, default=0)
    a.set_defaults(func=cmd_users)

    a = sub.add_parser("history", parents=[common], help="a reader's rated books")
    a.add_argument("--user", required=True)
    a.set_defaults(func=cmd_history)

    a = sub.add_parser(
        "recommend", parents=[common], help="recommend books for a reader and/or a request"
    )
    a.add_argument("--user")
    a.add_argument("--query")
    a.add_argument("-k", type=int, default=10)
    from retrieval.registry import source_names

    a.add_argument(
        "--source",
        default="hybrid",
        choices=["hybrid", *source_names()],
        help="candidate source (sequence, sasrec: only for data with an order of events; "
        "readers: books rated by the readers whose taste is closest)",
    )
    a.add_argument(
        "--history",
        help="ad hoc reader: BOOK_ID:RATING,... oldest first (e.g. a new reader's "
        "loved books), alone or added to --user's",
    )
    a.add_argument("--rerank", choices=["llm"], help="rerank the top candidates with the LLM")
    a.add_argument(
        "--llm", help="LLM backend: none | local | HF model id or path | http://host:port/v1"
    )
    a.add_argument("--llm-model", help="model name for an endpoint backend")
    a.add_argument(
        "--explain-llm",
        type=int,
        help="how many top picks get LLM text (default: config llm.explain_top)",
    )
    a.set_defaults(func=cmd_recommend)

    a = sub.add_parser("explain", parents=[common], help="why a book for a reader")
    a.add_argument("--user", required=True)
    a.add_argument("--book", required=True)
    a.add_argument("--llm")
    a.add_argument("--llm-model")
    a.set_defaults(func=cmd_explain)

    a = sub.add_parser("feedback", parents=[common], help="record a rating or signal for a reader")
    a.add_argument("--user", required=True)
    a.add_argument("--book", required=True)
    a.add_argument("--rating", type=float)
    a.add_argument("--signal", choices=["like", "dislike", "read", "not_interested", "to_read"])
    a.add_argument("--create", action="store_true", help="create the reader if new")
    a.set_defaults(func=cmd_feedback)

    a = sub.add_parser(
        "import-goodreads", parents=[common], help="import a Goodreads library export as a reader"
    )
    a.add_argument("file")
    a.add_argument("--user", required=True)
    a.set_defaults(func=cmd_import)

    a = sub.add_parser("chat", parents=[common], help="start the Gradio chat assistant")
    a.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    a.add_argument("--port", type=int, default=None)
    a.add_argument(
        "--auth",
        action="append",
        metavar="USER:PASSWORD",
        help="an account (repeatable); with any account, sign-in is required and "
        "each account reads as itself (required off loopback)",
    )
    a.add_argument(
        "--admin", action="append", metavar="USER", help="give this --auth account the admin role"
    )
    a.add_argument("--llm")
    a.add_argument("--llm-model")
    a.set_defaults(func=cmd_chat)

    from .cli_privacy import add_privacy_commands

    add_privacy_commands(sub, common)

    from .cli_rest import add_rest_commands

    add_rest_commands(sub, common)

    a = sub.add_parser(
        "serve-llm", parents=[common], help="serve an LLM backend as an OpenAI-compatible endpoint"
    )
    a.add_argument("--llm", help="backend to serve (default: the offline local model)")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8000)
    a.set_defaults(func=cmd_serve_llm)

    a = sub.add_parser("config", parents=[common], help="print the effective configuration")
    a.set_defaults(func=cmd_config)

    a = sub.add_parser(
        "doctor", parents=[common], help="check the environment and say how to fix problems"
    )
    a.add_argument("--llm", help="LLM backend to check (default: config llm.backend)")
    a.set_defaults(func=cmd_doctor)

    a = sub.add_parser("eval", parents=[common], help="offline evaluation of every recommender")
    try:
        from eval.cli import add_arguments

        add_arguments(a)
    except ImportError:  # pragma: no cover - eval not installed
        pass
    a.set_defaults(func=cmd_eval)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The ``readnext`` command: parse ``argv`` and run the sub-command.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status (a failure prints one line and returns non-zero).
    """
    from retrieval.embed import offline_env

    offline_env()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ReadnextError as e:
        from retrieval.errors import one_line

        print(f"readnext: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("readnext: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
