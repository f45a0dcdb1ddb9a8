"""The SystemX wire protocol: messages, address grammar, reasons and close codes."""

from systemx.protocol.address import MAX_ADDRESS_LENGTH, address_key, domain_of, is_valid_address
from systemx.protocol.codes import (
    BusyReason,
    CloseCode,
    CloseReason,
    ErrorReason,
    HangupReason,
    JoinFailedReason,
    RegisterFailedReason,
    Status,
)
from systemx.protocol.messages import ClientMessage, ServerMessage, decode_client, decode_server, encode

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "BusyReason",
    "ClientMessage",
    "CloseCode",
    "CloseReason",
    "ErrorReason",
    "HangupReason",
    "JoinFailedReason",
    "RegisterFailedReason",
    "ServerMessage",
    "Status",
    "address_key",
    "decode_client",
    "decode_server",
    "domain_of",
    "encode",
    "is_valid_address",
]
