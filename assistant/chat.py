"""The Gradio chat app: ``readnext chat`` (binds 127.0.0.1:7860 by default).

Named API endpoints for ``gradio_client``: ``/recommend``, ``/feedback``, ``/new_reader``,
``/import_goodreads``, ``/readers``, ``/export``, ``/forget``. All go through
:class:`assistant.service.ReaderService`, which decides which reader a request acts for.
"""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Any

from retrieval.config import Settings
from retrieval.errors import ReadnextError

from .accounts import AccountStore, parse_auth_spec
from .chat_engine import HELP, ChatState, Reply, card_html
from .explain import excerpt
from .recommender import Recommender
from .service import ReaderService, delete_upload, setup_request_log

CSS = """
.rn-card{display:flex;gap:14px;padding:12px;border:1px solid var(--border-color-primary);
 border-radius:10px}
.rn-cover{width:72px;height:108px;object-fit:cover;border-radius:4px;flex:none}
.rn-nocover{display:flex;align-items:center;justify-content:center;font-size:32px;
 background:var(--background-fill-secondary)}
.rn-title{font-weight:700;font-size:1.05em}.rn-meta{opacity:.8;margin-bottom:4px}
.rn-tag,.rn-src{display:inline-block;font-size:.78em;padding:1px 7px;margin:2px 4px 2px 0;
 border-radius:10px;
 background:var(--background-fill-secondary)}.rn-src{background:var(--color-accent-soft)}
.rn-why{margin:6px 0}.rn-blurb{font-style:italic;margin:4px 0}
"""

SIGNALS = [
    ("👍 like", "like"),
    ("👎 dislike", "dislike"),
    ("✓ read it", "read"),
    ("✕ not interested", "not_interested"),
]


def theme():
    """Soft theme with local system fonts: the default themes fetch web fonts from the internet."""
    import gradio as gr

    return gr.themes.Soft(
        font=["system-ui", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "Menlo", "monospace"],
    )


def _loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _patient_url_ok(url: str, attempts: int = 20, timeout: float = 15.0) -> bool:
    """Gradio's start-up self-check, made patient.

    ``launch()`` HEADs its own page with a 3 s timeout and raises (killing the server) if that
    fails; with many readers connecting in the first second on a busy CPU it does fail, though
    the server is fine. We retry longer instead; a port that truly cannot be reached still fails.
    """
    import httpx

    for _ in range(attempts):
        try:
            if httpx.head(url, timeout=timeout).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def _username(request: Any) -> str | None:
    return getattr(request, "username", None) if request is not None else None


