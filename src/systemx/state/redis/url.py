"""``SYSTEMX_REDIS_URL``: where the cluster's Redis is, and how to log in."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = ["RedisAddress", "parse_redis_url"]


class RedisAddress(NamedTuple):
    host: str
    port: int
    db: int
    username: str | None
    password: str | None

    def __str__(self) -> str:
        # Never the password: this is what logs show.
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[user:password@]host[:port][/db]``; raises ValueError saying what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme == "rediss":
        raise ValueError(
            "rediss:// (TLS) is not supported; reach Redis over a private network or a TLS tunnel"
        )
    if parts.scheme != "redis":
        raise ValueError(f"must start with redis://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"the port in {url!r} is not a number from 1 to 65535") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database in {url!r} must be a number (…/0)")
    if parts.query:
        raise ValueError(f"options after '?' are not supported: {url!r}")
    return RedisAddress(
        parts.hostname,
        port,
        int(path) if path else 0,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
    )
