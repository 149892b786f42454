"""`python -m chaos`: run the order pipeline on its own stack under faults and check what it promises.

It starts, through devstack, private servers (RabbitMQ: one node or a cluster; Redis; PostgreSQL with
--db postgres) on ports of their own with data under --run-dir, a fresh database, two workers per service
and the relays; places a seeded stream of orders through `order_place` while killing pool processes,
workers and relays, restarting RabbitMQ, killing a RabbitMQ node, Redis and PostgreSQL, making the database
refuse writes, and publishing duplicates and poison; waits for quiet and checks that no order was lost and
no effect happened twice. The verdict is printed and written to <run-dir>/verdict.json. Exit status: 0 when
every check holds, 1 on a violation, 2 when the stack failed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import traceback
from pathlib import Path

from chaos.kinds import KINDS, kinds_for
from chaos.stack import ChaosStack
from devstack.brokers import StackError, say
from devstack.config import DATABASES, ROOT, StackConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=2000, help="orders to place (default 2000)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the order mix and faults (default: random)")
    parser.add_argument("--quick", action="store_true", help="each fault once, short outages: the test suite's run")
    parser.add_argument("--rounds", type=int, default=None, help="times each fault fires (default orders/500)")
    parser.add_argument("--rate", type=float, default=40.0, help="most orders placed per second (default 40)")
    parser.add_argument("--max-pending", type=int, default=300, help="most undecided orders at once (default 300)")
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=None,
        help="seconds without progress before checking anyway (default 240, --quick 200: longer than the 180 s "
        "RabbitMQ 3.10 may hold a dead-lettered retry after a restart)",
    )
    parser.add_argument("--db", choices=DATABASES, default="sqlite", help="database, under --run-dir (default sqlite)")
    parser.add_argument("--rabbitmq-nodes", type=int, default=1, help="RabbitMQ cluster size (default 1)")
    parser.add_argument("--relays", type=int, default=1, help="outbox relays side by side (default 1)")
    parser.add_argument(
        "--faults",
        type=lambda text: text.split(","),
        default=None,
        help=f"comma-separated kinds to inject (default: every kind the database allows): {', '.join(KINDS)}",
    )
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run" / "chaos", help="data and logs (wiped first)")
    parser.add_argument("--amqp-port", type=int, default=5700)
    parser.add_argument("--management-port", type=int, default=15700)
    parser.add_argument("--redis-port", type=int, default=6400)
    parser.add_argument("--postgres-port", type=int, default=5870)
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.faults or ()) - set(KINDS)):
        parser.error(f"unknown fault kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if args.relays < 1:
        parser.error("--relays: at least one relay")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = StackConfig(
        amqp_port=args.amqp_port,
        management_port=args.management_port,
        redis_port=args.redis_port,
        postgres_port=args.postgres_port,
        db=args.db,
        rabbitmq_nodes=args.rabbitmq_nodes,
        run_dir=args.run_dir.resolve(),
    )
    stack = ChaosStack(config, relays=args.relays)
    # Django, Celery and kombu read these when they load: set them before anything imports them.
    os.environ.update(stack.env)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    try:
        stack.start_servers()
        say(f"chaos: migrating a fresh {args.db} database")
        stack.migrate()
        import django

        django.setup()
        from chaos.campaign import Options, run

        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
        rounds = args.rounds or (1 if args.quick else max(1, args.orders // 500))
        options = Options(
            orders=args.orders,
            seed=seed,
            rounds=rounds,
            rate=args.rate,
            max_pending=args.max_pending,
            quiet_timeout=args.quiet_timeout or (200.0 if args.quick else 240.0),
            outage=(2.0, 4.0) if args.quick else (4.0, 10.0),
            duplicates=20 if args.quick else 50,
            read_only=3.0 if args.quick else 10.0,
            kinds=kinds_for(args.db, args.faults),
        )
        say(f"chaos: seed {seed} (repeat with --seed {seed})")
        return run(stack, options)
    except KeyboardInterrupt:
        say("chaos: interrupted")
        return 130
    except (StackError, RuntimeError, OSError, ValueError) as error:
        traceback.print_exc()
        print(f"\033[1;31mchaos: error:\033[0m {error}", file=sys.stderr)
        return 2
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short and leave servers behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("chaos: stopping the processes and the servers")
        stack.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
