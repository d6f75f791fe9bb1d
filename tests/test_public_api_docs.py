"""The public API documents every parameter (Google style: ``Args:`` / ``Returns:``).

The table below names what a builder or researcher calls. For a class, its constructor's
parameters must be named in the ``Args:`` (or, for a dataclass, ``Attributes:``) section of the
class or ``__init__`` docstring, and each public method the class itself defines must document
its own parameters. For a function, its parameters must be named in ``Args:``. A method that
overrides a documented base method without a docstring inherits the base one
(:func:`inspect.getdoc`), as Sphinx would show it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import pytest

# module -> public names that must carry parameter docs
PUBLIC_API: dict[str, tuple[str, ...]] = {
    "assistant.recommender": ("Recommender", "prompt_history", "check_query_length"),
    "assistant.service": (
        "ReaderService",
        "Caller",
        "delete_upload",
        "request_logger",
        "setup_request_log",
    ),
    "retrieval.sources": (
        "CandidateSource",
        "PopularitySource",
        "ContentSource",
        "CFSource",
        "SequenceSource",
        "SeriesSource",
        "LexicalSource",
        "AnchorSource",
        "HybridSource",
        "top_k",
        "exclude_idx",
        "exclude_mask",
        "rank_within",
        "build_sources",
    ),
    "retrieval.readers": ("ReadersSource", "UserKNNSource", "ReaderIndex", "reader_index"),
    "retrieval.sasrec_source": ("SASRecSource",),
    "retrieval.lexical": ("BM25Index", "lexical_scores", "request_tokens", "tokenize"),
    "retrieval.anchor": ("anchor_scores", "anchor_evidence", "verify_anchor"),
    "retrieval.registry": (
        "BuildDeps",
        "SourceSpec",
        "source_names",
        "section_configs",
        "build_source",
        "build_hybrid",
        "build_sources",
    ),
    "retrieval.cf": ("ItemScorer", "make_model", "confidence_from_ratings", "build_user_items"),
    "retrieval.ranking": ("Ranked", "rank", "rank_one", "rank_matrix", "ranked_ids"),
    "retrieval.fusion": ("normalise", "top_k_matrix", "combine", "fuse_matrices"),
    "assistant.cli": ("main",),  # `readnext` and `readnext eval`
    "eval.cli": ("add_arguments", "config_from_args", "run_from_args"),
    "eval.protocol": (
        "EvalConfig",
        "load_eval_dataset",
        "prepare",
        "tuning_set",
        "protocol_dict",
        "subset",
    ),
    "eval.scoring": (
        "Sampler",
        "score_model",
        "metrics_of",
        "summary",
        "paired",
        "ablation_hook",
        "bar_check",
    ),
    "eval.study": ("run", "config_dict"),
}

_SECTION = re.compile(r"^(\w[\w ]*):\s*$")
_ENTRY = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:")


def documented(doc: str | None, sections: tuple[str, ...] = ("Args",)) -> set[str]:
    """Names documented in the given Google-style sections of ``doc``."""
    names: set[str] = set()
    if not doc:
        return names
    lines = inspect.cleandoc(doc).splitlines()
    i = 0
    while i < len(lines):
        m = _SECTION.match(lines[i])
        i += 1
        if not m or m.group(1) not in sections:
            continue
        # entries are the lines one indent in; continuation lines are indented further
        indent = None
        while i < len(lines):
            line = lines[i]
            if line.strip() and not line[0].isspace():
                break  # the section ended (next heading or prose)
            if line.strip():
                depth = len(line) - len(line.lstrip())
                indent = depth if indent is None else indent
                e = _ENTRY.match(line)
                if depth == indent and e:
                    names.add(e.group(1).lstrip("*"))
            i += 1
    return names


def _params(fn) -> list[str]:
    sig = inspect.signature(fn)
    return [p for p in sig.parameters if p not in ("self", "cls")]


def _cases():
    for mod_name, names in PUBLIC_API.items():
        for name in names:
            yield pytest.param(mod_name, name, id=f"{mod_name}.{name}")


def _missing_for(obj, qual: str) -> list[str]:
    problems: list[str] = []
    if inspect.isclass(obj):
        sections = ("Args", "Attributes") if dataclasses.is_dataclass(obj) else ("Args",)
        have = documented(obj.__doc__, sections)
        init = obj.__dict__.get("__init__")
        if init is not None and not dataclasses.is_dataclass(obj):
            have |= documented(init.__doc__)
        if obj.__init__ is not object.__init__:
            for p in _params(obj):
                if p not in have:
                    problems.append(f"{qual}(): parameter {p!r} not in the Args section")
        for attr, member in vars(obj).items():
            if attr.startswith("_") or not callable(getattr(obj, attr, None)):
                continue
            fn = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
            if not inspect.isfunction(fn):
                continue
            problems += _missing_for_function(getattr(obj, attr), f"{qual}.{attr}")
        if not inspect.getdoc(obj):
            problems.append(f"{qual}: no docstring")
        return problems
    return _missing_for_function(obj, qual)


def _missing_for_function(fn, qual: str) -> list[str]:
    doc = inspect.getdoc(fn)
    if not doc:
        return [f"{qual}: no docstring"]
    have = documented(doc)
    return [
        f"{qual}: parameter {p!r} not in the Args section" for p in _params(fn) if p not in have
    ]


@pytest.mark.parametrize(("mod_name", "name"), list(_cases()))
def test_public_parameters_are_documented(mod_name: str, name: str) -> None:
    obj = getattr(importlib.import_module(mod_name), name)
    problems = _missing_for(obj, f"{mod_name}.{name}")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_an_undocumented_parameter() -> None:
    def f(a: int, b: int) -> int:
        """Add.

        Args:
            a: the first.
                (a continuation line naming b: does not count)

        Returns:
            The sum.
        """
        return a + b

    assert documented(f.__doc__) == {"a"}
    assert _missing_for_function(f, "f") == ["f: parameter 'b' not in the Args section"]

    class C:
        """A class.

        Args:
            x: documented.
        """

        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

        def go(self, n: int) -> None:
            pass

    problems = _missing_for(C, "C")
    assert "C(): parameter 'y' not in the Args section" in problems
    assert "C.go: no docstring" in problems
