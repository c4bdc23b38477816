"""Sensors and bands, raster tiles and manifests, real-dataset readers and the synthetic world.

Importing the package registers the built-in sensors, every ``configs/sensors/*.yaml`` of this
checkout and the sensor files and folders of ``$EOSFED_SENSORS``, so the coordinator, partners and
commands all know the same sensors.
"""

from geodata.sensors import SENSOR_CONFIG_DIR, env_sensor_paths, load_sensor_files

load_sensor_files([SENSOR_CONFIG_DIR, *env_sensor_paths()] if SENSOR_CONFIG_DIR.is_dir() else env_sensor_paths())
