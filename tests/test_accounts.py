"""Accounts (:mod:`assistant.accounts`): auth specs, scrypt hashes at rest, the accounts CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest

from assistant.accounts import AccountStore, hash_password, parse_auth_spec, verify_password
from assistant.chat import launch
from retrieval.config import Settings
from retrieval.errors import ReadnextError

from .conftest import ROOT, run_cli

A, B, NEW, ADMIN = "u0001", "u0002", "carol", "root"


PW = {A: "pw-of-a-1", B: "pw-of-b-2", NEW: "pw-of-carol", ADMIN: "pw-of-root"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def home(demo_home, tmp_path_factory):
    h = tmp_path_factory.mktemp("ident") / "home"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


@pytest.mark.parametrize(
    "spec,msg",
    [
        (":", "empty user"),
        ("alice:", "at least"),
        ("alice", "user:password"),
        ("../etc:secret", "invalid"),
        (":secret", "empty user"),
    ],
)
def test_malformed_auth_specs_are_refused(home, spec, msg):
    with pytest.raises(ReadnextError, match=msg):
        launch(
            Settings.load(home=home), host="127.0.0.1", port=free_port(), block=False, auth=[spec]
        )


def test_cli_rejects_bad_auth_in_one_line(home):
    r = run_cli("chat", "--auth", ":", "--port", str(free_port()), home=home, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "readnext: error:" in r.stderr


def test_passwords_are_hashed_at_rest(home):
    store = AccountStore.for_home(home)
    store.add("dora", "dora-secret-pw")
    raw = (home / "accounts.json").read_text()
    assert "dora-secret-pw" not in raw and "scrypt$" in raw
    assert oct((home / "accounts.json").stat().st_mode & 0o777) == "0o600"
    assert store.verify("dora", "dora-secret-pw") and not store.verify("dora", "nope")
    assert not store.verify("nobody", "dora-secret-pw")
    h1, h2 = hash_password("same"), hash_password("same")
    assert h1 != h2 and verify_password("same", h1) and verify_password("same", h2)  # salted
    assert parse_auth_spec("eve:pa:ss:word") == ("eve", "pa:ss:word")
    assert store.remove("dora") and store.get("dora") is None


def test_accounts_cli(home):
    import subprocess
    import sys

    env = dict(os.environ, READNEXT_HOME=str(home))
    p = subprocess.run(
        [sys.executable, "-m", "assistant.cli", "accounts", "add", "erin", "--password-stdin"],
        input="erin-password\n",
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    r = run_cli("accounts", "list", "--json", home=home)
    assert "erin" in {a["name"] for a in json.loads(r.stdout)}
    assert "erin-password" not in (home / "accounts.json").read_text()
    r = run_cli("accounts", "add", "../x", "--password-stdin", home=home)
    assert r.returncode == 2 and "invalid account name" in r.stderr
    assert run_cli("accounts", "remove", "erin", home=home).returncode == 0
