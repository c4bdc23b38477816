"""Generated worlds cached on disk: each built once, keyed by its config, safe across processes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from geodata.manifest import Manifest
from geodata.synth.config import WorldConfig
from geodata.synth.world import generate_world

__all__ = ["build_once", "cached_world"]

log = logging.getLogger(__name__)


def build_once(folder: Path, build: Callable[[Path], object]) -> Path:
    """``folder``, made by ``build(temporary folder)`` unless it exists; safe across processes: the
    build happens under a file lock in a temporary folder renamed into place, so no process repeats
    it or sees half of it."""
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
            try:
                build(tmp)
                os.rename(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return folder


def cached_world(config: WorldConfig, cache_root: str | Path, label: str) -> Manifest:
    """The manifest of ``config``'s world under ``<cache_root>/worlds/<label>-<config hash>/``,
    generated on first use."""
    key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_root) / "worlds" / f"{label}-{key}"

    def build(tmp: Path) -> None:
        t0 = time.perf_counter()
        log.info("Generating world %s (%s) into %s", config.name, label, folder)
        generate_world(config, tmp, progress=False)
        log.info("Generated %s in %.1f s", label, time.perf_counter() - t0)

    return Manifest.load(build_once(folder, build) / "manifest.json")
