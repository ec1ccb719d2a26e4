"""``python -m bsmamba2``: the command line without the installed console script."""

from bsmamba2.cli.main import main

raise SystemExit(main())
