"""The baselines the exchange is measured against, as :class:`~systemx.bench.servers.Baseline`.

``bare``: the bare picows relay (``python benchmarks/bare_relay.py``).
``bun``: the Bun relay (``bun benchmarks/bun_relay.js``, with the ``bun``
:func:`find_bun` finds).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from systemx.bench.servers import BUN_ENV, Baseline, ServerError
from systemx.bench.servers import find_bun as _find_bun

__all__ = ["BASELINES", "BUN_ENV", "bare_command", "bun_command", "bun_missing", "find_bun"]

_BUN_INSTALL = "make bench-bun-install"
_BENCH_DIR = Path(__file__).resolve().parent
_BARE_RELAY = _BENCH_DIR / "bare_relay.py"
_BUN_RELAY = _BENCH_DIR / "bun_relay.js"
# Where ``make bench-bun-install`` puts bun: ``.bench/`` at the project root.
_LOCAL_BUN = _BENCH_DIR.parent / ".bench" / "node_modules" / ".bin" / "bun"


def bare_command(host: str) -> list[str]:
    """The command that runs the bare relay on ``host``, any free port."""
    # By path: the server runs in a scratch directory, where ``benchmarks`` is not importable.
    return [sys.executable, str(_BARE_RELAY), "--host", host, "--port", "0"]


def find_bun() -> str | None:
    """The ``bun`` executable for the Bun baseline, or None.

    ``$SYSTEMX_BENCH_BUN`` when set (and then only it), else ``bun`` on PATH,
    else ``.bench/node_modules/.bin/bun`` under the project root.
    """
    return _find_bun([_LOCAL_BUN])


def bun_command(host: str) -> list[str]:
    """The command that runs the Bun relay on ``host``, any free port."""
    bun = find_bun()
    if bun is None:
        raise ServerError(bun_missing())
    return [bun, str(_BUN_RELAY), "--host", host, "--port", "0"]


def bun_missing() -> str:
    """Why there is no Bun baseline, and how to get one."""
    named = os.environ.get(BUN_ENV)
    where = f"${BUN_ENV}={named} is not an executable" if named else f"no bun on PATH nor at {_LOCAL_BUN}"
    return (
        f"the Bun baseline needs bun: {where}; install it with `{_BUN_INSTALL}` "
        f"(or set ${BUN_ENV} to a bun executable)"
    )


def _bun_unavailable() -> str | None:
    return bun_missing() if find_bun() is None else None


BASELINES: dict[str, Baseline] = {
    "bare": Baseline(bare_command),
    "bun": Baseline(bun_command, _bun_unavailable),
}
