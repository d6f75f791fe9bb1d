"""readnext as LangChain pieces: a retriever, agent tools, and our LLM backends as chat models.

Builders who put readnext into their own LLM apps mostly compose LangChain runnables, so each
piece here is a plain LangChain class that works in LCEL chains and agents::

    from assistant import Recommender
    from assistant.integrations.langchain import ReadnextRetriever, readnext_tools

    rec = Recommender.open()
    docs = ReadnextRetriever(recommender=rec, user_id="u0001", k=5).invoke("a funny fantasy")
    tools = readnext_tools(rec, user_id="u0001")      # recommend_books, record_feedback

The tools are bound to ONE reader when they are built: the agent chooses requests and books,
never whose data it touches (an agent can be talked into anything, so identity must not be an
argument it fills in).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from assistant.llm.base import LLMBackend, Message
from retrieval.errors import ReadnextError

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "user", "chat": "user"}


def recommendation_document(rec: Any) -> Document:
    """One :class:`~assistant.recommender.Recommendation` as a LangChain ``Document``.

    ``page_content`` is what an LLM should read (title, authors, the grounded explanation, the
    blurb when there is one); ``metadata`` keeps every field (score, sources, evidence records)
    so a chain can cite or filter without parsing text.
    """
    d = rec.to_dict()
    lines = [
        f"{rec.title} by {', '.join(rec.authors) or 'unknown author'}"
        + (f" ({rec.year})" if rec.year else ""),
        f"Why: {rec.explanation}",
    ]
    if rec.blurb:
        lines.append(f"Blurb: {rec.blurb}")
    return Document(page_content="\n".join(lines), metadata=d, id=rec.book_id)


class ReadnextRetriever(BaseRetriever):
    """Explained readnext recommendations for a query, as ``Document``s.

    Args:
        recommender: an open :class:`assistant.Recommender`.
        user_id: the reader the results are for (None: a cold-start query over the catalog).
        k: how many books to return.
        source: the candidate source (``hybrid`` by default; any name ``Recommender.sources`` has).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recommender: Any
    user_id: str | None = None
    k: int = 5
    source: str = "hybrid"

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        recs = self.recommender.recommend(
            user_id=self.user_id, query=query or None, k=self.k, source=self.source
        )
        return [recommendation_document(r) for r in recs]


class _RecommendArgs(BaseModel):
    request: str = Field(
        "",
        description="what the reader asks for in their own words, e.g. "
        "'a funny fantasy' (empty: their usual taste)",
    )
    k: int = Field(5, ge=1, le=20, description="how many books")


class _FeedbackArgs(BaseModel):
    book_id: str = Field(description="the book_id of a recommended book")
    signal: str = Field(
        description="like | dislike | read | not_interested | to_read, or a rating 1-5"
    )


def readnext_tools(recommender: Any, user_id: str) -> list[BaseTool]:
    """Two agent tools bound to one reader: ``recommend_books`` and ``record_feedback``.

    Both return JSON text (what an agent reads back); errors come back as
    ``{"error": "..."}`` with the CLI's one-line message instead of raising into the agent loop.
    """

    def recommend_books(request: str = "", k: int = 5) -> str:
        try:
            recs = recommender.recommend(user_id=user_id, query=request or None, k=k)
        except ReadnextError as e:
            return json.dumps({"error": str(e)})
        return json.dumps(
            [
                {
                    "book_id": r.book_id,
                    "title": r.title,
                    "authors": r.authors,
                    "why": r.explanation,
                    "sources": r.sources,
                }
                for r in recs
            ],
            ensure_ascii=False,
        )

    def record_feedback(book_id: str, signal: str) -> str:
        value: Any = signal
        try:
            value = float(signal)
        except ValueError:
            pass
        try:
            recommender.add_feedback(user_id, book_id, value)
        except ReadnextError as e:
            return json.dumps({"error": str(e)})
        return json.dumps({"recorded": {"book_id": book_id, "signal": signal}})

    return [
        StructuredTool.from_function(
            recommend_books,
            name="recommend_books",
            args_schema=_RecommendArgs,
            description="Explained book recommendations for the current reader.",
        ),
        StructuredTool.from_function(
            record_feedback,
            name="record_feedback",
            args_schema=_FeedbackArgs,
            description="Record the current reader's reaction to a book.",
        ),
    ]


def to_messages(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages to the role/content dicts our backends take."""
    out: list[Message] = []
    for m in messages:
        content = (
            m.content
            if isinstance(m.content, str)
            else "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in m.content)
        )
        out.append({"role": _ROLES.get(m.type, "user"), "content": content})
    return out


class ReadnextChatModel(BaseChatModel):
    """Any readnext :class:`~assistant.llm.base.LLMBackend` as a LangChain chat model.

    The offline default (a GGUF model on CPU), a HF model on a GPU, or an OpenAI-compatible
    endpoint all become one runnable that streams. Decoding is greedy, so outputs repeat.

    Args:
        backend: the backend instance (``assistant.llm.base.load_backend(spec)``).
        max_new_tokens: the reply length limit.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: LLMBackend
    max_new_tokens: int = 256

    @property
    def _llm_type(self) -> str:
        return f"readnext-{self.backend.name}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"backend": self.backend.name, "model": self.backend.model_id}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self.backend.generate(
            to_messages(messages), max_new_tokens=self.max_new_tokens, stop=stop
        )
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for piece in self.backend.stream(
            to_messages(messages), max_new_tokens=self.max_new_tokens, stop=stop
        ):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
