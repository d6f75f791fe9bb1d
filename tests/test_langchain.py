"""LangChain pieces over a real ingested demo index (real embedder, real Chroma, real feedback
store).

The chat model in the chain is a deterministic stand-in backend (allowed for chains); everything
it is given comes from the real retriever.
"""

from __future__ import annotations

import json
import re

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from assistant import Recommender
from assistant.integrations.langchain import ReadnextChatModel, ReadnextRetriever, readnext_tools
from assistant.llm.base import LLMBackend, LLMError


class FirstTitleLM(LLMBackend):
    """Answers with the first book line of the context it was given, so the chain's wiring shows."""

    name = "first-title"
    model_id = "first-title"

    def __init__(self) -> None:
        self.seen: list[list[dict]] = []

    def yes_no_scores(self, prompts):
        raise LLMError("not used")

    def generate(self, messages, max_new_tokens=160, stop=None):
        self.seen.append(messages)
        m = re.search(r"^1\. (.+)$", messages[-1]["content"], re.M)
        return f"Try {m.group(1)}." if m else "I have nothing to suggest."

    def stream(self, messages, max_new_tokens=160, stop=None):
        text = self.generate(messages, max_new_tokens, stop)
        for i in range(0, len(text), 4):
            yield text[i : i + 4]


@pytest.fixture(scope="module")
def rec(demo_home):
    r = Recommender.open(demo_home, llm="none")
    yield r
    r.close()


def test_retriever_returns_explained_documents(rec):
    docs = ReadnextRetriever(recommender=rec, user_id="u0001", k=4).invoke("a funny fantasy")
    assert len(docs) == 4 and all(isinstance(d, Document) for d in docs)
    rated = {r.book_id for r in rec.history("u0001")}
    for d in docs:
        m = d.metadata
        assert m["book_id"] in rec.books and m["book_id"] not in rated
        assert d.page_content.startswith(rec.books[m["book_id"]].title)
        assert (
            m["explanation"] in d.page_content and m["sources"] and isinstance(m["evidence"], list)
        )
    # the same ranking the Python API gives
    assert [d.metadata["book_id"] for d in docs] == [
        r.book_id for r in rec.recommend(user_id="u0001", query="a funny fantasy", k=4)
    ]


def test_lcel_chain_over_retriever_and_chat_model(rec):
    lm = FirstTitleLM()
    retriever = ReadnextRetriever(recommender=rec, user_id="u0002", k=3)

    def numbered(docs):
        return "\n".join(f"{i}. {d.metadata['title']}" for i, d in enumerate(docs, 1))

    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You recommend books from the list only."),
            ("human", "Books:\n{context}\n\nRequest: {question}"),
        ]
    )
    chain = (
        {"context": retriever | numbered, "question": RunnablePassthrough()}
        | prompt
        | ReadnextChatModel(backend=lm)
        | StrOutputParser()
    )
    out = chain.invoke("something short and hopeful")
    first = rec.recommend(user_id="u0002", query="something short and hopeful", k=3)[0].title
    assert out == f"Try {first}."
    assert (
        lm.seen[-1][0]["role"] == "system"
        and "Request: something short" in lm.seen[-1][-1]["content"]
    )
    # streaming goes through the backend's stream, chunk by chunk
    chunks = list(
        (prompt | ReadnextChatModel(backend=lm)).stream({"context": "1. Dune", "question": "x"})
    )
    assert len(chunks) > 1 and "".join(c.content for c in chunks) == "Try Dune."


def test_agent_tool_calls_recommend_and_record_feedback(demo_home, tmp_path):
    # a copy of the demo home: this test stores a reader, other tests count the shared home's
    import shutil

    home = tmp_path / "home"
    shutil.copytree(demo_home, home, symlinks=True)
    rec = Recommender.open(home, llm="none")
    try:
        # a reader of its own, so the shared demo readers stay as other tests expect them
        rec.create_reader("lc-agent", [(r.book_id, r.rating) for r in rec.history("u0003")[:6]])
        tools = {t.name: t for t in readnext_tools(rec, user_id="lc-agent")}
        # the reader is bound at construction: no tool lets the agent choose whose data it touches
        for t in tools.values():
            assert "user" not in json.dumps(t.args).lower()
        # what an agent loop does with a model's tool call
        call = AIMessage(
            content="",
            tool_calls=[
                {"name": "recommend_books", "id": "c1", "args": {"request": "space opera", "k": 3}}
            ],
        )
        msg = tools["recommend_books"].invoke(call.tool_calls[0])
        assert isinstance(msg, ToolMessage) and msg.tool_call_id == "c1"
        picks = json.loads(msg.content)
        assert len(picks) == 3 and all(p["why"] for p in picks)
        before = len(rec.history("lc-agent"))
        out = json.loads(
            tools["record_feedback"].invoke({"book_id": picks[0]["book_id"], "signal": "5"})
        )
        assert out["recorded"]["book_id"] == picks[0]["book_id"]
        hist = rec.history("lc-agent")
        assert (
            len(hist) == before + 1
            and hist[-1].book_id == picks[0]["book_id"]
            and hist[-1].rating == 5
        )
        # the liked book is no longer recommended
        again = json.loads(tools["recommend_books"].invoke({"request": "space opera", "k": 3}))
        assert picks[0]["book_id"] not in {p["book_id"] for p in again}
        # bad input comes back as the one-line error, not an exception in the agent loop
        err = json.loads(
            tools["record_feedback"].invoke({"book_id": "no-such-book", "signal": "like"})
        )
        assert "no-such-book" in err["error"]
    finally:
        rec.close()
