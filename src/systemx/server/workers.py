"""``systemx serve --workers N``: N exchange processes on one port, one cluster.

Python runs one thread of the exchange per process, so a machine's other cores
are used by more processes. The parent picks the port (binding ``--port 0``
itself, with ``SO_REUSEPORT``, so every worker gets the same free port), then
starts N ``systemx serve`` workers that each listen on it with
``SO_REUSEPORT``: the kernel spreads new connections across them. The workers
are nodes of the cluster named by ``SYSTEMX_REDIS_URL`` (required: without a
shared directory they would be N separate exchanges on one port), so a client
on any worker reaches every address.

Each worker is ``<node id>-w<i>`` (when ``SYSTEMX_NODE_ID`` is set), has its own
admin port (``SYSTEMX_ADMIN_PORT + i``; with port 0 each picks a free one) and
its own data directory (``SYSTEMX_DATA_DIR/w<i>``). A worker that exits
unexpectedly is started again after a second; one that exits within its first
five seconds with a configuration error (status 2) stops them all with that
status. SIGTERM or SIGINT to the parent is passed to every worker, and the
parent exits when they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from systemx.config import Settings

__all__ = ["supervise"]

log = logging.getLogger("systemx.server")

EXIT_CONFIG = 2
_RESTART_DELAY = 1.0
_EARLY = 5.0


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host or "0.0.0.0", port))
    return sock, int(sock.getsockname()[1])


def supervise(settings: Settings, workers: int, argv: Sequence[str]) -> int:
    """Run ``workers`` worker processes (``systemx serve`` with ``argv``) until a signal."""
    return asyncio.run(_supervise(settings, workers, list(argv)))


async def _supervise(settings: Settings, workers: int, argv: list[str]) -> int:
    reserved, port = _reserve_port(settings.host, settings.port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    procs: dict[int, asyncio.subprocess.Process] = {}
    status = 0

    async def spawn(i: int) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env["SYSTEMX_REUSE_PORT"] = "on"
        if settings.node_id:
            env["SYSTEMX_NODE_ID"] = f"{settings.node_id}-w{i}"
        if settings.admin_port:
            env["SYSTEMX_ADMIN_PORT"] = str(settings.admin_port + i)
        env["SYSTEMX_DATA_DIR"] = os.path.join(settings.data_dir, f"w{i}")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "systemx", "serve", *argv, "--port", str(port), env=env
        )
        procs[i] = proc
        return proc

    async def run(i: int) -> None:
        nonlocal status
        while not stop.is_set():
            started = loop.time()
            proc = await spawn(i)
            code = await proc.wait()
            if stop.is_set():
                return
            if code == EXIT_CONFIG and loop.time() - started < _EARLY:
                log.error("Worker %d could not start (status %d): stopping", i, code)
                status = code
                stop.set()
                return
            log.error("Worker %d exited with status %d: starting it again", i, code)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RESTART_DELAY)

    runners = [asyncio.create_task(run(i)) for i in range(workers)]
    log.info("Supervising %d workers on port %d", workers, port)
    await stop.wait()
    for proc in procs.values():
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*runners, return_exceptions=True)
    for proc in procs.values():
        if proc.returncode is None:
            await proc.wait()
    reserved.close()
    return status
