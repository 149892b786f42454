"""Project-local RabbitMQ and Redis: install when missing, start on loopback, wait, stop."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from devstack.config import StackConfig
from devstack.supervisor import stop_groups

RABBIT_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBIT_CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
SYSTEM_PACKAGES = {"rabbitmq-server": RABBIT_SERVER, "redis-server": Path("/usr/bin/redis-server")}
# The browser test drives Debian's Chromium; Playwright's own browser download cannot be relied on.
TEST_PACKAGES = {"chromium": Path("/usr/bin/chromium")}


class StackError(RuntimeError):
    """A local service could not be installed, started or reached."""


def ensure_system_packages(extra: dict[str, Path] | None = None) -> None:
    """Install RabbitMQ and Redis (and `extra`) from the Debian/Ubuntu packages when they are missing."""
    missing = [name for name, path in {**SYSTEM_PACKAGES, **(extra or {})}.items() if not path.exists()]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise StackError(
            f"missing {', '.join(missing)} and no apt-get here: install RabbitMQ 3.10+ and "
            "Redis 7 with your package manager, or use `docker compose up` instead."
        )
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise StackError(f"missing {', '.join(missing)}: run `sudo apt-get install {' '.join(missing)}`")
        prefix = ["sudo"]
    print(f"installing {', '.join(missing)} from the system packages", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*prefix, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*prefix, "apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    # Debian starts the packaged services; the project runs its own nodes on loopback.
    for service in set(missing) & SYSTEM_PACKAGES.keys():
        subprocess.run([*prefix, "service", service, "stop"], capture_output=True, check=False)


def port_is_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def check_ports_free(config: StackConfig, ports: dict[str, int]) -> None:
    """Fail fast, naming the variable to change, when a port the stack needs is taken."""
    busy = [f"{name} {port}" for name, port in ports.items() if port_is_open(config.host, port)]
    if busy:
        raise StackError(
            "port(s) already in use on 127.0.0.1: "
            + ", ".join(busy)
            + ". Stop what holds them (another `make run`?) or choose other ports, e.g. WEB_PORT=8001."
        )


def _rabbit_env(config: StackConfig) -> dict[str, str]:
    base = config.rabbit_dir
    return {
        **os.environ,
        "HOME": str(base),
        "RABBITMQ_NODENAME": config.node_name,
        "RABBITMQ_NODE_IP_ADDRESS": config.host,
        "RABBITMQ_NODE_PORT": str(config.amqp_port),
        "RABBITMQ_DIST_PORT": str(config.dist_port),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
        "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }


def _write_rabbit_config(config: StackConfig) -> None:
    base = config.rabbit_dir
    for sub in ("mnesia", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    # Retry countdowns wait in Celery's quorum delay queues, which dead-letter at-least-once: after
    # a broker restart an unconfirmed dead letter is forwarded again only after this timeout
    # (default 180 s, longer than an order's pending timeout; seen in `make chaos`).
    (base / "advanced.config").write_text("[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].\n")
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.1 = {config.host}:{config.amqp_port}\n"
        f"management.tcp.ip = {config.host}\n"
        f"management.tcp.port = {config.management_port}\n"
        "loopback_users.guest = true\n"
        "log.console = false\n"
        "log.file.level = info\n"
        # Quorum queues keep their data on disk; a dev node should not stop on a small disk.
        "disk_free_limit.absolute = 50MB\n"
    )


def rabbitmqctl(config: StackConfig, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RABBIT_CTL), "-n", config.node_name, *args],
        env=_rabbit_env(config),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ManagedProcess:
    """A server started in its own process group so that it can be stopped with everything it spawned."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        stop_groups([self.proc], timeout)
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_redis(config: StackConfig) -> ManagedProcess:
    config.redis_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(SYSTEM_PACKAGES["redis-server"]),
        "--bind", config.host,
        "--port", str(config.redis_port),
        "--dir", str(config.redis_dir),
        "--daemonize", "no",
        "--appendonly", "yes",
        "--save", "",
        "--protected-mode", "yes",
    ]  # fmt: skip
    server = ManagedProcess("redis", argv, dict(os.environ), config.redis_dir / "redis.log")
    _wait_until(lambda: _redis_ping(config), server, "Redis", timeout=20)
    return server


def _redis_ping(config: StackConfig) -> bool:
    try:
        with socket.create_connection((config.host, config.redis_port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_rabbitmq(config: StackConfig) -> ManagedProcess:
    _write_rabbit_config(config)
    env = _rabbit_env(config)
    server = ManagedProcess("rabbitmq", [str(RABBIT_SERVER)], env, config.rabbit_dir / "log" / "console.log")
    deadline = time.monotonic() + 90
    pid_file = config.rabbit_dir / "rabbit.pid"
    while not pid_file.exists():
        _check_alive(server, "RabbitMQ", deadline)
        time.sleep(0.2)
    result = rabbitmqctl(config, "wait", "--timeout", "90", str(pid_file), timeout=100)
    if result.returncode != 0:
        server.stop()
        raise StackError(f"RabbitMQ did not start:\n{result.stdout}{result.stderr}\n{server.tail()}")
    _wait_until(lambda: port_is_open(config.host, config.management_port), server, "RabbitMQ management", 60)
    return server


def stop_rabbitmq(server: ManagedProcess, config: StackConfig) -> None:
    server.stop(timeout=30)
    # epmd outlives the node; leave no port behind unless another Erlang node still uses it.
    names = subprocess.run(["epmd", "-names"], capture_output=True, text=True, check=False, env=_rabbit_env(config))
    if names.returncode == 0 and "name " not in names.stdout:
        subprocess.run(["epmd", "-kill"], capture_output=True, check=False, env=_rabbit_env(config))


def _check_alive(server: ManagedProcess, what: str, deadline: float) -> None:
    if not server.alive():
        raise StackError(f"{what} exited during start-up (log: {server.log_path}):\n{server.tail()}")
    if time.monotonic() > deadline:
        server.stop()
        raise StackError(f"{what} did not answer in time (log: {server.log_path}):\n{server.tail()}")


def _wait_until(ready, server: ManagedProcess, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        _check_alive(server, what, deadline)
        time.sleep(0.2)


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", file=sys.stderr, flush=True)
