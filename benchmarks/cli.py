"""``python -m benchmarks``: ``systemx bench`` plus what only the repository has.

The scenarios and the load generator are :mod:`systemx.bench`; this adds the
baselines (:mod:`benchmarks.servers`: the bare relay and the Bun relay), py-spy
profiles (:mod:`benchmarks.profile`) and the in-process presence index figure
(:mod:`benchmarks.presence_core`).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.presence_core import core_figures
from benchmarks.profile import PySpy, format_top
from benchmarks.servers import BASELINES
from systemx.bench import cli as bench_cli

__all__ = ["SCENARIOS", "SUITE", "build_parser", "main"]

SUITE = bench_cli.Suite(
    prog="python -m benchmarks",
    baselines=BASELINES,
    profiler=PySpy,
    profile_top=format_top,
    presence_core=core_figures,
)
SCENARIOS = SUITE.scenarios()


def build_parser() -> argparse.ArgumentParser:
    return bench_cli.build_parser(SUITE)


def main(argv: list[str] | None = None) -> int:
    """Run the scenario named in ``argv`` with the baselines; 0 when every check passed."""
    return bench_cli.main(argv, SUITE)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
