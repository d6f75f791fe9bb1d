"""Shared fixtures: real indexes (real embedder, real Chroma on disk) built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Fast tests use template text; the LLM tests ask for the real model explicitly.
os.environ["READNEXT_LLM_BACKEND"] = "none"


def shared(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"{p} not present (../shared/data is only beside a checkout in CI and dev)")
    return p


@pytest.fixture(scope="session")
def emb_cache(tmp_path_factory) -> Path:
    """One embedding cache for every index built in the session (embeddings are
    content-addressed)."""
    return tmp_path_factory.mktemp("emb-cache")


_SHORT_SASREC = {"max_epochs": 6, "patience": 2}


def _home(tmp_path_factory, name: str, cache: Path) -> Path:
    home = tmp_path_factory.mktemp(name)
    (home / "cache").symlink_to(cache, target_is_directory=True)
    return home


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory, emb_cache) -> Path:
    from retrieval.config import Settings
    from retrieval.data import load_demo
    from retrieval.index import ingest

    home = _home(tmp_path_factory, "demo-home", emb_cache)
    # SASRec is trained at ingest; a short training keeps the session fixtures fast (its quality
    # is tested in test_sasrec.py with a full training)
    ingest(
        load_demo(),
        Settings.load(home=home, env={}, sasrec=_SHORT_SASREC),
        progress=False,
        quiet=True,
    )
    return home


@pytest.fixture(scope="session")
def gb_home(tmp_path_factory, emb_cache) -> Path:
    from retrieval.config import Settings
    from retrieval.data import load_dataset
    from retrieval.index import ingest

    d = shared("goodbooks-sample")
    home = _home(tmp_path_factory, "gb-home", emb_cache)
    ingest(
        load_dataset("goodbooks", directory=d),
        Settings.load(home=home, env={}, sasrec=_SHORT_SASREC),
        progress=False,
        quiet=True,
    )
    return home


def run_cli(
    *args: str, home: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run the real `readnext` console entry point in a fresh process."""
    env = dict(os.environ)
    if home is not None:
        env["READNEXT_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "assistant.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
