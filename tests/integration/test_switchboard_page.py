"""The live switchboard page in real headless Chromium (Debian's ``/usr/bin/chromium``).

A call placed by real clients appears while it rings, turns connected and goes
at hangup, without a reload. Screenshots are saved under ``.artifacts/`` at the
repository root (the paths are printed).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.integration.test_admin import start_admin
from tests.wsclient import TIMEOUT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)",
)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_a_call_rings_connects_and_goes_on_the_page(
    systemx_server: ServerFactory, browser: Any
) -> None:
    server, admin = await start_admin(systemx_server)
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    ms = TIMEOUT * 1000
    await page.goto(admin + "/")
    await page.wait_for_selector("#status.live", timeout=ms)

    alice = await server.connect()
    bob = await server.connect()
    await alice.register("alice@example.com")
    await bob.register("bob@example.com")
    alice.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
    call_id = (await alice.expect("RINGING"))["call_id"]
    await bob.expect("RING")

    row = f'#calls tr[data-call-id="{call_id}"]'
    await page.wait_for_selector(row + '[data-state="ringing"]', timeout=ms)
    text = await page.inner_text(row)
    assert "alice@example.com" in text and "bob@example.com" in text and "ringing" in text
    sessions = await page.inner_text("#sessions")
    assert "alice@example.com" in sessions and "bob@example.com" in sessions
    ARTIFACTS.mkdir(exist_ok=True)
    ringing_shot = ARTIFACTS / "switchboard-ringing.png"
    await page.screenshot(path=str(ringing_shot), full_page=True)

    bob.send_json({"type": "ANSWER", "call_id": call_id})
    await alice.expect("CONNECTED")
    await page.wait_for_selector(row + '[data-state="connected"]', timeout=ms)
    assert await page.inner_text("#t-connected") == "1"
    connected_shot = ARTIFACTS / "switchboard-connected.png"
    await page.screenshot(path=str(connected_shot), full_page=True)

    alice.send_json({"type": "HANGUP", "call_id": call_id})
    await bob.expect("HANGUP")
    await page.wait_for_selector(row, state="detached", timeout=ms)
    assert await page.is_visible("#calls-empty")
    print(f"screenshots: {ringing_shot} {connected_shot}")
    await page.close()
    await server.stop()
