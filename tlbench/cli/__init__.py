"""The ``tlbench`` console script's entry: import the CLI (torch with it) under guard.

Importing the commands takes seconds (torch, timm); a Ctrl-C in that time would print a
traceback from deep inside an import.  :func:`main` turns it into one line and exit 130,
as :func:`tlbench.cli.app.main` does once the app runs.
"""

from __future__ import annotations

import importlib
import sys

STARTUP_INTERRUPTED = "aborted while starting (interrupted); nothing was run or written"


def main() -> None:
    try:
        app = importlib.import_module("tlbench.cli.app")
    except KeyboardInterrupt:
        print(STARTUP_INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None
    app.main()
