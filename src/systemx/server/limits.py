"""Limits on everyone: connections per IP address, and messages and bytes per connection.

* :class:`IpGate` runs at accept, before a byte of HTTP is read: at most
  ``SYSTEMX_MAX_CONNECTIONS_PER_IP`` open connections per address, and at most
  ``SYSTEMX_CONNECT_RATE_PER_IP`` new ones per second; an address over the rate
  is banned for ``SYSTEMX_BAN_SECONDS`` (the shape of Kamailio's pike module with
  an ``htable`` ban list). A refused connection is closed at once.
* :class:`RateLimits` / :class:`Bucket` are the per-connection token buckets
  (``SYSTEMX_MAX_FRAMES_PER_SECOND``, ``SYSTEMX_MAX_BYTES_PER_SECOND``, burst of
  ``SYSTEMX_RATE_BURST_SECONDS`` of the rate). A message over the rate is
  dropped; the first of a run is answered ``ERROR rate_limited``; a connection
  that keeps sending until it owes a whole burst is closed 1008.

Pure: every method takes ``now`` (epoch seconds); nothing reads a clock.
"""

from __future__ import annotations

import math

__all__ = ["CLOSE", "REFUSED", "WARN", "Bucket", "IpGate", "RateLimits"]

# Bucket.take verdicts (0: admitted).
WARN = 1
"""Refused, the first of a run: answer ``ERROR rate_limited``."""
REFUSED = 2
"""Refused again: drop silently."""
CLOSE = 3
"""Refused and a whole burst is owed: close the connection (1008)."""

_UNLIMITED = 1e18
_PRUNE_EVERY = 10.0


class IpGate:
    """Open connections and connection rate per source IP address, with a temporary ban."""

    __slots__ = ("_bans", "_next_prune", "_open", "_windows", "ban_seconds", "max_open", "rate")

    def __init__(self, max_open: int, rate: int, ban_seconds: float) -> None:
        self.max_open = max_open
        self.rate = rate
        self.ban_seconds = ban_seconds
        self._open: dict[str, int] = {}
        # ip -> [start of the current one-second window, connections in it]
        self._windows: dict[str, list[float]] = {}
        self._bans: dict[str, float] = {}
        self._next_prune = 0.0

    def admit(self, ip: str, now: float) -> str | None:
        """Count a new connection from ``ip``; None when admitted, else why it is refused."""
        if now >= self._next_prune:
            self._prune(now)
        bans = self._bans
        if bans:
            until = bans.get(ip)
            if until is not None:
                if now < until:
                    return "banned"
                del bans[ip]
        if self.rate > 0:
            window = self._windows.get(ip)
            if window is None or now - window[0] >= 1.0:
                self._windows[ip] = [now, 1.0]
            else:
                window[1] += 1.0
                if window[1] > self.rate:
                    del self._windows[ip]
                    bans[ip] = now + self.ban_seconds
                    return "flood"
        if self.max_open > 0:
            n = self._open.get(ip, 0)
            if n >= self.max_open:
                return "too_many_connections"
            self._open[ip] = n + 1
        return None

    def release(self, ip: str) -> None:
        """A connection from ``ip`` that was admitted has closed."""
        if self.max_open > 0:
            n = self._open.get(ip, 0) - 1
            if n > 0:
                self._open[ip] = n
            else:
                self._open.pop(ip, None)

    def open_from(self, ip: str) -> int:
        return self._open.get(ip, 0)

    def banned(self, ip: str, now: float) -> bool:
        until = self._bans.get(ip)
        return until is not None and now < until

    def _prune(self, now: float) -> None:
        self._next_prune = now + _PRUNE_EVERY
        self._windows = {ip: w for ip, w in self._windows.items() if now - w[0] < 1.0}
        self._bans = {ip: until for ip, until in self._bans.items() if now < until}


class RateLimits:
    """The per-connection rates; :meth:`bucket` makes one connection's full bucket."""

    __slots__ = ("burst_seconds", "byte_burst", "byte_rate", "bytes_per_second", "frame_burst", "frame_rate")

    def __init__(self, frames_per_second: int, bytes_per_second: int, burst_seconds: float) -> None:
        self.burst_seconds = burst_seconds
        self.bytes_per_second = bytes_per_second
        self.frame_rate = float(frames_per_second) if frames_per_second > 0 else _UNLIMITED
        self.frame_burst = self.frame_rate * burst_seconds if frames_per_second > 0 else _UNLIMITED
        self.byte_rate = float(bytes_per_second) if bytes_per_second > 0 else _UNLIMITED
        self.byte_burst = self.byte_rate * burst_seconds if bytes_per_second > 0 else _UNLIMITED

    @classmethod
    def of(cls, frames_per_second: int, bytes_per_second: int, burst_seconds: float) -> RateLimits | None:
        """None when neither rate is limited."""
        if frames_per_second <= 0 and bytes_per_second <= 0:
            return None
        return cls(frames_per_second, bytes_per_second, burst_seconds)

    def bucket(self, now: float) -> Bucket:
        return Bucket(self, now)


class Bucket:
    """One connection's two token buckets (messages, bytes), refilled continuously.

    The rates are copied from :class:`RateLimits` so that :meth:`take`, run for every
    message, reads only its own slots.
    """

    __slots__ = (
        "byte_burst",
        "byte_rate",
        "bytes",
        "frame_burst",
        "frame_rate",
        "frames",
        "limits",
        "refused",
        "refused_verdict",
        "stamp",
    )

    def __init__(self, limits: RateLimits, now: float) -> None:
        self.limits = limits
        self.frame_rate = limits.frame_rate
        self.frame_burst = limits.frame_burst
        self.byte_rate = limits.byte_rate
        self.byte_burst = limits.byte_burst
        self.frames = limits.frame_burst
        self.bytes = limits.byte_burst
        self.stamp = now
        self.refused = False
        # The verdict of the last refused message (what take returned).
        self.refused_verdict = 0

    def take(self, size: int, now: float) -> int:
        """Charge one message of ``size`` bytes: 0 when admitted, else WARN, REFUSED or CLOSE."""
        elapsed = now - self.stamp
        self.stamp = now
        frames = self.frames + elapsed * self.frame_rate
        if frames > self.frame_burst:
            frames = self.frame_burst
        data = self.bytes + elapsed * self.byte_rate
        if data > self.byte_burst:
            data = self.byte_burst
        frames -= 1.0
        data -= size
        self.frames = frames
        self.bytes = data
        if frames >= 0.0 and data >= 0.0 and not self.refused:
            return 0
        return self._judge(frames, data)

    def _judge(self, frames: float, data: float) -> int:
        if frames >= 0.0 and data >= 0.0:
            self.refused = False
            return 0
        # Refused messages are charged too: a client that keeps sending sinks deeper.
        if frames < -self.frame_burst or data < -self.byte_burst:
            verdict = CLOSE
        elif self.refused:
            verdict = REFUSED
        else:
            self.refused = True
            verdict = WARN
        self.refused_verdict = verdict
        return verdict

    def over(self) -> str:
        """Which limit is exceeded: ``frames_per_second`` or ``bytes_per_second``."""
        return "frames_per_second" if self.frames < 0.0 else "bytes_per_second"

    def retry_after_ms(self) -> int:
        """When a one-message, zero-byte send would be admitted again."""
        wait = 0.0
        if self.frames < 1.0:
            wait = (1.0 - self.frames) / self.frame_rate
        if self.bytes < 0.0:
            wait = max(wait, -self.bytes / self.byte_rate)
        return max(1, math.ceil(wait * 1000))
