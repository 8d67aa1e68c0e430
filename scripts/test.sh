#!/usr/bin/env bash
# Run the checks and the whole test suite against real NATS/Postgres/Redis (embedded unless
# ECHELON_TEST_NATS_URL / ECHELON_TEST_DATABASE_URL / ECHELON_TEST_REDIS_URL are set).
source "$(dirname "$0")/_env.sh"
ruff check .
ruff format --check .
mypy
lint-imports
pytest -q -p no:cacheprovider "$@"
