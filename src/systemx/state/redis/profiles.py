"""Wake profiles in Redis, shared by every node: the cluster's profile store.

One STRING per address (``sx:sleep:{D}:L``, the profile as JSON) beside the
wake lock of the same address, so ``wake.lua`` reads the profile and takes the
lock in one atomic call; a SET ``sx:sleepers`` lists the addresses for
:meth:`RedisProfileStore.load_all`, which reads them in batches
(``SSCAN`` + ``MGET``, 500 per round trip), never in one huge reply. Profiles
are JSON, so a value JSON cannot carry is refused at ``put`` (``TypeError``)
before any I/O, as the other stores refuse it; ``load_all`` returns fresh
copies, and skips (and logs) an unreadable profile.

The same shape as :class:`systemx.state.profiles.ProfileStore`, async. A node
keeps its local SQLite store as the durable copy: after Redis lost its data
the node puts its sleepers back from it.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from systemx.state.redis import scripts
from systemx.state.redis.conn import RedisConnection
from systemx.state.redis.keys import Keys

__all__ = ["RedisProfileStore"]

log = logging.getLogger("systemx.state.redis")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class RedisProfileStore:
    """Wake profiles by address, async, on ``conn``."""

    def __init__(self, conn: RedisConnection, *, keys: Keys | None = None, batch: int = 500) -> None:
        self.conn = conn
        self.keys = keys or Keys()
        self.batch = batch
        conn.register(scripts.WAKE, scripts.UNLOCK)

    async def load_all(self) -> dict[str, dict[str, Any]]:
        """Every stored profile, by address."""
        conn, keys = self.conn, self.keys
        profiles: dict[str, dict[str, Any]] = {}
        cursor = b"0"
        while True:
            cursor, found = await conn.execute("SSCAN", keys.sleepers, cursor, "COUNT", self.batch)
            addresses = [a.decode() for a in found]
            if addresses:
                docs = await conn.execute("MGET", *(keys.sleeper(a) for a in addresses))
                for address, doc in zip(addresses, docs, strict=True):
                    if doc is None:
                        continue  # deleted between the scan and the read
                    try:
                        profiles[address] = _decode(doc)
                    except msgspec.DecodeError as exc:
                        log.error("Skipping unreadable wake profile of %s in Redis: %s", address, exc)
            if cursor == b"0":
                return profiles

    async def put(self, address: str, profile: dict[str, Any]) -> None:
        """Store ``profile`` for ``address``, replacing any earlier one."""
        if not isinstance(profile, dict):
            raise TypeError(f"a profile must be a dict, got {type(profile).__name__}")
        doc = _encode(profile)
        self.conn.send_nowait("SET", self.keys.sleeper(address), doc)
        await self.conn.execute("SADD", self.keys.sleepers, address)

    async def delete(self, address: str) -> None:
        """Forget ``address`` (no error if it has no profile)."""
        self.conn.send_nowait("DEL", self.keys.sleeper(address))
        await self.conn.execute("SREM", self.keys.sleepers, address)

    async def wake(
        self, address: str, token: str, ttl_ms: int, *, unless_claimed: bool = False
    ) -> scripts.WakeAnswer:
        """Take ``address``'s wake lock for ``ttl_ms`` with ``token`` (``call_id@node``); see ``wake.lua``.

        ``unless_claimed``: an address claimed in the directory (awake on a node) is
        not locked; the answer names the claim's node and node epoch.
        """
        keys = self.keys
        claim = keys.address(address) if unless_claimed else None
        return await scripts.wake(
            self.conn, keys.sleeper(address), keys.wake_lock(address), token, ttl_ms, claim
        )

    async def wake_done(self, address: str, token: str) -> bool:
        """Release the wake lock early (the wake ended); ``False`` if it expired or is another's."""
        return await scripts.unlock(self.conn, self.keys.wake_lock(address), token)

    async def close(self) -> None:
        """Nothing to release: the connection belongs to its owner. Harmless twice."""
