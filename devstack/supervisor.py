"""Run a Procfile's processes in the foreground with prefixed, coloured output; stop them together."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

COLOURS = ["36", "33", "32", "35", "34", "31", "96", "93", "92"]
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    command: str


def read_procfile(path: Path) -> list[ProcessSpec]:
    specs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PROCFILE_LINE.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: expected `name: command`, got {line!r}")
        specs.append(ProcessSpec(match[1], match[2]))
    return specs


class Supervisor:
    """Starts every process in its own session, relays their output, and stops all when one ends."""

    def __init__(self, specs: list[ProcessSpec], env: dict[str, str], cwd: Path) -> None:
        self.specs = specs
        self.env = env
        self.cwd = cwd
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.width = max(len(spec.name) for spec in specs)
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def _emit(self, name: str, colour: str, line: str) -> None:
        with self._lock:
            sys.stdout.write(f"\033[{colour}m{name:<{self.width}} |\033[0m {line}")
            sys.stdout.flush()

    def _pump(self, name: str, colour: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self._emit(name, colour, raw.decode(errors="replace"))

    def start(self) -> None:
        for index, spec in enumerate(self.specs):
            colour = COLOURS[index % len(COLOURS)]
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {spec.command}"],
                cwd=self.cwd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs[spec.name] = proc
            threading.Thread(target=self._pump, args=(spec.name, colour, proc), daemon=True).start()
            self._emit(spec.name, colour, f"started (pid {proc.pid}): {spec.command}\n")

    def wait(self) -> str | None:
        """Block until a process exits or a signal arrives; return the name of a process that ended."""
        while not self._stopping.is_set():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self._emit(name, "1;31", f"exited with code {proc.returncode}\n")
                    return name
            time.sleep(0.3)
        return None

    def request_stop(self, *_: object) -> None:
        self._stopping.set()

    def stop(self, timeout: float = 20) -> None:
        late = stop_groups(list(self.procs.values()), timeout)
        for name, proc in self.procs.items():
            if proc in late:
                self._emit(name, "1;31", f"did not stop within {timeout:.0f}s and was killed\n")


def signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Signal a process started with `start_new_session=True` and everything it spawned."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def stop_groups(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[subprocess.Popen[bytes]]:
    """SIGTERM every group, wait up to `timeout` in all, then SIGKILL what is left; return the late ones."""
    for proc in procs:
        signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    late = []
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            late.append(proc)
        # Stragglers in the group (a worker's pool children) go too.
        signal_group(proc, signal.SIGKILL)
        proc.wait()
    return late
