"""Sensors and bands, raster tiles and manifests, real-dataset readers and the synthetic world.

Importing the package registers the built-in sensors plus every ``configs/sensors/*.yaml`` of this
checkout, so the coordinator, partners and commands all know the same sensors.
"""

from pathlib import Path

from geodata.sensors import load_sensor_dir

_SENSOR_DIR = Path(__file__).resolve().parents[1] / "configs" / "sensors"
if _SENSOR_DIR.is_dir():
    load_sensor_dir(_SENSOR_DIR)
