"""The outbound trunks of a running server: this exchange as the child of its parents.

For each peer of the federation settings (:mod:`systemx.federation`) a
:class:`~systemx.server.trunk_client.TrunkClient` keeps the connection,
registration and reconnects; this module joins it to the core:

* at start, each peer's ``routes`` become a trunk route of the exchange
  (``Exchange.add_trunk``), so a local DIAL matching them goes up that trunk,
  or is answered BUSY ``unavailable`` at once while the trunk is down;
* each time the trunk registers, ``Exchange.open_trunk`` gives it a session,
  and every frame of the parent goes to ``Exchange.on_data`` on that session
  as a socket's frames do; when it goes down the session is closed
  (``on_close``), which ends or holds its calls (``SYSTEMX_TRUNK_GRACE_MS``);
* the core's sends to the trunk go through :class:`TrunkConn`, an Endpoint
  that hands each frame to the trunk client.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from time import time as _now
from typing import TYPE_CHECKING, Any

from systemx.config import read_env_file
from systemx.federation import FederationConfig, PeerConfig
from systemx.server.trunk_client import TrunkClient

if TYPE_CHECKING:
    from systemx.server.app import Server

__all__ = ["Federation", "TrunkConn"]

log = logging.getLogger("systemx.federation")



class TrunkConn:
    """The Endpoint of an outbound trunk: what the core sends to for the parent.

    A frame for a trunk that is not up is dropped, as a closed socket drops it
    (the trunk's session is closed then anyway).
    """

    __slots__ = ("client", "closing")

    def __init__(self, client: TrunkClient) -> None:
        self.client = client
        self.closing = False

    def __repr__(self) -> str:
        return f"<TrunkConn {self.client.peer.id}>"

    def send(self, data: bytes) -> None:
        if not self.closing:
            self.client.send(data)

    def close(self, code: int, reason: str) -> None:
        # The core closes sessions at shutdown; the trunk client is closed by Federation.close.
        self.closing = True


class Federation:
    """Every outbound trunk of ``server``."""

    def __init__(self, server: Server, config: FederationConfig) -> None:
        self.server = server
        self.config = config
        self.clients: list[TrunkClient] = []
        self._sessions: dict[str, Any] = {}

    def start(self) -> None:
        exchange: Any = self.server.exchange
        settings = self.server.settings
        for peer in self.config.peers:
            trunk_id = "out:" + peer.id
            exchange.add_trunk(trunk_id, peer.id, peer.routes)
            client = TrunkClient(
                peer,
                on_frame=self._on_frame(trunk_id),
                max_message_bytes=settings.max_message_bytes,
            )
            client.on_up = self._on_up(trunk_id, client, peer)
            client.on_down = self._on_down(trunk_id)
            self.clients.append(client)
            log.info(
                "Trunk %s: dialling %s for %s, announcing %s",
                peer.id,
                peer.url,
                ", ".join(peer.routes),
                ", ".join(peer.announce_routes),
            )
            client.start()

    def _on_up(self, trunk_id: str, client: TrunkClient, peer: PeerConfig) -> Any:
        def on_up() -> None:
            conn = TrunkConn(client)
            exchange: Any = self.server.exchange
            self._sessions[trunk_id] = exchange.open_trunk(trunk_id, conn, _now())
            log.info("Trunk %s up (domain %s)", peer.id, peer.domain)

        return on_up

    def _on_down(self, trunk_id: str) -> Any:
        def on_down(reason: str) -> None:
            session = self._sessions.pop(trunk_id, None)
            if session is not None:
                session.conn.closing = True
                self.server.exchange.on_close(session, _now())

        return on_down

    def _on_frame(self, trunk_id: str) -> Any:
        def on_frame(data: bytes) -> None:
            session = self._sessions.get(trunk_id)
            if session is not None:
                self.server.exchange.on_data(session, data, _now())

        return on_frame

    async def close(self) -> None:
        for client in self.clients:
            try:
                await client.close()
            except Exception:
                log.exception("Trunk %s: close failed", client.peer.id)


def start_federation(server: Server) -> Federation | None:
    """Server hook at start: warn about open trunk registration, open the outbound trunks.

    Raises :class:`systemx.config.ConfigError` for unusable ``FEDERATION_*`` settings.
    """
    from systemx.federation import load_federation

    if not server.settings.pbx_tokens.strip():
        log.warning(
            "SYSTEMX_PBX_TOKENS is not set: any connection may register a trunk (REGISTER_PBX) "
            "and take calls for the routes it announces"
        )
    # As the other settings: the environment wins over .env.
    env: dict[str, str] = read_env_file(".env") if Path(".env").is_file() else {}
    env.update(os.environ)
    config = load_federation(env)
    if config is None:
        return None
    log.info("Federation: %d trunk(s) from %s, domain %s", len(config.peers), config.source, config.domain)
    federation = Federation(server, config)
    federation.start()
    return federation
