"""The chaos harness, short: 120 orders on a private stack while each fault fires once; nothing lost or doubled.

It runs `python -m chaos` as a subprocess on ports of its own, so the suite's broker is not disturbed, and
reads the verdict it writes as JSON.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest

from tests.harness import ROOT, own_run_dir, own_stack_env, port_in_use, ports_block, stack_db

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_a_short_chaos_run_loses_no_order_and_doubles_no_effect():
    # On the database this test run uses: `make test` runs the suite on SQLite and on PostgreSQL.
    ports = ports_block()
    servers = {"--amqp-port": ports["RABBITMQ_PORT"], "--management-port": ports["RABBITMQ_MANAGEMENT_PORT"],
               "--redis-port": ports["REDIS_PORT"], "--postgres-port": ports["POSTGRES_PORT"]}  # fmt: skip
    run_dir = own_run_dir("chaos")
    argv = [sys.executable, "-m", "chaos", "--orders", "120", "--quick", "--seed", "7", "--run-dir", str(run_dir),
            "--db", stack_db(), *(arg for option, port in servers.items() for arg in (option, str(port)))]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=own_stack_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
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
    erlang = ports["RABBITMQ_PORT"] + 20000
    assert not any(port_in_use(port) for port in (*servers.values(), erlang)), "the chaos stack left a port open"
    shutil.rmtree(run_dir, ignore_errors=True)
