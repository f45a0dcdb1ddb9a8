"""SystemX: a telephone exchange for the internet.

Endpoints open a WebSocket, REGISTER an email-style address, DIAL each other and
exchange MSG frames while CONNECTED. See PROTOCOL.md for the wire protocol.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
