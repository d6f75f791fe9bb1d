"""API keys of the REST API (``readnext serve``): one key per reader, plus admin keys.

A key is ``rn_<id>_<secret>``: the id (8 hex digits) finds the record, the whole key is checked
against its stored SHA-256 in constant time. Only the hash is stored; the key is shown once, at
creation. A fast hash is right here (unlike passwords): keys are 256 random bits, so there is
nothing to guess from a hash. Managed with ``readnext keys create|list|revoke``.

File ``$READNEXT_HOME/api_keys.json`` (mode 0600, written atomically)::

    {"version": 1, "keys": {"1a2b3c4d": {"role": "reader", "reader": "u0001",
                                          "sha256": "<hex>", "created": 1764626400.0}}}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from assistant.accounts import write_private_json
from retrieval.errors import ReadnextError
from retrieval.privacy import check_reader_id

KEYS_FILE = "api_keys.json"
KEY_ROLES = ("reader", "admin")
_KEY_RE = re.compile(r"rn_([0-9a-f]{8})_([A-Za-z0-9_-]{20,100})")
_DUMMY = hashlib.sha256(b"readnext-no-such-key").hexdigest()


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One stored key: its id, role, the reader it acts as (None for admin keys), its hash."""

    key_id: str
    role: str
    reader: str | None
    sha256: str
    created: float = 0.0
    label: str = ""

    def public(self) -> dict:
        """The record as ``keys list`` shows it (never the hash)."""
        return {
            "key_id": self.key_id,
            "role": self.role,
            "reader": self.reader,
            "created": self.created,
            "label": self.label,
        }


class KeyStore:
    """The API keys of one data dir; thread-safe; re-reads the file when it changes.

    Args:
        path: the keys file (it need not exist yet).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int] | None, dict[str, ApiKey]] = (None, {})

    @classmethod
    def for_home(cls, home: str | Path) -> KeyStore:
        """The store of a data dir: ``home/api_keys.json``."""
        return cls(Path(home) / KEYS_FILE)

    # -- file -----------------------------------------------------------------------------------

    def _read(self) -> dict[str, ApiKey]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if self._cache[0] == stamp:  # a request checks its key without re-reading the file
            return self._cache[1]
        try:
            rows = json.loads(self.path.read_text(encoding="utf-8"))["keys"]
            keys = {
                kid: ApiKey(
                    kid,
                    r["role"],
                    r.get("reader"),
                    r["sha256"],
                    float(r.get("created", 0)),
                    str(r.get("label", "")),
                )
                for kid, r in rows.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ReadnextError(
                f"{self.path}: not a readnext API keys file ({type(e).__name__}); fix it or "
                "remove it and create the keys again"
            ) from None
        self._cache = (stamp, keys)
        return keys

    def _write(self, keys: dict[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": 1,
            "keys": {
                k.key_id: {
                    "role": k.role,
                    "reader": k.reader,
                    "sha256": k.sha256,
                    "created": k.created,
                    "label": k.label,
                }
                for k in sorted(keys.values(), key=lambda k: k.key_id)
            },
        }
        write_private_json(self.path, data)

    # -- queries --------------------------------------------------------------------------------

    def all(self) -> list[ApiKey]:
        """Every key, by id."""
        with self._lock:
            return sorted(self._read().values(), key=lambda k: k.key_id)

    def __len__(self) -> int:
        return len(self.all())

    def verify(self, key: str | None) -> ApiKey | None:
        """The record of a presented key, or None (unknown, revoked or malformed).

        The hash comparison is constant-time, and an unknown id costs the same comparison.
        """
        m = _KEY_RE.fullmatch(key or "")
        got = _digest(key or "")
        with self._lock:
            rec = self._read().get(m.group(1)) if m else None
        ok = hmac.compare_digest(got, rec.sha256 if rec else _DUMMY)
        return rec if ok and rec is not None else None

    # -- changes --------------------------------------------------------------------------------

    def create(self, reader: str | None = None, admin: bool = False, label: str = "") -> str:
        """Create a key; returns the key itself (shown once, only its hash is kept).

        Args:
            reader: the reader the key acts as (required unless ``admin``).
            admin: an admin key, which may act for any reader.
            label: a note for ``keys list`` (e.g. which program uses the key).
        """
        if admin == (reader is not None):
            raise ReadnextError("give either --reader ID (a reader's key) or --admin")
        if reader is not None:
            check_reader_id(reader, "--reader")
        label = (label or "")[:100]
        with self._lock:
            keys = dict(self._read())
            kid = secrets.token_hex(4)
            while kid in keys:
                kid = secrets.token_hex(4)
            key = f"rn_{kid}_{secrets.token_urlsafe(32)}"
            role = "admin" if admin else "reader"
            keys[kid] = ApiKey(kid, role, reader, _digest(key), time.time(), label)
            self._write(keys)
        return key

    def revoke(self, key_id: str) -> bool:
        """Delete a key by id (``rn_<id>_...``: the id, or the whole key); False when unknown."""
        m = _KEY_RE.fullmatch(key_id or "")
        kid = m.group(1) if m else key_id
        with self._lock:
            keys = dict(self._read())
            if kid not in keys:
                return False
            del keys[kid]
            self._write(keys)
            return True

    def revoke_reader(self, reader: str) -> int:
        """Delete every key of one reader (``forget`` does); returns how many."""
        with self._lock:
            keys = dict(self._read())
            gone = [k for k, v in keys.items() if v.reader == reader]
            if not gone:
                return 0
            for k in gone:
                del keys[k]
            self._write(keys)
            return len(gone)
