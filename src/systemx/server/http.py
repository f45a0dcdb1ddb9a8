"""Plain HTTP on the WebSocket port: what a request without a WebSocket upgrade gets.

* ``GET /healthz`` (any query string) answers ``200 application/json`` with
  ``Exchange.health()``;
* any other ``GET`` whose ``Accept`` names ``text/html`` (a browser) gets a
  short HTML page saying this is a WebSocket port and where the docs are;
* any other request without an upgrade gets ``426 Upgrade Required``;
* an upgrade that arrives once shutdown has begun gets ``503``;
* an upgrade whose ``Origin`` header is not in ``SYSTEMX_ALLOWED_ORIGINS`` (when
  that list is set) gets ``403``.

picows parses the request and itself answers ``400`` to any method other than
``GET`` (``HEAD`` included) before these answers are consulted. They are built
without touching the core beyond ``health()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from picows import WSUpgradeRequest, WSUpgradeResponse

__all__ = ["forbidden_origin", "http_answer", "is_upgrade", "origin_allowed", "shutting_down"]

_HEALTHZ = b"/healthz"
_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SystemX</title></head>
<body>
<h1>SystemX exchange</h1>
<p>This port speaks WebSocket: connect a client to <code>ws://</code> (or <code>wss://</code>)
this host and port, on any path. A browser cannot use it as a web page.</p>
<p>Documentation: <code>README.md</code> (set-up, settings, command line tools) and
<code>PROTOCOL.md</code> (the wire protocol) in the SystemX source tree;
<code>systemx --help</code> on the command line.</p>
<p>Health: <a href="/healthz">/healthz</a> (JSON). The admin page, when enabled, is on its own port
(<code>SYSTEMX_ADMIN_PORT</code>, 8081 by default).</p>
</body></html>
"""


def is_upgrade(request: WSUpgradeRequest) -> bool:
    """Whether ``request`` asks for a WebSocket (``Upgrade: websocket``, any case)."""
    return bool(request.headers.get("Upgrade", "").lower() == "websocket")


def http_answer(request: WSUpgradeRequest, health: Callable[[], dict[str, Any]]) -> WSUpgradeResponse:
    """The answer to a plain HTTP request: ``/healthz``, the browser page or 426."""
    path = request.path.split(b"?", 1)[0]
    if path == _HEALTHZ:
        body = msgspec.json.encode(health())
        response: WSUpgradeResponse = WSUpgradeResponse.create_ok_response(
            body, {"Content-Type": "application/json"}
        )
        return response
    if "text/html" in request.headers.get("Accept", "").lower():
        response = WSUpgradeResponse.create_ok_response(
            _PAGE, {"Content-Type": "text/html; charset=utf-8"}
        )
        return response
    response = WSUpgradeResponse.create_error_response(
        426, b"Upgrade Required: this is a WebSocket endpoint\n", {"Upgrade": "websocket"}
    )
    return response


def shutting_down() -> WSUpgradeResponse:
    """The answer to an upgrade once shutdown has begun."""
    response: WSUpgradeResponse = WSUpgradeResponse.create_error_response(503, b"Shutting down")
    return response


def origin_allowed(request: WSUpgradeRequest, allowed: frozenset[str]) -> bool:
    """Whether the upgrade's ``Origin`` (if any) is one of ``allowed`` (lower case).

    A request without ``Origin`` is not from a browser page and is not refused:
    the list stops other web sites' scripts from using a visitor's browser to
    connect, it does not authenticate anyone.
    """
    origin = request.headers.get("Origin")
    return origin is None or origin.lower() in allowed


def forbidden_origin() -> WSUpgradeResponse:
    """The answer to an upgrade from a browser origin that is not allowed."""
    response: WSUpgradeResponse = WSUpgradeResponse.create_error_response(
        403, b"Forbidden: origin not allowed\n"
    )
    return response
