"""Makes ``systemx`` importable when an example runs from a checkout that was not installed.

Imported first by every example: when ``systemx`` cannot be imported, the
checkout's ``src`` directory is put on ``sys.path``. When SystemX's own
dependencies (picows, msgspec, ...) are missing, the example stops with one
line saying how to install them, instead of a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parents[1] / "src"


def _missing(name: str | None) -> None:
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "the example"
    print(
        f"{script}: cannot import {name or 'systemx'}: SystemX's dependencies are not installed for "
        f"{sys.executable}. In the repository run `make .venv/.installed`, then "
        f"`.venv/bin/python examples/{script}` (or `pip install -e .` in your own environment).",
        file=sys.stderr,
    )
    raise SystemExit(2)


try:
    import systemx.client
except ModuleNotFoundError as exc:
    if exc.name != "systemx" or not (_SRC / "systemx").is_dir():
        _missing(exc.name)
    sys.path.insert(0, str(_SRC))
    try:
        import systemx.client  # noqa: F401
    except ModuleNotFoundError as again:
        _missing(again.name)
