"""render.yaml: the structure Render expects, every command in it is a real CLI command, it builds
from the lock, on the Python that CI runs."""

from __future__ import annotations

import os
import platform
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot_gateway import HEALTH_PATH
from ops.cli import build_parser

BLUEPRINT = Path(__file__).resolve().parents[1] / "render.yaml"
SECRETS = {
    "BOT_TOKEN",
    "WEBHOOK_SECRET",
    "ADMIN_TOKEN",
    "WALLET_ADDRESS",
    "ADMIN_IDS",
    "TONAPI_KEY",
}


@pytest.fixture(scope="module")
def blueprint() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(BLUEPRINT.read_text())
    return loaded


def services(blueprint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {service["type"]: service for service in blueprint["services"]}


def test_a_web_service_a_worker_and_a_private_database(blueprint: dict[str, Any]) -> None:
    assert sorted(services(blueprint)) == ["web", "worker"]
    [database] = blueprint["databases"]
    assert database["ipAllowList"] == []
    for service in blueprint["services"]:
        assert service["runtime"] == "python"
        assert service["plan"] != "free" or service["type"] == "web"  # no free workers
        assert service["maxShutdownDelaySeconds"] <= 300


def test_the_web_service_binds_port_and_answers_the_health_check(
    blueprint: dict[str, Any],
) -> None:
    web = services(blueprint)["web"]
    assert web["healthCheckPath"] == HEALTH_PATH == "/healthz"
    command = shlex.split(web["startCommand"])
    assert command[command.index("--port") + 1] == "$PORT"
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_secrets_are_entered_in_the_dashboard_and_the_database_is_wired(
    blueprint: dict[str, Any],
) -> None:
    for service in blueprint["services"]:
        variables = {v["key"]: v for v in service["envVars"]}
        database = variables["DATABASE_URL"]["fromDatabase"]
        assert database == {
            "name": blueprint["databases"][0]["name"],
            "property": "connectionString",
        }
        for key in SECRETS & variables.keys():
            assert variables[key] == {"key": key, "sync": False}, key
        assert {"BOT_TOKEN", "WALLET_ADDRESS"} <= variables.keys()
    assert {"WEBHOOK_SECRET", "ADMIN_TOKEN"} <= {
        v["key"] for v in services(blueprint)["web"]["envVars"]
    }


@pytest.mark.parametrize("field", ["preDeployCommand", "startCommand"])
def test_every_command_exists_in_the_cli(blueprint: dict[str, Any], field: str) -> None:
    parser = build_parser()
    for service in blueprint["services"]:
        words = shlex.split(service[field].replace("$PORT", "10000"))
        assert words[0] == "i3lani", service[field]
        args = parser.parse_args(words[1:])  # argparse exits (SystemExit) on anything unknown
        assert args.command in {"migrate", "run", "gateway"}


def test_migrations_run_before_start(blueprint: dict[str, Any]) -> None:
    for service in blueprint["services"]:
        assert service["preDeployCommand"] == "i3lani migrate"


def test_both_services_build_from_the_lock(blueprint: dict[str, Any]) -> None:
    # scripts/lock.py installs exactly uv.lock's production pins (and checks the lock against
    # pyproject.toml first); tests/e2e/test_deploy_rehearsal.py runs it as Render does.
    for service in blueprint["services"]:
        assert service["buildCommand"] == "python scripts/lock.py install", service["name"]


def test_render_runs_the_python_that_ci_and_make_run(blueprint: dict[str, Any]) -> None:
    pinned = {
        variable["value"]
        for service in blueprint["services"]
        for variable in service["envVars"]
        if variable["key"] == "PYTHON_VERSION"
    }
    assert len(pinned) == 1, f"the services pin different Pythons: {sorted(pinned)}"
    [version] = pinned
    if platform.python_version() != version:
        why = (
            f"this Python is {platform.python_version()}, render.yaml's PYTHON_VERSION is "
            f"{version}: CI runs {version}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
