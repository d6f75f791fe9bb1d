"""The chat assistant's brain, free of any UI: intents -> recommendations, feedback, onboarding.

The Gradio app (``assistant.chat``) is a thin layer over :class:`ChatEngine`, so the same logic
is tested directly and through a real browser.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retrieval.constraints import Constraints
from retrieval.errors import ReadnextError
from retrieval.types import Rating, year_text

from .explain import QUERY_EXCERPT, excerpt
from .intent import (
    Intent,
    RequestState,
    describe_request,
    follow_up,
    intent_parser,
    recommend_request,
)
from .recommender import Recommendation, Recommender

GUEST_NOTE = (
    "guest session: nothing is saved (your feedback lives in this session only); "
    "start as a new reader to keep it"
)
HELP = (
    "Ask me **what should I read next?**, or: *something like Dune but shorter*, *more fantasy*, "
    "*not romance*, *books by Ursula K. Le Guin*, *published after 2000*, *why #2?*, "
    "*tell me more about #1*, *I've read #3*, *not interested in #2*. "
    "Use 👍 / 👎 / read it / not interested on the cards to teach me your taste."
)

# "what are readers like me reading?": the readers-like-you source (nearest readers by taste)
_READERS_LIKE_ME_RE = re.compile(
    r"\b(?:readers?|people|others|folks)\s+(?:(?:just|a\s+bit)\s+)?(?:like\s+me|similar\s+to\s+me|with\s+my\s+taste"
    r"|who\s+(?:read|like|love)\s+what\s+i\s+(?:read|like|love))\b",
    re.IGNORECASE,
)


@dataclass
class ChatState:
    """Per-session state (kept in ``gr.State``; plain data so it serialises)."""

    user_id: str | None = None
    recs: list[str] = field(default_factory=list)  # book ids shown, in order
    constraints: dict = field(default_factory=dict)
    query: str | None = None
    ref_book: str | None = None  # "something like X"
    guest: bool = False
    # A guest (no reader) is ephemeral: their ratings and dismissals live in this state only.
    session_ratings: list = field(default_factory=list)  # [[book_id, rating], ...]
    session_exclude: list = field(default_factory=list)  # book ids dismissed or read

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_any(cls, x: Any) -> ChatState:
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
        return {
            "text": self.text,
            "items": [c.to_dict() for c in self.cards or []],
            "notes": self.notes,
            "user_id": self.state.user_id,
        }


class ChatEngine:
    """Turns chat messages and card clicks into recommendations, using one shared Recommender."""

    def __init__(self, rec: Recommender, k: int = 5, llm_picks: int | None = None) -> None:
        self.rec = rec
        self.k = k
        self.llm_picks = rec.settings.llm.explain_top if llm_picks is None else llm_picks
        self.intents = intent_parser(rec)
        self.tags = self.intents.tags
        self._title_to_id = {}
        for b in rec.books.values():
            self._title_to_id.setdefault(b.title, b.book_id)

    # -- who is reading -------------------------------------------------------------------------

    def select_reader(self, user_id: str) -> tuple[ChatState, str]:
        user_id = (user_id or "").strip()
        if not self.rec.has_user(user_id):
            raise ReadnextError(
                f"unknown reader {user_id!r}: pick one from the list or start as a new reader"
            )
        n = len(self.rec.history(user_id))
        return ChatState(user_id=user_id), f"Hi **{user_id}**: I know {n} books you rated. {HELP}"

    def new_reader(
        self, name: str | None, loved: str = "", genres: list[str] | None = None
    ) -> tuple[ChatState, str]:
        """Onboarding: a few loved books and/or genres -> a reader with a profile, at once."""
        name = (
            re.sub(r"[^\w.@-]+", "-", (name or "").strip())[:40] or f"guest-{uuid.uuid4().hex[:8]}"
        )
        limit = self.rec.settings.chat.max_message_chars
        if len(loved or "") > limit:
            raise ReadnextError(
                f"the list of loved books is {len(loved):,} characters long and "
                f"the limit is {limit:,}: name a few books, one per line"
            )
        if self.rec.has_user(name) and name in self.rec.lib.user_index:
            raise ReadnextError(
                f"the name {name!r} is taken by a reader in the dataset; choose another"
            )
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
        if ids:
            msg += (
                " Ask *what are readers like me reading?* to see what the readers closest to "
                "your taste rated."
            )
        return st, msg

    def onboard(
        self, name: str | None, loved: str = "", genres: list[str] | None = None
    ) -> Iterator[Reply]:
        """The "I'm new" turn, streamed: the welcome at once, then the first picks (and their
        LLM text as it is written)."""
        st, msg = self.new_reader(name, loved, genres)
        yield Reply(msg + "\n\nFinding your first picks…", state=st, streaming=True)
        yield from _after(msg, self._recommend(st, Constraints(include_tags=list(genres or []))))

    def import_file(self, path: str | Path, name: str | None) -> Iterator[Reply]:
        """The import turn, streamed: a note at once, the import summary, then the first picks."""
        yield Reply("Reading your export…", state=ChatState(), streaming=True)
        st, msg, _ = self.import_goodreads(path, name)
        yield Reply(msg + "\n\nFinding your first picks…", state=st, streaming=True)
        yield from _after(msg, self._recommend(st, Constraints()))

    def import_goodreads(self, path: str | Path, name: str | None) -> tuple[ChatState, str, dict]:
        """Import an export as reader ``name`` (idempotent; see :mod:`assistant.importer`)."""
        from .importer import import_export

        name = (
            re.sub(r"[^\w.@-]+", "-", (name or "").strip())[:40] or f"reader-{uuid.uuid4().hex[:6]}"
        )
        res = import_export(self.rec, path, name, origin="goodreads")
        return ChatState(user_id=name), res.message(bold=True), res.to_dict()

    def find_title(self, text: str) -> str | None:
        """Catalog book id for a loosely typed title ("the hobbit", "dune by frank herbert")."""
        hit = self.intents.matcher.title(text)
        return hit.book_id if hit else None

    # -- conversation -----------------------------------------------------------------------------

    def parse(self, message: str, st: ChatState | None = None, llm: Any = None) -> Intent:
        """The LLM parses the message when configured (validated strictly); rules otherwise.

        ``llm``: the turn's backend view (its time budget); default: the parser's backend."""
        shown = [
            self.rec.books[b].title for b in (st.recs if st else [])[:10] if b in self.rec.books
        ]
        return self.intents.parse(message, shown, llm=llm)

    @property
    def intent_fallbacks(self) -> int:
        """How many messages the LLM failed to parse (the rules answered instead)."""
        return self.intents.fallbacks

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
            yield Reply(
                "Tell me what you are in the mood for, or ask *what should I read next?*", state=st
            )
            return
        limit = self.rec.settings.chat.max_message_chars
        if len(message) > limit:  # refused without quoting it: nothing echoes unbounded input
            yield Reply(
                f"That message is {len(message):,} characters long; "
                f"I read up to {limit:,}. "
                "Could you say in a sentence or two what you would like to read?",
                state=st,
            )
            return
        llm = self.rec.llm
        turn = llm.for_turn() if hasattr(llm, "for_turn") else None  # one LLM budget for the turn
        if _READERS_LIKE_ME_RE.search(message):
            st.query, st.ref_book, st.constraints = None, None, {}
            yield from self._recommend(st, Constraints(), source="readers", turn=turn)
            return
        intent = self.parse(message, st, turn)
        if intent.kind in ("help", "greeting"):
            yield Reply(("Hello! " if intent.kind == "greeting" else "") + HELP, state=st)
            return
        if intent.kind in ("why", "details", "read_it", "not_interested") and not (
            intent.kind == "not_interested" and intent.exclude_tags
        ):
            target = self._target(st, intent)
            if target is None:
                yield Reply(
                    "Which book do you mean? Ask for recommendations first, then refer to them as "
                    "#1, #2…",
                    state=st,
                )
                return
            if intent.kind == "why":
                yield self._why(st, target)
                return
            if intent.kind == "details":
                yield self._details(st, target)
                return
            yield from self.feedback(
                st, target, "read" if intent.kind == "read_it" else "not_interested"
            )
            return
        # recommend / more_like / refine: the request, refined or reset (assistant.intent)
        anchor = self._target(st, intent) if intent.kind == "more_like" else None
        prev = (
            RequestState(st.query, Constraints(**st.constraints), st.ref_book)
            if (st.constraints or st.query or st.ref_book)
            else None
        )
        req = follow_up(prev, intent, anchor, self.rec.books, self.rec.settings.request.tag_boost)
        st.query, st.ref_book = req.query, req.anchor
        st.constraints = asdict(req.constraints)
        yield from self._recommend(st, req.constraints, turn=turn)

    def _recommend(
        self,
        st: ChatState,
        c: Constraints,
        exclude: list[str] = (),
        turn: Any = None,
        source: str = "hybrid",
    ) -> Iterator[Reply]:
        if st.ref_book and st.ref_book not in self.rec.books:
            st.ref_book = None
        req = RequestState(st.query, c, st.ref_book)
        if source == "readers" and (
            source not in self.rec.sources or st.user_id is None or not self.rec.history(st.user_id)
        ):
            yield Reply(
                "To find readers like you I need a few books you loved first: tell me some titles "
                "(*I loved Dune and Emma*) or rate the cards.",
                state=st,
            )
            return
        if st.user_id is None:  # an ephemeral guest: nothing is stored, and the notes say so
            st.guest = True
            hist = [tuple(x) for x in st.session_ratings] or None
            res = recommend_request(
                self.rec,
                req,
                None,
                self.k,
                exclude=list(exclude) + st.session_exclude,
                history=hist,
            )
            res.notes.append(GUEST_NOTE)
        elif source == "readers":
            res = self.rec.recommend_full(
                user_id=st.user_id, k=self.k, constraints=c, exclude=exclude, source=source
            )
        else:
            res = recommend_request(self.rec, req, st.user_id, self.k, exclude=exclude)
        st.recs = [r.book_id for r in res.items]
        if not res.items:
            yield Reply(
                "Nothing in the catalog fits all of that. Try loosening a constraint (say "
                "*reset*).",
                cards=[],
                notes=res.notes,
                state=st,
            )
            return
        intro = _intro(st, c, self.rec)
        llm = self.rec.llm
        notes = list(res.notes)
        if llm is None:
            notes.append(
                "no LLM configured: explanations are built from the evidence with templates"
            )
        reply = Reply(intro, res.items, notes, st, streaming=llm is not None and self.llm_picks > 0)
        yield reply
        if llm is None or self.llm_picks <= 0:
            return
        yield from self._stream_llm(reply, turn)

    def _stream_llm(self, reply: Reply, turn: Any = None) -> Iterator[Reply]:
        rec = self.rec
        ctx = rec.context(reply.state.user_id, query=reply.state.query)
        hist = rec._history_books(ctx)  # with ratings, so "you loved X" is checked
        ex, turn = rec.explainer_for_turn(turn)  # the turn's LLM budget: later picks keep templates
        reasons, shown = [], []
        for card in reply.cards[: self.llm_picks]:
            book = rec.books[card.book_id]
            final = None
            template = card.explanation
            for part in ex.stream_explain(
                book, card.evidence, hist, rec.books, template, query=ctx.query, shown=shown
            ):
                if isinstance(part, str):
                    card.blurb = (
                        part  # raw text as it streams; replaced by the checked result below
                    )
                    card.explanation_source = "streaming"
                    yield Reply(reply.text, reply.cards, reply.notes, reply.state, streaming=True)
                else:
                    final = part
            card.blurb = None
            card.explanation_source = "template"
            if final is not None:
                Recommender.apply_explanation(card, final)
                card.explanation = card.explanation if final.source == "llm" else template
                if final.source != "llm":
                    reasons.append(final.rejected_reason)
                else:
                    shown += [final.why, final.blurb or ""]  # later picks must not repeat it
            yield Reply(reply.text, reply.cards, reply.notes, reply.state, streaming=True)
        from .llm.resilience import count_guard_rejections, honest_notes

        reply.notes.extend(honest_notes(turn, count_guard_rejections(reasons)))
        yield Reply(reply.text, reply.cards, reply.notes, reply.state, streaming=False)

    def _why(self, st: ChatState, book_id: str) -> Reply:
        e = self.rec.explain(st.user_id, book_id) if st.user_id else None
        b = self.rec.books[book_id]
        if e is None:
            return Reply(
                f"“{b.title}” is popular here; tell me books you like so I can be specific.",
                state=st,
            )
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
        parts = [
            f"**{b.title}** by {', '.join(b.authors) or 'unknown author'}"
            + (f" ({year_text(b.year)})" if b.year is not None else "")
        ]
        if b.series:
            parts.append(
                f"Part of *{b.series}*" + (f", #{b.series_index:g}" if b.series_index else "") + "."
            )
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
        if st.user_id is None:  # a guest: kept in the session state only, never stored
            from retrieval.feedback import normalize_signal

            sig, rating = normalize_signal(signal)
            st.guest = True
            if sig != "to_read":
                st.session_exclude = list(dict.fromkeys(st.session_exclude + [book_id]))
            if rating is not None:
                kept = [x for x in st.session_ratings if x[0] != book_id]
                st.session_ratings = kept + [[book_id, rating]]
        else:
            self.rec.add_feedback(st.user_id, book_id, signal)
        title = self.rec.books[book_id].title
        said = {
            "like": f"Noted: you liked “{title}”.",
            "dislike": f"Noted: not “{title}”-style books.",
            "read": f"Noted: you've read “{title}”.",
            "not_interested": f"OK, “{title}” is off your list.",
            "to_read": f"Saved “{title}” to your to-read list.",
        }.get(signal, f"Noted: {signal} for “{title}”.")
        c = Constraints(**st.constraints) if st.constraints else Constraints()
        for r in self._recommend(st, c):
            r.text = said + " Here is your updated list."
            yield r


def _intro(st: ChatState, c: Constraints, rec: Recommender) -> str:
    """The reply's first line says in words what was understood."""
    q = excerpt(st.query, QUERY_EXCERPT) if st.query else None
    said = describe_request(RequestState(q, c, st.ref_book), rec.books)
    return f"I understood: {said}. Here are my picks:" if said else "Here are my picks:"


