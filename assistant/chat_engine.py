"""The chat assistant's brain, free of any UI: intents -> recommendations, feedback, onboarding.

The Gradio app (``assistant.chat``) is a thin layer over :class:`ChatEngine`, so the same logic
is tested directly and through a real browser.
"""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from retrieval.constraints import Constraints
from retrieval.errors import ReadnextError
from retrieval.types import Rating

from .explain import QUERY_EXCERPT, excerpt
from .intent import Intent, parse_intent
from .recommender import Recommendation, Recommender

HELP = ("Ask me **what should I read next?**, or: *something like Dune but shorter*, *more fantasy*, "
        "*not romance*, *books by Ursula K. Le Guin*, *published after 2000*, *why #2?*, "
        "*tell me more about #1*, *I've read #3*, *not interested in #2*. "
        "Use 👍 / 👎 / read it / not interested on the cards to teach me your taste.")


@dataclass
class ChatState:
    """Per-session state (kept in ``gr.State``; plain data so it serialises)."""

    user_id: str | None = None
    recs: list[str] = field(default_factory=list)  # book ids shown, in order
    constraints: dict = field(default_factory=dict)
    query: str | None = None
    ref_book: str | None = None  # "something like X"
    guest: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_any(cls, x: Any) -> "ChatState":
        if isinstance(x, ChatState):
            return x
        return cls(**x) if isinstance(x, dict) else cls()


@dataclass
class Reply:
    """One assistant turn: text for the chat, result cards, notes on fallbacks."""

    text: str
    # None: this turn brings no new list ("why #2?", "tell me more", help), so the cards and
    # their buttons already on screen stay; a list (even empty) replaces them.
    cards: list[Recommendation] | None = None
    notes: list[str] = field(default_factory=list)
    state: ChatState = field(default_factory=ChatState)
    streaming: bool = False  # more text for the cards is coming

    @property
    def keeps_cards(self) -> bool:
        return self.cards is None

    def to_dict(self) -> dict:
        return {"text": self.text, "items": [c.to_dict() for c in self.cards or []],
                "notes": self.notes, "user_id": self.state.user_id}


