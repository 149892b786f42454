"""A throw-away PostgreSQL 15 cluster under the bench's run directory, on its own loopback port."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from devstack import brokers
from devstack.brokers import StackError

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASE = "bench"


class PostgresCluster:
    """initdb, pg_ctl start and stop. As root the server runs as the `postgres` user, which PostgreSQL requires."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = data_dir.parent / "postgres.log"
        self.running = False

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def _run(self, *argv: str) -> None:
        result = subprocess.run(self._as_owner(*argv), capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise StackError(f"{' '.join(argv[:2])} failed:\n{result.stdout}{result.stderr}")

    def start(self) -> None:
        if not (PG_BIN / "initdb").exists():
            brokers.ensure_system_packages({"postgresql-15": PG_BIN / "initdb"})
            # The package starts its own cluster on 5432; the bench runs its own.
            subprocess.run(["service", "postgresql", "stop"], capture_output=True, check=False)  # noqa: S607
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise StackError("running as root needs a `postgres` user to own the cluster") from None
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        if os.geteuid() == 0:
            os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
            self.log_path.touch()
            os.chown(self.log_path, owner.pw_uid, owner.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options, "-w", "start"
        )
        self.running = True
        self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", DATABASE)

    def stop(self) -> None:
        if self.running:
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
            self.running = False
