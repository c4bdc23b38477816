"""Synthetic multi-sensor world: co-registered scenes rendered from latent land-cover maps.

``generate_world(config, out_dir)`` writes GeoTIFFs and a manifest; ``iter_scenes`` /
``render_scene`` give the same pixels in memory. Presets live in ``configs/world/``.
"""

from geodata.synth.cache import build_once, cached_world
from geodata.synth.config import InstitutionConfig, RegionConfig, WorldConfig, load_world_config
from geodata.synth.spectra import CLASSES
from geodata.synth.world import RenderedScene, SensorTile, generate_world, iter_scenes, render_scene, world_tasks

__all__ = [
    "CLASSES",
    "InstitutionConfig",
    "RegionConfig",
    "RenderedScene",
    "SensorTile",
    "WorldConfig",
    "build_once",
    "cached_world",
    "generate_world",
    "iter_scenes",
    "load_world_config",
    "render_scene",
    "world_tasks",
]