class ChatEngine:
    """Turns chat messages and card clicks into recommendations, using one shared Recommender."""

    def __init__(self, rec: Recommender, k: int = 5, llm_picks: int | None = None) -> None:
        self.rec = rec
        self.k = k
        self.llm_picks = rec.settings.llm.explain_top if llm_picks is None else llm_picks
        books = list(rec.books.values())
        self._titles = [b.title for b in books]
        self._title_to_id = {b.title: b.book_id for b in books}
        tag_counts: dict[str, int] = {}
        for b in books:
            for t in b.tags:
                tag_counts[t] = tag_counts.get(t, 0) + 1
        self.tags = sorted(tag_counts, key=lambda t: -tag_counts[t])
        authors = {a for b in books for a in b.authors}
        self._authors = sorted(authors)

    # -- who is reading -------------------------------------------------------------------------

    def select_reader(self, user_id: str) -> tuple[ChatState, str]:
        user_id = (user_id or "").strip()
        if not self.rec.has_user(user_id):
            raise ReadnextError(f"unknown reader {user_id!r}: pick one from the list or start as a new reader")
        n = len(self.rec.history(user_id))
        return ChatState(user_id=user_id), f"Hi **{user_id}**: I know {n} books you rated. {HELP}"

    def new_reader(self, name: str | None, loved: str = "", genres: list[str] | None = None) -> tuple[ChatState, str]:
        """Onboarding: a few loved books and/or genres -> a reader with a profile, at once."""
        name = re.sub(r"[^\w.@-]+", "-", (name or "").strip())[:40] or f"guest-{uuid.uuid4().hex[:8]}"
        limit = self.rec.settings.chat.max_message_chars
        if len(loved or "") > limit:
            raise ReadnextError(f"the list of loved books is {len(loved):,} characters long and "
                                f"the limit is {limit:,}: name a few books, one per line")
        if self.rec.has_user(name) and name in self.rec.lib.user_index:
            raise ReadnextError(f"the name {name!r} is taken by a reader in the dataset; choose another")
        ids: list[str] = []
        unmatched: list[str] = []
        for part in re.split(r"[\n;]+|,(?=\s*[A-Z0-9])", loved or ""):
            part = part.strip()
            if not part:
                continue
            b = self.find_title(part)
            if b:
                ids.append(b)
            else:
                unmatched.append(part)
        if not self.rec.has_user(name):
            self.rec.create_reader(name, [(b, 5) for b in dict.fromkeys(ids)], origin="onboarding")
        else:
            for b in dict.fromkeys(ids):
                self.rec.add_feedback(name, b, 5)
        st = ChatState(user_id=name, guest=True, constraints={"include_tags": list(genres or [])})
        msg = f"Welcome, **{name}**!"
        if ids:
            msg += " You loved " + ", ".join(f"“{self.rec.books[b].title}”" for b in ids) + "."
        if unmatched:
            shown = ", ".join(f"“{excerpt(u, 60)}”" for u in unmatched[:5])
            more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
            msg += f" I could not find {shown}{more} in this catalog."
        if genres:
            msg += " Genres: " + ", ".join(genres) + "."
        return st, msg

    def onboard(self, name: str | None, loved: str = "",
                genres: list[str] | None = None) -> Iterator[Reply]:
        """The "I'm new" turn, streamed: the welcome at once, then the first picks (and their
        LLM text as it is written)."""
        st, msg = self.new_reader(name, loved, genres)
        yield Reply(msg + "\n\nFinding your first picks…", state=st, streaming=True)
        for r in self._recommend(st, Constraints(include_tags=list(genres or []))):
            r.text = msg + "\n\n" + r.text
            yield r

    def import_file(self, path: str | Path, name: str | None) -> Iterator[Reply]:
        """The import turn, streamed: a note at once, the import summary, then the first picks."""
        yield Reply("Reading your export…", state=ChatState(), streaming=True)
        st, msg, _ = self.import_goodreads(path, name)
        yield Reply(msg + "\n\nFinding your first picks…", state=st, streaming=True)
        for r in self._recommend(st, Constraints()):
            r.text = msg + "\n\n" + r.text
            yield r

    def import_goodreads(self, path: str | Path, name: str | None) -> tuple[ChatState, str, dict]:
        """Import an export as reader ``name`` (idempotent; see :mod:`assistant.importer`)."""
        from .importer import import_export

        name = re.sub(r"[^\w.@-]+", "-", (name or "").strip())[:40] or f"reader-{uuid.uuid4().hex[:6]}"
        res = import_export(self.rec, path, name, origin="goodreads")
        return ChatState(user_id=name), res.message(bold=True), res.to_dict()

    def find_title(self, text: str) -> str | None:
        """Catalog book id for a loosely typed title ("the hobbit", "dune by frank herbert")."""
        from rapidfuzz import fuzz, process

        q = re.split(r"\s+(?:by|-)\s+", text.strip(), maxsplit=1)[0]
        hit = process.extractOne(q, self._titles, scorer=fuzz.WRatio, score_cutoff=86,
                                 processor=lambda s: re.sub(r"\s*\(.*?\)\s*$", "", s).lower())
        return self._title_to_id[hit[0]] if hit else None

    # -- conversation -----------------------------------------------------------------------------

    def parse(self, message: str, st: ChatState | None = None) -> Intent:
        """The LLM parses the message when configured (validated strictly); rules otherwise."""
        rules = parse_intent(message, self._titles, self.tags, self._authors)
        if not self._use_llm_intent():
            return rules
        try:
            got = self._llm_intent(message, st)
        except Exception:  # any backend/parse failure: the rules answer
            got = None
        if got is None:
            self.intent_fallbacks += 1
            return rules
        got.query_text = rules.query_text
        return got

    intent_fallbacks = 0

    def _use_llm_intent(self) -> bool:
        mode = self.rec.settings.chat.llm_intent
        spec = str(self.rec.settings.llm.backend if self.rec._llm_spec is None else self.rec._llm_spec)
        if mode == "off" or spec == "none" or self.rec.llm is None:
            return False
        return mode == "on" or spec.lower() not in ("local", "none")

    def _llm_intent(self, message: str, st: ChatState | None) -> Intent | None:
        """Ask the LLM for {"intent", "constraints"}; keep only values the catalog knows."""
        import json

        from prompts import delimit, render_messages

        shown = "\n".join(f"#{i + 1} {self.rec.books[b].title}" for i, b in enumerate((st.recs if st else [])[:10]))
        msgs, _version = render_messages("chat_intent", context=shown or "(none)", utterance=delimit(message, 500))
        raw = self.rec.llm.generate(msgs, max_new_tokens=160)
        m = re.search(r"\{.*\}", raw, re.S)
        if not m:
            return None
        data = json.loads(m.group(0))
        kind = data.get("intent")
        if kind not in ("recommend", "more_like", "refine", "why", "details", "read_it", "not_interested"):
            return None
        c = data.get("constraints") or {}
        known = {t.lower(): t for t in self.tags}
        authors = {a.lower(): a for a in self._authors}
        intent = Intent(kind=kind)
        intent.include_tags = [known[t.lower()] for t in c.get("include_tags") or [] if str(t).lower() in known]
        intent.exclude_tags = [known[t.lower()] for t in c.get("exclude_tags") or [] if str(t).lower() in known]
        intent.authors = [authors[a.lower()] for a in c.get("authors") or [] if str(a).lower() in authors]
        for key in ("year_min", "year_max"):
            v = c.get(key)
            setattr(intent, key, int(v) if isinstance(v, (int, float)) and -3000 < v < 2100 else None)
        for key in ("shorter", "lighter", "newer"):
            setattr(intent, key, c.get(key) is True)
        ref = c.get("title_ref")
        if isinstance(ref, str) and ref.strip():
            num = re.fullmatch(r"#?\s*(\d{1,2})", ref.strip())
            if num:
                intent.ref_index = int(num.group(1))
            else:
                intent.title_ref = self.find_title(ref)
        elif isinstance(ref, int):
            intent.ref_index = ref
        return intent

    def _target(self, st: ChatState, intent: Intent) -> str | None:
        if intent.ref_index is not None and st.recs:
            i = intent.ref_index - 1 if intent.ref_index > 0 else len(st.recs) - 1
            if 0 <= i < len(st.recs):
                return st.recs[i]
            return None
        if intent.title_ref:
            return self._title_to_id.get(intent.title_ref) or self.find_title(intent.title_ref)
        return st.recs[0] if st.recs else None

    def respond(self, state: Any, message: str) -> Iterator[Reply]:
        """Answer one message. Yields a first reply with template text at once, then updates as
        LLM text streams into the top picks (when an LLM is configured)."""
        st = ChatState.from_any(state)
        message = (message or "").strip()
        if not message:
            yield Reply("Tell me what you are in the mood for, or ask *what should I read next?*", state=st)
            return
        limit = self.rec.settings.chat.max_message_chars
        if len(message) > limit:  # refused without quoting it: nothing echoes unbounded input
            yield Reply(f"That message is {len(message):,} characters long; "
                        f"I read up to {limit:,}. "
                        "Could you say in a sentence or two what you would like to read?", state=st)
            return
        intent = self.parse(message, st)
        if intent.kind in ("help", "greeting"):
            yield Reply(("Hello! " if intent.kind == "greeting" else "") + HELP, state=st)
            return
        if intent.kind in ("why", "details", "read_it", "not_interested") and not (
                intent.kind == "not_interested" and intent.exclude_tags):
            target = self._target(st, intent)
            if target is None:
                yield Reply("Which book do you mean? Ask for recommendations first, then refer to them as #1, #2…",
                            state=st)
                return
            if intent.kind == "why":
                yield self._why(st, target)
                return
            if intent.kind == "details":
                yield self._details(st, target)
                return
            yield from self.feedback(st, target, "read" if intent.kind == "read_it" else "not_interested")
            return
        # recommend / more_like / refine
        c = Constraints(**st.constraints) if intent.kind == "refine" else Constraints()
        if intent.kind == "refine" and st.query:
            query = st.query
        else:
            query = intent.query_text or None
        ref = None
        if intent.kind == "more_like":
            ref = self._target(st, intent)
            if ref:
                query = self.rec.books[ref].embedding_text()
        elif intent.kind == "refine":
            ref = st.ref_book
        c = c.refined_by(intent)
        c.ref_year = self.rec.books[ref].year if ref and (c.newer or c.older) else None
        if query and _generic_request(query):
            query = None
        st.query, st.ref_book = query, ref
        st.constraints = {k: v for k, v in asdict(c).items() if k != "ref_year"}
        yield from self._recommend(st, c, exclude=[ref] if ref else [])

    def _recommend(self, st: ChatState, c: Constraints, exclude: list[str] = ()) -> Iterator[Reply]:
        if st.user_id is None:
            st.user_id = f"guest-{uuid.uuid4().hex[:8]}"
            st.guest = True
            self.rec.feedback.add_reader(self.rec.dataset, st.user_id, "chat")
        res = self.rec.recommend_full(user_id=st.user_id, query=st.query, k=self.k, constraints=c, exclude=exclude)
        st.recs = [r.book_id for r in res.items]
        if not res.items:
            yield Reply("Nothing in the catalog fits all of that. Try loosening a constraint (say *reset*).",
                        cards=[], notes=res.notes, state=st)
            return
        intro = _intro(st, c, self.rec)
        llm = self.rec.llm
        notes = list(res.notes)
        if llm is None:
            notes.append("no LLM configured: explanations are built from the evidence with templates")
        reply = Reply(intro, res.items, notes, st, streaming=llm is not None and self.llm_picks > 0)
        yield reply
        if llm is None or self.llm_picks <= 0:
            return
        yield from self._stream_llm(reply)

    def _stream_llm(self, reply: Reply) -> Iterator[Reply]:
        rec = self.rec
        ctx = rec.context(reply.state.user_id, query=reply.state.query)
        hist = [b for b, _ in rec._history_books(ctx)]
        ex = rec.explainer()
        fallbacks = 0
        for card in reply.cards[: self.llm_picks]:
            book = rec.books[card.book_id]
            final = None
            template = card.explanation
            for part in ex.stream_explain(book, card.evidence, hist, rec.books, template, query=ctx.query):
                if isinstance(part, str):
                    card.blurb = part  # raw text as it streams; replaced by the checked result below
                    card.explanation_source = "streaming"
                    yield Reply(reply.text, reply.cards, reply.notes, reply.state, streaming=True)
                else:
                    final = part
            card.blurb = None
            card.explanation_source = "template"
            if final is not None:
                Recommender.apply_explanation(card, final)
                card.explanation = card.explanation if final.source == "llm" else template
                fallbacks += final.source != "llm"
            yield Reply(reply.text, reply.cards, reply.notes, reply.state, streaming=True)
        if fallbacks:
            reply.notes.append(f"{fallbacks} LLM text(s) failed the grounding check: showing template text instead")
        yield Reply(reply.text, reply.cards, reply.notes, reply.state, streaming=False)

    def _why(self, st: ChatState, book_id: str) -> Reply:
        e = self.rec.explain(st.user_id, book_id) if st.user_id else None
        b = self.rec.books[book_id]
        if e is None:
            return Reply(f"“{b.title}” is popular here; tell me books you like so I can be specific.", state=st)
        lines = [f"**Why “{b.title}”?** {e.explanation}"]
        from retrieval.evidence import strength

        from .explain import render_evidence

        rated = {r.book_id: r.rating for r in self.rec.history(st.user_id)}
        ranked, kinds = [], set()
        for x in sorted(e.evidence, key=lambda x: -strength(x)):  # one extra sentence per kind
            if x.kind not in kinds:
                kinds.add(x.kind)
                ranked.append(x)
        more = [render_evidence(x, self.rec.books, rated) for x in ranked]
        extra = [m for m in more if m and m not in e.explanation][:3]
        if extra and not e.explanation.startswith("You "):
            lines.append("Also: " + " ".join(extra))
        return Reply("\n\n".join(lines), state=st)

    def _details(self, st: ChatState, book_id: str) -> Reply:
        b = self.rec.books[book_id]
        parts = [f"**{b.title}** by {', '.join(b.authors) or 'unknown author'}"
                 + (f" ({b.year})" if b.year is not None else "")]
        if b.series:
            parts.append(f"Part of *{b.series}*" + (f", #{b.series_index:g}" if b.series_index else "") + ".")
        if b.description:
            parts.append(b.description)
        if b.tags:
            parts.append("Tags: " + ", ".join(b.tags))
        i = self.rec.lib.index[book_id]
        n = int(self.rec.lib.pop_count[i])
        if n:
            parts.append(f"{n} readers here rated it, {self.rec.lib.pop_mean[i]:.1f}★ on average.")
        return Reply("\n\n".join(parts), state=st)

    def feedback(self, state: Any, book: str | int, signal: str) -> Iterator[Reply]:
        """A card button or a chat phrase: record it, then show the updated list."""
        st = ChatState.from_any(state)
        book_id = st.recs[book] if isinstance(book, int) and 0 <= book < len(st.recs) else str(book)
        if book_id not in self.rec.books:
            yield Reply("That card is gone; ask for new recommendations.", cards=[], state=st)
            return
        if st.user_id is None:
            st.user_id = f"guest-{uuid.uuid4().hex[:8]}"
            st.guest = True
        self.rec.add_feedback(st.user_id, book_id, signal, create_user=True)
        title = self.rec.books[book_id].title
        said = {"like": f"Noted: you liked “{title}”.", "dislike": f"Noted: not “{title}”-style books.",
                "read": f"Noted: you've read “{title}”.", "not_interested": f"OK, “{title}” is off your list.",
                "to_read": f"Saved “{title}” to your to-read list."}.get(signal, f"Noted: {signal} for “{title}”.")
        c = Constraints(**st.constraints) if st.constraints else Constraints()
        for r in self._recommend(st, c):
            r.text = said + " Here is your updated list."
            yield r


