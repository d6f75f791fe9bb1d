"""The Gradio chat app: ``readnext chat`` (binds 127.0.0.1:7860 by default).

Named API endpoints for ``gradio_client``: ``/recommend``, ``/feedback``, ``/new_reader``,
``/import_goodreads``, ``/readers``.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
import time
from typing import Any

from retrieval.config import Settings
from retrieval.errors import ReadnextError

from .chat_engine import HELP, ChatEngine, ChatState, Reply, card_html
from .explain import excerpt
from .recommender import Recommender

CSS = """
.rn-card{display:flex;gap:14px;padding:12px;border:1px solid var(--border-color-primary);border-radius:10px}
.rn-cover{width:72px;height:108px;object-fit:cover;border-radius:4px;flex:none}
.rn-nocover{display:flex;align-items:center;justify-content:center;font-size:32px;background:var(--background-fill-secondary)}
.rn-title{font-weight:700;font-size:1.05em}.rn-meta{opacity:.8;margin-bottom:4px}
.rn-tag,.rn-src{display:inline-block;font-size:.78em;padding:1px 7px;margin:2px 4px 2px 0;border-radius:10px;
 background:var(--background-fill-secondary)}.rn-src{background:var(--color-accent-soft)}
.rn-why{margin:6px 0}.rn-blurb{font-style:italic;margin:4px 0}
"""

SIGNALS = [("👍 like", "like"), ("👎 dislike", "dislike"), ("✓ read it", "read"), ("✕ not interested", "not_interested")]


def theme():
    """Soft theme with local system fonts: the default themes fetch web fonts from the internet."""
    import gradio as gr

    return gr.themes.Soft(font=["system-ui", "Segoe UI", "Roboto", "sans-serif"],
                          font_mono=["ui-monospace", "Menlo", "monospace"])


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


def build_app(rec: Recommender, k: int | None = None, llm_picks: int | None = None):
    """The Blocks app over one shared Recommender (not launched)."""
    import gradio as gr

    k = k or rec.settings.chat.k
    engine = ChatEngine(rec, k=k, llm_picks=llm_picks)
    readers = [u["user_id"] for u in sorted(rec.users(), key=lambda u: -u["n_ratings"])[:500]]

    limit = rec.settings.chat.max_message_chars

    def outputs_for(reply: Reply, chat: list[dict], new_text: bool):
        if new_text:
            chat = chat + [{"role": "assistant", "content": reply.text}]
        notes = "\n".join(f"ℹ️ {n}" for n in reply.notes)
        who = f"Reading as **{reply.state.user_id}**" if reply.state.user_id else "Not signed in: pick a reader or start as new"
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

    def stream(replies, chat: list[dict], state: dict):
        """Every turn streams: the first reply adds the assistant's message at once; each later
        one (LLM text flowing into the cards, the next step of an import) updates it in place."""
        base = list(chat)
        try:
            for reply in replies:
                yield outputs_for(reply, base, True)
        except ReadnextError as e:
            yield outputs_for(Reply(f"⚠️ {e}", state=ChatState.from_any(state)), base, True)

    def shown(message: str) -> str:
        """The reader's bubble: a message over the limit is cut (it is refused, not echoed). The
        textbox has no max_length on purpose: the browser would cut silently, mid-sentence."""
        m = (message or "").strip()  # the length the engine reports
        return m if len(m) <= limit else excerpt(m, 200) + f" [{len(m):,} characters]"

    def on_message(message: str, chat: list[dict], state: dict):
        chat = list(chat or []) + [{"role": "user", "content": shown(message)}]
        yield from stream(engine.respond(state, message), chat, state)

    def on_feedback(i: int, signal: str):
        def handler(chat: list[dict], state: dict):
            yield from stream(engine.feedback(state, i, signal), list(chat or []), state)
        return handler

    def on_select(user_id: str, chat: list[dict]):
        try:
            st, msg = engine.select_reader(user_id)
        except ReadnextError as e:
            st, msg = ChatState(), f"⚠️ {e}"
        # another reader: the previous reader's cards go
        yield outputs_for(Reply(msg, cards=[], state=st), list(chat or []), True)

    def on_new(name: str, loved: str, genres: list[str], chat: list[dict]):
        replies = engine.onboard(name, loved, genres)
        yield from stream(replies, list(chat or []), ChatState().to_dict())

    def on_import(file: Any, name: str, chat: list[dict]):
        chat = list(chat or [])
        if not file:
            ask = Reply("Choose a Goodreads export CSV first.", state=ChatState())
            yield outputs_for(ask, chat, True)
            return
        path = file if isinstance(file, str) else file.name
        yield from stream(engine.import_file(path, name), chat, ChatState().to_dict())

    with gr.Blocks(title="readnext — what should I read next?") as app:
        state = gr.State(ChatState().to_dict())
        gr.Markdown("# 📚 readnext\nBook picks with honest reasons. " + HELP)
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                who = gr.Markdown("Not signed in: pick a reader or start as new", elem_id="rn-who")
                with gr.Tab("I have an id"):
                    reader = gr.Dropdown(readers, value=None, allow_custom_value=True, label="Reader id",
                                         elem_id="rn-reader")
                    use = gr.Button("Use this reader", elem_id="rn-use")
                with gr.Tab("I'm new"):
                    new_name = gr.Textbox(label="Your name (optional)", elem_id="rn-new-name")
                    loved = gr.Textbox(label="A few books you loved (one per line)", lines=3, elem_id="rn-loved")
                    genres = gr.CheckboxGroup(engine.tags[:24], label="Genres you enjoy", elem_id="rn-genres")
                    start = gr.Button("Start", elem_id="rn-start")
                with gr.Tab("Import Goodreads"):
                    upload = gr.File(label="Goodreads library export (.csv) or a list of titles (.txt)",
                                     file_types=[".csv", ".txt"], type="filepath")
                    imp_name = gr.Textbox(label="Name for this reader")
                    imp = gr.Button("Import", elem_id="rn-import")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="readnext", height=320, elem_id="rn-chat", feedback_options=None)
                with gr.Row():
                    msg = gr.Textbox(placeholder="what should I read next?", show_label=False, scale=5,
                                     elem_id="rn-input", submit_btn=False)
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="rn-send")
                notes = gr.Markdown("", elem_id="rn-notes")
                groups, htmls, buttons = [], [], []
                for i in range(k):
                    with gr.Group(visible=False, elem_id=f"rn-card-{i}") as g:
                        h = gr.HTML("")
                        with gr.Row():
                            row = [gr.Button(label, size="sm", elem_id=f"rn-{sig}-{i}") for label, sig in SIGNALS]
                    groups.append(g)
                    htmls.append(h)
                    buttons.append(row)
        outs = [chatbot, state, notes, who, *groups, *htmls]
        send.click(on_message, [msg, chatbot, state], outs, api_visibility="private").then(
            lambda: "", None, msg, api_visibility="private")
        msg.submit(on_message, [msg, chatbot, state], outs, api_visibility="private").then(
            lambda: "", None, msg, api_visibility="private")
        for i in range(k):
            for (label, sig), btn in zip(SIGNALS, buttons[i]):
                btn.click(on_feedback(i, sig), [chatbot, state], outs, api_visibility="private")
        use.click(on_select, [reader, chatbot], outs, api_visibility="private")
        start.click(on_new, [new_name, loved, genres, chatbot], outs, api_visibility="private")
        imp.click(on_import, [upload, imp_name, chatbot], outs, api_visibility="private")

        # -- API endpoints for gradio_client (JSON in, JSON out) ------------------------------
        def recommend(user_id: str = "", message: str = "what should I read next?", k: int = 5) -> dict:
            """Recommendations (with explanations) for a reader id and a chat message."""
            st = ChatState(user_id=user_id or None)
            eng = ChatEngine(rec, k=int(k), llm_picks=engine.llm_picks)
            last = None
            try:
                if user_id and not rec.has_user(user_id):
                    raise ReadnextError(f"unknown reader {user_id!r}")
                for last in eng.respond(st, message):
                    pass
            except ReadnextError as e:
                return {"error": str(e)}
            return last.to_dict() if last else {"text": "", "items": [], "notes": []}

        def feedback(user_id: str, book_id: str, signal: str) -> dict:
            """Record like | dislike | read | not_interested | to_read | a 1-5 rating for a reader."""
            try:
                rec.add_feedback(user_id, book_id, signal, create_user=True)
            except ReadnextError as e:
                return {"ok": False, "error": str(e)}
            return {"ok": True, "user_id": user_id, "book_id": book_id, "signal": signal}

        def new_reader(name: str = "", loved: str = "", genres: list[str] | None = None) -> dict:
            """Onboard a reader from loved titles (one per line) and genres; returns first picks."""
            last = None
            try:
                eng = ChatEngine(rec, k=engine.k, llm_picks=0)
                for last in eng.onboard(name, loved, genres or []):
                    pass
            except ReadnextError as e:
                return {"error": str(e)}
            return last.to_dict() if last else {"error": "no reply"}

        def import_goodreads(name: str, csv_text: str) -> dict:
            """Import a Goodreads library export (its CSV text) as a new reader."""
            with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, encoding="utf-8") as f:
                f.write(csv_text)
            try:
                _, _, summary = engine.import_goodreads(f.name, name)
            except ReadnextError as e:
                return {"error": str(e)}
            finally:
                os.unlink(f.name)
            return summary

        def readers_list(limit: int = 50) -> list[dict]:
            """Reader ids with their number of ratings."""
            return rec.users()[: int(limit)]

        gr.api(recommend, api_name="recommend")
        gr.api(feedback, api_name="feedback")
        gr.api(new_reader, api_name="new_reader")
        gr.api(import_goodreads, api_name="import_goodreads")
        gr.api(readers_list, api_name="readers")
    return app


def launch(settings: Settings, host: str | None = None, port: int | None = None, auth: str | None = None,
           open_browser: bool = False, block: bool = True, llm_picks: int | None = None):
    """Start the chat server. Off loopback, ``auth`` ("user:password") is required."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    host = host or settings.chat.host
    port = port or settings.chat.port
    auth = auth or settings.chat.auth
    if not _loopback(host) and not auth:
        raise ReadnextError(f"--host {host} exposes the chat beyond this machine: add --auth user:password "
                            "(or READNEXT_CHAT_AUTH)")
    creds = None
    if auth:
        if ":" not in auth:
            raise ReadnextError("--auth must look like user:password")
        creds = tuple(auth.split(":", 1))
    rec = Recommender.open(settings=settings)
    rec.warm()  # stores and embedder ready before the port opens (no slow or racing first requests)
    app = build_app(rec, llm_picks=llm_picks)
    app.queue(default_concurrency_limit=settings.chat.concurrency)
    import gradio as gr
    from gradio import networking

    networking.url_ok = _patient_url_ok
    print(f"readnext chat on http://{host}:{port}  (data: {rec.meta.get('label')}, "
          f"LLM: {settings.llm.backend})", flush=True)
    app.launch(server_name=host, server_port=port, auth=creds, inbrowser=open_browser, share=False,
               prevent_thread_lock=not block, quiet=True, css=CSS, theme=theme())
    return app
