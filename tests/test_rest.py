"""The REST API end to end: a real ``readnext serve`` subprocess on 127.0.0.1 (random port) over
a copy of the demo index, keys made with the real ``readnext keys`` CLI, real HTTP (httpx).

Covers the recommend -> feedback -> recommend round trip, explain, per-reader isolation (403),
the admin key, 401, 413/422 with one-line messages, the k cap, healthz and the OpenAPI schema.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from .conftest import ROOT
from .live_server import free_port

ENV = dict(os.environ, READNEXT_LLM_BACKEND="none")


def cli(home, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "assistant.cli", *args, "--data-dir", str(home), "--json"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def api(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("rest") / "home"
    shutil.copytree(demo_home, home, symlinks=True)
    keys = {
        "a": cli(home, "keys", "create", "--reader", "u0001")["key"],
        "b": cli(home, "keys", "create", "--reader", "u0002")["key"],
        "c": cli(home, "keys", "create", "--reader", "u0003", "--label", "forget test")["key"],
        "admin": cli(home, "keys", "create", "--admin")["key"],
    }
    port = free_port()
    log = open(home.parent / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant.cli", "serve", "--port", str(port)]
        + ["--data-dir", str(home)],
        cwd=ROOT,
        env=ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError((home.parent / "serve.log").read_text()[-2000:])
            try:
                if httpx.get(f"{url}/v1/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end, "readnext serve did not answer in 180 s"
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, keys, home
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def one_line_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg and len(msg) <= 400
    return msg


def test_healthz_and_openapi(api):
    client, _, _ = api
    h = client.get("/v1/healthz").json()
    assert h["ok"] is True and h["books"] > 0
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/recommend", "/v1/explain", "/v1/feedback", "/v1/readers/{reader}/export"):
        assert p in paths
    assert client.get("/docs").status_code == 200


def test_no_or_bad_key_is_401(api):
    client, keys, _ = api
    body = {"query": "a funny fantasy book", "k": 3}
    assert "no API key" in one_line_error(client.post("/v1/recommend", json=body), 401)
    bad = keys["a"][:-4] + "AAAA"
    msg = one_line_error(client.post("/v1/recommend", json=body, headers=auth(bad)), 401)
    assert "unknown or revoked" in msg
    r = client.post("/v1/recommend", json=body, headers={"Authorization": "Basic abc"})
    one_line_error(r, 401)
    one_line_error(client.get("/v1/readers"), 401)


def test_recommend_feedback_round_trip(api):
    client, keys, _ = api
    h = auth(keys["a"])
    r = client.post("/v1/recommend", json={"query": "what should I read next?", "k": 5}, headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["user_id"] == "u0001"
    items = out["items"]
    assert len(items) == 5 and all(i["explanation"] for i in items)
    first = items[0]["book_id"]

    e = client.post("/v1/explain", json={"book_id": first}, headers=h)
    assert e.status_code == 200, e.text
    assert e.json()["book_id"] == first and e.json()["explanation"]

    f = client.post("/v1/feedback", json={"book_id": first, "signal": "not_interested"}, headers=h)
    assert f.status_code == 200 and f.json()["ok"] is True, f.text
    again = client.post("/v1/recommend", json={"k": 5}, headers=h).json()["items"]
    assert first not in {i["book_id"] for i in again}  # the feedback shaped the next answer

    g = client.post("/v1/feedback", json={"book_id": again[0]["book_id"], "signal": 5}, headers=h)
    assert g.status_code == 200, g.text
    hist = client.get("/v1/readers/u0001/history", headers=h).json()["items"]
    assert hist[-1]["book_id"] == again[0]["book_id"] and hist[-1]["rating"] == 5
    assert [x["user_id"] for x in client.get("/v1/readers", headers=h).json()["readers"]] == [
        "u0001"
    ]


def test_a_readers_key_cannot_touch_another_reader(api):
    client, keys, _ = api
    a, b = auth(keys["a"]), auth(keys["b"])
    before = client.get("/v1/readers/u0002/history", headers=b).json()["items"]
    book = before[0]["book_id"]
    calls = [
        client.post("/v1/recommend", json={"reader": "u0002", "k": 3}, headers=a),
        client.post("/v1/explain", json={"reader": "u0002", "book_id": book}, headers=a),
        client.post(
            "/v1/feedback", json={"reader": "u0002", "book_id": book, "signal": 1}, headers=a
        ),
        client.get("/v1/readers/u0002/history", headers=a),
        client.get("/v1/readers/u0002/export", headers=a),
        client.delete("/v1/readers/u0002", params={"confirm": "true"}, headers=a),
    ]
    for r in calls:
        assert "only see and change your own data" in one_line_error(r, 403)
    assert client.get("/v1/readers/u0002/history", headers=b).json()["items"] == before
    # its own id in the body is fine
    ok = client.post("/v1/recommend", json={"reader": "u0001", "k": 2}, headers=a)
    assert ok.status_code == 200 and ok.json()["user_id"] == "u0001"


def test_admin_key_acts_for_any_reader(api):
    client, keys, _ = api
    adm = auth(keys["admin"])
    r = client.post("/v1/recommend", json={"reader": "u0002", "k": 3}, headers=adm)
    assert r.status_code == 200 and r.json()["user_id"] == "u0002"
    book = r.json()["items"][0]["book_id"]
    f = client.post(
        "/v1/feedback", json={"reader": "u0002", "book_id": book, "signal": 4}, headers=adm
    )
    assert f.status_code == 200, f.text
    hist = client.get("/v1/readers/u0002/history", headers=auth(keys["b"])).json()["items"]
    assert hist[-1]["book_id"] == book and hist[-1]["rating"] == 4
    assert len(client.get("/v1/readers", headers=adm).json()["readers"]) > 1
    assert "name it" in one_line_error(client.post("/v1/recommend", json={}, headers=adm), 422)
    r = client.post("/v1/recommend", json={"reader": "nobody-here", "k": 3}, headers=adm)
    assert "unknown reader" in one_line_error(r, 404)


def test_bad_input_is_422_with_one_line(api):
    client, keys, _ = api
    h = auth(keys["a"])
    msg = one_line_error(client.post("/v1/recommend", json={"k": 51}, headers=h), 422)
    assert "limits.max_k" in msg and "51" in msg
    assert "k" in one_line_error(client.post("/v1/recommend", json={"k": 0}, headers=h), 422)
    one_line_error(client.post("/v1/recommend", json={"k": "many"}, headers=h), 422)
    r = client.post(
        "/v1/recommend", content=b"{not json", headers={**h, "content-type": "application/json"}
    )
    one_line_error(r, 422)
    book = client.get("/v1/readers/u0001/history", headers=h).json()["items"][0]["book_id"]
    r = client.post("/v1/feedback", json={"book_id": book, "signal": "meh"}, headers=h)
    one_line_error(r, 422)
    msg = one_line_error(client.post("/v1/feedback", json={"signal": 5}, headers=h), 422)
    assert "book_id" in msg
    r = client.post("/v1/explain", json={"book_id": "no-such-book"}, headers=h)
    assert "unknown book" in one_line_error(r, 404)
    long = client.post("/v1/recommend", json={"query": "x" * 5000, "k": 3}, headers=h)
    assert "x" * 100 not in long.text  # never echoed back
    one_line_error(long, 422)
    big = client.post("/v1/recommend", json={"query": "y" * 70_000}, headers=h)
    assert "bytes" in one_line_error(big, 413)
    r = client.post(
        "/v1/recommend", json={"reader": "bad id!", "k": 3}, headers=auth(keys["admin"])
    )
    assert "invalid reader id" in one_line_error(r, 422)


def test_forget_through_the_api_revokes_the_key(api):
    client, keys, home = api
    c = auth(keys["c"])
    r = client.delete("/v1/readers/u0003", headers=c)
    assert "confirm=true" in one_line_error(r, 422)
    exp = client.get("/v1/readers/u0003/export", headers=c)
    assert exp.status_code == 200 and exp.json()["user_id"] == "u0003"
    r = client.delete("/v1/readers/u0003", params={"confirm": "true"}, headers=c)
    assert r.status_code == 200 and r.json()["api_keys_revoked"] == 1, r.text
    one_line_error(client.post("/v1/recommend", json={"k": 3}, headers=c), 401)
    assert "u0003" not in (home / "api_keys.json").read_text()
    listed = cli(home, "keys", "list")
    assert {k["reader"] for k in listed} == {"u0001", "u0002", None}