def _generic_request(q: str) -> bool:
    """'what should I read next' carries no topic: do not embed it as a query."""
    words = set(re.findall(r"[a-z']+", q.lower()))
    return words <= {"what", "should", "i", "read", "next", "something", "a", "book", "books", "good", "to",
                     "recommend", "me", "please", "some", "give", "any", "suggestions", "suggest", "can", "you",
                     "another", "new", "now", "more", "the", "one", "ones", "else", "could", "would", "like"}


def _intro(st: ChatState, c: Constraints, rec: Recommender) -> str:
    bits = []
    if st.ref_book:
        bits.append(f"like “{rec.books[st.ref_book].title}”")
    if st.query and not st.ref_book:
        bits.append(f"for “{excerpt(st.query, QUERY_EXCERPT)}”")
    d = c.describe()
    if d:
        bits.append(f"({d})")
    return "Here are my picks" + (" " + " ".join(bits) if bits else "") + ":"


def card_html(r: Recommendation, n: int) -> str:
    """A result card. All text is escaped: titles and LLM output are data, never markup."""
    e = html.escape
    cover = (f'<img class="rn-cover" src="{e(r.image_url)}" alt="" loading="lazy">' if r.image_url else
             '<div class="rn-cover rn-nocover">📖</div>')
    tags = "".join(f'<span class="rn-tag">{e(t)}</span>' for t in r.tags[:6])
    srcs = "".join(f'<span class="rn-src">{e(s)}</span>' for s in r.sources)
    meta = e(", ".join(r.authors)) + (f" · {r.year}" if r.year is not None else "")
    why_label = {"llm": "Why you (LLM, checked against evidence)", "streaming": "Why you (writing…)"}.get(
        r.explanation_source, "Why you")
    blurb = f'<p class="rn-blurb">{e(r.blurb)}</p>' if r.blurb else ""
    return (f'<div class="rn-card" data-book-id="{e(r.book_id)}">{cover}<div class="rn-body">'
            f'<div class="rn-title">#{n} {e(r.title)}</div><div class="rn-meta">{meta}</div>'
            f'<div class="rn-tags">{tags}</div><div class="rn-why"><b>{why_label}:</b> {e(r.explanation)}</div>'
            f'{blurb}<div class="rn-sources">found by {srcs}</div></div></div>')


def history_from_pairs(pairs: list[tuple[str, float]], user: str = "guest") -> list[Rating]:
    return [Rating(user, b, float(r), float(i)) for i, (b, r) in enumerate(pairs)]
