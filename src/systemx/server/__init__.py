"""The network side of SystemX: the WebSocket driver that runs the core exchange.

See :mod:`systemx.server.app` for the transport, slow-consumer and shutdown policies.
"""

from systemx.server.app import (
    CLOSE_TIMEOUT,
    Connection,
    ExchangeLike,
    ProfileStore,
    Server,
    WakeRunnerLike,
    run,
    serve,
)

__all__ = [
    "CLOSE_TIMEOUT",
    "Connection",
    "ExchangeLike",
    "ProfileStore",
    "Server",
    "WakeRunnerLike",
    "run",
    "serve",
]
