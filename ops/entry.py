"""The ``i3lani`` console script's entry point.

Until a command is actually running, an interrupt has nothing to clean up: importing the command
line takes a second or two (aiogram, pydantic, the database driver) and then a command connects
and migrates. A Ctrl-C in that moment ends the command quietly with the shell's usual 130, and a
SIGTERM (Render stopping an instance that a deploy replaces while it still starts) with 0,
instead of a traceback or the bare signal's 143. Once a long-running command runs, its own
handlers take over both signals and stop it cleanly (``ops.cli.run_until_signalled``).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130


class _Terminated(BaseException):
    """SIGTERM arrived before the command installed its own handling."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        from ops.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        print("i3lani: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print("i3lani: stopped by SIGTERM before it was running", file=sys.stderr)
        return 0
