#!/usr/bin/env bash
# A local cluster: PostgreSQL, a Prefect server on it, a process work pool and N workers.
#   scripts/cluster.sh up [--workers N] [--pg-port P] [--api-port P] [--dir DIR]
#   scripts/cluster.sh status | env | down
# `down` stops, by PID file, exactly what `up` started; the data stays under DIR (.transferline/cluster).
# Clients: eval "$(scripts/cluster.sh env)" sets PREFECT_API_URL and TRANSFERLINE_STUDY_STORAGE.
set -eu -o pipefail
cd "$(dirname "$0")/.."
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 ITERATIVE_DO_NOT_TRACK=1 \
  BENTOML_DO_NOT_TRACK=true OMP_WAIT_POLICY=PASSIVE
PYTHON=${PYTHON:-.venv/bin/python}
if [ "${1:-}" = up ]; then bash scripts/ensure_postgres.sh; fi
exec "$PYTHON" -m transferline.cluster "$@"