def build_app(
    rec: Recommender,
    k: int | None = None,
    llm_picks: int | None = None,
    service: ReaderService | None = None,
):
    """The Blocks app over one shared Recommender (not launched).

    Every handler asks ``service`` (a :class:`~assistant.service.ReaderService`; single-user
    when None) which reader the request may act for: with accounts that is the signed-in
    account, whatever the request says.
    """
    import gradio as gr

    def needs_request(fn):
        # This module uses postponed annotations and imports gradio lazily, so Gradio cannot
        # resolve the string "gr.Request" itself: give it the class to inject the request.
        fn.__annotations__["request"] = gr.Request
        return fn

    k = k or rec.settings.chat.k
    svc = service or ReaderService(rec, None, llm_picks=llm_picks)
    engine = svc.engine(k)
    multi = svc.auth_required
    # Single-user: the owner picks from every reader. With accounts, nobody's id is put in the page.
    readers = (
        []
        if multi
        else [u["user_id"] for u in sorted(rec.users(), key=lambda u: -u["n_ratings"])[:500]]
    )

    limit = rec.settings.chat.max_message_chars

    def outputs_for(reply: Reply, chat: list[dict], new_text: bool):
        if new_text:
            chat = chat + [{"role": "assistant", "content": reply.text}]
        notes = "\n".join(f"ℹ️ {n}" for n in reply.notes)
        who = (
            f"Reading as **{reply.state.user_id}**"
            if reply.state.user_id
            else "Not signed in: pick a reader or start as new"
        )
        if reply.keeps_cards:  # "why #2?" and friends: the list and its buttons stay as they are
            keep = [gr.update()] * (2 * k)
            return [chat, reply.state.to_dict(), gr.update(), who, *keep]
        groups, htmls = [], []
        for i in range(k):
            if i < len(reply.cards):
                groups.append(gr.update(visible=True))
                htmls.append(card_html(reply.cards[i], i + 1))
            else:
                groups.append(gr.update(visible=False))
                htmls.append("")
        return [chat, reply.state.to_dict(), notes, who, *groups, *htmls]

    def stream(make_replies, chat: list[dict], state: dict):
        """Every turn streams: the first reply adds the assistant's message at once; each later
        one (LLM text flowing into the cards, the next step of an import) updates it in place.
        ``make_replies`` is called inside the guard, so a refused caller gets one line too."""
        base = list(chat)
        try:
            for reply in make_replies():
                yield outputs_for(reply, base, True)
        except ReadnextError as e:
            yield outputs_for(Reply(f"⚠️ {e}", state=ChatState.from_any(state)), base, True)

    def shown(message: str) -> str:
        """The reader's bubble: a message over the limit is cut (it is refused, not echoed). The
        textbox has no max_length on purpose: the browser would cut silently, mid-sentence."""
        m = (message or "").strip()  # the length the engine reports
        return m if len(m) <= limit else excerpt(m, 200) + f" [{len(m):,} characters]"

    @needs_request
    def on_message(message: str, chat: list[dict], state: dict, request: gr.Request):
        chat = list(chat or []) + [{"role": "user", "content": shown(message)}]

        def replies():
            st = svc.session_state(svc.caller(_username(request)), state)
            return engine.respond(st, message)

        yield from stream(replies, chat, state)

    def on_feedback(i: int, signal: str):
        @needs_request
        def handler(chat: list[dict], state: dict, request: gr.Request):
            def replies():
                st = svc.session_state(svc.caller(_username(request)), state)
                return engine.feedback(st, i, signal)

            yield from stream(replies, list(chat or []), state)

        return handler

    @needs_request
    def on_select(user_id: str, chat: list[dict], request: gr.Request):
        try:
            uid = svc.select(svc.caller(_username(request)), user_id)
            st, msg = engine.select_reader(uid)
        except ReadnextError as e:
            st, msg = ChatState(), f"⚠️ {e}"
        # another reader: the previous reader's cards go
        yield outputs_for(Reply(msg, cards=[], state=st), list(chat or []), True)

    @needs_request
    def on_new(name: str, loved: str, genres: list[str], chat: list[dict], request: gr.Request):
        def replies():
            nm, text, tags = svc.onboarding_input(
                svc.caller(_username(request)), name, loved, genres
            )
            return engine.onboard(nm, text, tags)

        yield from stream(replies, list(chat or []), ChatState().to_dict())

    @needs_request
    def on_import(file: Any, name: str, chat: list[dict], request: gr.Request):
        chat = list(chat or [])
        if not file:
            ask = Reply("Choose a Goodreads export CSV first.", state=ChatState())
            yield outputs_for(ask, chat, True)
            return
        path = file if isinstance(file, str) else file.name

        def replies():
            try:  # the uploaded file goes whatever happens (docs/privacy.md)
                nm = svc.import_name(svc.caller(_username(request)), name, path)
                yield from engine.import_file(path, nm)
            finally:
                delete_upload(path)

        yield from stream(replies, chat, ChatState().to_dict())

    @needs_request
    def on_load(state: dict, request: gr.Request):
        """A signed-in reader starts as themself; an admin gets the reader list."""
        try:
            caller = svc.caller(_username(request))
        except ReadnextError:
            return state, gr.update(), gr.update()
        if caller.role == "reader":
            st = svc.session_state(caller, state)
            who_md = f"Signed in: reading as **{st.user_id}**"
            return st.to_dict(), who_md, gr.update(choices=[st.user_id])
        if caller.role == "admin":
            ids = [u["user_id"] for u in svc.readers(caller, rec.settings.limits.max_list)]
            who_md = f"Signed in as admin **{caller.name}**: pick a reader"
            return state, who_md, gr.update(choices=ids)
        return state, gr.update(), gr.update()

    age = rec.settings.privacy.upload_max_age_s
    with gr.Blocks(title="readnext — what should I read next?", delete_cache=(age, age)) as app:
        state = gr.State(ChatState().to_dict())
        gr.Markdown("# 📚 readnext\nBook picks with honest reasons. " + HELP)
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                who = gr.Markdown("Not signed in: pick a reader or start as new", elem_id="rn-who")
                with gr.Tab("I have an id"):
                    reader = gr.Dropdown(
                        readers,
                        value=None,
                        allow_custom_value=True,
                        label="Reader id",
                        elem_id="rn-reader",
                    )
                    use = gr.Button("Use this reader", elem_id="rn-use")
                with gr.Tab("I'm new"):
                    new_name = gr.Textbox(label="Your name (optional)", elem_id="rn-new-name")
                    loved = gr.Textbox(
                        label="A few books you loved (one per line)", lines=3, elem_id="rn-loved"
                    )
                    genres = gr.CheckboxGroup(
                        engine.tags[:24], label="Genres you enjoy", elem_id="rn-genres"
                    )
                    start = gr.Button("Start", elem_id="rn-start")
                with gr.Tab("Import Goodreads"):
                    upload = gr.File(
                        label="Goodreads library export (.csv) or a list of titles (.txt)",
                        file_types=[".csv", ".txt"],
                        type="filepath",
                    )
                    imp_name = gr.Textbox(label="Name for this reader")
                    imp = gr.Button("Import", elem_id="rn-import")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(
                    label="readnext", height=320, elem_id="rn-chat", feedback_options=None
                )
                with gr.Row():
                    msg = gr.Textbox(
                        placeholder="what should I read next?",
                        show_label=False,
                        scale=5,
                        elem_id="rn-input",
                        submit_btn=False,
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="rn-send")
                notes = gr.Markdown("", elem_id="rn-notes")
                groups, htmls, buttons = [], [], []
                for i in range(k):
                    with gr.Group(visible=False, elem_id=f"rn-card-{i}") as g:
                        h = gr.HTML("")
                        with gr.Row():
                            row = [
                                gr.Button(label, size="sm", elem_id=f"rn-{sig}-{i}")
                                for label, sig in SIGNALS
                            ]
                    groups.append(g)
                    htmls.append(h)
                    buttons.append(row)
        outs = [chatbot, state, notes, who, *groups, *htmls]
        send.click(on_message, [msg, chatbot, state], outs, api_visibility="private").then(
            lambda: "", None, msg, api_visibility="private"
        )
        msg.submit(on_message, [msg, chatbot, state], outs, api_visibility="private").then(
            lambda: "", None, msg, api_visibility="private"
        )
        for i in range(k):
            for (label, sig), btn in zip(SIGNALS, buttons[i]):
                btn.click(on_feedback(i, sig), [chatbot, state], outs, api_visibility="private")
        use.click(on_select, [reader, chatbot], outs, api_visibility="private")
        start.click(on_new, [new_name, loved, genres, chatbot], outs, api_visibility="private")
        imp.click(on_import, [upload, imp_name, chatbot], outs, api_visibility="private")

        if multi:
            app.load(on_load, [state], [state, who, reader], api_visibility="private")

        # -- API endpoints for gradio_client (JSON in, JSON out), all through the service --------
        def api_call(fn, request, *args, error_key: dict | None = None):
            try:
                return fn(svc.caller(_username(request)), *args)
            except ReadnextError as e:
                return {**(error_key or {}), "error": str(e)}

        @needs_request
        def recommend(
            user_id: str = "",
            message: str = "what should I read next?",
            k: int = 5,
            request: gr.Request = None,
        ) -> dict:
            """Recommendations (with explanations) for a chat message. Signed in, ``user_id`` must
            be empty or your own; single-user, any existing reader (empty: an unsaved guest)."""
            return api_call(svc.recommend, request, user_id, message, k)

        @needs_request
        def feedback(user_id: str, book_id: str, signal: str, request: gr.Request = None) -> dict:
            """Record like | dislike | read | not_interested | to_read | a 1-5 rating."""
            return api_call(
                svc.feedback, request, user_id, book_id, signal, error_key={"ok": False}
            )

        @needs_request
        def new_reader(
            name: str = "",
            loved: str = "",
            genres: list[str] | None = None,
            request: gr.Request = None,
        ) -> dict:
            """Onboard a reader from loved titles (one per line) and genres; returns first picks."""
            return api_call(svc.new_reader, request, name, loved, genres or [], k)

        @needs_request
        def import_goodreads(name: str, csv_text: str, request: gr.Request = None) -> dict:
            """Import a Goodreads library export (its CSV text) as a reader."""
            return api_call(
                lambda c, n, t: svc.import_goodreads(c, n, csv_text=t), request, name, csv_text
            )

        @needs_request
        def readers_list(limit: int = 50, request: gr.Request = None) -> list[dict] | dict:
            """Reader ids with their number of ratings (signed in as a reader: only yourself)."""
            return api_call(svc.readers, request, limit)

        @needs_request
        def export(user_id: str = "", request: gr.Request = None) -> dict:
            """Everything held about a reader (signed in: yourself)."""
            return api_call(svc.export, request, user_id)

        @needs_request
        def forget(user_id: str = "", confirm: bool = False, request: gr.Request = None) -> dict:
            """Erase a reader everywhere (signed in: yourself); needs ``confirm=True``."""
            if confirm is not True:
                return {"error": "forget erases the reader for good: call again with confirm=True"}
            return api_call(svc.forget, request, user_id)

        api_limit = rec.settings.chat.api_concurrency  # programs' short calls: more at once
        gr.api(recommend, api_name="recommend", concurrency_limit=api_limit)
        gr.api(feedback, api_name="feedback", concurrency_limit=api_limit)
        gr.api(new_reader, api_name="new_reader")
        gr.api(import_goodreads, api_name="import_goodreads")
        gr.api(readers_list, api_name="readers")
        gr.api(export, api_name="export")
        gr.api(forget, api_name="forget")
    return app


