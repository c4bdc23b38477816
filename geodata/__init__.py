"""Sensors and bands, raster tiles and manifests, real-dataset readers and the synthetic world.

Importing the package registers the built-in sensors, every ``configs/sensors/*.yaml`` of this
checkout and the sensor files and folders of ``$EOSFED_SENSORS``, so the coordinator, partners and
commands all know the same sensors.
"""

from pathlib import Path

from geodata.sensors import env_sensor_paths, load_sensor_files

_SENSOR_DIR = Path(__file__).resolve().parents[1] / "configs" / "sensors"
load_sensor_files([_SENSOR_DIR, *env_sensor_paths()] if _SENSOR_DIR.is_dir() else env_sensor_paths())
