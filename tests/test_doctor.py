"""`readnext doctor` on a real ingested home, a missing data dir and a missing model."""

from __future__ import annotations

import json

from assistant.doctor import Check, report, run_checks
from retrieval.config import Settings
from tests.conftest import run_cli


def test_doctor_reports_a_healthy_home(demo_home):
    r = run_cli("doctor", "--json", "--llm", "none", home=demo_home)
    out = json.loads(r.stdout)
    by = {c["name"]: c for c in out["checks"]}
    assert r.returncode == 0 and out["healthy"], r.stdout
    assert by["embedder"]["ok"] and "dim 384" in by["embedder"]["detail"]
    assert by["data dir"]["ok"] and "618 books" in by["data dir"]["detail"]
    assert by["chroma"]["ok"] and "618 books" in by["chroma"]["detail"]
    assert by["llm"]["ok"] is None  # backend none: skipped, not failed


def test_doctor_names_the_fix_for_a_missing_data_dir(tmp_path):
    r = run_cli("doctor", "--llm", "none", home=tmp_path / "nowhere")
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith("FAIL") and "data dir" in l)
    assert "does not exist" in lines[i] and lines[i + 1].strip().startswith(
        "fix: run `readnext ingest"
    )


def test_doctor_names_the_fix_for_a_missing_model(tmp_path):
    s = Settings.load(home=tmp_path, env={})
    s.embedder.model = str(tmp_path / "no-such-model")
    s.llm.backend = str(tmp_path / "no-such-llm.gguf")
    from assistant.doctor import _embedder, _llm

    checks = run_checks(s, (_embedder, _llm))
    assert [c.ok for c in checks] == [False, False]
    assert all("make setup" in c.fix for c in checks)
    text, obj = report(checks)
    assert not obj["healthy"] and text.count("fix:") == 2


def test_a_crashing_check_is_reported_not_raised(tmp_path):
    def boom(_):
        raise RuntimeError("disk on fire")

    [c] = run_checks(Settings.load(home=tmp_path, env={}), (boom,))
    assert isinstance(c, Check) and c.ok is False and "disk on fire" in c.detail
