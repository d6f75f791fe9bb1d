"""Tests mirror the module tree: every module has ``tests/test_<module>.py``, or an entry below.

An entry names the test files that cover the module and says why it has none of its own (most
are exercised end to end through a public entry point). A stale entry (the module is gone, or
now has its own file) fails too, and tests/README.md must list every module, so the map stays
true as files come and go.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("assistant", "retrieval", "eval", "prompts")

# module -> the test files that cover it (why no tests/test_<module>.py of its own)
COVERED_ELSEWHERE: dict[str, tuple[str, ...]] = {
    # the CLI is driven by the tests of each command it runs
    "assistant.cli": ("test_recommender.py", "test_chat_engine.py", "test_runner.py"),
    "assistant.cli_privacy": ("test_privacy.py",),  # `readnext export` / `forget`
    # the REST server's keys and its CLI (`readnext serve`, `readnext keys`) run in its tests
    "assistant.api_keys": ("test_rest.py",),
    "assistant.cli_rest": ("test_rest.py",),
    # the explainer is the LLM text path: grounding checks and the text study drive it
    "assistant.explainer": ("test_grounding.py", "test_text_study.py"),
    "assistant.importer": ("test_chat_engine.py", "test_properties.py"),  # Goodreads re-imports
    # compatibility re-exports of grounding / explainer / prompts.format, tested where they live
    "assistant.llm_text": ("test_grounding.py",),
    # one file holds every LLM backend to the same contract (base, endpoint, local, server)
    "assistant.llm.base": ("test_llm_backends.py",),
    "assistant.llm.endpoint": ("test_llm_backends.py",),
    "assistant.llm.local": ("test_llm_backends.py",),
    "assistant.llm.server": ("test_llm_backends.py",),
    "assistant.llm.model_files": ("test_llamacpp.py", "test_resilience.py"),
    "assistant.rerank": ("test_llm_backends.py",),  # rerank needs the backends above
    # the eval stages run end to end through `readnext eval` (output contract, recomputation)
    "eval.cli": ("test_runner.py",),
    "eval.faithfulness": ("test_runner.py",),
    "eval.llm_stage": ("test_runner.py",),
    "eval.models": ("test_runner.py", "test_fusion.py"),
    "eval.plots": ("test_runner.py",),
    "eval.protocol": ("test_runner.py",),
    "eval.provenance": ("test_runner.py",),
    "eval.report": ("test_runner.py",),
    "eval.scoring": ("test_runner.py",),
    "eval.study": ("test_runner.py",),
    "eval.tuning": ("test_runner.py", "test_tuned_defaults.py"),
    "eval.intents": ("test_conversation.py",),  # the labelled request set
    "eval.text_audit": ("test_text_study.py",),
    "prompts.format": ("test_grounding.py", "test_llm_backends.py"),
    # request understanding: one conversation file drives matcher, anchors and BM25 together
    # the warm re-ingest's Chroma copy: its records equal a fresh build (test_fast_paths)
    "retrieval.chroma_reuse": ("test_fast_paths.py", "test_index.py"),
    "retrieval.anchor": ("test_conversation.py", "test_sources.py"),
    "retrieval.lexical": ("test_conversation.py", "test_sources.py"),
    "retrieval.matcher": ("test_conversation.py",),
    "retrieval.constraints": ("test_ranking.py",),
    # data loading: the readers of every format, their errors and the property tests
    "retrieval.data": ("test_errors.py", "test_properties.py", "test_demo_data.py"),
    "retrieval.embed": ("test_sources.py", "test_recommender.py", "test_doctor.py"),
    "retrieval.evidence": ("test_explain.py", "test_recommender.py"),
    "retrieval.library": ("test_sources.py", "test_fusion.py"),
    "retrieval.registry": ("test_sources.py",),  # the contract runs over every registered name
    "retrieval.sasrec_source": ("test_sasrec.py",),
    "retrieval.serving": ("test_concurrency.py",),  # live re-ingest under load
    "retrieval.store": ("test_recommender.py",),  # the index on disk is a real Chroma store
    "retrieval.types": ("test_sources.py",),
    # packaged weights located and sha256-checked: every real embedder load, and doctor's check
    "retrieval.weights": ("test_recommender.py", "test_doctor.py"),
}


def modules() -> list[str]:
    out = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if f.name != "__init__.py" and "data" not in f.relative_to(ROOT).parts:
                out.append(".".join(f.relative_to(ROOT).with_suffix("").parts))
    return out


def _own_test(module: str) -> Path:
    return ROOT / "tests" / f"test_{module.rsplit('.', 1)[-1]}.py"


def test_every_module_has_a_test_file_or_says_where_it_is_tested() -> None:
    missing = [m for m in modules() if not _own_test(m).is_file() and m not in COVERED_ELSEWHERE]
    assert not missing, (
        f"no tests/test_<module>.py for {missing}: add one, or an entry in COVERED_ELSEWHERE "
        "naming the test files that cover it"
    )


def test_the_allow_list_is_not_stale() -> None:
    mods = set(modules())
    gone = [m for m in COVERED_ELSEWHERE if m not in mods]
    own = [m for m in COVERED_ELSEWHERE if m in mods and _own_test(m).is_file()]
    bad = [
        (m, f)
        for m, files in COVERED_ELSEWHERE.items()
        for f in files
        if not (ROOT / "tests" / f).is_file()
    ]
    assert not gone, f"COVERED_ELSEWHERE names modules that no longer exist: {gone}"
    assert not own, f"these modules now have their own test file; drop their entry: {own}"
    assert not bad, f"COVERED_ELSEWHERE names test files that do not exist: {bad}"


def test_the_tests_readme_maps_every_module() -> None:
    text = (ROOT / "tests" / "README.md").read_text(encoding="utf-8")
    unlisted = [m for m in modules() if f"`{m}`" not in text]
    assert not unlisted, f"tests/README.md does not list {unlisted}"
