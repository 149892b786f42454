"""`python -m devstack run|test|services|procfile`: the local stack behind `make run` and `make test`."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import suppress

from devstack.brokers import StackError, say
from devstack.config import DATABASES, ROOT, StackConfig
from devstack.processes import ProcessExited
from devstack.stack import Stack, expected_consumers

# `make run` only: a URL the user exported points the processes at their own server instead. Not the
# broker's: each process gets a user of its own on the stack's RabbitMQ (eventbus.identities).
USER_CHOICES = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")
SERVER_RESTARTS = 3  # per server and `make run`; past that the stack stops and says which server died


def admin_password(config: StackConfig) -> str:
    """The generated admin password, created once and kept under .run/ (never in git)."""
    path = config.run_dir / "admin-password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(18) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _setup_django(stack: Stack) -> None:
    os.environ.update(stack.env)
    import django

    django.setup()


def run(config: StackConfig) -> int:
    """`make run`: everything in the foreground until Ctrl-C."""
    from devstack import brokers, pipeline

    stack = Stack(config, echo=True, overrides={k: os.environ[k] for k in USER_CHOICES if k in os.environ})
    _stop_on_signals()
    try:
        stack.claim_run_dir()  # first: a second `make run` here is told who runs, not which port is busy
        brokers.check_ports_free(config, {"WEB_PORT": config.web_port, "FLOWER_PORT": config.flower_port})
        stack.start_servers()
        password = admin_password(config)
        flower_auth = os.environ.get("FLOWER_BASIC_AUTH") or f"admin:{password}"
        stack.processes.env.update(FLOWER_BASIC_AUTH=flower_auth, WEB_PORT=str(config.web_port),
                                   FLOWER_PORT=str(config.flower_port))  # fmt: skip
        _setup_django(stack)
        say("migrating the database and loading demo data")
        stack.migrate()
        stack.manage("seed_demo")
        stack.manage("ensure_admin", "--password-file", str(config.run_dir / "admin-password"))
        stack.start_web()
        for service in pipeline.services():
            stack.start_worker(service.name)
        stack.start_relay()
        stack.start_beat()
        stack.start_flower()
        # "Running" means ready: the web and Flower listen and every worker consumes its queues.
        stack.wait_for_port("web", config.web_port)
        stack.wait_for_port("flower", config.flower_port)
        stack.wait_consuming(expected_consumers([service.name for service in pipeline.services()]))
        _print_urls(config, flower_auth.split(":", 1)[0])
        return _supervise(stack)
    except KeyboardInterrupt:
        say("stopping everything")
        return 0
    finally:
        _ignore_signals()
        stack.stop()


def _supervise(stack: Stack) -> int:
    """Until Ctrl-C: a pipeline process that ends stops the stack; a server that dies is started again."""
    restarts: dict[str, int] = {}
    while True:
        time.sleep(0.5)
        try:
            stack.processes.check_alive()
        except ProcessExited as ended:
            say(f"{ended.name} ended; stopping everything")
            return 1
        dead = [name for name, server in stack.servers.items() if not server.alive()]
        for name in dead:
            restarts[name] = restarts.get(name, 0) + 1
            if restarts[name] > SERVER_RESTARTS:
                say(f"{name} died again after {SERVER_RESTARTS} restarts; stopping everything")
                return 1
        if dead:
            try:
                stack.revive_servers()
            except StackError as error:
                say(f"{', '.join(dead)} could not be started again ({error}); stopping everything")
                return 1
            say(f"{', '.join(dead)} running again")


def _stop_on_signals() -> None:
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def _ignore_signals() -> None:
    """A second Ctrl-C or SIGTERM must not cut the clean-up short and leave servers behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _print_urls(config: StackConfig, flower_user: str) -> None:
    base = f"http://{config.host}"
    password_file = config.run_dir / "admin-password"
    say(
        "the order pipeline is running (Ctrl-C stops it all)\n"
        f"    admin        {base}:{config.web_port}/admin/   user admin, password in {password_file}\n"
        f"    API          {base}:{config.web_port}/api/orders/   docs {base}:{config.web_port}/api/docs/\n"
        f"    Flower       {base}:{config.flower_port}/   user {flower_user} (FLOWER_BASIC_AUTH)\n"
        f"    RabbitMQ     {config.management_url}/   user admin, password in {config.credentials.path}"
    )


def test(config: StackConfig, pytest_args: list[str]) -> int:
    """`make test`: the servers, then the whole suite against them."""
    from devstack import brokers

    brokers.ensure_system_packages(brokers.TEST_PACKAGES)
    stack = Stack(config, settings="orderproj.settings.test")
    _stop_on_signals()
    try:
        stack.start_servers()
        say(f"pytest on {config.db}")
        return subprocess.run([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT, env=stack.env,
                              check=False).returncode  # fmt: skip
    except KeyboardInterrupt:
        return 130
    finally:
        _ignore_signals()
        stack.stop()


def services(config: StackConfig) -> int:
    """Only the servers (RabbitMQ, Redis and, with --db postgres, PostgreSQL), for running things by hand."""
    stack = Stack(config)
    _stop_on_signals()
    try:
        stack.start_servers()
        variables = {**config.connection_env(), "CELERY_BROKER_URL": config.broker_url_as(None)}
        say(
            "servers up (Ctrl-C stops them):\n"
            + "\n".join(f"    {k}={v}" for k, v in variables.items())
            + f"\n    (broker users and their passwords, admin's included: {config.credentials.path})"
        )
        with suppress(KeyboardInterrupt):
            signal.pause()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        _ignore_signals()
        stack.stop()


def procfile() -> int:
    """Print the Procfile the registry implies (tests/test_compose.py compares it with ./Procfile)."""
    from devstack import pipeline

    _setup_django(Stack(StackConfig()))
    sys.stdout.write(pipeline.procfile())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "the whole system in the foreground"), ("services", "only the servers"),
                       ("test", "the servers, then pytest (further arguments go to pytest)")):  # fmt: skip
        command = sub.add_parser(name, help=text)
        command.add_argument("--db", choices=DATABASES, default=None, help="database (default: $STACK_DB or sqlite)")
        command.add_argument("--rabbitmq-nodes", type=int, default=None, help="RabbitMQ cluster size (default 1)")
    sub.add_parser("procfile", help="print the processes `run` starts, as a Procfile")
    args, pytest_args = parser.parse_known_args()
    if pytest_args and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(pytest_args)}")
    if args.command == "procfile":
        return procfile()
    choices = {"db": args.db, "rabbitmq_nodes": args.rabbitmq_nodes}
    try:
        config = StackConfig(**{key: value for key, value in choices.items() if value is not None})
        if args.command == "run":
            return run(config)
        if args.command == "test":
            return test(config, pytest_args)
        return services(config)
    except (StackError, ValueError) as error:
        print(f"\033[1;31merror:\033[0m {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
