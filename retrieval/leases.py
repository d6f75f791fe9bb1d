"""Cross-process leases on index folders, and per-reader locks for profile updates.

Why ``flock``: the kernel drops a process's locks when it dies (even by ``kill -9``), so a lease
can never go stale, and two open file descriptions conflict even inside one process, so the
same lock serialises threads and processes alike.

- Every process that serves an index holds a *shared* lock on ``indexes/<name>.lease``.
- An ingest takes an *exclusive* lock on ``<name>.lease`` before it creates ``<name>/`` and holds
  it while it builds (the lease lives beside the folder, so it exists before the folder does).
- A folder other than ``CURRENT`` whose lease can be locked exclusively (nobody serves it, no
  ingest builds it) is garbage: :func:`collect_garbage` deletes it. That covers old indexes
  once their last reader has switched, and partial folders of killed ingests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

_PROFILE_BUCKETS = 64  # lock files for reader profiles (readers hash into buckets)


class Lease:
    """A shared (serving) or exclusive (building) lock on one index folder; ``release()`` it."""

    def __init__(self, folder: Path, exclusive: bool = False, blocking: bool = True) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None
        path = lease_path(self.folder)
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
        for _ in range(20):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, flags)
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except OSError as e:
                os.close(fd)
                if isinstance(e, FileNotFoundError):
                    continue  # a collector unlinked it under us: take the new file
                raise
            if same:
                self._fd = fd
                return
            os.close(fd)  # we locked a file a collector has just unlinked: try the new one
        raise OSError(f"cannot take the lease {path}: it keeps being replaced")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __del__(self) -> None:  # pragma: no cover - safety net
        self.release()


def lease_path(folder: Path) -> Path:
    return folder.parent / f"{folder.name}.lease"


def current_name(home: Path) -> str | None:
    p = Path(home) / "CURRENT"
    try:
        return p.read_text().strip() or None
    except FileNotFoundError:
        return None


def collect_garbage(home: Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Delete index folders nobody uses (not ``CURRENT``, not leased, not being built).

    Returns the names deleted. Safe to call from any process at any time.
    """
    root = Path(home) / "indexes"
    if not root.is_dir():
        return []
    deleted = []
    names = {p.name for p in root.iterdir() if p.is_dir()}
    names |= {p.name[: -len(".lease")] for p in root.glob("*.lease")}
    for name in sorted(names - set(keep)):
        d = root / name
        try:
            lease = Lease(d, exclusive=True, blocking=False)
        except OSError:
            continue  # served or being built: the last user's exit (or the next start) cleans it
        try:
            # Re-read the pointer under the lock: an ingest may have just swapped this one in.
            if name != current_name(home):
                if d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
                    deleted.append(name)
                # a process blocked on this lease wakes on the unlinked file, finds no
                # meta.json and reads CURRENT again (see Index.open)
                with contextlib.suppress(OSError):
                    lease_path(d).unlink()
        finally:
            lease.release()
    for tmp in Path(home).glob("CURRENT.tmp*"):  # a pointer swap killed half-way
        with contextlib.suppress(OSError):
            tmp.unlink()
    return deleted


@contextlib.contextmanager
def reader_lock(home: Path, user_id: str) -> Iterator[None]:
    """Exclusive lock for one reader's profile (all threads and processes on this data dir)."""
    locks = Path(home) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    bucket = int(hashlib.sha1(user_id.encode("utf-8")).hexdigest()[:8], 16) % _PROFILE_BUCKETS
    fd = os.open(locks / f"profile-{bucket:02d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
