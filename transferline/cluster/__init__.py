"""A local cluster for the flows: PostgreSQL, a Prefect server on it, a process work pool and its workers.

`python -m transferline.cluster up|down|status|env` (or scripts/cluster.sh). The same addresses, given to
other machines, make them workers of the same cluster: only environment variables and URLs change.
"""
