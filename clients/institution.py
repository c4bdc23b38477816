"""Which institution a node serves: declared in its ``--node-config``, or assigned by the coordinator.

A partner's SuperNode declares itself::

    flower-supernode ... --node-config 'institution="lab-a" sensor="sentinel2_l2a" task="scene"
                                        data-path="/data/lab-a/manifest.json"'

(optional ``region="..."`` keeps only that region's tiles; optional ``resize=N`` reads each tile whole,
resampled to N x N pixels, for training and probing; optional ``sensors="FILE[:FILE...]"`` names
sensor YAML files or folders the node's data needs (its catalog: the coordinator needs none of them); optional ``store="DIR"`` is where the node
keeps the specialists it trains, default ``~/.eosfed/stores/<institution>``; optional ``weights="home"``
makes the node refuse every request for a kept specialist's weights, whatever the coordinator's
``enrol.weights``: they never leave the node after training). A simulated SuperNode has only Flower's
``partition-id``/``num-partitions``; the coordinator assigns it institutions of the experiment and
sends each one's record, in the same keys plus ``world`` (a synthetic-world config as JSON) and
``cache-dir``, with every request. A node with neither has nothing to offer and stays idle.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from geodata.dataset import MAX_TILE_PX
from geodata.names import check_name
from geodata.manifest import sensors_beside
from geodata.sensors import Catalog, default, load_sensor_files
from geodata.errors import InputError

__all__ = ["InstitutionSpec", "NodeRole", "node_role", "institution_for", "weights_policy", "DECLARED_KEYS",
           "WEIGHTS_POLICIES"]

DECLARED_KEYS = ("institution", "sensor", "task", "data-path")
WEIGHTS_POLICIES = ("send", "home")


def _text(record: Mapping[str, Any], key: str, source: str, required: bool) -> str:
    value = record.get(key, "")
    if not isinstance(value, str):
        raise InputError(f"{source}: {key!r} must be a string, got {value!r}")
    if required and not value.strip():
        raise InputError(f"{source}: {key!r} is missing")
    return value.strip()


def _pixels(record: Mapping[str, Any], key: str, source: str) -> int:
    """An optional size in pixels (an integer, or its digits as text), 1..``MAX_TILE_PX``; 0 when absent."""
    value = record.get(key, "")
    if value in ("", 0):
        return 0
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= MAX_TILE_PX:
        raise InputError(f"{source}: {key!r} must be a size in pixels, 1..{MAX_TILE_PX}, got {value!r}")
    return int(text)


@dataclass(frozen=True)
class InstitutionSpec:
    """One institution's identity and where its labelled data lives."""

    name: str
    sensor: str
    task: str
    data_path: str = ""
    region: str = ""
    world: str = ""
    cache_dir: str = ""
    store: str = ""
    sensors: str = ""  # sensor YAML files or folders, os.pathsep-separated: read into its catalog()
    resize: int = 0  # each tile read whole and resampled to resize x resize pixels (0: as it is)

    @property
    def store_dir(self) -> Path:
        """Where this institution keeps its specialists (simulated: under the cache)."""
        if self.store:
            return Path(self.store).expanduser()
        if self.cache_dir:
            return Path(self.cache_dir) / "stores" / self.name
        return Path.home() / ".eosfed" / "stores" / self.name

    @classmethod
    def from_record(cls, record: Mapping[str, Any], source: str) -> "InstitutionSpec":
        """Parse node-config style keys; raises ``ValueError`` naming ``source`` and the field."""
        spec = cls(
            name=_text(record, "institution", source, True),
            sensor=_text(record, "sensor", source, True),
            task=_text(record, "task", source, True),
            data_path=_text(record, "data-path", source, False),
            region=_text(record, "region", source, False),
            world=_text(record, "world", source, False),
            cache_dir=_text(record, "cache-dir", source, False),
            store=_text(record, "store", source, False),
            sensors=_text(record, "sensors", source, False),
            resize=_pixels(record, "resize", source),
        )
        for key, value in (("institution", spec.name), ("sensor", spec.sensor), ("task", spec.task)):
            try:
                check_name(value, key)
            except ValueError as exc:
                raise InputError(f"{source}: {exc}") from None
        if bool(spec.data_path) == bool(spec.world):
            raise InputError(f"{source}: institution {spec.name!r} needs exactly one of 'data-path' or 'world'")
        if spec.world and not spec.cache_dir:
            raise InputError(f"{source}: institution {spec.name!r} has a 'world' but no 'cache-dir'")
        try:
            spec.catalog()
        except ValueError as exc:
            raise InputError(f"{source}: sensors: {exc}") from None
        return spec

    def catalog(self) -> Catalog:
        """What this institution's band and sensor names mean: the default catalog plus its ``sensors`` files
        and the sensor files beside its ``data-path`` manifest (registering nothing: its node's requests run
        inside :func:`geodata.sensors.using` it)."""
        catalog = load_sensor_files((p for p in self.sensors.split(os.pathsep) if p), default())
        data = Path(self.data_path).expanduser() if self.data_path else None
        if data is not None and data.exists():
            catalog = sensors_beside(data if data.is_dir() else data.parent, catalog)
        return catalog

    def to_record(self) -> dict[str, str]:
        record = {
            "institution": self.name,
            "sensor": self.sensor,
            "task": self.task,
            "data-path": self.data_path,
            "region": self.region,
            "world": self.world,
            "cache-dir": self.cache_dir,
            "store": self.store,
            "sensors": self.sensors,
            "resize": str(self.resize) if self.resize else "",
        }
        return {k: v for k, v in record.items() if v}


@dataclass(frozen=True)
class NodeRole:
    """What a node is: a declared institution, a simulated host, or unconfigured."""

    kind: Literal["declared", "simulated", "unconfigured"]
    institution: InstitutionSpec | None = None
    partition_id: int = -1
    num_partitions: int = 0


def weights_policy(node_config: Mapping[str, Any]) -> str:
    """The node config's ``weights``: ``home`` (the node hands no kept specialist's weights out) or
    ``send`` (the default)."""
    value = node_config.get("weights", "send")
    if value not in WEIGHTS_POLICIES:
        raise InputError(f"node config: 'weights' must be one of {list(WEIGHTS_POLICIES)}, got {value!r}")
    return value


def node_role(node_config: Mapping[str, Any]) -> NodeRole:
    """The role ``node_config`` gives this node; a half-declared institution (or an unknown ``weights``
    policy) is an error naming the gap."""
    weights_policy(node_config)
    if any(key in node_config for key in DECLARED_KEYS):
        spec = InstitutionSpec.from_record(node_config, "node config")
        if spec.world:
            raise InputError("node config: 'world' is for simulated institutions; declare a 'data-path'")
        return NodeRole("declared", institution=spec)
    if "partition-id" in node_config:
        return NodeRole(
            "simulated",
            partition_id=int(node_config["partition-id"]),
            num_partitions=int(node_config.get("num-partitions", 0)),
        )
    return NodeRole("unconfigured")


def institution_for(node_config: Mapping[str, Any], requested: Mapping[str, Any]) -> InstitutionSpec:
    """The institution a request addresses on this node; a declared node serves only itself."""
    role = node_role(node_config)
    name = requested.get("institution")
    if role.institution is not None:
        if name != role.institution.name:
            raise InputError(f"this node is institution {role.institution.name!r}, not {name!r}")
        return role.institution
    if role.kind == "simulated":
        return InstitutionSpec.from_record(requested, f"request for institution {name!r}")
    raise InputError(f"this node declares no institution (node config keys: {sorted(node_config)}); "
                     f"it cannot serve {name!r}")
