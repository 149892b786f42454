"""A project-local PostgreSQL 15 cluster under the stack's run directory, on its own loopback port."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from devstack import brokers
from devstack.brokers import StackError
from devstack.config import StackConfig

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASE = "orderpipe"


class PostgresCluster:
    """initdb once, pg_ctl start and stop. As root the server runs as the `postgres` user, which PostgreSQL
    requires; its data directory is then owned by that user."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.data_dir = config.postgres_dir
        self.port = config.postgres_port
        self.log_path = config.run_dir / "postgres.log"

    def _as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._as_owner(*argv), capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise StackError(f"{Path(argv[0]).name} {' '.join(argv[1:3])} failed:\n{result.stdout}{result.stderr}")
        return result

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), *args, check=check)

    def start(self) -> None:
        """Create the cluster and its database the first time, then start the server and wait for it."""
        brokers.ensure_system_packages({"postgresql-15": PG_BIN / "initdb"})
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh:
            self._initdb()
        self.start_server()
        if fresh:
            host, port = self.config.host, str(self.port)
            self._run(str(PG_BIN / "createdb"), "-h", host, "-p", port, "-U", "postgres", DATABASE)

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise StackError("running as root needs a `postgres` user to own the cluster") from None
            for path in (self.data_dir, self.log_path):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8")

    def start_server(self) -> None:
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses={self.config.host} -c max_connections=300"
        self._pg_ctl("-l", str(self.log_path), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `immediate` is a crash as far as the database knows (recovery on next start)."""
        if self.running():
            self._pg_ctl("-m", mode, "-w", "stop")

    def running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    def pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def sql(self, statement: str) -> str:
        """Run one statement as the superuser; return what psql printed."""
        argv = [str(PG_BIN / "psql"), "-h", self.config.host, "-p", str(self.port), "-U", "postgres", "-d", DATABASE,
                "-Atc", statement]  # fmt: skip
        return self._run(*argv).stdout
