"""``python -m benchmarks``: run a benchmark scenario."""

import sys

from benchmarks.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
