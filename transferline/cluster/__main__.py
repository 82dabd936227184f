"""`python -m transferline.cluster up|down|status|env`: the local cluster (see transferline/cluster/local.py).

up       start PostgreSQL, the Prefect server, the work pool and the workers (what is not running yet)
down     stop everything `up` started (by PID file), PostgreSQL last; the data stays
status   each component and its address; exit 0 only when all are running
env      `export` lines for clients: eval "$(python -m transferline.cluster env)"
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from transferline.cluster.local import DEFAULT_ROOT, ClusterSpec, LocalCluster, all_running
from transferline.errors import TransferlineError


def parse_args(argv: list[str] | None) -> tuple[str, ClusterSpec, bool]:
    parser = argparse.ArgumentParser(prog="transferline.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status", "env"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_ROOT, help="the cluster's folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="process workers (default: as last time, else 2)")
    parser.add_argument("--pool", default=None, help="work pool name (default: as last time, else transferline)")
    parser.add_argument("--worker-limit", type=int, default=1, help="flow runs per worker at a time (default: 1)")
    parser.add_argument("--pg-port", type=int, default=None, help="PostgreSQL port (default: a free one, then kept)")
    parser.add_argument("--api-port", type=int, default=None, help="Prefect API port (default: a free one, then kept)")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    args = parser.parse_args(argv)
    spec = ClusterSpec(args.dir, args.workers, args.pool, args.worker_limit, args.pg_port, args.api_port)
    return args.command, spec, args.json


def render(status: dict) -> str:
    def word(running: bool) -> str:
        return "running" if running else "stopped"

    lines = [
        f"postgres  {word(status['postgres']['running'])}  {status['postgres']['address']}",
        f"server    {word(status['server']['running'])}  {status['server']['address']}  pid {status['server']['pid']}",
        f"pool      {status['pool']} (process)",
    ]
    for name, worker in status["workers"].items():
        lines.append(f"{name:<9} {word(worker['running'])}  pid {worker['pid']}")
    return "\n".join(lines)


def export_lines(env: dict[str, str]) -> str:
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())


def main(argv: list[str] | None = None) -> int:
    try:
        command, spec, as_json = parse_args(argv)
        cluster = LocalCluster(spec)
        if command in ("status", "env") and not cluster.state_file.exists():
            print(f"no cluster in {cluster.root}: start one with `up`", file=sys.stderr)
            return 3
        if command == "down":
            stopped = cluster.down()
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
            return 0
        if command == "env":
            print(export_lines(cluster.client_env()))
            return 0
        status = cluster.up() if command == "up" else cluster.status()
    except TransferlineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if as_json else render(status))
    if command == "up" and not as_json:
        print(f"\nclients use it with:\n{export_lines(status['env'])}")
    return 0 if all_running(status) else 3


if __name__ == "__main__":
    sys.exit(main())
