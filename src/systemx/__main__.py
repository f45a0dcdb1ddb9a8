"""``python -m systemx``: the same command line as the ``systemx`` script."""

from systemx.cli import main

raise SystemExit(main())
