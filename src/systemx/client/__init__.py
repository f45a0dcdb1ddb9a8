"""The SystemX asyncio client library.

::

    async with await connect("ws://127.0.0.1:8080", "alice@example.com") as alice:
        call = await alice.dial("bob@example.com")
        await call.send("hello")
        async for message in call:
            print(message.from_, message.data)

:func:`connect` registers an address and keeps it alive with heartbeats;
:class:`Client` dials (:class:`Call`), takes calls (:class:`IncomingCall`),
joins party lines (:class:`Party`), queries presence and manages sleep.
Failures are the typed exceptions of :mod:`systemx.client.errors`.
"""

from systemx.client.call import Call, IncomingCall, Message
from systemx.client.client import Client, ConnectionEvent, Disconnected, Reconnected, ServerEvent, connect
from systemx.client.errors import (
    BusyError,
    CallEnded,
    CallRejected,
    ClientError,
    ConnectFailed,
    ConnectionClosed,
    DialTimeout,
    ExchangeError,
    JoinFailed,
    PartyClosed,
    RegisterFailed,
)
from systemx.client.party import Party, PartyEvent, PartyMessage
from systemx.protocol.messages import PresenceEntry, SleepPending

__all__ = [
    "BusyError",
    "Call",
    "CallEnded",
    "CallRejected",
    "Client",
    "ClientError",
    "ConnectFailed",
    "ConnectionClosed",
    "ConnectionEvent",
    "DialTimeout",
    "Disconnected",
    "ExchangeError",
    "IncomingCall",
    "JoinFailed",
    "Message",
    "Party",
    "PartyClosed",
    "PartyEvent",
    "PartyMessage",
    "PresenceEntry",
    "Reconnected",
    "RegisterFailed",
    "ServerEvent",
    "SleepPending",
    "connect",
]
