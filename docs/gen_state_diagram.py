"""Regenerate the call state diagram in the docs from the code.

The Mermaid block between ``<!-- state-diagram:begin -->`` and
``<!-- state-diagram:end -->`` in each file of :data:`DOCS` is replaced by
:func:`systemx.core.calls.mermaid`, which draws the transition table itself, so
the diagram cannot drift from the state machine. ``tests/unit/test_docs.py``
fails when a file is out of date.

Usage::

    python docs/gen_state_diagram.py           # rewrite the files that changed
    python docs/gen_state_diagram.py --check   # exit 1 if any file is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from systemx.core.calls import mermaid

__all__ = ["BEGIN", "DOCS", "END", "ROOT", "block", "main", "render"]

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- state-diagram:begin -->"
END = "<!-- state-diagram:end -->"
DOCS = (ROOT / "docs" / "architecture.md", ROOT / "PROTOCOL.md")

_REGION = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)


def block() -> str:
    """The marked region as it must appear in a document."""
    return f"{BEGIN}\n```mermaid\n{mermaid()}```\n{END}"


def render(text: str) -> str:
    """``text`` with every marked region replaced by :func:`block`.

    Raises ``ValueError`` when the text has no region or unpaired markers, so a
    deleted marker is an error rather than a diagram that silently stops updating.
    """
    begins, ends = text.count(BEGIN), text.count(END)
    if begins == 0 or begins != ends:
        raise ValueError(f"expected paired {BEGIN} / {END} markers, found {begins} / {ends}")
    fresh = block()
    return _REGION.sub(lambda _: fresh, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale files instead of rewriting them")
    args = parser.parse_args(argv)
    stale = 0
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        try:
            new = render(text)
        except ValueError as exc:
            print(f"{path.relative_to(ROOT)}: {exc}", file=sys.stderr)
            return 2
        if new == text:
            continue
        stale += 1
        if args.check:
            print(f"{path.relative_to(ROOT)}: state diagram is out of date", file=sys.stderr)
        else:
            path.write_text(new, encoding="utf-8")
            print(f"{path.relative_to(ROOT)}: state diagram updated")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
