"""The ``i3lani`` console script's entry point.

Importing the command line takes a second or two (aiogram, pydantic, asyncpg): a Ctrl-C in that
moment would print a KeyboardInterrupt traceback. Here it ends the command quietly instead,
with the shell's usual code for an interrupt.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def main() -> int:
    try:
        from ops.cli import main as cli_main
    except KeyboardInterrupt:
        print("i3lani: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return cli_main()
