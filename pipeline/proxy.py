"""The coordinator's unlabelled proxy data: a manifest, or new scenes of the experiment world's places."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

from geodata.manifest import Manifest
from geodata.synth import cached_world
from pipeline.settings import ExperimentConfig
from geodata.errors import InputError

__all__ = ["proxy_manifest"]


def proxy_manifest(cfg: ExperimentConfig, cache_dir: Path, sensors: Sequence[str]) -> tuple[Manifest, str]:
    """The proxy manifest and a key naming it (teacher features are cached per key).

    Without ``proxy.manifest``: the experiment world with another seed (``seed + proxy.seed_offset``),
    ``proxy.tiles_per_institution`` scenes per institution and every one of ``sensors`` observing each
    scene (co-registered views of the same places; no institution's own scenes).
    """
    if cfg.proxy.manifest:
        path = Path(cfg.proxy.manifest).expanduser().resolve()
        manifest = Manifest.load(path / "manifest.json" if path.is_dir() else path)
        return manifest, "manifest-" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    world = cfg.world_config
    if world is None:
        raise InputError("proxy: no 'proxy.manifest' and no synthetic 'world' to generate proxy scenes from")
    proxy = world.replace(
        name=f"{world.name}-proxy", seed=world.seed + cfg.proxy.seed_offset,
        tiles_per_institution=cfg.proxy.tiles_per_institution,
        institutions=tuple(dataclasses.replace(i, sensors=tuple(sorted(sensors))) for i in world.institutions))
    manifest = cached_world(proxy, cache_dir, proxy.name)
    return manifest, manifest.root.name
