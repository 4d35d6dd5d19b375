"""CPU time and memory of process trees, read from /proc (Linux only).

CPU is utime + stime of every process in a tree (all threads included, exited threads
too), so the difference between two readings divided by wall time is cores in use.
Memory is RSS (what `top` shows; shared pages count once per process) and PSS (shared
pages split between the processes sharing them), summed over the tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """root and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))  # field 4: ppid
    if _stat_fields(root) is None:
        return []
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds consumed so far by these processes (gone ones count 0)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return ticks / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Memory:
    rss_bytes: int  # resident set, summed over processes
    pss_bytes: int  # proportional set: shared pages divided among sharers
    peak_rss_bytes: int  # VmHWM summed: each process's own high-water mark
    processes: int

    def as_dict(self) -> dict[str, int | float]:
        return {
            "rss_mib": round(self.rss_bytes / 2**20, 1),
            "pss_mib": round(self.pss_bytes / 2**20, 1),
            "peak_rss_mib": round(self.peak_rss_bytes / 2**20, 1),
            "processes": self.processes,
        }


def memory(pids: Iterable[int]) -> Memory:
    pids = list(pids)
    return Memory(
        rss_bytes=sum(_status_kib(p, "VmRSS") for p in pids) * 1024,
        pss_bytes=sum(_pss_kib(p) for p in pids) * 1024,
        peak_rss_bytes=sum(_status_kib(p, "VmHWM") for p in pids) * 1024,
        processes=len(pids),
    )


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = (PROC / "loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def cpu_model() -> str:
    try:
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def busy_processes(interval_cpu: dict[int, float], exclude: set[int], top: int = 5) -> list[str]:
    """Names of the processes (outside `exclude`) that used the most CPU: load context."""
    ranked = sorted(
        ((cpu, pid) for pid, cpu in interval_cpu.items() if pid not in exclude), reverse=True
    )
    names = []
    for cpu, pid in ranked[:top]:
        if cpu <= 0:
            break
        try:
            comm = (PROC / str(pid) / "comm").read_text().strip()
        except OSError:
            comm = "?"
        names.append(f"{comm}[{pid}] {cpu:.2f}s")
    return names


def all_process_cpu() -> dict[int, float]:
    """CPU seconds of every process now (for finding who else loads the machine)."""
    out: dict[int, float] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                out[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out
