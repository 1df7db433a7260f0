"""uv.lock, the one lock file: it matches pyproject.toml, or CI fails saying how to mend it.

(``make install`` and render.yaml's build check it too, with scripts/lock.py, before they
install anything.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[1]
MEND = "uv.lock does not match pyproject.toml: run `make lock` and commit uv.lock"


def lock_matches(project: Path) -> bool:
    """``uv lock --check`` with the lock's own uv (the dev extra), offline."""
    checked = subprocess.run(
        [Path(sys.executable).parent / "uv", "lock", "--check", "--offline", "--quiet"],
        cwd=project,
        env={**os.environ, "UV_PYTHON": sys.executable, "UV_PYTHON_DOWNLOADS": "never"},
        capture_output=True,
        timeout=60,
    )
    return checked.returncode == 0


def test_the_lock_matches_pyproject() -> None:
    assert lock_matches(ROOT), MEND


def test_a_dependency_added_without_relocking_is_caught(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('    "anyio>=4.4",\n', '    "anyio>=4.4",\n    "rich",\n'))
    assert pyproject.read_text() != text
    assert not lock_matches(tmp_path)
