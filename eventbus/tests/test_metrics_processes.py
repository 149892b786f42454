"""The pipeline's metrics across processes: with PROMETHEUS_MULTIPROC_DIR every process (of every container sharing
the directory) adds to the totals, a pool process's live gauges leave with it; without it, each process keeps its
own. Each case runs in fresh Python processes, the variable being read when prometheus_client is imported."""

from __future__ import annotations

import textwrap
from pathlib import Path

from prometheus_client.multiprocess import MultiProcessCollector

from eventbus.metrics import PREFIX
from tests.harness import ROOT, environment, python

DEAD_PID = 4_194_999  # above Linux's largest pid: never a live process


def run(code: str, *, directory: Path | None, host: str | None = None, pid: int | None = None) -> str:
    """Run `code` in a new Python process with Django set up, as `host` (and `pid`) if given; return its output."""
    pretend = []
    if host:
        pretend.append(f"import socket; socket.gethostname = lambda: {host!r}")
    if pid:
        pretend.append(f"import os; os.getpid = lambda: {pid}")
    script = "\n".join([*pretend, "import django; django.setup()", textwrap.dedent(code)])
    env = environment(PROMETHEUS_MULTIPROC_DIR=None if directory is None else str(directory))
    done = python(script, env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def totals(directory: Path) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in MultiProcessCollector(None, path=str(directory)).collect()
        if metric.name.startswith(PREFIX)
        for sample in metric.samples
    }


OBSERVE = """
from eventbus import metrics
metrics.RETRIES.labels("inventory.reserve_stock").inc()
metrics.HANDLERS_RUNNING.labels("inventory.reserve_stock").inc()
print(metrics.process_identifier())
"""
RETRIES = ("orderpipe_handler_retries_total", (("handler", "inventory.reserve_stock"),))
RUNNING = ("orderpipe_handlers_in_progress", (("handler", "inventory.reserve_stock"),))


def test_processes_of_two_containers_with_the_same_pid_add_up_in_files_of_their_own(tmp_path):
    # When a process of each of two containers, both pid 4194999, observes
    identifiers = [run(OBSERVE, directory=tmp_path, host=host, pid=DEAD_PID).strip() for host in ("web-a", "web-b")]

    # Then each wrote files of its own, named by host and pid, and the directory holds both observations
    assert identifiers == [f"web-a-{DEAD_PID}", f"web-b-{DEAD_PID}"]
    assert {path.name for path in tmp_path.iterdir()} >= {
        f"counter_web-a-{DEAD_PID}.db",
        f"counter_web-b-{DEAD_PID}.db",
    }
    assert totals(tmp_path)[RETRIES] == 2
    assert totals(tmp_path)[RUNNING] == 2


def test_a_new_pool_process_clears_the_live_gauges_of_its_hosts_dead_processes(tmp_path):
    # Given two processes killed while a handler ran, one on this host and one on another
    for host in ("worker-a", "worker-b"):
        run(OBSERVE, directory=tmp_path, host=host, pid=DEAD_PID)

    # When a pool process starts on the first host
    run(
        "from celery.signals import worker_process_init; worker_process_init.send(sender=None)",
        directory=tmp_path,
        host="worker-a",
    )

    # Then the dead process of its host no longer counts as running a handler; its retry still counts
    assert totals(tmp_path)[RUNNING] == 1, "only the other host's process is left"
    assert totals(tmp_path)[RETRIES] == 2


def test_a_pool_process_that_exits_takes_its_live_gauges_with_it(tmp_path):
    run(
        OBSERVE + "from celery.signals import worker_process_shutdown\n"
        "import os; worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)",
        directory=tmp_path,
        host="worker-c",
    )

    assert RUNNING not in totals(tmp_path)
    assert totals(tmp_path)[RETRIES] == 1


def test_without_a_directory_a_process_exports_its_own_metrics_and_writes_no_file(tmp_path):
    output = run(
        OBSERVE + "from prometheus_client import CollectorRegistry, generate_latest\n"
        "registry = CollectorRegistry(); registry.register(metrics.exported())\n"
        "print(generate_latest(registry).decode())",
        directory=None,
    )

    assert 'orderpipe_handler_retries_total{handler="inventory.reserve_stock"} 1.0' in output
    assert 'orderpipe_handlers_in_progress{handler="inventory.reserve_stock"} 1.0' in output
    assert not list(ROOT.glob("*.db")) and not list(tmp_path.iterdir())
