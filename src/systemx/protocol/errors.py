"""Classify a frame that failed to decode into its wire answer."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["describe_invalid"]

_generic = msgspec.json.Decoder()


def describe_invalid(data: bytes, error: msgspec.ValidationError) -> tuple[str, str]:
    """Return ``(context, detail)`` for an ``ERROR invalid_payload`` answer.

    ``context`` is the offending message type, or ``UNKNOWN`` when the frame has
    no known type. This is the slow path, only run for bad input.
    """
    from systemx.protocol.messages import ClientMessage  # local: avoid a cycle

    try:
        value: Any = _generic.decode(data)
    except msgspec.DecodeError:  # pragma: no cover - caller already parsed it
        return "UNKNOWN", "Invalid JSON"
    # "Unsupported message type: <type>" whatever the frame is, as the reference router
    # words it ("undefined" when there is no type at all), so clients can match on it.
    if not isinstance(value, dict):
        got = type(value).__name__ if value is not None else "null"
        return "UNKNOWN", f"Unsupported message type: undefined (expected a JSON object, got {got})"
    if "type" not in value:
        return "UNKNOWN", "Unsupported message type: undefined"
    mtype = value["type"]
    if not isinstance(mtype, str) or mtype not in _known_types(ClientMessage):
        shown = mtype if isinstance(mtype, str) else msgspec.json.encode(mtype).decode()
        return "UNKNOWN", f"Unsupported message type: {shown}"
    return mtype, str(error)


_KNOWN: frozenset[str] | None = None


def _known_types(union: Any) -> frozenset[str]:
    global _KNOWN
    if _KNOWN is None:
        _KNOWN = frozenset(t.__struct_config__.tag for t in union.__args__)
    return _KNOWN
