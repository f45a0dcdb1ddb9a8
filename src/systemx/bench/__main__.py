"""``python -m systemx.bench``: the same as ``systemx bench``."""

import sys

from systemx.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
