"""Sensors and bands, raster tiles and manifests, real-dataset readers and the synthetic world.

Sensors are values (:class:`geodata.sensors.Catalog`); importing the package registers nothing. The
built-in sensors, every ``configs/sensors/*.yaml`` of this checkout and the sensor files and folders
of ``$EOSFED_SENSORS`` make :func:`geodata.sensors.default`, the catalog names resolve in outside a
:func:`geodata.sensors.using` block.
"""
