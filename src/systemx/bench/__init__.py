"""Load generator and benchmark scenarios for the SystemX exchange (``systemx bench``).

Each scenario speaks the real wire protocol over real WebSocket connections,
checks every frame it receives, measures the server's CPU time per unit of
work from ``/proc`` and prints human-readable lines plus one JSON line per
scenario. See ``docs/performance.md`` for the method.
"""

__all__: list[str] = []
