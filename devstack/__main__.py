"""`python -m devstack run|test|services`: the local stack behind `make run` and `make test`."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from devstack import brokers
from devstack.brokers import StackError, say
from devstack.config import ROOT, StackConfig
from devstack.supervisor import Supervisor, read_procfile

PYTHON = sys.executable


def _service_env(config: StackConfig) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in config.connection_env().items():
        env.setdefault(name, value)  # a URL given in the environment wins over the local stack's
    env.update(WEB_PORT=str(config.web_port), FLOWER_PORT=str(config.flower_port), PYTHONUNBUFFERED="1")
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    return env


@contextmanager
def brokers_running(config: StackConfig) -> Iterator[None]:
    """Start RabbitMQ and Redis for the duration of the block, and stop them after it."""
    brokers.ensure_system_packages()
    brokers.check_ports_free(
        config,
        {"REDIS_PORT": config.redis_port, "RABBITMQ_PORT": config.amqp_port,
         "RABBITMQ_MANAGEMENT_PORT": config.management_port, "RABBITMQ_DIST_PORT": config.dist_port},
    )  # fmt: skip
    say(f"starting Redis on {config.host}:{config.redis_port} (data in {config.redis_dir})")
    redis = brokers.start_redis(config)
    rabbit = None
    try:
        say(f"starting RabbitMQ on {config.host}:{config.amqp_port} (data in {config.rabbit_dir})")
        rabbit = brokers.start_rabbitmq(config)
        say("RabbitMQ and Redis are up")
        yield
    finally:
        say("stopping RabbitMQ and Redis")
        if rabbit is not None:
            brokers.stop_rabbitmq(rabbit, config)
        redis.stop()


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True)


def admin_password(config: StackConfig) -> str:
    """The generated admin password, created once and kept under .run/ (never in git)."""
    path = config.run_dir / "admin-password"
    if not path.exists():
        config.run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(18) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def run(config: StackConfig) -> int:
    """`make run`: everything in the foreground until Ctrl-C."""
    brokers.check_ports_free(config, {"WEB_PORT": config.web_port, "FLOWER_PORT": config.flower_port})
    env = _service_env(config)
    password = admin_password(config)
    env.setdefault("FLOWER_BASIC_AUTH", f"admin:{password}")
    stopping = {"flag": False}

    def interrupt(*_: object) -> None:
        stopping["flag"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        with brokers_running(config):
            say("migrating the database and loading demo data")
            _manage(env, "migrate", "--noinput", "-v", "0")
            _manage(env, "seed_demo")
            _manage(env, "ensure_admin", "--password-file", str(config.run_dir / "admin-password"))
            supervisor = Supervisor(read_procfile(ROOT / "Procfile"), env, ROOT)
            signal.signal(signal.SIGTERM, supervisor.request_stop)
            signal.signal(signal.SIGINT, supervisor.request_stop)
            supervisor.start()
            _print_urls(config, password, env["FLOWER_BASIC_AUTH"])
            ended = supervisor.wait()
            say(f"{ended} ended; stopping everything" if ended else "stopping everything")
            supervisor.stop()
            return 1 if ended else 0
    except KeyboardInterrupt:
        return 0 if stopping["flag"] else 130


def _print_urls(config: StackConfig, password: str, flower_auth: str) -> None:
    base = f"http://{config.host}"
    flower_user = flower_auth.split(":", 1)[0]
    say(
        "the order pipeline is running (Ctrl-C stops it all)\n"
        f"    admin        {base}:{config.web_port}/admin/   user admin, password {password}\n"
        f"    API          {base}:{config.web_port}/api/orders/   docs {base}:{config.web_port}/api/docs/\n"
        f"    Flower       {base}:{config.flower_port}/   user {flower_user} (FLOWER_BASIC_AUTH)\n"
        f"    RabbitMQ     {config.management_url}/   user guest, password guest (loopback only)"
    )


def test(config: StackConfig, pytest_args: list[str]) -> int:
    """`make test`: the brokers, then the whole suite against them."""
    env = _service_env(config)
    env.setdefault("DJANGO_SETTINGS_MODULE", "orderproj.settings.test")
    brokers.ensure_system_packages(brokers.TEST_PACKAGES)
    with brokers_running(config):
        return subprocess.run([PYTHON, "-m", "pytest", *pytest_args], cwd=ROOT, env=env, check=False).returncode


def services(config: StackConfig) -> int:
    """Only RabbitMQ and Redis, for running tests or processes by hand."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with brokers_running(config):
        say(f"broker {config.broker_url}  redis {config.redis_url}  (Ctrl-C stops them)")
        with suppress(KeyboardInterrupt):
            signal.pause()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the whole system in the foreground")
    sub.add_parser("services", help="only RabbitMQ and Redis")
    sub.add_parser("test", help="the brokers, then pytest (any further arguments go to pytest)")
    args, pytest_args = parser.parse_known_args()
    if pytest_args and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(pytest_args)}")
    config = StackConfig()
    try:
        if args.command == "run":
            return run(config)
        if args.command == "test":
            return test(config, pytest_args)
        return services(config)
    except StackError as error:
        print(f"\033[1;31merror:\033[0m {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
