# eventcomposition's tasks. Run them through ./dev (which prepares a fresh
# machine first), e.g. `./dev test`, or with `uv run just <recipe>`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# The main job: a coordinator and observers processing orders, in one process.
demo *ARGS:
    uv run --locked eventcomposition demo {{ARGS}}

# Run one node (see `eventcomposition run --help`).
run *ARGS:
    uv run --locked eventcomposition run {{ARGS}}

# Every test: unit, integration and component (PostgreSQL starts by itself).
test *ARGS:
    uv run --locked pytest {{ARGS}}

test-unit *ARGS:
    uv run --locked pytest tests/unit {{ARGS}}

test-integration *ARGS:
    uv run --locked pytest tests/integration {{ARGS}}

test-component *ARGS:
    uv run --locked pytest tests/component {{ARGS}}

lint:
    uv run --locked ruff check .

# Format the code in place.
format:
    uv run --locked ruff format .
    uv run --locked ruff check --fix --select I .

format-check:
    uv run --locked ruff format --check .

typecheck:
    uv run --locked mypy

# Build the wheel and use it from a folder outside the repository.
check-wheel:
    scripts/check-wheel

# Regenerate the Grafana dashboard (src/eventcomposition/dashboards/eventcomposition.json).
dashboard:
    uv run --locked python -m eventcomposition.dashboards.grafana

# Build the documentation site strictly into site/ (broken links and references fail).
docs:
    NO_MKDOCS_2_WARNING=1 uv run --locked mkdocs build --strict

# Serve the documentation site while editing it.
docs-serve:
    NO_MKDOCS_2_WARNING=1 uv run --locked mkdocs serve

# Everything CI checks.
check: lint format-check typecheck docs test

# A local PostgreSQL on 127.0.0.1:54329 for trying nodes by hand.
db-start:
    scripts/local-postgres start

db-stop:
    scripts/local-postgres stop

# Benchmarks (not tests): `./dev bench --quick` for a smoke run under a minute.
bench *ARGS:
    uv run --locked python -m benchmarks {{ARGS}}

# A seeded fault-injection run of a real cluster, with a history checker (needs
# root): `./dev chaos --seed 7 --minutes 10 --faults kill,partition`.
chaos *ARGS:
    uv run --locked python -m eventcomposition.testing.chaos {{ARGS}}
