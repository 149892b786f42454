"""CPU time and memory of a process and everything it spawned, read from /proc."""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it (a worker's pool children), parents first."""
    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with suppress(OSError, ValueError):
                children = [int(child) for child in (task / "children").read_text().split()]
                found += children
                frontier += children
    return found


def _cpu_seconds(pid: int, *, reaped: bool) -> float:
    """User + system time of `pid`; with `reaped`, also that of its children already waited for."""
    # Fields after the command name, which may contain spaces: state is field 3, utime field 14.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class TreeSample:
    """One reading of a process tree: CPU seconds so far, resident and peak resident memory (MiB)."""

    pids: tuple[int, ...]
    cpu_s: float
    rss_mib: float
    hwm_mib: float
    rss_by_pid: dict[int, float]

    def as_dict(self) -> dict[str, object]:
        return {
            "pids": list(self.pids),
            "cpu_s": round(self.cpu_s, 2),
            "rss_mib": round(self.rss_mib, 1),
            "peak_rss_mib": round(self.hwm_mib, 1),
            "rss_mib_by_pid": {str(pid): round(rss, 1) for pid, rss in self.rss_by_pid.items()},
        }


def sample_tree(pid: int) -> TreeSample | None:
    """Read the tree under `pid` (None if it is gone). RSS is summed over processes, so pages that
    forked pool children still share with their parent count once per process."""
    cpu = rss = hwm = 0.0
    by_pid: dict[int, float] = {}
    pids = []
    for index, member in enumerate(descendants(pid)):
        try:
            cpu += _cpu_seconds(member, reaped=index == 0)
            member_rss = _status_kib(member, "VmRSS") / 1024
            hwm += _status_kib(member, "VmHWM") / 1024
        except (OSError, ValueError, IndexError):
            if index == 0:
                return None
            continue
        rss += member_rss
        by_pid[member] = member_rss
        pids.append(member)
    return TreeSample(tuple(pids), cpu, rss, hwm, by_pid)


def cpu_between(before: dict[str, TreeSample], after: dict[str, TreeSample]) -> dict[str, float]:
    """CPU seconds each process tree sampled both times (BenchStack.sample) used in between."""
    return {name: after[name].cpu_s - before[name].cpu_s for name in after if name in before}


def self_cpu_seconds() -> float:
    """CPU seconds of this process (the bench: order placement, polling)."""
    times = os.times()
    return times.user + times.system
