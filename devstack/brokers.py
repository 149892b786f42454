"""Project-local RabbitMQ (one node or a cluster) and Redis: install when missing, start on loopback, stop."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from devstack.config import RabbitNode, StackConfig
from devstack.processes import stop_groups
from eventbus.passwords import ADMIN

RABBIT_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBIT_CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
SYSTEM_PACKAGES = {"rabbitmq-server": RABBIT_SERVER, "redis-server": Path("/usr/bin/redis-server")}
# The browser test drives Debian's Chromium; Playwright's own browser download cannot be relied on.
TEST_PACKAGES = {"chromium": Path("/usr/bin/chromium"), "prometheus": Path("/usr/bin/promtool")}


class StackError(RuntimeError):
    """A local service could not be installed, started or reached."""


def ensure_system_packages(extra: dict[str, Path] | None = None) -> None:
    """Install RabbitMQ and Redis (and `extra`) from the Debian/Ubuntu packages when they are missing."""
    wanted = {**SYSTEM_PACKAGES, **(extra or {})}
    missing = [name for name, path in wanted.items() if not path.exists()]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise StackError(
            f"missing {', '.join(missing)} and no apt-get here: install them with your package manager, "
            "or use `docker compose up` instead."
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
    # Debian starts the packaged services; the project runs its own servers on loopback.
    for service in ("rabbitmq-server", "redis-server", "postgresql"):
        if any(name.startswith(service) for name in missing):
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
            + ". Stop what holds them (another stack?) or choose other ports, e.g. WEB_PORT=8001."
        )


class ManagedProcess:
    """A server started in its own process group so that it can be stopped with everything it spawned."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def respawn(self) -> None:
        """Start the server again (after it died or was stopped), with the same arguments and log."""
        if self.alive():
            raise RuntimeError(f"{self.name} is still running")
        self.proc = self._spawn()

    def stop(self, timeout: float = 20) -> None:
        stop_groups([self.proc], timeout)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --- Redis


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
    wait_redis(config, server)
    return server


def wait_redis(config: StackConfig, server: ManagedProcess, timeout: float = 20) -> None:
    _wait_until(lambda: _redis_ping(config), server, "Redis", timeout)


