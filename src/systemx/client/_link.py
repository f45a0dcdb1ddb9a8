"""What a call or a party line needs from the client that owns it.

:class:`~systemx.client.Call`, :class:`~systemx.client.IncomingCall` and
:class:`~systemx.client.Party` talk to their :class:`~systemx.client.Client`
through this interface only: send a frame (and wait while the socket's write
buffer is full), hang a call up, take an answered call into the client's
books, and leave a party line.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from systemx.client.call import Call

__all__ = ["Link"]


class Link(Protocol):
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    #: True while the socket's write buffer is over its high-water mark.
    _write_paused: bool

    def _send_message(self, message: Any) -> None:
        """Send one frame; raises ``ConnectionClosed`` once the socket is closed or closing."""

    async def _drain(self) -> None:
        """Return once the write buffer is below its low-water mark (or the socket closed)."""

    def _hang_up(self, call_id: str, reason: str | None) -> None:
        """Send HANGUP while the socket is open, and forget the call."""

    def _answer(self, call: Call) -> None:
        """Take ``call`` (ringing until now) into the client's calls and send ANSWER."""

    async def _leave(self, party: str, timeout: float | None) -> None:
        """Send LEAVE for ``party`` (once, however many wait) and wait for LEFT."""
