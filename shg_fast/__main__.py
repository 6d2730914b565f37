"""``python -m shg_fast``: the command-line interface (same as ``shg-fast``)."""

from .cli import main

raise SystemExit(main())
