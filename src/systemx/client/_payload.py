"""Encode outgoing MSG/PARTY_MSG data and decode incoming data by content type.

Interoperable with the reference SDK: ``json`` data travels as a JSON-encoded
string and ``binary`` data as a base64 string. On receipt a ``json`` string is
parsed (a non-string JSON value is taken as is) and a ``binary`` string is
base64-decoded; anything that does not parse is returned undecoded.
"""

from __future__ import annotations

import binascii
from base64 import b64decode, b64encode
from typing import Any

import msgspec

__all__ = ["decode_data", "encode_binary", "encode_json", "encode_text"]

_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode


def encode_text(text: str) -> msgspec.Raw:
    return msgspec.Raw(_encode(text))


def encode_json(value: Any) -> msgspec.Raw:
    return msgspec.Raw(_encode(_encode(value).decode()))


def encode_binary(data: bytes | bytearray | memoryview) -> msgspec.Raw:
    # base64 output is ASCII with no characters JSON needs to escape.
    return msgspec.Raw(b'"' + b64encode(data) + b'"')


def decode_data(raw: msgspec.Raw, content_type: str | None) -> Any:
    if content_type == "text" or content_type is None:
        return _decode_any(raw)
    value = _decode_any(raw)
    if not isinstance(value, str):
        return value
    if content_type == "json":
        try:
            return _decode_any(value)
        except msgspec.DecodeError:
            return value
    if content_type == "binary":
        try:
            return b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return value
    return value
