"""The network side of SystemX: the WebSocket server that runs the core exchange.

``app`` starts and stops it, ``transport`` runs the sockets (corking, the
slow-consumer policy), ``runtime`` executes the core's actions, ``http``
answers plain HTTP on the WebSocket port.
"""

from systemx.server.app import Server, run, serve
from systemx.server.runtime import ExchangeLike, Runtime, WakeRunnerLike
from systemx.server.transport import CLOSE_TIMEOUT, Connection

__all__ = [
    "CLOSE_TIMEOUT",
    "Connection",
    "ExchangeLike",
    "Runtime",
    "Server",
    "WakeRunnerLike",
    "run",
    "serve",
]
