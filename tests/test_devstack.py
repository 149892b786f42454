"""`make run` (python -m devstack run) as a user meets it: everything starts, a dead Redis is started again,
a second stack on the same run directory is refused, and SIGTERM stops it all, leaving no port open."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.harness import ROOT, own_run_dir, own_stack_env, port_in_use, ports_block, stack_db

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


class Output:
    """The lines a process prints, collected by a thread, to wait for one of them."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline:
                pytest.fail(f"no line with {text!r} within {timeout:.0f}s:\n{''.join(self.lines[-60:])}")
            time.sleep(0.2)


def redis_pid(port: int) -> int:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"redis-server" in argv[0] and f"127.0.0.1:{port}".encode() in b" ".join(argv):
            return int(cmdline.parent.name)
    raise AssertionError(f"no redis-server on port {port}")


def test_make_run_restarts_a_dead_redis_refuses_a_second_stack_and_stops_cleanly():
    # Given `make run` on ports and a run directory of its own, on the database this test run uses
    ports = ports_block()
    run_dir = own_run_dir("devstack")
    env = own_stack_env() | {name: str(port) for name, port in ports.items()}
    env |= {"RUN_DIR": str(run_dir), "STACK_DB": stack_db()}
    argv = [sys.executable, "-m", "devstack", "run"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    try:
        output.wait_for("the order pipeline is running", timeout=180)
        web = f"http://127.0.0.1:{ports['WEB_PORT']}"
        assert requests.get(f"{web}/healthz", timeout=10).status_code == 200
        # The password is kept in the run directory, private, and not printed
        password = (run_dir / "admin-password").read_text().strip()
        assert not any(password in line for line in output.lines)
        assert (run_dir.stat().st_mode & 0o077) in (0, 0o011)
        assert ((run_dir / "admin-password").stat().st_mode & 0o077) == 0

        # When Redis dies, it is started again and says so
        os.kill(redis_pid(ports["REDIS_PORT"]), signal.SIGKILL)
        output.wait_for("redis running again", timeout=60)
        assert redis_pid(ports["REDIS_PORT"])

        # And a second `make run` on the same run directory is refused, naming the holder
        second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"is in use by pid {proc.pid}" in second.stderr
    finally:
        # Then SIGTERM stops everything
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("make run did not stop within 120 s of SIGTERM")
    open_ports = [name for name, port in ports.items() if port_in_use(port)]
    assert not open_ports, f"still listening after make run stopped: {open_ports}"
    shutil.rmtree(run_dir, ignore_errors=True)
