"""The chaos harness, short: 120 orders on a private stack while each fault fires once; nothing lost or doubled.

It runs `python -m chaos` as a subprocess on ports of its own, so the suite's broker is not disturbed, and
reads the verdict it writes as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def free_ports() -> tuple[int, int, int, int]:
    """AMQP, management, Redis and PostgreSQL ports that are free, with the AMQP port + 20000 (Erlang
    distribution) too."""
    for base in range(5710, 5790, 7):
        ports = (base, base + 10000, base + 700, base + 160)
        if not any(_in_use(port) for port in (*ports, base + 20000)):
            return ports
    pytest.fail("no free ports for the chaos stack")


def _in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_short_chaos_run_loses_no_order_and_doubles_no_effect():
    # On the database this test run uses: `make test` runs the suite on SQLite and on PostgreSQL.
    db = "postgres" if connection.vendor == "postgresql" else "sqlite"
    amqp, management, redis, postgres = free_ports()
    run_dir = ROOT / ".run" / f"chaos-test-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-m", "chaos", "--orders", "120", "--quick", "--seed", "7", "--run-dir", str(run_dir),
            "--amqp-port", str(amqp), "--management-port", str(management), "--redis-port", str(redis),
            "--postgres-port", str(postgres), "--db", db]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness stops its processes and brokers on SIGTERM
        output, _ = proc.communicate(timeout=90)
        pytest.fail(f"the chaos run did not finish in time:\n{output[-6000:]}")

    summary = output[output.find("chaos summary") :] if "chaos summary" in output else output[-6000:]
    verdict_file = run_dir / "verdict.json"
    assert verdict_file.exists(), summary
    verdict = json.loads(verdict_file.read_text())
    assert (verdict["lost"], verdict["duplicated"], verdict["wrong_effects"]) == (0, 0, 0), summary
    assert not verdict["poison_missing"] and verdict["unexpected_dead_letters"] == 0, summary
    assert verdict["verdict"] == "VALID" and verdict["violations"] == 0, summary
    assert not [f for f in verdict["faults"] if f["failed"]], summary
    assert proc.returncode == 0, summary
    assert not any(_in_use(port) for port in (amqp, management, redis, postgres, amqp + 20000)), (
        "the chaos stack left a port open"
    )
    shutil.rmtree(run_dir, ignore_errors=True)
