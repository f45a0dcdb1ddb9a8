"""A short randomised run of the soak driver against a real ``systemx serve``.

Random and malformed frames of every message type from a few sockets while two call
pairs exchange numbered MSGs (``benchmarks.soak`` runs the same for longer). No
socket may close with anything but its documented code, no MSG between the pairs
may be lost or reordered, the server may log no traceback and count no internal
error. A failure prints the seed, which replays the same frames.
"""

from __future__ import annotations

import random

import aiohttp

from benchmarks.soak import drive
from tests.conftest import ServerFactory
from tests.wsclient import scaled


async def test_random_frames_disturb_nobody(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_DIAL_MAX_ATTEMPTS": "0"})
    seed = random.randrange(2**32)
    report = await drive(server.url, seconds=5.0, sockets=8, pairs=2, seed=seed, timeout=scaled(10.0))
    assert not report.violations, (seed, report.violations)
    assert report.frames_sent > 100 and report.msgs_relayed > 100, report
    async with aiohttp.ClientSession() as http, http.get(server.http_url + "/healthz") as response:
        health = await response.json()
    assert health["internal_errors"] == 0, health
    assert not [line for line in server.logs if "Traceback" in line], (seed, server.logs[-40:])
