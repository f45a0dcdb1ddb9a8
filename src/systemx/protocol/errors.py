"""Classify a frame that failed to decode into its wire answer.

This is the slow path, run only for bad input. A frame fails in one of three
ways, and :func:`describe_invalid` tells which:

* it is not JSON at all (syntax error, truncated, trailing garbage, invalid
  escapes) or a number cannot be represented: ``Invalid JSON: ...``;
* it nests deeper than the decoder follows (several hundred levels, see
  :data:`TOO_DEEP`); its type is then known only when ``type`` is its first key;
* it is JSON but not a valid message: the decoder's own text, with the type
  as context.

Every classification is itself safe against the same input: the envelope
decoder below skips every value but ``type`` and ``address`` unchecked, and
each of its failures is caught.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgspec

__all__ = ["NOT_JSON", "TOO_DEEP", "Invalid", "describe_invalid"]

#: The start of the ``detail`` of a frame that is not JSON at all.
NOT_JSON = "Invalid JSON: "

#: The ``detail`` of a frame nested deeper than the decoder follows.
TOO_DEEP = "JSON nested too deep"

_generic = msgspec.json.Decoder()


class _Envelope(msgspec.Struct):
    """The two fields read from a refused frame; every other value is skipped."""

    type: Any = msgspec.UNSET
    address: Any = msgspec.UNSET


_envelope = msgspec.json.Decoder(_Envelope)
# Used only when the frame is too deep to skip: the type of a frame that starts with it.
_LEADING_TYPE = re.compile(rb'\A[ \t\r\n]*\{[ \t\r\n]*"type"[ \t\r\n]*:[ \t\r\n]*"([A-Z_]{1,32})"')


class Invalid(NamedTuple):
    """Why a frame was refused: ``context`` (its type, or ``UNKNOWN``) and ``detail``.

    ``address`` is the frame's ``address`` field when it was a string (REGISTER echoes it),
    ``address_missing`` is true when a REGISTER had no string ``address``.
    """

    context: str
    detail: str
    address: str | None = None
    address_missing: bool = False


def describe_invalid(data: bytes, error: Exception) -> Invalid:
    """Classify ``data``, which the typed decoder refused with ``error``."""
    from systemx.protocol.messages import ClientMessage  # local: avoid a cycle

    known = _known_types(ClientMessage)
    try:
        envelope = _envelope.decode(data)
    except RecursionError:
        match = _LEADING_TYPE.match(data)
        mtype = match.group(1).decode() if match is not None else ""
        return Invalid(mtype if mtype in known else "UNKNOWN", TOO_DEEP)
    except msgspec.ValidationError:  # (a subclass of DecodeError) not an object
        return _not_an_object(data)
    except msgspec.DecodeError as exc:
        return Invalid("UNKNOWN", NOT_JSON + str(exc))
    if isinstance(error, RecursionError):  # pragma: no cover - the envelope recursed first
        return Invalid("UNKNOWN", TOO_DEEP)
    if isinstance(error, msgspec.DecodeError) and not isinstance(error, msgspec.ValidationError):
        # Invalid escapes or UTF-16 surrogates inside a value the envelope skipped.
        return Invalid("UNKNOWN", NOT_JSON + str(error))
    # "Unsupported message type: <type>" whatever the frame is, as the reference router
    # words it ("undefined" when there is no type at all), so clients can match on it.
    mtype = envelope.type
    if mtype is msgspec.UNSET:
        return Invalid("UNKNOWN", "Unsupported message type: undefined")
    if not isinstance(mtype, str) or mtype not in known:
        shown = mtype if isinstance(mtype, str) else msgspec.json.encode(mtype).decode()
        return Invalid("UNKNOWN", f"Unsupported message type: {shown}")
    address = envelope.address
    if isinstance(address, str):
        return Invalid(mtype, str(error), address)
    return Invalid(mtype, str(error), None, True)


def _not_an_object(data: bytes) -> Invalid:
    try:
        value: Any = _generic.decode(data)
    except RecursionError:
        return Invalid("UNKNOWN", TOO_DEEP)
    except msgspec.DecodeError as exc:  # not JSON, or (ValidationError) a number out of range
        return Invalid("UNKNOWN", NOT_JSON + str(exc))
    got = type(value).__name__ if value is not None else "null"
    return Invalid("UNKNOWN", f"Unsupported message type: undefined (expected a JSON object, got {got})")


_KNOWN: frozenset[str] | None = None


def _known_types(union: Any) -> frozenset[str]:
    global _KNOWN
    if _KNOWN is None:
        _KNOWN = frozenset(t.__struct_config__.tag for t in union.__args__)
    return _KNOWN
