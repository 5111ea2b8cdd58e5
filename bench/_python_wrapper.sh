#!/bin/sh
# Interpreter wrapper for LocalDriver(python=...): profile worker entrypoints, run the rest as is.
PY="${DP_BENCH_PYTHON:-python3}"
if [ "$1" = "-m" ] && [ "$2" = "prefect_dockerparallel.container.worker" ]; then
  exec "$PY" "$(dirname "$0")/_profiled_worker.py"
fi
exec "$PY" "$@"
