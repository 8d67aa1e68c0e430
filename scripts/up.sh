#!/usr/bin/env bash
# Run the service: API + coordinator + stage workers. Embedded NATS/Postgres/Redis start when
# NATS_URL / DATABASE_URL / REDIS_URL are not set.
ECHELON_INSTALL=run source "$(dirname "$0")/_env.sh"
exec echelon stack up "$@"
