"""Energy per phase: CodeCarbon's offline tracker measures a busy loop; the /proc fallback when it cannot run."""

from __future__ import annotations

import time

import pytest

from pipeline.energy import EnergyTracker, cpu_busy_seconds, memory_in_use_gb
from pipeline.settings import EnergySettings


def _busy(seconds: float) -> None:
    end = time.thread_time() + seconds  # this thread's CPU time: other threads cannot end the loop early
    while time.thread_time() < end:
        pass


def test_codecarbon_measures_each_phase_at_the_set_intensity() -> None:
    tracker = EnergyTracker(EnergySettings(grid_g_per_kwh=100.0))
    phases = []
    for name in ("a", "b"):
        tracker.start(name)
        _busy(0.5)
        phases.append(tracker.stop())
    assert tracker.method.startswith("CodeCarbon (offline, machine mode; CodeCarbon 3.")
    assert "CPU(" in tracker.method and tracker.method.endswith("carbon at 100 gCO2e/kWh")
    for energy in phases:
        assert energy.seconds >= 0.45 and energy.cpu_wh > 0 and energy.memory_wh > 0
        assert energy.wh == pytest.approx(energy.cpu_wh + energy.memory_wh)
        assert energy.co2e_g == pytest.approx(energy.wh / 1e3 * 100.0)
    assert set(phases[0].to_dict()) == {"seconds", "cpu_wh", "memory_wh", "wh", "co2e_g"}
    with pytest.raises(RuntimeError, match="without start"):
        tracker.stop()


def test_fallback_when_codecarbon_cannot_run(monkeypatch) -> None:
    import codecarbon

    def broken(*args, **kwargs):
        raise OSError("no hardware")

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", broken)
    settings = EnergySettings(cpu_w_per_core=20.0, memory_w_per_gb=0.0)
    tracker = EnergyTracker(settings)
    assert tracker.method.startswith("fallback, CodeCarbon could not run: machine-wide CPU busy seconds")
    tracker.start("a")
    _busy(0.5)
    energy = tracker.stop()
    assert energy.memory_wh == 0 and energy.cpu_wh >= 0.4 * 20.0 / 3600
    assert energy.co2e_g == pytest.approx(energy.wh / 1e3 * settings.grid_g_per_kwh)
    assert cpu_busy_seconds() > 0 and memory_in_use_gb() > 0
