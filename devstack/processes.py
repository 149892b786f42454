"""Child processes of a stack: each in its own session with its own log, restarted, killed, stopped together.

One class serves every harness: `make run` echoes the output to the terminal with a coloured
prefix per process, the tests, the benchmark and the chaos run keep it in `<log_dir>/<name>.log`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import IO

COLOURS = ["36", "33", "32", "35", "34", "31", "96", "93", "92"]


class ProcessGroup:
    """Named child processes sharing one environment and working directory."""

    def __init__(self, env: dict[str, str], cwd: Path, log_dir: Path, *, echo: bool = False) -> None:
        self.env = env
        self.cwd = cwd
        self.log_dir = log_dir
        self.echo = echo
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argvs: dict[str, list[str]] = {}
        self.envs: dict[str, dict[str, str]] = {}  # each process's own variables, beyond the shared ones
        self.restarts: dict[str, int] = {}
        self._orphan_groups: set[int] = set()
        self._print_lock = threading.Lock()

    # --- starting

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` as `name`, with `env` on top of the shared environment (replacing a process of that
        name that has ended)."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running (pid {self.procs[name].pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE if self.echo else log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name], self.argvs[name], self.envs[name] = proc, argv, env or {}
        if self.echo:
            colour = COLOURS[(len(self.argvs) - 1) % len(COLOURS)]
            threading.Thread(target=self._pump, args=(name, colour, proc, log), daemon=True).start()
            self.say(name, f"started (pid {proc.pid}): {' '.join(argv)}")
        else:
            log.close()
        return proc

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start `name` again with the arguments and variables it last ran with; counts restarts."""
        self.restarts[name] = self.restarts.get(name, 0) + 1
        return self.start(name, self.argvs[name], env=self.envs[name])

    # --- watching

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def exited(self) -> dict[str, int]:
        """Processes that ended: name -> exit code."""
        return {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_path(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def check_alive(self, names: list[str] | None = None) -> None:
        """Raise, with its log, when one of `names` (default: all) has ended."""
        for name in names or list(self.procs):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise ProcessExited(name, proc.returncode, self.log_tail(name))

    # --- stopping

    def kill(self, name: str, signum: int = signal.SIGKILL, *, whole_group: bool = True) -> list[int]:
        """Signal `name` and wait for it. With `whole_group=False` only the process itself gets the signal,
        as in a real crash: its children (a worker's pool) are orphaned, returned, and reaped later."""
        proc = self.procs[name]
        orphans: list[int] = []
        if whole_group:
            signal_group(proc, signum)
        else:
            orphans = child_pids(proc.pid)
            with suppress(ProcessLookupError):
                os.kill(proc.pid, signum)
            if orphans:
                self._orphan_groups.add(proc.pid)
        proc.wait(30)
        return orphans

    def reap_orphans(self) -> None:
        """SIGKILL what is left of the groups of processes killed with `whole_group=False`."""
        for pgid in list(self._orphan_groups):
            # A process group id is never reused while the group has members, so these are ours.
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            self._orphan_groups.discard(pgid)

    def stop(self, names: list[str] | None = None, timeout: float = 20) -> list[str]:
        """Stop `names` (default: all) together; return those that had to be killed."""
        names = list(self.procs) if names is None else [n for n in names if n in self.procs]
        late = stop_groups([self.procs[n] for n in names], timeout)
        late_names = [n for n in names if self.procs[n] in late]
        for name in names:
            del self.procs[name]
        self.reap_orphans()
        for name in late_names:
            self.say(name, f"did not stop within {timeout:.0f}s and was killed")
        return late_names

    # --- output

    def say(self, name: str, line: str, colour: str = "1") -> None:
        if self.echo:
            self._emit(name, colour, line + "\n")

    def _emit(self, name: str, colour: str, line: str) -> None:
        width = max(len(n) for n in self.argvs) if self.argvs else len(name)
        with self._print_lock:
            sys.stdout.write(f"\033[{colour}m{name:<{width}} |\033[0m {line}")
            sys.stdout.flush()

    def _pump(self, name: str, colour: str, proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        assert proc.stdout is not None
        with log:
            for raw in iter(proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                self._emit(name, colour, raw.decode(errors="replace"))


class ProcessExited(RuntimeError):
    """A process of the stack ended while it should run."""

    def __init__(self, name: str, code: int, tail: str) -> None:
        super().__init__(f"{name} exited with {code}:\n{tail}")
        self.name = name


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (a worker's pool processes), read from /proc."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError, ValueError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


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
