# i3lani: every set-up step lives here, so a fresh machine needs only `make demo` / `make test`.
# Nothing here needs PostgreSQL installed: with DATABASE_URL unset, an embedded one is started.
# Everything is installed from uv.lock (scripts/lock.py), as render.yaml's build does; the
# Python is the one render.yaml pins (PYTHON_VERSION), or the README says why not.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock demo run test check lint typecheck pytest browser bench clean simulate \
	test-pure test-memory test-postgres test-process test-browser test-simulation

## The development environment: the production packages plus the extras, every one at the
## version and hash uv.lock pins (a pyproject.toml the lock no longer matches stops it).
EXTRAS := dev bench embedded
$(STAMP): pyproject.toml uv.lock scripts/lock.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/lock.py install --editable $(addprefix --extra ,$(EXTRAS))
	touch $(STAMP)

install: $(STAMP)

## Re-lock after editing pyproject.toml's dependencies: keeps every pin the ranges still allow
## (LOCK_ARGS=--upgrade: the newest versions they allow). Commit uv.lock with pyproject.toml.
## (The virtual environment's Python, which always has pip; nothing is installed into it.)
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/lock.py update $(LOCK_ARGS)

## The main job, shown end to end: embedded PostgreSQL, stand-ins, supervisor, actors, gateway,
## simulated users; prints the event stream live, the dashboard URL and an audit summary.
demo: $(STAMP)
	$(BIN)/i3lani demo $(DEMO_ARGS)

## Bring the schema up to date and summarise the event log.
run: $(STAMP)
	$(BIN)/i3lani migrate
	$(BIN)/i3lani summary

## Everything CI checks: lint, types, tests (the dashboard's browser tests need Chromium).
test: lint typecheck browser pytest

## The quick tier, for every change: lint, types, and the pure and in-memory tests (no
## PostgreSQL, no worker process, no browser; under a minute on 2 cores, on 2 workers).
CHECK_WORKERS ?= 2
check: lint typecheck
	$(BIN)/pytest -q -n $(CHECK_WORKERS) -m "(pure or memory) and not simulation" $(PYTEST_ARGS)

## The test pyramid, one tier at a time (tests/conftest.py puts each test in one tier).
test-pure: $(STAMP)
	$(BIN)/pytest -q -m pure $(PYTEST_ARGS)
test-memory: $(STAMP)
	$(BIN)/pytest -q -m memory $(PYTEST_ARGS)
test-postgres: $(STAMP)
	$(BIN)/pytest -q -m "postgres and not process and not browser" $(PYTEST_ARGS)
test-process: $(STAMP)
	$(BIN)/pytest -q -m "process and not browser" $(PYTEST_ARGS)
test-simulation: $(STAMP)
	$(BIN)/pytest -q -m simulation $(PYTEST_ARGS)
test-browser: $(STAMP) browser
	$(BIN)/pytest -q -m browser $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## The whole suite on PYTEST_WORKERS processes (pytest-xdist), each with an embedded server of
## its own. With DATABASE_URL set there is one server for all, and readers on it wait for every
## open transaction of the server, so the suite then runs in one process.
## Bytecode is written even where the environment says not to (PYTHONDONTWRITEBYTECODE): the
## suite starts about a hundred i3lani processes, and each would compile the project again.
PYTEST_WORKERS ?= $(if $(DATABASE_URL),0,4)
pytest: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

## Debian's Chromium for the dashboard's browser tests: installed when missing and this
## machine can (root, or sudo without a password); otherwise those tests are skipped, except
## under CI=true, where a missing browser is a failure.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "make browser: no apt-get here; install Chromium yourself to run the browser tests"; \
	elif [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	elif sudo -n true 2>/dev/null; then \
		sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; \
	else \
		echo "make browser: Chromium missing and no root: \`sudo apt-get install chromium\` enables the browser tests"; \
	fi

## Deterministic simulation: random seeds for SECONDS of real time (default 600), each line a
## seed's verdict, then seeds/minute; a failing seed is printed with its replay command.
SECONDS ?= 600
simulate: $(STAMP)
	$(BIN)/i3lani simulate --seconds $(SECONDS) $(SIMULATE_ARGS)

## Benchmarks: one table, each figure beside its reference from the same run.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
