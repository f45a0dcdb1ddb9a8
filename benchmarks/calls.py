"""What the benchmarks that place calls through the client library share.

Ports, waiting for a started process to listen, an echoing callee, and p99.
"""

from __future__ import annotations

import asyncio
import socket

from systemx.client import Call, Client

__all__ = ["echo_calls", "free_port", "p99", "wait_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_port(port: int) -> None:
    """Wait until something listens on 127.0.0.1:``port`` (20 s at most)."""
    for _ in range(400):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listens on {port}")


async def echo_calls(client: Client) -> None:
    """Answer every call to ``client`` and send each MSG back, until cancelled."""
    tasks: set[asyncio.Task[None]] = set()

    async def echo(call: Call) -> None:
        try:
            while True:
                message = await call.recv()
                await call.send(message.data)
        except Exception:
            return

    while True:
        incoming = await client.next_call()
        task = asyncio.create_task(echo(await incoming.answer()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]
