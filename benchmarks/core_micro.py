"""Micro-benchmark of the exchange core alone: Python CPU per unit, no sockets.

Run with ``python -m benchmarks.core_micro [--seconds S] [--rounds N]``.

The wire scenarios measure the whole server, where loopback system calls take
half or more of the CPU on a small VM and vary from run to run. This one drives
:class:`systemx.core.exchange.Exchange` directly with pre-encoded frames and an
``Actions`` port that only counts, so it isolates (and repeatably measures) the
part of every unit that is the exchange's own Python code:

* ``msg``: one MSG relayed on a connected call (decode, route, splice);
* ``msg_remote``: the same, to a party behind a federation trunk (the trunk's
  endpoint only counts, as every endpoint here); the ratio to ``msg`` is printed
  when both run;
* ``call``: DIAL → RING (RINGING only when asked) → ANSWER → CONNECTED → HANGUP, one whole call;
* ``party``: one PARTY_MSG fanned out to 199 others (per delivery);
* ``register``: open a session, REGISTER with presence metadata, close it.

Each figure is the best of ``--rounds`` rounds of process CPU time per unit.
``--log-level info`` (and ``--log-format json``) configures SystemX's logging as
``systemx serve`` does, its lines formatted and then discarded: the cost of the
exchange's INFO lines (one per registration, three per call) on top.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import time
from collections.abc import Callable, Hashable
from typing import IO, Any, cast

import msgspec

from systemx.config import Settings
from systemx.core.actions import WakeProfile, WakeRequest
from systemx.core.exchange import Exchange

__all__ = ["CountingActions", "main", "measure"]

_enc = msgspec.json.Encoder().encode


class CountingActions:
    """Executes nothing: counts sends so the work cannot be optimised away."""

    def __init__(self) -> None:
        self.sent = 0
        self.bytes = 0
        self.timers: dict[Hashable, float] = {}

    def send(self, conn: Any, data: bytes) -> None:
        self.sent += 1
        self.bytes += len(data)

    def close(self, conn: Any, code: int, reason: str) -> None:
        pass

    def start_timer(self, key: Hashable, delay: float) -> None:
        self.timers[key] = delay

    def cancel_timer(self, key: Hashable) -> None:
        self.timers.pop(key, None)

    def wake(self, request: WakeRequest) -> None:
        pass

    def cancel_wake(self, address: str) -> None:
        pass

    def persist_profile(self, key: str, profile: WakeProfile | None) -> None:
        pass

    def woke(self, address: str) -> None:
        pass

    def slept(self, address: str) -> None:
        pass

    def lookup(self, address: str) -> None:
        pass


def _exchange() -> tuple[Exchange, CountingActions]:
    settings = dataclasses.replace(Settings(), dial_max_attempts=0)
    actions = CountingActions()
    x = Exchange(settings.core_config(), actions)
    x.start(0.0)
    return x, actions


def _register(x: Exchange, conn: str, address: str, now: float) -> Any:
    s = x.on_open(conn, now)
    x.on_data(s, _enc({"type": "REGISTER", "address": address}), now)
    return s


def bench_msg(n: int) -> Callable[[], int]:
    x, _ = _exchange()
    a = _register(x, "a", "alice@example.com", 0.0)
    b = _register(x, "b", "bob@example.com", 0.0)
    x.on_data(a, _enc({"type": "DIAL", "to": "bob@example.com"}), 0.0)
    call_id = next(iter(x.calls)).call_id
    x.on_data(b, _enc({"type": "ANSWER", "call_id": call_id}), 0.0)
    frame = _enc({"type": "MSG", "call_id": call_id, "data": "x" * 100, "content_type": "text"})
    on_data = x.on_data

    def run() -> int:
        for _ in range(n):
            on_data(a, frame, 1.0)
        return n

    return run


def bench_msg_remote(n: int) -> Callable[[], int]:
    x, _ = _exchange()
    x.add_trunk("out:parent", "parent", ("*@remote.example.com",))
    trunk = x.open_trunk("out:parent", "trunk", 0.0)
    a = _register(x, "a", "alice@example.com", 0.0)
    x.on_data(a, _enc({"type": "DIAL", "to": "bob@remote.example.com"}), 0.0)
    call_id = next(iter(x.calls)).call_id
    x.on_data(trunk, _enc({"type": "ANSWER", "call_id": call_id, "from": "bob@remote.example.com"}), 0.0)
    call = x.call(call_id)
    assert call is not None and call.routes is not None, "the call over the trunk is not connected"
    frame = _enc({"type": "MSG", "call_id": call_id, "data": "x" * 100, "content_type": "text"})
    on_data = x.on_data

    def run() -> int:
        for _ in range(n):
            on_data(a, frame, 1.0)
        return n

    return run


def bench_call(n: int) -> Callable[[], int]:
    x, _ = _exchange()
    a = _register(x, "a", "alice@example.com", 0.0)
    b = _register(x, "b", "bob@example.com", 0.0)
    dial = _enc({"type": "DIAL", "to": "bob@example.com"})
    calls = x.book.by_id
    on_data = x.on_data

    def run() -> int:
        for _ in range(n):
            on_data(a, dial, 1.0)
            call_id = next(iter(calls))
            on_data(b, b'{"type":"ANSWER","call_id":"' + call_id.encode() + b'"}', 1.0)
            on_data(a, b'{"type":"HANGUP","call_id":"' + call_id.encode() + b'"}', 1.0)
        return n

    return run


def bench_party(n: int, members: int = 200) -> Callable[[], int]:
    x, _ = _exchange()
    sessions = [_register(x, f"c{i}", f"user{i}@example.com", 0.0) for i in range(members)]
    join = _enc({"type": "JOIN", "party": "room@rooms.example.com", "create_if_missing": True})
    for s in sessions:
        x.on_data(s, join, 0.0)
    frame = _enc({"type": "PARTY_MSG", "party": "room@rooms.example.com", "data": "x" * 100})
    sender = sessions[0]
    on_data = x.on_data
    messages = max(1, n // (members - 1))

    def run() -> int:
        for _ in range(messages):
            on_data(sender, frame, 1.0)
        return messages * (members - 1)

    return run


def bench_register(n: int) -> Callable[[], int]:
    x, _ = _exchange()
    frames = [
        _enc(
            {
                "type": "REGISTER",
                "address": f"agent{i}@d{i % 50}.example.com",
                "metadata": {"capabilities": ["code", f"c{i % 20}"], "location": {"lat": 51.5, "lon": -0.1}},
            }
        )
        for i in range(n)
    ]

    def run() -> int:
        opened = []
        for i, frame in enumerate(frames):
            s = x.on_open(i, 1.0)
            x.on_data(s, frame, 1.0)
            opened.append(s)
        for s in opened:
            x.on_close(s, 2.0)
        return n

    return run


BENCHES: dict[str, tuple[Callable[[int], Callable[[], int]], int, str]] = {
    "msg": (bench_msg, 20_000, "MSG"),
    "msg_remote": (bench_msg_remote, 20_000, "MSG to a party behind a trunk"),
    "call": (bench_call, 2_000, "call"),
    "party": (bench_party, 20_000, "delivery"),
    "register": (bench_register, 2_000, "registration (open + REGISTER + close)"),
}


class _Discard(io.TextIOBase):
    """A text stream that takes every line and keeps none."""

    def write(self, s: str) -> int:
        return len(s)


def measure(name: str, rounds: int = 7, seconds: float = 0.2) -> float:
    """Best CPU microseconds per unit of benchmark ``name`` over ``rounds`` rounds."""
    factory, n, _ = BENCHES[name]
    best = float("inf")
    for _ in range(rounds):
        run = factory(n)
        units = 0
        start = time.process_time()
        elapsed = 0.0
        while True:
            units += run()
            elapsed = time.process_time() - start
            if elapsed >= seconds:
                break
        best = min(best, elapsed * 1e6 / units)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.core_micro", description="The exchange core alone: CPU per unit."
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.2, help="minimum CPU seconds per round")
    parser.add_argument(
        "--log-level", default="", help="configure SystemX's logging at this level (lines discarded)"
    )
    parser.add_argument("--log-format", default="text", choices=("text", "json"))
    parser.add_argument("only", nargs="*", help=f"benchmarks to run: {', '.join(BENCHES)} (default all)")
    args = parser.parse_args(argv)
    if args.log_level:
        from systemx.logsetup import configure_logging

        settings = dataclasses.replace(Settings(), log_level=args.log_level, log_format=args.log_format)
        configure_logging(settings, cast(IO[str], _Discard()))
    unknown = [name for name in args.only if name not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    gc.collect()
    figures: dict[str, float] = {}
    for name in args.only or BENCHES:
        unit = BENCHES[name][2]
        figures[name] = measure(name, args.rounds, args.seconds)
        print(f"{name:10s} {figures[name]:8.3f} us CPU per {unit}", flush=True)
    if "msg" in figures and "msg_remote" in figures:
        print(f"msg_remote / msg: {figures['msg_remote'] / figures['msg']:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
