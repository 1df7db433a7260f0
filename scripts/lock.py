"""Install exactly what uv.lock pins, or update uv.lock: with nothing but Python and pip.

    python scripts/lock.py install                  production: render.yaml's buildCommand
    python scripts/lock.py install --editable --extra dev --extra bench --extra embedded
                                                    a development environment (`make install`)
    python scripts/lock.py check                    does uv.lock still match pyproject.toml?
    python scripts/lock.py update [--upgrade]       re-lock after editing pyproject.toml
                                                    (`make lock`; --upgrade takes the newest
                                                    versions the ranges allow)

``install`` puts i3lani and the packages the lock pins for the chosen extras into the Python
that runs this script (a virtual environment: Render's, ``.venv``), in three steps:

1. uv, the lock's reader, is installed from the lock itself (its version and the sha256 of
   its files, read with :mod:`tomllib`) into a temporary directory, never into the
   environment: production carries no packaging tool it does not run;
2. ``uv lock --check`` stops the install, with one line, when pyproject.toml and uv.lock
   disagree; then ``uv export`` writes the lock's pins for the chosen extras, each with the
   hashes of its files;
3. pip installs them with ``--require-hashes`` (a file whose hash differs, or a package the
   lock does not pin, stops it), then the project itself with ``--no-deps``, and
   ``pip check`` confirms that every requirement is met.

uv.lock is uv's universal lock: one resolution for every platform and Python the project
allows (``requires-python``), every extra included. Exit status: 0, or 1 with the reason on
the last line of stderr.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "uv.lock"
PROG = "scripts/lock.py"


class Failed(Exception):
    """A step failed; the message is the line to print."""


def run(command: Sequence[str | Path], *, what: str) -> None:
    """Run ``command`` in the project's directory; a non-zero exit is :class:`Failed`."""
    # uv uses this Python, never one it would download; pip stays quiet about running as root
    # (Render's build and CI run as root, and the environment is a virtual one anyway).
    env = {
        **os.environ,
        "UV_PYTHON": sys.executable,
        "UV_PYTHON_DOWNLOADS": "never",
        "PIP_ROOT_USER_ACTION": "ignore",
    }
    env.pop("VIRTUAL_ENV", None)  # uv would warn that it is not the project's .venv
    if subprocess.run([str(part) for part in command], cwd=ROOT, env=env).returncode != 0:
        raise Failed(f"{what} failed (see above)")


def pip(*args: str | Path) -> list[str | Path]:
    return [sys.executable, "-m", "pip", *args]


def uv_requirement(lock: Path = LOCK) -> str:
    """The lock's own uv as a hash-checked requirement line: ``uv==V --hash=sha256:...``."""
    if not lock.exists():
        raise Failed(f"{lock.name} is missing: it is committed beside pyproject.toml")
    try:
        packages = tomllib.loads(lock.read_text())["package"]
    except tomllib.TOMLDecodeError as exc:
        raise Failed(
            f"{lock.name} is not valid TOML ({exc}): after a merge conflict, take either "
            "side whole (git checkout --ours uv.lock), then run `make lock`"
        ) from None
    for package in packages:
        if package["name"] == "uv":
            hashes = " ".join(f"--hash={wheel['hash']}" for wheel in package["wheels"])
            return f"uv=={package['version']} {hashes}"
    raise Failed(f"{lock.name} pins no uv: the dev extra of pyproject.toml must list it")


def bootstrap_uv(into: Path) -> Path:
    """Install the lock's uv under ``into`` (not into this environment); its executable."""
    requirement = into / "uv-requirement.txt"
    requirement.write_text(uv_requirement() + "\n")
    run(
        pip(
            "install", "--quiet", "--require-hashes", "--no-deps", "--only-binary", ":all:",
            "--target", into / "uv", "-r", requirement,
        ),
        what="installing uv from the hashes in uv.lock",
    )  # fmt: skip
    return into / "uv" / "bin" / "uv"


def check(uv: Path) -> None:
    try:
        run([uv, "lock", "--check", "--offline", "--quiet"], what="uv lock --check")
    except Failed:
        raise Failed(
            "uv.lock does not match pyproject.toml: run `make lock` and commit uv.lock"
        ) from None


def install(uv: Path, tmp: Path, *, extras: Sequence[str], editable: bool) -> None:
    check(uv)
    requirements = tmp / "requirements.txt"
    chosen = [arg for extra in extras for arg in ("--extra", extra)]
    run(
        [
            uv, "export", "--frozen", "--quiet", "--format", "requirements-txt",
            "--no-emit-project", "--no-header", "--no-annotate", *chosen,
            "--output-file", requirements,
        ],
        what="uv export",
    )  # fmt: skip
    pinned = sum(1 for line in requirements.read_text().splitlines() if "==" in line)
    print(
        f"{PROG}: {pinned} packages pinned by uv.lock "
        f"(extras: {', '.join(extras) or 'none'}), installing into {sys.prefix}",
        flush=True,
    )
    run(pip("install", "--quiet", "--require-hashes", "-r", requirements), what="pip install")
    project = ["--editable", ROOT] if editable else [ROOT]
    run(pip("install", "--quiet", "--no-deps", *project), what="pip install of i3lani")
    run(pip("check"), what="pip check")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    installing = commands.add_parser("install", help="install i3lani from uv.lock")
    installing.add_argument("--extra", action="append", default=[], help="an extra to include")
    installing.add_argument("--editable", action="store_true", help="the project as editable")
    commands.add_parser("check", help="fail when uv.lock does not match pyproject.toml")
    updating = commands.add_parser("update", help="re-lock (uv lock) after editing pyproject")
    updating.add_argument("--upgrade", action="store_true", help="newest versions allowed")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="i3lani-lock-") as tmp:
            uv = bootstrap_uv(Path(tmp))
            if args.command == "install":
                install(uv, Path(tmp), extras=args.extra, editable=args.editable)
            elif args.command == "check":
                check(uv)
            else:
                run([uv, "lock", *(["--upgrade"] if args.upgrade else [])], what="uv lock")
    except Failed as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
