"""Energy and carbon per phase: CodeCarbon's offline tracker, one task per phase; a /proc estimate if it cannot run.

CodeCarbon (the tracker the field's papers report with) measures in ``machine`` mode: CPU power from
Intel RAPL where the machine exposes it, else from the CPU load x the CPU model's TDP (or a constant
when the model is unknown), RAM power from its size; energy = power x time, carbon = energy x the
grid's intensity (:class:`pipeline.settings.EnergySettings`). It never goes on the network. When it
cannot start, the fallback estimates from what Linux reports: the machine's CPU busy seconds
(``/proc/stat``) x W per busy core, plus memory in use (``/proc/meminfo``) x W per GB x the wall time.
Either way it is machine-wide: in the simulation it counts the coordinator and every simulated node
(and any other work on the machine); in a real deployment the coordinator's machine only. The
:attr:`EnergyTracker.method` line says which method ran and with what hardware.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.settings import EnergySettings

__all__ = ["Energy", "EnergyTracker", "cpu_busy_seconds", "memory_in_use_gb"]

log = logging.getLogger(__name__)

_BUSY = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal columns of /proc/stat's "cpu" line
_LABEL_COUNTRY = "USA"  # CodeCarbon needs a country; with a forced intensity it only labels the record


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
    """One phase: wall ``seconds``, CPU and memory energy (Wh), their sum and the CO2e grams."""

    seconds: float
    cpu_wh: float
    memory_wh: float
    wh: float
    co2e_g: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in asdict(self).items()}


class EnergyTracker:
    """One per run: ``start(name)`` then ``stop()`` around each phase, one phase at a time."""

    def __init__(self, settings: "EnergySettings") -> None:
        self.settings = settings
        self._tracker = self._codecarbon(settings)
        self._started: tuple[float, float, float] | None = None
        self._hardware = "hardware described on the first phase"

    @property
    def method(self) -> str:
        """Which method measures, with what hardware, and the carbon intensity (one line for the report)."""
        s = self.settings
        if self._tracker is not None:
            how = f"CodeCarbon (offline, machine mode; {self._hardware})"
        else:
            how = (f"fallback, CodeCarbon could not run: machine-wide CPU busy seconds (/proc/stat) x "
                   f"{s.cpu_w_per_core:g} W per busy core + memory in use (/proc/meminfo) x {s.memory_w_per_gb:g} W/GB "
                   f"x seconds")
        return f"{how}; carbon at {self._intensity()}"

    def _intensity(self) -> str:
        s = self.settings
        return (f"CodeCarbon's grid intensity for {s.country_iso_code}" if s.country_iso_code
                else f"{s.grid_g_per_kwh:g} gCO2e/kWh")

    @staticmethod
    def _codecarbon(settings: "EnergySettings"):
        try:
            from codecarbon import OfflineEmissionsTracker

            forced = {} if settings.country_iso_code else {"force_carbon_intensity_g_co2e_kwh": settings.grid_g_per_kwh}
            return OfflineEmissionsTracker(country_iso_code=settings.country_iso_code or _LABEL_COUNTRY,
                                           output_methods=[], log_level="error", tracking_mode="machine",
                                           allow_multiple_runs=True, **forced)
        except Exception as exc:  # noqa: BLE001 - any failure of an optional meter falls back, with the reason
            log.warning("CodeCarbon cannot run (%s: %s); energy is estimated from /proc", type(exc).__name__, exc)
            return None

    def _describe(self, data) -> None:
        """The hardware CodeCarbon measured with (``_hardware`` is private: its only description)."""
        hardware = ", ".join(repr(h) for h in getattr(self._tracker, "_hardware", ()))  # e.g. CPU(Intel RAPL)
        self._hardware = (f"CodeCarbon {data.codecarbon_version}: {hardware or 'hardware unknown'}; CPU {data.cpu_model} "
                          f"x{data.cpu_count}, RAM {data.ram_power:g} W")  # a phase's CPU power is its CPU Wh / s

    def start(self, name: str) -> None:
        self._started = (time.perf_counter(), cpu_busy_seconds(), memory_in_use_gb())
        if self._tracker is not None:
            self._tracker.start_task(name)

    def stop(self) -> Energy:
        if self._started is None:
            raise RuntimeError("EnergyTracker.stop() without start()")
        t0, cpu0, mem0 = self._started
        self._started, seconds = None, time.perf_counter() - t0
        if self._tracker is not None:
            data = self._tracker.stop_task()
            if data is not None:
                self._describe(data)
                return Energy(seconds, data.cpu_energy * 1e3, data.ram_energy * 1e3, data.energy_consumed * 1e3,
                              data.emissions * 1e3)
            log.warning("CodeCarbon recorded nothing for this phase; it is estimated from /proc")
        s = self.settings
        cpu_wh = max(cpu_busy_seconds() - cpu0, 0.0) * s.cpu_w_per_core / 3600
        memory_wh = (mem0 + memory_in_use_gb()) / 2 * s.memory_w_per_gb * seconds / 3600
        wh = cpu_wh + memory_wh
        return Energy(seconds, cpu_wh, memory_wh, wh, wh / 1e3 * s.grid_g_per_kwh)
