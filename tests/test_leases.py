"""Leases (:mod:`retrieval.leases`): a lease dies with its process, so its folder is collectable."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture()
def home(demo_home, tmp_path):
    h = tmp_path / "h"
    shutil.copytree(demo_home, h, symlinks=True)
    return h


def test_a_lease_outlives_nothing_but_its_process(home, tmp_path):
    """A lease held by a killed process is gone at once (flock), so its folder is collectable."""
    import os
    import signal
    import subprocess
    import sys
    import time

    old = home / "indexes" / "demo-old"
    old.mkdir()
    code = (
        "import sys, time; from pathlib import Path; from retrieval.leases import Lease; "
        "l = Lease(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(old)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    try:
        assert p.stdout.readline().strip() == "held"
        from retrieval.leases import collect_garbage

        assert collect_garbage(home) == [] and old.is_dir()  # served by another process: kept
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        time.sleep(0.1)
        assert collect_garbage(home) == ["demo-old"] and not old.exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
