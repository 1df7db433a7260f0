"""Run a command and print its wall time and peak memory: ``python -m bench.rusage -- CMD...``.

The scale benchmark measures ``i3lani audit`` through this wrapper. It imports nothing but the
standard library on purpose: on Linux a child's ``ru_maxrss`` starts from the size of the
process that forked it, so a wrapper that had imported the project (aiogram and all) would
report its own size for any command it runs.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command after ``--``; print its wall time, peak RSS (this process has no other
    child), exit code and standard output as one JSON line."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[1:] if args[:1] == ["--"] else args
    if not command:
        print("usage: python -m bench.rusage -- COMMAND...", file=sys.stderr)
        return 2
    began = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, check=False)
    seconds = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "max_rss_kb": usage.ru_maxrss,  # Linux: kilobytes
                "returncode": done.returncode,
                "stdout": done.stdout.decode("utf-8", "replace"),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
