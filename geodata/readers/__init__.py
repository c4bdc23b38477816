"""Readers that turn real dataset layouts into a :class:`~geodata.manifest.Manifest`."""