def card_html(r: Recommendation, n: int) -> str:
    """A result card. All text is escaped: titles and LLM output are data, never markup."""
    e = html.escape
    cover = (
        f'<img class="rn-cover" src="{e(r.image_url)}" alt="" loading="lazy">'
        if r.image_url
        else '<div class="rn-cover rn-nocover">📖</div>'
    )
    tags = "".join(f'<span class="rn-tag">{e(t)}</span>' for t in r.tags[:6])
    srcs = "".join(f'<span class="rn-src">{e(s)}</span>' for s in r.sources)
    meta = e(", ".join(r.authors)) + (f" · {year_text(r.year)}" if r.year is not None else "")
    # Only text that passed every check is called checked; a draft is not; the template says so.
    why_label = {
        "llm": "Why you (LLM; its names, numbers and tags checked against the evidence)",
        "streaming": "Why you (LLM draft, not yet checked…)",
    }.get(r.explanation_source, "Why you (template, from the evidence)")
    blurb = f'<p class="rn-blurb">{e(r.blurb)}</p>' if r.blurb else ""
    return (
        f'<div class="rn-card" data-book-id="{e(r.book_id)}">{cover}<div class="rn-body"><div '
        f'class="rn-title">#{n} {e(r.title)}</div><div class="rn-meta">{meta}</div><div '
        f'class="rn-tags">{tags}</div><div class="rn-why"><b>{why_label}:</b> '
        f'{e(r.explanation)}</div>{blurb}<div class="rn-sources">found by {srcs}</div></div></div>'
    )


def history_from_pairs(pairs: list[tuple[str, float]], user: str = "guest") -> list[Rating]:
    return [Rating(user, b, float(r), float(i)) for i, (b, r) in enumerate(pairs)]


def _after(msg: str, replies: Iterable[Reply]) -> Iterator[Reply]:
    """``replies`` with ``msg`` before their text, once: a streamed turn yields the same Reply
    again as its LLM text arrives (prefixing each yield showed the welcome twice)."""
    for r in replies:
        if not r.text.startswith(msg):
            r.text = msg + "\n\n" + r.text
        yield r
