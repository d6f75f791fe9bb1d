"""Explainer with a JSON backend, card label honesty, and the text-quality study + its audit on the
real demo index (fake LLMs: the study's plumbing and the independent recomputation are tested,
not a model)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from assistant.chat_engine import card_html
from assistant.explainer import Explainer
from assistant.llm.base import LLMBackend, LLMError
from assistant.recommender import Recommendation, Recommender
from retrieval.data import load_demo
from retrieval.types import Evidence

DEMO = {b.book_id: b for b in load_demo().books}
BY_TITLE = {b.title.split(" (")[0]: b for b in DEMO.values()}


class BadOutput(LLMError):
    pass


BadOutput.__name__ = "LLMBadOutput"  # what the runtime raises when no valid object comes back


class JsonLLM(LLMBackend):
    """A constrained-JSON backend answering with the next scripted object (or raising it)."""

    name, model_id, constrained_json = "fakejson", "fake", True

    def __init__(self, replies):
        self.replies, self.schemas = list(replies), []

    def yes_no_scores(self, prompts):
        raise LLMError("unused")

    def generate(self, messages, max_new_tokens=160, stop=None):
        raise AssertionError("the explainer must use generate_json when it exists")

    def stream(self, messages, max_new_tokens=160, stop=None) -> Iterator[str]:
        raise AssertionError("the explainer must use generate_json when it exists")

    def generate_json(self, messages, schema, max_new_tokens=256, deadline=None):
        self.schemas.append(schema)
        r = self.replies.pop(0) if self.replies else {"explanation": "x", "blurb": "y"}
        if isinstance(r, Exception):
            raise r
        return r


LW, PHM, GG = BY_TITLE["Leviathan Wakes"], BY_TITLE["Project Hail Mary"], BY_TITLE["Gone Girl"]
EVIDENCE = [
    Evidence("shared_tags", book_ids=(PHM.book_id,), tags=("science-fiction", "fast-paced"))
]
HISTORY = [(PHM, 5.0), (GG, 2.0)]
TEMPLATE = (
    "It shares science-fiction, fast-paced with books you liked, such as “Project Hail Mary” (5★)."
)
TRUE = {
    "explanation": "You loved Project Hail Mary, and this is fast-paced science fiction too.",
    "blurb": "A weary detective on an asteroid station searches for a missing heiress, while an "
    "ice hauler crew survives an attack.",
}


def run(replies, shown=(), stream=False):
    ex = Explainer(JsonLLM(replies))
    args = (LW, EVIDENCE, HISTORY, DEMO, TEMPLATE)
    if stream:
        *_, res = ex.stream_explain(*args, shown=shown)
    else:
        res = ex.explain(*args, shown=shown)
    return ex, res


def test_json_backend_true_text_is_shown_and_schema_is_passed():
    ex, r = run([TRUE])
    assert (r.source, r.rejected_reason) == ("llm", None), r.rejected_reason
    assert r.why == TRUE["explanation"] and r.blurb == TRUE["blurb"]
    # prompt v6: the explanation call asks for the explanation only (the blurb is its own call,
    # skipped here because the scripted reply already holds a blurb)
    schema = ex.backend.schemas[0]
    assert schema["required"] == ["explanation"] and schema["additionalProperties"] is False
    _, r = run([TRUE], stream=True)
    assert r.source == "llm"


@pytest.mark.parametrize(
    "reply, needle",
    [
        (
            {
                **TRUE,
                "blurb": "Leviathan Wakes is a story about a man named Leviathan who goes "
                "undercover to find a missing heiress.",
            },
            "character",
        ),
        (
            {
                **TRUE,
                "explanation": "You loved Gone Girl, and this is fast-paced science fiction too.",
            },
            "rated it 2",
        ),
        (
            {**TRUE, "blurb": "Leviathan Wakes is a science fiction novel by James S.A. Corey."},
            "tautology",
        ),
        (BadOutput("reply is not a JSON object"), "not valid JSON"),
        (LLMError("timed out after 15 s"), "backend error"),
    ],
)
def test_false_or_failed_text_falls_back_to_the_template(reply, needle):
    ex, r = run([reply])
    assert r.source == "template" and r.why == TEMPLATE and r.blurb is None
    assert needle in r.rejected_reason, r.rejected_reason
    assert ex.counter.template == 1


def test_near_duplicate_of_an_earlier_pick_falls_back():
    _, r = run([TRUE], shown=[TRUE["explanation"], TRUE["blurb"]])
    assert r.source == "template" and "near-duplicate" in r.rejected_reason


def _rec(source: str, blurb: str | None = None) -> Recommendation:
    return Recommendation(
        LW.book_id,
        LW.title,
        list(LW.authors),
        LW.year,
        list(LW.tags),
        1.0,
        ["hybrid"],
        [],
        "some text",
        explanation_source=source,
        blurb=blurb,
    )


def test_card_labels_never_call_unchecked_text_checked():
    assert "Why you (LLM; its names, numbers and tags checked against the evidence)" in card_html(
        _rec("llm"), 1
    )
    draft = card_html(_rec("streaming", "half a sente"), 1)
    assert "not yet checked" in draft and "checked against the evidence" not in draft
    tmpl = card_html(_rec("template"), 1)
    assert "template, from the evidence" in tmpl and "LLM" not in tmpl


def test_a_rejected_result_leaves_the_template_on_the_card():
    _, r = run(
        [
            {
                **TRUE,
                "explanation": "You loved Gone Girl, and this is fast-paced science fiction too.",
            }
        ]
    )
    card = _rec("template")
    card.explanation = TEMPLATE
    Recommender.apply_explanation(card, r)
    assert (
        card.explanation == TEMPLATE
        and card.explanation_source == "template"
        and card.blurb is None
    )
    assert "rated it 2" in card.rejected_reason


def test_study_dump_and_independent_audit(demo_home, tmp_path):
    from eval.text_audit import audit
    from eval.text_study import dataset_spec, pick_pairs, write_texts

    rows = pick_pairs(demo_home, 3, 2, seed=3, with_requests=True)
    assert len(rows) == 6 and any(r["query"] for r in rows) and all(r["evidence"] for r in rows)
    dump = tmp_path / "texts.jsonl"
    sets = [("demo", dataset_spec(None), rows)]
    invented = {
        "explanation": "You will love it.",
        "blurb": "A man named Zed goes undercover in Paris.",
    }
    bad = JsonLLM([BadOutput("no object")] * 6)
    bad.model_id = "bad"
    runs = write_texts(
        [JsonLLM([invented] * 6), bad], sets, dump, 40, progress=False, threads=0, compare_every=2
    )
    assert [r["pairs"] for r in runs] == [6, 4]  # the second backend: every 2nd reader's picks
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    assert len(lines) == 10 and all(r["source"] == "template" for r in lines)
    assert [r["backend"] for r in lines[:3]] == ["fakejson:fake", "fakejson:bad", "fakejson:fake"]
    metrics = audit(dump, tmp_path)
    m, b = metrics["fakejson:fake"], metrics["fakejson:bad"]
    assert m["pairs"] == 6 and m["guard_pass_rate"] == 0.0 and m["parse_failures"] == 0
    assert b["pairs"] == 4 and b["parse_failures"] == 4
    assert (
        m["claim_support_rate_shown"] == 1.0
    )  # the template texts that were shown are all supported
    # The audit re-checks what was shown, independently of the run: a false text marked "llm" is
    # caught.
    forged = dict(
        lines[0],
        backend="forged",
        source="llm",
        explanation="You loved The Martian.",
        blurb="A man named Zed goes undercover in Paris.",
    )
    dump.write_text(json.dumps(forged) + "\n")
    f = audit(dump)["forged"]
    assert f["guard_pass_rate"] == 1.0 and f["claim_support_rate_llm_shown"] == 0.0
    assert (tmp_path / "metrics.json").is_file() and "guard pass rate" in (
        tmp_path / "table.md"
    ).read_text()
