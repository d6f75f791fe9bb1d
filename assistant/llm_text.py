"""Compatibility re-exports: the guard moved to :mod:`assistant.grounding`, the explainer to
:mod:`assistant.explainer` and prompt formatting to :mod:`prompts.format`."""

from assistant.explainer import (  # noqa: F401
    Explainer,
    ExplanationResult,
    FallbackCounter,
    partial_fields,
    reason_category,
)
from assistant.grounding import (  # noqa: F401
    MAX_BLURB_CHARS,
    MAX_WHY_CHARS,
    NameIndex,
    check_grounding,
    normalize_title,
    parse_explanation,
    split_series,
    title_keys,
)
from prompts.format import format_book, format_evidence, format_history  # noqa: F401
