"""Synthetic-world generation speed: 64x64 Sentinel-2 tiles per second on one core.

Renders the Sentinel-2 institutions of a preset (only their Sentinel-2 view), in memory and to disk
(GeoTIFF + class mask + manifest), median of 3 runs, one process, BLAS pinned to one thread. Also
in-memory rates for the other sensors' views of the same scenes. Writes
benchmarks/results/synth_speed.{json,md}.

    OPENBLAS_NUM_THREADS=1 python benchmarks/synth_speed.py [--preset default] [--tiles 300]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core; must precede numpy's import
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from geodata.files import atomic_write_text  # noqa: E402
from geodata.synth import WorldConfig, generate_world, iter_scenes, load_world_config  # noqa: E402

log = logging.getLogger("synth_speed")
RESULTS = Path(__file__).resolve().parent / "results"
S2 = "sentinel2_l2a"


def only_sensor(config: WorldConfig, sensor: str) -> WorldConfig:
    """The institutions holding ``sensor``, reduced to that sensor."""
    institutions = tuple(dataclasses.replace(i, sensors=(sensor,)) for i in config.institutions if sensor in i.sensors)
    if not institutions:
        raise SystemExit(f"preset {config.name!r} has no institution with {sensor}")
    return config.replace(institutions=institutions)


def in_memory(config: WorldConfig, sensor: str) -> tuple[int, float]:
    start = time.perf_counter()
    count = sum(1 for _ in iter_scenes(config, sensors=(sensor,)))
    return count, time.perf_counter() - start


def to_disk(config: WorldConfig) -> tuple[int, float]:
    with tempfile.TemporaryDirectory(prefix="synth_speed_") as tmp:
        start = time.perf_counter()
        manifest = generate_world(config, tmp, progress=False)
        return len(manifest.tiles), time.perf_counter() - start


def median_rate(fn, *args, runs: int = 3) -> dict[str, float]:
    rates = []
    for _ in range(runs):
        count, seconds = fn(*args)
        rates.append(count / seconds)
    return {"tiles_per_s": statistics.median(rates), "runs": rates, "tiles": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--tiles", type=int, default=300, help="scenes per institution")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_world_config(args.preset, tiles_per_institution=args.tiles)
    s2 = only_sensor(config, S2)
    if s2.tile_size != 64:
        log.warning("preset %s has tile_size %d, not 64", args.preset, s2.tile_size)

    result = {
        "preset": args.preset,
        "tile_size": s2.tile_size,
        "sentinel2_in_memory": median_rate(in_memory, s2, S2),
        "sentinel2_to_disk": median_rate(to_disk, s2),
        "other_sensors_in_memory": {},
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": None,
    }
    for sensor in ("sentinel1_grd", "aerial_rgbn", "landsat8_oli"):
        holders = [i for i in config.institutions if sensor in i.sensors]
        if holders:
            result["other_sensors_in_memory"][sensor] = median_rate(in_memory, only_sensor(config, sensor), sensor)
    result["load_average_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "synth_speed.json", json.dumps(result, indent=1))

    rows = [(f"{S2} {s2.tile_size}x{s2.tile_size}, in memory", result["sentinel2_in_memory"]),
            (f"{S2} {s2.tile_size}x{s2.tile_size}, to disk (GeoTIFF + mask + manifest)", result["sentinel2_to_disk"])]
    for sensor, rate in result["other_sensors_in_memory"].items():
        factor = config.aerial_factor if sensor == "aerial_rgbn" else 1
        side = s2.tile_size * factor
        rows.append((f"{sensor} {side}x{side}, in memory", rate))
    table = "\n".join(f"| {name} | {r['tiles_per_s']:.0f} | {r['tiles']} |" for name, r in rows)
    atomic_write_text(RESULTS / "synth_speed.md", (
        f"# Synthetic world generation speed ({args.preset} preset, one process, one BLAS thread)\n\n"
        f"| what | tiles/s (median of 3) | tiles per run |\n|---|---|---|\n{table}\n\n"
        f"Machine: {os.cpu_count()} cores shared with other work; 1-min load average at the end: "
        f"{result['load_average_at_end']:.1f}.\n"
    ))
    log.info(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
