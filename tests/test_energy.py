"""The per-phase energy estimate: CPU work shows as busy seconds and joules, the figures come from settings."""

from __future__ import annotations

import time

from pipeline.energy import EnergyMeter, cpu_busy_seconds, memory_in_use_gb
from pipeline.settings import EnergySettings


def test_a_busy_loop_costs_positive_joules_and_carbon() -> None:
    meter = EnergyMeter()
    end = time.thread_time() + 0.5  # this thread's CPU time: other threads of the process cannot end the loop early
    while time.thread_time() < end:
        pass
    energy = meter.stop(EnergySettings())
    assert energy.cpu_s >= 0.4 and energy.memory_gb > 0 and energy.seconds >= 0.45  # clocks differ in resolution
    assert energy.cpu_j == energy.cpu_s * EnergySettings().cpu_w_per_core
    assert energy.joules == energy.cpu_j + energy.memory_j > 0
    assert energy.co2e_g == energy.joules / 3.6e6 * EnergySettings().grid_g_per_kwh
    doubled = meter.stop(EnergySettings(cpu_w_per_core=20.0, memory_w_per_gb=0.0))
    assert doubled.memory_j == 0 and doubled.cpu_j >= 2 * energy.cpu_j
    assert set(energy.to_dict()) == {"seconds", "cpu_s", "memory_gb", "cpu_j", "memory_j", "joules", "co2e_g"}


def test_machine_counters_are_read() -> None:
    assert cpu_busy_seconds() > 0 and memory_in_use_gb() > 0
