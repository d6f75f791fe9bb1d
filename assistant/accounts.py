"""Accounts of the chat: each account is a reader; passwords are stored only as scrypt hashes.

Accounts come from a JSON file (``$READNEXT_HOME/accounts.json`` by default, managed with
``readnext accounts add|list|remove``) and/or from repeatable ``--auth user:password`` flags
(kept in memory, hashed too). The account name *is* the reader id, so a signed-in reader acts
only as themself; the ``admin`` role may act for any reader.

File format (mode 0600, written atomically)::

    {"version": 1, "accounts": {"alice": {"role": "reader", "hash": "scrypt$16384$8$1$<salt>$<key>",
                                          "created": 1764626400.0}}}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import ReadnextError
from retrieval.privacy import check_reader_id

ROLES = ("reader", "admin")
ACCOUNTS_FILE = "accounts.json"
# scrypt cost: ~16 MiB and tens of ms per check, which is paid once per login, not per request.
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
MIN_PASSWORD = 4


def hash_password(password: str) -> str:
    """A salted scrypt hash, ``scrypt$N$r$p$salt$key`` (base64)."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    b64 = lambda b: base64.b64encode(b).decode("ascii")
    return f"scrypt${_N}${_R}${_P}${b64(salt)}${b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Check ``password`` against a hash from :func:`hash_password` in constant time."""
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(key)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def parse_auth_spec(spec: str) -> tuple[str, str]:
    """``"user:password"`` -> ``(user, password)``; malformed specs raise a one-line error.

    The password may contain ':' (the first one separates); the user must be a valid reader id.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ReadnextError("--auth must look like user:password (e.g. --auth alice:s3cret)")
    user, password = spec.split(":", 1)
    if not user:
        raise ReadnextError(
            "--auth has an empty user name: use user:password, e.g. --auth alice:s3cret"
        )
    check_reader_id(user, "--auth user name")
    if len(password) < MIN_PASSWORD:
        raise ReadnextError(
            f"--auth {user}: the password must have at least {MIN_PASSWORD} characters"
        )
    return user, password


@dataclass(frozen=True)
class Account:
    """One login: its name (= reader id), role and password hash."""

    name: str
    role: str
    hash: str
    created: float = 0.0
    source: str = "file"  # "file" | "--auth"


def write_private_json(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file, fsync, rename), readable by the
    owner only (0600): the account and API-key files hold password and key hashes.

    Args:
        path: the file to replace.
        data: a JSON-serialisable object.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AccountStore:
    """Accounts from a file plus in-memory ones; thread-safe; verifies logins.

    Args:
        path: the accounts file (it need not exist yet).
        extra: ``(user, password, role)`` tuples from ``--auth`` flags, hashed here.
    """

    def __init__(
        self, path: str | Path | None = None, extra: Iterable[tuple[str, str, str]] = ()
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._memory: dict[str, Account] = {}
        for user, password, role in extra:
            if role not in ROLES:
                raise ReadnextError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
            if user in self._memory:
                raise ReadnextError(f"--auth names {user!r} twice: give each account once")
            self._memory[user] = Account(user, role, hash_password(password), time.time(), "--auth")

    @classmethod
    def for_home(
        cls,
        home: str | Path,
        accounts_file: str | None = None,
        extra: Iterable[tuple[str, str, str]] = (),
    ) -> AccountStore:
        """The store of a data dir (``accounts_file`` overrides ``home/accounts.json``)."""
        path = Path(accounts_file).expanduser() if accounts_file else Path(home) / ACCOUNTS_FILE
        return cls(path, extra)

    # -- file -----------------------------------------------------------------------------------

    def _read(self) -> dict[str, Account]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            rows = data["accounts"]
            out = {}
            for name, a in rows.items():
                out[name] = Account(
                    name, a.get("role", "reader"), a["hash"], float(a.get("created", 0))
                )
            return out
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ReadnextError(
                f"{self.path}: not a readnext accounts file ({type(e).__name__}); "
                "fix it or remove it and add the accounts again"
            ) from None

    def _write(self, accounts: dict[str, Account]) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": 1,
            "accounts": {
                a.name: {"role": a.role, "hash": a.hash, "created": a.created}
                for a in sorted(accounts.values(), key=lambda a: a.name)
            },
        }
        write_private_json(self.path, data)

    # -- queries --------------------------------------------------------------------------------

    def all(self) -> list[Account]:
        """Every account (file accounts first; an ``--auth`` account shadows a file one)."""
        with self._lock:
            merged = {**self._read(), **self._memory}
        return sorted(merged.values(), key=lambda a: a.name)

    def get(self, name: str) -> Account | None:
        with self._lock:
            return self._memory.get(name) or self._read().get(name)

    def __len__(self) -> int:
        return len(self.all())

    def verify(self, name: str, password: str) -> bool:
        """The Gradio login check: True when ``name`` exists and the password matches."""
        a = self.get(name) if isinstance(name, str) else None
        if a is None:
            verify_password(password or "", _dummy_hash())  # same cost for unknown names
            return False
        return verify_password(password or "", a.hash)

    def role(self, name: str) -> str | None:
        a = self.get(name)
        return a.role if a else None

    # -- changes (file accounts only) -------------------------------------------------------------

    def add(self, name: str, password: str, role: str = "reader", replace: bool = False) -> Account:
        """Add (or with ``replace`` change) a file account."""
        check_reader_id(name, "account name")
        if role not in ROLES:
            raise ReadnextError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise ReadnextError(f"the password must have at least {MIN_PASSWORD} characters")
        if self.path is None:
            raise ReadnextError("no accounts file configured")
        with self._lock:
            accounts = self._read()
            if name in accounts and not replace:
                raise ReadnextError(
                    f"account {name!r} exists: use --replace to change its password or role"
                )
            accounts[name] = Account(name, role, hash_password(password), time.time())
            self._write(accounts)
            return accounts[name]

    def remove(self, name: str) -> bool:
        """Remove a file account; False when there was none."""
        if self.path is None:
            return False
        with self._lock:
            accounts = self._read()
            if name not in accounts:
                return False
            del accounts[name]
            self._write(accounts)
            return True


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_hex(8)))
    return _DUMMY[0]
