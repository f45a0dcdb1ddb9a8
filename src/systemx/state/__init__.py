"""State ports and their implementations."""

from systemx.state.presence import MemoryPresenceIndex, PresenceIndex, PresenceRow, haversine_km

__all__ = ["MemoryPresenceIndex", "PresenceIndex", "PresenceRow", "haversine_km"]
