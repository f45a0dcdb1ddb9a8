"""The cluster's state in Redis: many exchange processes acting as one exchange.

* :mod:`.conn`: the corked Redis connection every backend uses, with its
  timeout (:class:`~.conn.RedisUnavailable`), reconnect and restart detection.
* :mod:`.keys`: every key name; :mod:`.scripts`: the Lua scripts (claim,
  release, sweep, wake, unlock, bucket, roster) and their wrappers.
* :mod:`.directory` (claims, node leases, sweeping dead nodes),
  :mod:`.roster` (party lines), :mod:`.profiles` (wake profiles and the wake
  lock), :mod:`.records` (call records), :mod:`.bus` (per-node inbox streams).
* :mod:`.adapter`: how the sans-I/O core sees these async backends (answers
  ``PENDING`` now, the result later as a callback).

Redis is the source of truth for who holds an address, and is never on the
MSG path of a call between two parties on one node.
"""
