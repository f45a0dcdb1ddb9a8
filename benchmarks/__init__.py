"""Repository-only benchmarks of the SystemX exchange.

``python -m benchmarks <scenario> [options]`` is ``systemx bench`` (the load
generator in :mod:`systemx.bench`) plus the baselines it compares the exchange
with: the bare picows relay (``bare_relay.py``) and the Bun relay
(``bun_relay.js``). ``core_micro`` and ``presence_core`` time the exchange core
and the presence index in process; ``profile`` records py-spy stacks. See
``docs/performance.md`` for the method.
"""

__all__: list[str] = []