def _redis_ping(config: StackConfig) -> bool:
    try:
        with socket.create_connection((config.host, config.redis_port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# --- RabbitMQ


def _rabbit_env(node: RabbitNode, host: str) -> dict[str, str]:
    base = node.data_dir
    return {
        **os.environ,
        "HOME": str(base),  # the Erlang cookie lives there; every node of the cluster has the same one
        "RABBITMQ_NODENAME": node.name,
        "RABBITMQ_NODE_IP_ADDRESS": host,
        "RABBITMQ_NODE_PORT": str(node.amqp_port),
        "RABBITMQ_DIST_PORT": str(node.dist_port),
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


def _write_rabbit_config(config: StackConfig, node: RabbitNode, cookie: str) -> None:
    base = node.data_dir
    for sub in ("mnesia", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    cookie_file = base / ".erlang.cookie"
    if cookie_file.exists():
        cookie_file.chmod(0o600)
    cookie_file.write_text(cookie)
    cookie_file.chmod(0o400)
    (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    # Retry countdowns wait in Celery's quorum delay queues, which dead-letter at-least-once: after
    # a broker restart an unconfirmed dead letter is forwarded again only after this timeout
    # (default 180 s, longer than an order's pending timeout; seen in `make chaos`).
    (base / "advanced.config").write_text("[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].\n")
    # A node whose database is new creates the stack's administrator instead of `guest` (see ensure_admin).
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.1 = {config.host}:{node.amqp_port}\n"
        f"management.tcp.ip = {config.host}\n"
        f"management.tcp.port = {node.management_port}\n"
        f"default_user = {ADMIN}\n"
        f"default_pass = {config.credentials.password(ADMIN)}\n"
        "default_user_tags.administrator = true\n"
        "default_permissions.configure = .*\n"
        "default_permissions.write = .*\n"
        "default_permissions.read = .*\n"
        "log.console = false\n"
        "log.file.level = info\n"
        # Quorum queues keep their data on disk; a dev node should not stop on a small disk.
        "disk_free_limit.absolute = 50MB\n"
    )


def _cookie(config: StackConfig) -> str:
    """One Erlang cookie per run directory, shared by every node of its cluster."""
    path = config.run_dir / "erlang-cookie"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(20).upper())
        path.chmod(0o600)
    return path.read_text().strip()


def rabbitmqctl(
    config: StackConfig, *args: str, node: RabbitNode | None = None, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run rabbitmqctl against `node` (default: the first node of the stack); `stdin` answers its prompt."""
    node = node or config.nodes[0]
    return subprocess.run(
        [str(RABBIT_CTL), "-n", node.name, *args],
        env=_rabbit_env(node, config.host),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_rabbitmq_node(config: StackConfig, node: RabbitNode) -> ManagedProcess:
    """Start one node's server process (not waiting for it: see `wait_rabbitmq_node`)."""
    _write_rabbit_config(config, node, _cookie(config))
    (node.data_dir / "rabbit.pid").unlink(missing_ok=True)
    log = node.data_dir / "log" / "console.log"
    return ManagedProcess(f"rabbitmq-{node.index + 1}", [str(RABBIT_SERVER)], _rabbit_env(node, config.host), log)


def wait_rabbitmq_node(config: StackConfig, node: RabbitNode, server: ManagedProcess, timeout: float = 120) -> None:
    """Block until the node runs its applications and its management API answers."""
    deadline = time.monotonic() + timeout
    pid_file = node.data_dir / "rabbit.pid"
    while not pid_file.exists():
        _check_alive(server, f"RabbitMQ node {node.name}", deadline)
        time.sleep(0.2)
    result = rabbitmqctl(config, "wait", "--timeout", str(int(timeout)), str(pid_file), node=node, timeout=timeout + 10)
    if result.returncode != 0:
        raise StackError(f"RabbitMQ node {node.name} did not start:\n{result.stdout}{result.stderr}\n{server.tail()}")
    _wait_until(lambda: port_is_open(config.host, node.management_port), server, "RabbitMQ management", 60)


def start_rabbitmq(config: StackConfig) -> list[ManagedProcess]:
    """Start every node (together: a restarted cluster's nodes wait for each other), then form the cluster."""
    servers = [start_rabbitmq_node(config, node) for node in config.nodes]
    try:
        for node, server in zip(config.nodes, servers, strict=True):
            wait_rabbitmq_node(config, node, server)
        first = config.nodes[0]
        for node in config.nodes[1:]:
            if first.name not in cluster_members(config, node):
                _join(config, node, first)
        ensure_admin(config)
    except BaseException:
        stop_rabbitmq(config, servers)
        raise
    return servers


def ensure_admin(config: StackConfig) -> None:
    """The stack's administrator logs in with the password kept in its run directory, and `guest` is gone.

    A node with a new database made the administrator itself (rabbitmq.conf); one whose data predates it,
    or whose password changed (its line was deleted from the credentials file, to rotate it), is set right
    through rabbitmqctl, which reads the password from its standard input rather than its command line."""
    api = f"{config.management_url}/api"
    auth = (ADMIN, config.credentials.password(ADMIN))
    if requests.get(f"{api}/whoami", auth=auth, timeout=10).status_code != 200:
        password = f"{auth[1]}\n"
        if rabbitmqctl(config, "change_password", ADMIN, stdin=password).returncode != 0:
            _ctl(config, "add_user", ADMIN, stdin=password)
        _ctl(config, "set_user_tags", ADMIN, "administrator")
        _ctl(config, "set_permissions", "-p", "/", ADMIN, ".*", ".*", ".*")
    response = requests.delete(f"{api}/users/guest", auth=auth, timeout=10)
    if response.status_code not in (204, 404):
        raise StackError(f"could not delete the broker user guest: {response.status_code} {response.text}")


def _ctl(config: StackConfig, *args: str, stdin: str | None = None) -> None:
    result = rabbitmqctl(config, *args, stdin=stdin)
    if result.returncode != 0:
        raise StackError(f"rabbitmqctl {args[0]}: {result.stdout}{result.stderr}")


def cluster_members(config: StackConfig, node: RabbitNode) -> list[str]:
    result = rabbitmqctl(config, "cluster_status", "--formatter", "json", node=node)
    if result.returncode != 0:
        raise StackError(f"rabbitmqctl cluster_status on {node.name}: {result.stdout}{result.stderr}")
    return json.loads(result.stdout).get("disk_nodes", [])


def _join(config: StackConfig, node: RabbitNode, first: RabbitNode) -> None:
    for args in (("stop_app",), ("join_cluster", first.name), ("start_app",)):
        result = rabbitmqctl(config, *args, node=node, timeout=120)
        if result.returncode != 0:
            raise StackError(f"rabbitmqctl {' '.join(args)} on {node.name}: {result.stdout}{result.stderr}")


def stop_rabbitmq(config: StackConfig, servers: list[ManagedProcess]) -> None:
    for server in servers:
        server.stop(timeout=30)
    # epmd outlives the nodes; leave no port behind unless another Erlang node still uses it.
    env = _rabbit_env(config.nodes[0], config.host)
    names = subprocess.run(["epmd", "-names"], capture_output=True, text=True, check=False, env=env)
    if names.returncode == 0 and "name " not in names.stdout:
        subprocess.run(["epmd", "-kill"], capture_output=True, check=False, env=env)


def _check_alive(server: ManagedProcess, what: str, deadline: float) -> None:
    if not server.alive():
        raise StackError(f"{what} exited during start-up (log: {server.log_path}):\n{server.tail()}")
    if time.monotonic() > deadline:
        server.stop()
        raise StackError(f"{what} did not answer in time (log: {server.log_path}):\n{server.tail()}")


def _wait_until(ready: Callable[[], bool], server: ManagedProcess, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        _check_alive(server, what, deadline)
        time.sleep(0.2)


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", file=sys.stderr, flush=True)
