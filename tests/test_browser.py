"""A real headless Chromium (Debian package) drives the chat: ask for picks, ask "why #2?" (the
cards stay), click 👍 on card #2, screenshot each step."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from assistant import Recommender
from assistant.chat import CSS, build_app, theme

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.browser


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium not installed (scripts/setup.sh --test installs it)"
)
def test_chat_in_a_real_browser(demo_home, tmp_path):
    from playwright.sync_api import sync_playwright

    home = tmp_path / "home"
    shutil.copytree(demo_home, home, symlinks=True)
    rec = Recommender.open(home)
    app = build_app(rec, k=5)
    app.queue()
    port = _port()
    app.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        css=CSS,
        theme=theme(),
    )
    user = next(x["user_id"] for x in rec.users() if x["n_ratings"] >= 30)
    shots = tmp_path
    shot = shots / "3-liked.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            outbound: list[str] = []
            page.on(
                "request",
                lambda r: (
                    outbound.append(r.url)
                    if not r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                    else None
                ),
            )
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            # sign in as an existing reader
            page.locator("#rn-reader input").fill(user)
            page.locator("#rn-reader input").press("Enter")
            page.locator("#rn-use").click()
            page.get_by_text(f"Reading as {user}").wait_for(timeout=30_000)
            # ask, and wait for the cards
            page.locator("#rn-input textarea").fill("what should I read next?")
            page.locator("#rn-send").click()
            first = page.locator("#rn-card-0 .rn-card")
            first.wait_for(state="visible", timeout=60_000)
            page.locator("#rn-card-4 .rn-card").wait_for(state="visible", timeout=30_000)
            titles = [page.locator(f"#rn-card-{i} .rn-title").inner_text() for i in range(5)]
            assert all(t.startswith(f"#{i + 1} ") for i, t in enumerate(titles))
            assert "Why you" in page.locator("#rn-card-0 .rn-why").inner_text()
            page.screenshot(path=str(shots / "1-picks.png"), full_page=True)
            ids = [
                page.locator(f"#rn-card-{i} .rn-card").get_attribute("data-book-id")
                for i in range(5)
            ]
            # "why #2?" answers in the chat, and the cards with their buttons stay
            page.locator("#rn-input textarea").fill("why #2?")
            page.locator("#rn-send").click()
            second = titles[1].split(" ", 1)[1]
            page.locator("#rn-chat").get_by_text(re.compile(r"Why “")).first.wait_for(
                timeout=60_000
            )
            assert second in page.locator("#rn-chat").inner_text()
            page.wait_for_timeout(500)  # let any (wrong) card update land before checking
            for i in range(5):
                assert page.locator(f"#rn-card-{i} .rn-card").is_visible(), (
                    f"card #{i + 1} vanished"
                )
                assert (
                    page.locator(f"#rn-card-{i} .rn-card").get_attribute("data-book-id") == ids[i]
                )
            assert page.locator("#rn-like-1").is_visible()
            page.screenshot(path=str(shots / "2-why.png"), full_page=True)
            # 👍 card #2 after the explanation: recorded, and the list updates without it
            liked_id = ids[1]
            page.locator("#rn-like-1").click()
            page.get_by_text("Noted: you liked").first.wait_for(timeout=60_000)
            page.wait_for_function(
                "id => !document.querySelector(`.rn-card[data-book-id='${id}']`)",
                arg=liked_id,
                timeout=60_000,
            )
            page.locator("#rn-card-4 .rn-card").wait_for(state="visible", timeout=30_000)
            page.screenshot(path=str(shot), full_page=True)
            # an 8,000-character message: a polite refusal, no echo, and the cards stay
            after = page.locator("#rn-card-0 .rn-card").get_attribute("data-book-id")
            page.locator("#rn-input textarea").fill("dragons " * 1000)
            page.locator("#rn-send").click()
            page.get_by_text("characters long; I read up to").first.wait_for(timeout=60_000)
            assert page.locator("#rn-chat").inner_text().count("dragons") <= 30
            assert page.locator("#rn-card-0 .rn-card").get_attribute("data-book-id") == after
            page.screenshot(path=str(shots / "4-long.png"), full_page=True)
            browser.close()
            assert not outbound, f"the page made outbound requests: {outbound[:5]}"
    finally:
        app.close()
    assert all(
        (shots / n).stat().st_size > 10_000
        for n in ("1-picks.png", "2-why.png", "3-liked.png", "4-long.png")
    )
    if os.environ.get("READNEXT_SCREENSHOT_DIR"):  # opt-in: keep the screenshots to look at
        keep = Path(os.environ["READNEXT_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        for n in ("1-picks.png", "2-why.png", "3-liked.png", "4-long.png"):
            shutil.copy(shots / n, keep / n)
    assert liked_id in {r.book_id for r in rec.history(user)}
    rec.close()
    if os.environ.get("READNEXT_UPDATE_SCREENSHOT"):  # opt-in: refresh the README screenshot
        out = Path(__file__).resolve().parent.parent / "docs"
        out.mkdir(exist_ok=True)
        shutil.copy(shot, out / "chat.png")
