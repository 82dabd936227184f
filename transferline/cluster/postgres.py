"""A PostgreSQL server in a folder of its own, listening on loopback only, with trust authentication.

Trust is safe here because the server accepts TCP connections from 127.0.0.1 only; on a real cluster,
point the URLs at a managed PostgreSQL with passwords instead. PostgreSQL refuses to run as root, so
as root the server runs as the `postgres` account (Debian's package creates it) and owns its folder.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from transferline.cluster.processes import ClusterError

PG_BIN_ENV = "TRANSFERLINE_PG_BIN"
SUPERUSER = "transferline"
INSTALL_HINT = (
    "install PostgreSQL (Debian: apt-get install postgresql; `bash scripts/ensure_postgres.sh` does it as root)"
)


def find_pg_bin() -> Path:
    """The folder of initdb/pg_ctl: $TRANSFERLINE_PG_BIN, else where `pg_ctl` on PATH points, else Debian's."""
    if os.environ.get(PG_BIN_ENV):
        folder = Path(os.environ[PG_BIN_ENV])
        if not (folder / "pg_ctl").is_file():
            raise ClusterError(f"${PG_BIN_ENV}={folder} holds no pg_ctl")
        return folder
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if debian:
        return debian[-1].parent
    raise ClusterError(f"PostgreSQL's initdb and pg_ctl were not found: {INSTALL_HINT}")


class Postgres:
    """One server: `home/data` (the cluster) and `home/server.log`, on 127.0.0.1:`port`."""

    def __init__(self, home: Path, port: int, bin_dir: Path | None = None) -> None:
        self.home = Path(home).resolve()
        self.data = self.home / "data"
        self.log = self.home / "server.log"
        self.port = port
        self._bin_dir = bin_dir

    @property
    def bin_dir(self) -> Path:
        """Looked up on first use: `down` and `status` of a cluster never started need no PostgreSQL."""
        if self._bin_dir is None:
            self._bin_dir = find_pg_bin()
        return self._bin_dir

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _owner(self) -> pwd.struct_passwd | None:
        """The account the server runs as when we are root (PostgreSQL will not run as root)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ClusterError(f"running as root needs a `postgres` account to run the server: {INSTALL_HINT}") from exc

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._owner() is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if check and result.returncode != 0:
            raise ClusterError(f"{args[0]} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
        return result

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def init(self) -> None:
        """Create the database cluster once (UTF-8, trust on loopback, superuser `transferline`)."""
        if self.initialised():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        owner = self._owner()
        if owner is not None:
            os.chown(self.home, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8", "--locale=C",
            "--auth-local=trust", "--auth-host=trust", "--no-instructions",
        )  # fmt: skip

    def running(self) -> bool:
        return self.initialised() and self._run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def start(self) -> None:
        if self.running():
            return
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        result = self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120", "-o", options, check=False
        )
        if result.returncode != 0:
            raise ClusterError(f"PostgreSQL did not start on port {self.port}: {self.log_tail()}")

    def stop(self) -> bool:
        """Fast shutdown (open sessions are ended, nothing committed is lost); True if it was running."""
        if not self.running():
            return False
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
        return True

    def create_database(self, name: str) -> None:
        """Create `name` unless it exists (PostgreSQL's own client tools: no driver needed for this)."""
        connection = ["-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER]
        query = f"SELECT 1 FROM pg_database WHERE datname = '{name}'"
        found = self._run("psql", *connection, "-d", "postgres", "-tAc", query).stdout.strip()
        if found != "1":
            self._run("createdb", *connection, name)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return f"(no log at {self.log})"
