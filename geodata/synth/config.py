"""Typed description of a synthetic world, loaded from ``configs/world/<preset>.yaml``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geodata.sensors import BandError, get_sensor
from geodata.synth.spectra import CLASSES
from geodata.errors import InputError

__all__ = ["RegionConfig", "InstitutionConfig", "WorldConfig", "PRESET_DIR", "load_world_config"]

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "world"


@dataclass(frozen=True)
class RegionConfig:
    """Where a region lies: a UTM (or any metric) CRS and the upper-left corner of its tile grid."""

    name: str
    epsg: int
    origin: tuple[float, float]


@dataclass(frozen=True)
class InstitutionConfig:
    """One data holder: its region, sensors, land-cover priors and how far its data drift.

    ``class_priors`` weights classes (missing ones never appear); ``domain_shift`` in [0, 1] scales
    the institution's illumination gain, haze, season and calibration offsets; ``season`` in
    [-1, 1] (dormant .. peak growth) fixes the season instead of drawing it.
    """

    name: str
    region: str
    sensors: tuple[str, ...]
    class_priors: Mapping[str, float]
    domain_shift: float = 0.5
    season: float | None = None
    tiles: int | None = None


@dataclass(frozen=True)
class WorldConfig:
    """A whole world. ``tiles_per_institution`` applies where an institution sets no ``tiles``.

    Every scene is ``tile_size`` pixels of ``pixel_size_m`` on a side for the 10 m-class sensors;
    sensors whose finest band is sub-metre-class (cameras) get ``aerial_factor`` times more pixels
    over the same footprint.
    """

    regions: tuple[RegionConfig, ...]
    institutions: tuple[InstitutionConfig, ...]
    name: str = "world"
    seed: int = 0
    tile_size: int = 64
    pixel_size_m: float = 10.0
    aerial_factor: int = 4
    tiles_per_institution: int = 100
    splits: Mapping[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    presence_threshold: float = 0.1
    sar_looks: float = 4.4

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        where = f"world {self.name!r}"
        if self.tile_size < 8:
            raise InputError(f"{where}: tile_size must be >= 8, got {self.tile_size}")
        if self.pixel_size_m <= 0 or self.aerial_factor < 1:
            raise InputError(f"{where}: pixel_size_m must be > 0 and aerial_factor >= 1")
        if not 0 < self.presence_threshold < 1:
            raise InputError(f"{where}: presence_threshold must lie in (0, 1), got {self.presence_threshold}")
        if self.sar_looks <= 0:
            raise InputError(f"{where}: sar_looks must be > 0, got {self.sar_looks}")
        if not self.splits or any(v < 0 for v in self.splits.values()) or sum(self.splits.values()) <= 0:
            raise InputError(f"{where}: splits need non-negative fractions with a positive sum, got {dict(self.splits)}")
        regions = [r.name for r in self.regions]
        if len(set(regions)) != len(regions):
            raise InputError(f"{where}: duplicate region names {regions}")
        names = [i.name for i in self.institutions]
        if not names or len(set(names)) != len(names):
            raise InputError(f"{where}: institutions must be non-empty with unique names, got {names}")
        for inst in self.institutions:
            at = f"{where}, institution {inst.name!r}"
            if inst.region not in regions:
                raise InputError(f"{at}: unknown region {inst.region!r}; regions: {regions}")
            if not inst.sensors:
                raise InputError(f"{at}: needs at least one sensor")
            for sensor in inst.sensors:
                try:
                    get_sensor(sensor)
                except BandError as exc:
                    raise InputError(f"{at}: {exc}") from None
            unknown = set(inst.class_priors) - set(CLASSES)
            if unknown:
                raise InputError(f"{at}: unknown classes {sorted(unknown)} in class_priors; classes: {list(CLASSES)}")
            if any(v < 0 for v in inst.class_priors.values()) or sum(inst.class_priors.values()) <= 0:
                raise InputError(f"{at}: class_priors need non-negative weights with a positive sum")
            if not 0 <= inst.domain_shift <= 1:
                raise InputError(f"{at}: domain_shift must lie in [0, 1], got {inst.domain_shift}")
            if inst.season is not None and not -1 <= inst.season <= 1:
                raise InputError(f"{at}: season must lie in [-1, 1], got {inst.season}")
            if self.tiles_for(inst) < 1:
                raise InputError(f"{at}: needs at least one tile")

    def tiles_for(self, institution: InstitutionConfig) -> int:
        return institution.tiles if institution.tiles is not None else self.tiles_per_institution

    def region(self, name: str) -> RegionConfig:
        return next(r for r in self.regions if r.name == name)

    def institution(self, name: str) -> InstitutionConfig:
        for inst in self.institutions:
            if inst.name == name:
                return inst
        raise InputError(f"world {self.name!r} has no institution {name!r}; have {[i.name for i in self.institutions]}")

    def replace(self, **changes: Any) -> "WorldConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "world config") -> "WorldConfig":
        """Build from a plain mapping (parsed YAML, or a Hydra node turned into a container)."""
        raw = dict(raw)
        try:
            regions = tuple(
                RegionConfig(name=r["name"], epsg=int(r["epsg"]), origin=tuple(float(v) for v in r["origin"]))
                for r in raw.pop("regions")
            )
            institutions = tuple(
                InstitutionConfig(**{**i, "sensors": tuple(i["sensors"]), "class_priors": dict(i["class_priors"])})
                for i in raw.pop("institutions")
            )
            return cls(regions=regions, institutions=institutions, **raw)
        except (KeyError, TypeError) as exc:
            raise InputError(f"{source}: invalid world description: {exc}") from exc
        except ValueError as exc:
            raise InputError(f"{source}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["regions"] = [{**r, "origin": list(r["origin"])} for r in out["regions"]]
        out["institutions"] = [{**i, "sensors": list(i["sensors"]), "class_priors": dict(i["class_priors"])}
                               for i in out["institutions"]]
        out["splits"] = dict(self.splits)
        return out


def load_world_config(preset_or_path: str | Path, **overrides: Any) -> WorldConfig:
    """Load a preset name (``configs/world/<name>.yaml``) or a YAML path, then apply field overrides."""
    path = Path(preset_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{preset_or_path}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"no world preset {str(preset_or_path)!r} in {PRESET_DIR}; presets: {known}")
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"world config not found: {path}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a world config must be a YAML mapping")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return WorldConfig.from_dict(raw, source=str(path))
