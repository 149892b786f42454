"""Ports, paths and choices of a local stack, each overridable from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from eventbus.passwords import ADMIN, FILE_NAME, PasswordFile

ROOT = Path(__file__).resolve().parent.parent
DATABASES = ("sqlite", "postgres")
# Erlang distribution ports follow RabbitMQ's own convention: the node's AMQP port + 20000.
DIST_PORT_OFFSET = 20000


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise SystemExit(f"{name}={port} is outside 1..65535")
    return port


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default)
    if value not in choices:
        raise SystemExit(f"{name}={value!r}: choose one of {', '.join(choices)}")
    return value


def _count(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 9:
        raise SystemExit(f"{name}={raw!r}: expected a whole number from 1 to 9")
    return int(raw)


@dataclass(frozen=True)
class RabbitNode:
    """One RabbitMQ node of the local cluster: its name, ports and data directory."""

    index: int
    amqp_port: int
    management_port: int
    data_dir: Path

    @property
    def dist_port(self) -> int:
        return self.amqp_port + DIST_PORT_OFFSET

    @property
    def name(self) -> str:
        return f"orderpipe-{self.amqp_port}@localhost"


@dataclass(frozen=True)
class StackConfig:
    """Where each local server listens and keeps its data, and which database the stack runs on."""

    host: str = "127.0.0.1"
    web_port: int = field(default_factory=lambda: _port("WEB_PORT", 8000))
    flower_port: int = field(default_factory=lambda: _port("FLOWER_PORT", 5555))
    amqp_port: int = field(default_factory=lambda: _port("RABBITMQ_PORT", 5672))
    management_port: int = field(default_factory=lambda: _port("RABBITMQ_MANAGEMENT_PORT", 15672))
    redis_port: int = field(default_factory=lambda: _port("REDIS_PORT", 6379))
    postgres_port: int = field(default_factory=lambda: _port("POSTGRES_PORT", 5433))
    db: str = field(default_factory=lambda: _choice("STACK_DB", "sqlite", DATABASES))
    rabbitmq_nodes: int = field(default_factory=lambda: _count("RABBITMQ_NODES", 1))
    run_dir: Path = field(default_factory=lambda: Path(os.environ.get("RUN_DIR", ROOT / ".run")))
    # Where the broker users' passwords are kept; default: in the run directory.
    credentials_file: Path | None = None

    def __post_init__(self) -> None:
        if self.db not in DATABASES:
            raise ValueError(f"database {self.db!r}: choose one of {', '.join(DATABASES)}")
        if not 1 <= self.rabbitmq_nodes <= 9:
            raise ValueError(f"{self.rabbitmq_nodes} RabbitMQ nodes: choose 1 to 9")

    @property
    def nodes(self) -> list[RabbitNode]:
        """The RabbitMQ nodes: node i listens on the AMQP and management ports + i."""
        return [
            RabbitNode(
                index=i,
                amqp_port=self.amqp_port + i,
                management_port=self.management_port + i,
                data_dir=self.run_dir / ("rabbitmq" if i == 0 else f"rabbitmq-{i + 1}"),
            )
            for i in range(self.rabbitmq_nodes)
        ]

    @property
    def rabbit_dir(self) -> Path:
        return self.nodes[0].data_dir

    @property
    def redis_dir(self) -> Path:
        return self.run_dir / "redis"

    @property
    def postgres_dir(self) -> Path:
        return self.run_dir / "postgres"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def metrics_dir(self) -> Path:
        """PROMETHEUS_MULTIPROC_DIR of the stack's processes: each keeps its metrics there, /metrics adds them up."""
        return self.run_dir / "metrics"

    def server_ports(self) -> dict[str, int]:
        """Every port the servers of this stack listen on, by the variable (or option) that moves it."""
        ports = {"REDIS_PORT": self.redis_port}
        for node in self.nodes:
            suffix = f" (node {node.index + 1})" if self.rabbitmq_nodes > 1 else ""
            ports[f"RABBITMQ_PORT{suffix}"] = node.amqp_port
            ports[f"RABBITMQ_MANAGEMENT_PORT{suffix}"] = node.management_port
            ports[f"Erlang distribution, RABBITMQ_PORT + {DIST_PORT_OFFSET}{suffix}"] = node.dist_port
        if self.db == "postgres":
            ports["POSTGRES_PORT"] = self.postgres_port
        return ports

    @property
    def credentials(self) -> PasswordFile:
        """The passwords of this stack's broker users, kept in its run directory."""
        return PasswordFile(self.credentials_file or self.run_dir / FILE_NAME)

    def amqp_url(self, node: RabbitNode, credentials: str = "", vhost: str = "/") -> str:
        userinfo = f"{credentials}@" if credentials else ""
        return f"amqp://{userinfo}{self.host}:{node.amqp_port}/{vhost}"

    def broker_url_as(self, user: str | None, vhost: str = "/") -> str:
        """Every node, `;`-separated (Celery and kombu fail over to the next node when one is gone), logged
        in as `user`; with None the URL names no user (a process that must not use one of its own)."""
        credentials = f"{user}:{self.credentials.password(user)}" if user else ""
        return ";".join(self.amqp_url(node, credentials, vhost) for node in self.nodes)

    @property
    def broker_url(self) -> str:
        """The administrator's URL: for devstack and the harnesses, never for a process of the pipeline."""
        return self.broker_url_as(ADMIN)

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    @property
    def database_url(self) -> str:
        if self.db == "postgres":
            return f"postgres://postgres@{self.host}:{self.postgres_port}/orderpipe"
        return f"sqlite:///{self.run_dir / 'db.sqlite3'}"

    def connection_env(self) -> dict[str, str]:
        """The variables that point a process (settings, devstack) at this stack's servers; the broker URL,
        which names a user, is each process's own (see devstack.stack)."""
        return {
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
            "RABBITMQ_MANAGEMENT_URL": self.management_url,
            "RABBITMQ_PORT": str(self.amqp_port),
            "RABBITMQ_MANAGEMENT_PORT": str(self.management_port),
            "RABBITMQ_NODES": str(self.rabbitmq_nodes),
            "REDIS_PORT": str(self.redis_port),
            "POSTGRES_PORT": str(self.postgres_port),
            "STACK_DB": self.db,
            "RUN_DIR": str(self.run_dir),
        }
