"""Micro-benchmark of the per-connection rate check: CPU per message.

Run with ``python -m benchmarks.limits_micro``. Prints the cost of one
``Bucket.take`` (the check each message pays when SYSTEMX_MAX_FRAMES_PER_SECOND
or SYSTEMX_MAX_BYTES_PER_SECOND is set) next to a ``dict.get`` and an empty
function call measured in the same run, so a busy machine can be read off.
"""

from __future__ import annotations

import timeit

from systemx.server.limits import RateLimits


def main() -> None:
    bucket = RateLimits(1_000_000, 1_000_000_000, 2).bucket(0.0)
    scope = {"take": bucket.take, "get": {}.get, "nothing": lambda size, now: 0}
    number = 1_000_000
    for name, stmt in (
        ("Bucket.take", "take(100, 1.0)"),
        ("dict.get", "get(1)"),
        ("empty call", "nothing(100, 1.0)"),
    ):
        best = min(timeit.repeat(stmt, globals=scope, number=number, repeat=7)) / number
        print(f"{name:<12} {best * 1e9:7.1f} ns")


if __name__ == "__main__":
    main()
