"""Versioned prompt templates, stored as TOML files next to this module.

Each file holds ``name``, ``version``, ``description`` and a ``[[messages]]`` list of
``role``/``content`` pairs (LangChain f-string templates: literal braces are doubled). Untrusted
text (titles, descriptions, chat messages) is always wrapped with :func:`delimit` and the system
messages tell the model to treat delimited text as data.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

from langchain_core.prompts import ChatPromptTemplate

PROMPT_DIR = Path(__file__).resolve().parent
OPEN, CLOSE = "<<<", ">>>"
_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
}
# Runs of two or more angle brackets (ASCII or look-alikes) could rebuild a delimiter, so they go.
_MARKERS = re.compile(r"[<>«»‹›≪≫〈〉＜＞]{2,}")


def list_prompts() -> list[str]:
    """Names of the available prompts (file stems), sorted."""
    return sorted(p.stem for p in PROMPT_DIR.glob("*.toml"))


@cache
def _load(name: str) -> tuple[ChatPromptTemplate, str, str, tuple[tuple[str, object], ...]]:
    path = PROMPT_DIR / f"{name}.toml"
    if not path.is_file():
        raise ValueError(
            f"unknown prompt {name!r}: no file {path}; available: {', '.join(list_prompts())}"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML ({e}); fix the file") from e
    version, messages = data.get("version"), data.get("messages")
    if not isinstance(version, str) or not version:
        raise ValueError(f"{path}: missing string field 'version'; add e.g. version = \"1\"")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{path}: missing [[messages]] entries with role and content")
    pairs = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES or not isinstance(content, str):
            raise ValueError(
                f"{path}: messages[{i}] needs role in {sorted(_ROLES)} and a string content"
            )
        pairs.append(
            (
                "human"
                if _ROLES[role] == "user"
                else "ai"
                if _ROLES[role] == "assistant"
                else "system",
                content,
            )
        )
    system = "\n".join(c for r, c in pairs if r == "system").replace("{{", "{").replace("}}", "}")
    meta = tuple((k, v) for k, v in data.items() if k != "messages")
    return ChatPromptTemplate.from_messages(pairs), version, system, meta


def load_prompt(name: str) -> tuple[ChatPromptTemplate, str]:
    """Load ``prompts/<name>.toml`` as a LangChain ``ChatPromptTemplate`` and its version string."""
    template, version, _, _ = _load(name)
    return template, version


def prompt_meta(name: str) -> dict[str, object]:
    """The prompt file's fields other than ``messages`` (name, version, description, extras)."""
    return dict(_load(name)[3])


def system_text(name: str) -> str:
    """The literal system text of a prompt (used to detect replies that echo it)."""
    return _load(name)[2]


def render_messages(name: str, **variables: str) -> tuple[list[dict[str, str]], str]:
    """Fill prompt ``name`` and return OpenAI-style chat messages plus the prompt version."""
    template, version = load_prompt(name)
    missing = set(template.input_variables) - set(variables)
    if missing:
        raise ValueError(f"prompt {name!r} needs variables {sorted(missing)}")
    msgs = template.format_messages(**variables)
    return [{"role": _ROLES[m.type], "content": str(m.content)} for m in msgs], version


def clean_user_text(text: str | None, max_chars: int | None = None) -> str:
    """Strip delimiter look-alikes and control characters from untrusted text; optionally
    truncate."""
    s = _MARKERS.sub(" ", text or "")
    s = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in s)
    s = re.sub(r"\s+", " ", s).strip()
    if max_chars is not None and len(s) > max_chars:
        s = s[: max_chars - 1].rstrip() + "…"
    return s


def delimit(text: str | None, max_chars: int | None = None) -> str:
    """Wrap untrusted text in ``<<<`` ``>>>`` after removing any markers it contains."""
    return f"{OPEN}{clean_user_text(text, max_chars)}{CLOSE}"