def launch(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    auth: str | list[str] | None = None,
    open_browser: bool = False,
    block: bool = True,
    llm_picks: int | None = None,
    admins: list[str] | tuple[str, ...] = (),
):
    """Start the chat server.

    Accounts come from the accounts file (``readnext accounts``) and ``auth`` (one or more
    ``"user:password"``; ``admins`` names those that get the admin role). With any account the
    server requires sign-in and each account reads as itself; without, it is single-user and
    only binds to loopback.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    host = host or settings.chat.host
    port = port or settings.chat.port
    specs = [auth] if isinstance(auth, str) else list(auth or [])
    if not specs and settings.chat.auth:
        specs = [settings.chat.auth]
    parsed = [parse_auth_spec(sp) for sp in specs]
    names = {u for u, _ in parsed}
    stray = [a for a in admins if a not in names]
    if stray:
        raise ReadnextError(
            f"--admin {stray[0]}: no --auth {stray[0]}:PASSWORD given (file accounts "
            "get their role from `readnext accounts add --admin`)"
        )
    accounts = AccountStore.for_home(
        settings.home,
        settings.chat.accounts_file,
        [(u, pw, "admin" if u in admins else "reader") for u, pw in parsed],
    )
    multi = len(accounts) > 0
    if not _loopback(host) and not multi:
        raise ReadnextError(
            f"--host {host} exposes the chat beyond this machine: add accounts "
            "(--auth user:password, or `readnext accounts add`)"
        )
    # Uploads land in the data dir (not /tmp), are deleted after import, and aged out by Gradio.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.home / "uploads"))
    rec = Recommender.open(settings=settings)
    if settings.llm.warm_up and settings.llm.backend != "none":
        # Load and warm the model now, so the first reader does not wait for it.
        from .llm import LLMError

        try:
            took = rec.warm_up_llm()
            if took is not None:
                print(f"LLM {rec.llm.describe()} loaded and warmed in {took:.1f} s", flush=True)
        except (LLMError, ValueError) as e:
            print(f"warning: LLM not available ({e}); the chat shows template text", flush=True)
    rec.warm()  # stores and embedder ready before the port opens (no slow or racing first requests)
    svc = ReaderService(rec, accounts if multi else None, llm_picks=llm_picks)
    setup_request_log(settings.home, settings.privacy.log_days)
    app = build_app(rec, llm_picks=llm_picks, service=svc)
    app.readnext_service = svc  # for the caller (tests, shutdown): the one service of this server
    app.queue(default_concurrency_limit=settings.chat.concurrency)

    mode = f"{len(accounts)} account(s), sign-in required" if multi else "single-user (no accounts)"
    from gradio import networking

    networking.url_ok = _patient_url_ok
    print(
        f"readnext chat on http://{host}:{port}  (data: {rec.meta.get('label')}, "
        f"LLM: {settings.llm.backend}, {mode})",
        flush=True,
    )
    app.launch(
        server_name=host,
        server_port=port,
        auth=accounts.verify if multi else None,
        inbrowser=open_browser,
        share=False,
        prevent_thread_lock=not block,
        quiet=True,
        css=CSS,
        theme=theme(),
    )
    return app
