"""The service layer: every interface (chat API, chat UI, CLI, later REST and a LangChain tool)
asks this, never the :class:`~assistant.recommender.Recommender` directly, for anything done
on behalf of a reader.

It decides *which reader a request acts for* and whether the caller may:

- no accounts (loopback only): the local owner may act for any existing reader;
- with accounts: a signed-in ``reader`` acts only as themself (the reader id is the account
  name from the authenticated session, never a request field); an ``admin`` may pick readers.

It also validates reader ids (charset, length), refuses to create readers for unknown ids,
caps ``k`` and list sizes (``[limits]``), turns every failure into one line, and writes one
request-log line per call with a pseudonymous reader id.

>>> svc = ReaderService(Recommender.open())
>>> me = svc.caller(None)                       # the local owner
>>> svc.recommend(me, "u0001", "more fantasy", k=5)["items"][0]["title"]
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.errors import NotFoundError, ReadnextError
from retrieval.privacy import (
    LOG_DIR,
    check_reader_id,
    home_secret,
    pseudonym,
    reader_id_from_name,
)

from .accounts import AccountStore
from .chat_engine import ChatEngine, ChatState, Reply
from .recommender import Recommender

OWNER, ADMIN, READER = "owner", "admin", "reader"
REQUEST_LOG = "readnext.requests"


class AccessDenied(ReadnextError):
    """The caller may not act for that reader."""


@dataclass(frozen=True)
class Caller:
    """Who is asking: the local owner (no accounts), or a signed-in account and its role.

    Attributes:
        name: the account name (``None`` for the local owner).
        role: ``"owner"``, ``"admin"`` or ``"reader"``.
    """

    name: str | None
    role: str

    @property
    def may_pick(self) -> bool:
        """Whether this caller may act for readers other than themself."""
        return self.role in (OWNER, ADMIN)


class ReaderService:
    """Identity, permissions and limits in front of one shared Recommender.

    Args:
        rec: the Recommender (one per process, shared by all requests).
        accounts: the account store; None or empty means single-user (loopback only).
        llm_picks: picks that get LLM text in chat answers (None: config).
    """

    def __init__(
        self, rec: Recommender, accounts: AccountStore | None = None, llm_picks: int | None = None
    ) -> None:
        self.rec = rec
        # Profile writes stay synchronous here: a deferred write still pending when a server
        # gets SIGTERM was lost (tests/test_load.py caught a stored profile one event behind);
        # Recommender.defer_profile_writes() remains for callers that flush on exit.
        self.accounts = accounts if accounts is not None and len(accounts) else None
        self.limits = rec.settings.limits
        self.llm_picks = llm_picks
        self._engines: dict[int, ChatEngine] = {}
        self._lock = threading.Lock()
        self._secret: bytes | None = None
        self.log = request_logger(rec.settings.home)

    @property
    def auth_required(self) -> bool:
        return self.accounts is not None

    # -- identity -------------------------------------------------------------------------------

    def caller(self, username: str | None) -> Caller:
        """The caller of a request from its authenticated user name (``gr.Request.username``).

        Args:
            username: the authenticated account name (``None``/empty: nobody signed in).

        Returns:
            The local owner without accounts, else the account and its role.

        Raises:
            AccessDenied: accounts exist and nobody is signed in, or the account was removed.
        """
        if self.accounts is None:
            return Caller(None, OWNER)
        if not username:
            raise AccessDenied("sign in first: this server has accounts")
        role = self.accounts.role(username)
        if role is None:
            raise AccessDenied("your account no longer exists: sign in again")
        return Caller(username, role)

    def reader_for(
        self, caller: Caller, requested: str | None = None, must_exist: bool = True
    ) -> str | None:
        """The reader id a request acts for; None for an ephemeral guest (owner only).

        A signed-in reader always gets their own id; naming anybody else is refused. Owners and
        admins name a reader explicitly, which must be a valid, existing id.

        Args:
            caller: who is asking.
            requested: the reader id the request names (``None``/empty: none).
            must_exist: refuse an id that is not a reader yet.

        Returns:
            The reader id, or ``None`` for an owner's ephemeral guest.

        Raises:
            AccessDenied: a reader names somebody else.
            ReadnextError: an invalid id; ``NotFoundError`` for an unknown one with ``must_exist``.
        """
        requested = requested.strip() if isinstance(requested, str) else requested
        if caller.role == READER:
            if requested not in (None, "", caller.name):
                raise AccessDenied(
                    f"signed in as {caller.name!r}: you can only see and change your own data"
                )
            self._ensure_account_reader(caller.name)  # type: ignore[arg-type]
            return caller.name
        if requested in (None, ""):
            if caller.role == ADMIN:
                self._ensure_account_reader(caller.name)  # type: ignore[arg-type]
                return caller.name
            return None
        check_reader_id(requested)
        if must_exist and not self.rec.has_user(requested):
            raise NotFoundError(
                f"unknown reader {requested!r}: see /readers, or create it with /new_reader "
                "or /import_goodreads"
            )
        return requested

    def _ensure_account_reader(self, name: str) -> None:
        # A signed-in account is a reader by definition: it gets an (empty) reader on first use.
        # This is not a request creating an arbitrary id: the id is the authenticated name.
        if not self.rec.has_user(name):
            self.rec.feedback.add_reader(self.rec.dataset, name, "account")

    # -- limits ---------------------------------------------------------------------------------

    def _k(self, k: Any) -> int:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise ReadnextError(f"k must be a whole number, got {str(k)[:20]!r}") from None
        if not 1 <= k <= self.limits.max_k:
            raise ReadnextError(
                f"k must be between 1 and {self.limits.max_k} (limits.max_k), got {k}"
            )
        return k

    def _limit(self, n: Any) -> int:
        try:
            n = int(n)
        except (TypeError, ValueError):
            raise ReadnextError(f"limit must be a whole number, got {str(n)[:20]!r}") from None
        if not 1 <= n <= self.limits.max_list:
            raise ReadnextError(
                f"limit must be between 1 and {self.limits.max_list} (limits.max_list), got {n}"
            )
        return n

    def _text(self, text: Any, what: str, cap: int) -> str:
        text = "" if text is None else text
        if not isinstance(text, str):
            raise ReadnextError(f"{what} must be text")
        if len(text) > cap:
            raise ReadnextError(f"{what} is {len(text):,} characters; the limit is {cap:,}")
        return text

    def engine(self, k: int | None = None) -> ChatEngine:
        """The shared chat engine for answers of ``k`` cards (built once per k).

        Args:
            k: cards per answer (``None``/0: ``chat.k``).

        Returns:
            The engine.
        """
        k = k or self.rec.settings.chat.k
        with self._lock:
            if k not in self._engines:
                self._engines[k] = ChatEngine(self.rec, k=k, llm_picks=self.llm_picks)
            return self._engines[k]

    # -- logging --------------------------------------------------------------------------------

    def pseudonym(self, user_id: str | None) -> str:
        """The reader id as request logs show it (keyed hash with the home's secret).

        Args:
            user_id: the reader id (``None``/empty: ``"-"``).

        Returns:
            The pseudonym.
        """
        if not user_id:
            return "-"
        if self._secret is None:
            self._secret = home_secret(self.rec.settings.home)
        return pseudonym(self._secret, user_id)

    def _call(self, op: str, caller: Caller, fn: Callable[[], tuple[str | None, Any]]) -> Any:
        t0 = time.perf_counter()
        try:
            reader, out = fn()
        except ReadnextError as e:
            # the message may name readers: the log keeps only its kind
            self.log.info(
                "%s caller=%s error=%s ms=%.1f",
                op,
                caller.role,
                type(e).__name__,
                (time.perf_counter() - t0) * 1e3,
            )
            raise
        self.log.info(
            "%s caller=%s reader=%s ok ms=%.1f",
            op,
            caller.role,
            self.pseudonym(reader),
            (time.perf_counter() - t0) * 1e3,
        )
        return out

    # -- operations -----------------------------------------------------------------------------

    def recommend(
        self,
        caller: Caller,
        reader: str | None = None,
        message: str = "what should I read next?",
        k: int = 5,
    ) -> dict:
        """Picks with explanations for a chat message, as plain data (``Reply.to_dict``).

        Args:
            caller: who is asking.
            reader: the reader to answer for (see :meth:`reader_for`; ``None``: the caller's own, or
                a guest for the owner).
            message: the chat message.
            k: how many picks (1..``limits.max_k``).

        Returns:
            ``{"text", "items", "notes", "user_id", ...}``.

        Raises:
            ReadnextError: a bad ``k`` or message, or a refused reader (:meth:`reader_for`).
        """

        def run():
            kk = self._k(k)
            # the engine refuses over-long messages politely (chat.max_message_chars)
            msg = self._text(message, "message", self.limits.max_import_bytes)
            uid = self.reader_for(caller, reader)
            last = None
            for last in self.engine(kk).respond(ChatState(user_id=uid), msg):
                pass
            return uid, (
                last.to_dict() if last else {"text": "", "items": [], "notes": [], "user_id": uid}
            )

        return self._call("recommend", caller, run)

    def explain(self, caller: Caller, reader: str | None, book_id: str) -> dict:
        """Why ``book_id`` for a reader (``readnext explain``): the evidence, as plain data.

        Args:
            caller: who is asking.
            reader: the reader to explain for (required for owners and admins).
            book_id: the book.

        Returns:
            ``{"user_id": ..., **Explanation.to_dict()}``.
        """

        def run():
            uid = self.reader_for(caller, reader)
            if uid is None:
                raise ReadnextError("name the reader to explain the book for (user_id)")
            r = self.rec.explain(uid, self._text(book_id, "book_id", 100))
            return uid, {"user_id": uid, **r.to_dict()}

        return self._call("explain", caller, run)

    def feedback(self, caller: Caller, reader: str | None, book_id: str, signal: Any) -> dict:
        """Record a rating 1-5 or a signal for an existing reader (never creates one).

        Args:
            caller: who is asking.
            reader: the reader the feedback is for (required for owners and admins).
            book_id: the book.
            signal: a rating 1-5 or a signal name (like, dislike, read, not_interested, to_read).

        Returns:
            ``{"ok": True, "user_id", "book_id", "signal"}``.

        Raises:
            ReadnextError: no reader named, a refused reader, an unknown book or a bad signal.
        """

        def run():
            uid = self.reader_for(caller, reader)
            if uid is None:
                raise ReadnextError(
                    "name the reader this feedback is for (user_id); guests' feedback is "
                    "kept only inside a chat session"
                )
            self.rec.add_feedback(uid, str(book_id)[:100], signal, create_user=False)
            return uid, {"ok": True, "user_id": uid, "book_id": book_id, "signal": signal}

        return self._call("feedback", caller, run)

    def new_reader(
        self,
        caller: Caller,
        name: str = "",
        loved: str = "",
        genres: list[str] | None = None,
        k: int | None = None,
    ) -> dict:
        """Onboarding: a reader from loved titles and genres (a signed-in reader: their own).

        Args:
            caller: who is asking.
            name: the new reader's id (empty: a new guest id is made).
            loved: loved titles, one per line or separated by ``;`` (at most ``limits.max_loved``).
            genres: genres the reader likes.
            k: how many first picks (``None``: ``chat.k``).

        Returns:
            The final chat reply as plain data.

        Raises:
            ReadnextError: bad input, or a reader who already has a history.
        """
        return self.onboard(caller, name, loved, genres, k).to_dict()

    def onboarding_input(
        self, caller: Caller, name: str | None, loved: str | None, genres: list[str] | None
    ) -> tuple[str | None, str, list[str]]:
        """Check an "I'm new" request: ``(reader name or None for a new guest id, loved, genres)``.

        A signed-in reader onboards only themself; owners and admins name a valid id.

        Args:
            caller: who is asking.
            name: the requested reader id (``None``/empty: a new guest id).
            loved: loved titles, one per line or separated by ``;``.
            genres: genres the reader likes (capped at 50, 60 characters each).

        Returns:
            ``(reader id or None, loved text, genres)``, checked.

        Raises:
            ReadnextError: too many loved books, text over its cap, an invalid id, or a signed-in
                reader who already has a history; ``AccessDenied`` for somebody else's id.
        """
        loved_text = self._text(loved, "loved", self.limits.max_loved * 200)
        if len([x for x in re.split(r"[\n;]+", loved_text) if x.strip()]) > self.limits.max_loved:
            raise ReadnextError(
                f"give at most {self.limits.max_loved} loved books (limits.max_loved)"
            )
        gen = [str(g)[:60] for g in (genres or [])][:50]
        nm = (name or "").strip()
        if caller.role == READER:
            uid = self.reader_for(caller, nm or None)
            if uid in self.rec.lib.user_index:
                raise ReadnextError(
                    "you already have a reading history: rate books to teach me more"
                )
            return uid, loved_text, gen
        if nm:
            nm = reader_id_from_name(nm)
        return nm or None, loved_text, gen

    def onboard(
        self,
        caller: Caller,
        name: str = "",
        loved: str = "",
        genres: list[str] | None = None,
        k: int | None = None,
    ) -> Reply:
        """Like :meth:`new_reader`, returning the final chat reply (cards as objects).

        Args:
            caller: who is asking.
            name: the new reader's id (empty: a new guest id).
            loved: loved titles, one per line or separated by ``;``.
            genres: genres the reader likes.
            k: how many first picks (``None``: ``chat.k``).

        Returns:
            The final :class:`~assistant.chat_engine.Reply`.

        Raises:
            ReadnextError: as :meth:`onboarding_input`.
        """

        def run():
            nm, loved_text, gen = self.onboarding_input(caller, name, loved, genres)
            last = None
            for last in self.engine(k).onboard(nm, loved_text, gen):
                pass
            assert last is not None
            if not nm or nm != (name or "").strip():
                last.text += (
                    f"\n\nYou are saved as reader **{last.state.user_id}**: use that id to come "
                    f"back, or erase it with `readnext forget --user {last.state.user_id}`."
                )
            return last.state.user_id, last

        return self._call("new_reader", caller, run)

    def import_name(
        self, caller: Caller, name: str | None, path: str | Path | None = None
    ) -> str | None:
        """Check an import request: the reader it goes to and the file's size.

        A signed-in reader imports only into themself; the file may be at most
        ``limits.max_import_bytes``.

        Args:
            caller: who is asking.
            name: the reader to import into (``None``/empty: a new guest id).
            path: the uploaded export file, when there is one.

        Returns:
            The reader id, or ``None`` for a new one.

        Raises:
            ReadnextError: an invalid id or a file over the limit; ``AccessDenied`` for somebody
                else's id.
        """
        nm = (name or "").strip()
        if caller.role == READER:
            nm = self.reader_for(caller, nm or None) or ""
        elif nm:
            nm = reader_id_from_name(nm)
        if path is not None:
            size = Path(path).stat().st_size
            if size > self.limits.max_import_bytes:
                raise ReadnextError(
                    f"the export is {size:,} bytes; the limit is "
                    f"{self.limits.max_import_bytes:,} (limits.max_import_bytes)"
                )
        return nm or None

    def import_goodreads(
        self,
        caller: Caller,
        name: str = "",
        csv_text: str | None = None,
        path: str | Path | None = None,
        delete_file: bool = False,
    ) -> dict:
        """Import a Goodreads export (its text, or a file) as a reader.

        Args:
            caller: who is asking.
            name: the reader to import into (empty: a new guest id).
            csv_text: the export's text (when no ``path``).
            path: the export file (wins over ``csv_text``).
            delete_file: delete ``path`` afterwards, whatever the outcome (an upload).

        Returns:
            The import summary (counts) with ``user_id`` and the chat ``text``.

        Raises:
            ReadnextError: a refused reader, a file over the limit, or an unreadable export (one
                line naming the file and row).
        """

        def run():
            try:
                nm = self.import_name(caller, name, path)
                if path is not None:
                    st, msg, summary = self.engine().import_goodreads(path, nm)
                else:
                    text = self._text(csv_text, "csv_text", self.limits.max_import_bytes)
                    with tempfile.TemporaryDirectory(prefix="readnext-import-") as d:
                        f = Path(d) / "goodreads_library_export.csv"
                        f.write_text(text, encoding="utf-8")
                        st, msg, summary = self.engine().import_goodreads(f, nm)
                return st.user_id, {**summary, "user_id": st.user_id, "text": msg}
            finally:
                if path is not None and delete_file:
                    delete_upload(path)

        return self._call("import_goodreads", caller, run)

    def readers(self, caller: Caller, limit: int = 50) -> list[dict]:
        """Readers the caller may see: all for the owner and admins, only themself for a reader.

        Args:
            caller: who is asking.
            limit: the most readers to list (1..``limits.max_list``).

        Returns:
            ``[{"user_id", "n_ratings"}]``.

        Raises:
            ReadnextError: a bad ``limit``.
        """

        def run():
            n = self._limit(limit)
            if caller.role == READER:
                uid = self.reader_for(caller)
                return None, [u for u in self.rec.users() if u["user_id"] == uid][:n]
            return None, self.rec.users()[:n]

        return self._call("readers", caller, run)

    def select(self, caller: Caller, reader: str | None) -> str:
        """The reader a chat session switches to ("Use this reader").

        Args:
            caller: who is asking.
            reader: the reader id.

        Returns:
            The reader id.

        Raises:
            ReadnextError: no id given, or a refused reader.
        """

        def run():
            uid = self.reader_for(caller, reader)
            if uid is None:
                raise ReadnextError("give a reader id")
            return uid, uid

        return self._call("select", caller, run)

    def history(
        self, caller: Caller, reader: str | None = None, limit: int | None = None
    ) -> list[dict]:
        """The reader's rated books, newest last (capped at ``limits.max_list``).

        Args:
            caller: who is asking.
            reader: the reader id (``None``: the caller's own, for a signed-in reader).
            limit: the most books (``None``: ``limits.max_list``).

        Returns:
            ``[{"book_id", "title", "rating", "ts"}]``.

        Raises:
            ReadnextError: no reader, a refused reader, or a bad ``limit``.
        """

        def run():
            uid = self.reader_for(caller, reader)
            if uid is None:
                raise ReadnextError("give a reader id")
            n = self._limit(limit or self.limits.max_list)
            hist = self.rec.history(uid)[-n:]
            return uid, [
                {
                    "book_id": r.book_id,
                    "title": self.rec.books[r.book_id].title,
                    "rating": r.rating,
                    "ts": r.ts,
                }
                for r in hist
            ]

        return self._call("history", caller, run)

    def export(self, caller: Caller, reader: str | None = None) -> dict:
        """Everything held about a reader (``readnext export``); a reader exports only themself.

        Args:
            caller: who is asking.
            reader: the reader id.

        Returns:
            The export document.

        Raises:
            ReadnextError: no reader, or a refused reader.
        """
        from .privacy import export_reader

        def run():
            uid = self.reader_for(caller, reader)
            if uid is None:
                raise ReadnextError("give a reader id")
            return uid, export_reader(self.rec, uid, accounts=self.accounts)

        return self._call("export", caller, run)

    def forget(self, caller: Caller, reader: str | None = None) -> dict:
        """Erase a reader everywhere (``readnext forget``); a reader may erase only themself.

        Args:
            caller: who is asking.
            reader: the reader id.

        Returns:
            What was erased, per store.

        Raises:
            ReadnextError: no reader, or a refused reader.
        """
        from .privacy import forget_reader

        def run():
            uid = self.reader_for(caller, reader)
            if uid is None:
                raise ReadnextError("give a reader id")
            out = forget_reader(
                self.rec, uid, accounts=self.accounts, pseudonym=self.pseudonym(uid)
            )
            return None, out  # no log line names the erased reader, not even by pseudonym

        return self._call("forget", caller, run)

    # -- chat UI sessions -------------------------------------------------------------------------

    def session_state(self, caller: Caller, state: Any) -> ChatState:
        """A chat session's state with its reader forced to what the caller may act for.

        Args:
            caller: who is asking.
            state: the session's state (a ``ChatState`` or its dict form).

        Returns:
            The state to use (a fresh one when its reader was erased meanwhile).
        """
        st = ChatState.from_any(state)
        if caller.role == READER:
            st.user_id = self.reader_for(caller)
        elif st.user_id is not None and not self.rec.has_user(st.user_id):
            st = ChatState()  # the reader was erased meanwhile
        return st

    def reply_error(self, e: ReadnextError, state: Any) -> Reply:
        """A chat reply that shows ``e`` (one line) and keeps the session's state.

        Args:
            e: the error to show.
            state: the session's state.

        Returns:
            The reply.
        """
        return Reply(f"⚠️ {e}", state=ChatState.from_any(state))


def delete_upload(path: str | Path) -> None:
    """Delete an uploaded file, and its folder when Gradio made one just for it.

    Args:
        path: the uploaded file (a missing one is fine).
    """
    p = Path(path)
    try:
        p.unlink(missing_ok=True)
        parent = p.parent
        if parent.name and len(parent.name) >= 16 and not any(parent.iterdir()):
            parent.rmdir()  # Gradio stores each upload in a folder named by its hash
    except OSError:
        pass


def request_logger(home: str | Path) -> logging.Logger:
    """The request logger of one data dir (one per home, so two servers in a process never mix).

    Args:
        home: the data dir.

    Returns:
        The logger.
    """
    import hashlib

    key = hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:10]
    return logging.getLogger(f"{REQUEST_LOG}.{key}")


def setup_request_log(home: str | Path, days: int) -> logging.Handler | None:
    """Log request lines (pseudonymous ids) to ``home/logs/requests.log``.

    Args:
        home: the data dir.
        days: how many days of logs to keep (``<= 0``: no file log).

    Returns:
        The file handler (the existing one when already set up), or ``None``.
    """
    if days <= 0:
        return None
    from logging.handlers import TimedRotatingFileHandler

    d = Path(home) / LOG_DIR
    d.mkdir(parents=True, exist_ok=True)
    log = request_logger(home)
    for h in log.handlers:
        if getattr(h, "baseFilename", None) == str(d / "requests.log"):
            return h
    h = TimedRotatingFileHandler(
        d / "requests.log", when="midnight", backupCount=days, encoding="utf-8"
    )
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    return h
