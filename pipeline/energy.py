"""Energy and carbon of a stretch of work, estimated from what Linux reports (no extra dependency).

Method: the machine's CPU busy seconds (``/proc/stat``: user, nice, system, irq, softirq and steal time
of every core; idle and iowait excluded) x a power per busy core, plus the memory in use on the machine
(``/proc/meminfo`` MemTotal - MemAvailable, mean of the start and the end) x a power per GB x the wall
time; carbon = energy x the grid's carbon intensity (figures: :class:`pipeline.settings.EnergySettings`).
It is machine-wide: in the simulation the coordinator and every simulated node share the machine, so it
counts them all (and any other work there); in a real deployment it measures the coordinator's machine only.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.settings import EnergySettings

__all__ = ["METHOD", "Energy", "EnergyMeter", "cpu_busy_seconds", "memory_in_use_gb"]

METHOD = ("machine-wide CPU busy seconds (/proc/stat) x W per busy core + memory in use (/proc/meminfo) x W per GB "
          "x seconds; carbon = energy x grid intensity")
_BUSY = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal columns of /proc/stat's "cpu" line


def cpu_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in _BUSY if i < len(fields)) / os.sysconf("SC_CLK_TCK")


def memory_in_use_gb() -> float:
    """Memory in use on the machine now (MemTotal - MemAvailable), in GB (10^9 bytes)."""
    info = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith(("MemTotal:", "MemAvailable:"))}
    return (info["MemTotal"] - info["MemAvailable"]) * 1024 / 1e9


@dataclass(frozen=True)
class Energy:
    """The estimate of one stretch: wall ``seconds``, CPU busy seconds, mean memory in use, joules, CO2e grams."""

    seconds: float
    cpu_s: float
    memory_gb: float
    cpu_j: float
    memory_j: float
    joules: float
    co2e_g: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


class EnergyMeter:
    """Started on creation; :meth:`stop` gives the :class:`Energy` since then."""

    def __init__(self) -> None:
        self._t0, self._cpu0, self._mem0 = time.perf_counter(), cpu_busy_seconds(), memory_in_use_gb()

    def stop(self, settings: "EnergySettings") -> Energy:
        seconds = time.perf_counter() - self._t0
        cpu_s = max(cpu_busy_seconds() - self._cpu0, 0.0)
        memory_gb = (self._mem0 + memory_in_use_gb()) / 2
        cpu_j, memory_j = cpu_s * settings.cpu_w_per_core, memory_gb * settings.memory_w_per_gb * seconds
        joules = cpu_j + memory_j
        return Energy(seconds, cpu_s, memory_gb, cpu_j, memory_j, joules, joules / 3.6e6 * settings.grid_g_per_kwh)
