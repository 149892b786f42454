"""Ports and paths of the local stack, each overridable from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise SystemExit(f"{name}={port} is outside 1..65535")
    return port


@dataclass(frozen=True)
class StackConfig:
    """Where each local service listens and keeps its data."""

    host: str = "127.0.0.1"
    web_port: int = field(default_factory=lambda: _port("WEB_PORT", 8000))
    flower_port: int = field(default_factory=lambda: _port("FLOWER_PORT", 5555))
    amqp_port: int = field(default_factory=lambda: _port("RABBITMQ_PORT", 5672))
    management_port: int = field(default_factory=lambda: _port("RABBITMQ_MANAGEMENT_PORT", 15672))
    redis_port: int = field(default_factory=lambda: _port("REDIS_PORT", 6379))
    run_dir: Path = field(default_factory=lambda: Path(os.environ.get("RUN_DIR", ROOT / ".run")))

    @property
    def dist_port(self) -> int:
        # Erlang distribution port; RabbitMQ's own convention is AMQP port + 20000.
        return self.amqp_port + 20000

    @property
    def node_name(self) -> str:
        return f"orderpipe-{self.amqp_port}@localhost"

    @property
    def rabbit_dir(self) -> Path:
        return self.run_dir / "rabbitmq"

    @property
    def redis_dir(self) -> Path:
        return self.run_dir / "redis"

    @property
    def broker_url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.amqp_port}//"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    def connection_env(self) -> dict[str, str]:
        """The variables that point a process (settings, devstack) at this stack's servers."""
        return {
            "CELERY_BROKER_URL": self.broker_url,
            "REDIS_URL": self.redis_url,
            "RABBITMQ_MANAGEMENT_URL": self.management_url,
            "RABBITMQ_PORT": str(self.amqp_port),
            "RABBITMQ_MANAGEMENT_PORT": str(self.management_port),
            "REDIS_PORT": str(self.redis_port),
            "RUN_DIR": str(self.run_dir),
        }
